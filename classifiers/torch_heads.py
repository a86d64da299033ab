"""Torch heads on embedding tables: ``mlp`` and ``hierarchical`` (scikit-learn compatible models).

- ``mlp`` — fully connected layers with batch norm, ReLU and dropout; early stopping on the loss of a
  validation part of the training rows (subject-grouped when ``groups`` are given to ``fit``). Fits
  inside ``fit``, cross-validation and ensembles like every registered model (``fit(X, y, groups)``,
  ``predict``, ``predict_proba``, ``classes_``; multi-label indicators give one head per label).
- ``hierarchical`` — multi-label levels as in the IMPC paper (seed 003, section 4): a level-1 block
  (dense, ReLU) with one sigmoid output (normal/abnormal); a level-2 block fed by level 1's hidden
  features with one sigmoid per level-2 class; a level-3 block fed by level 2's hidden features.
  Levels are trained in turn with binary cross-entropy and validation-loss early stopping, each level
  with the blocks above frozen (the paper freezes the trained levels). With ``conditional=True``
  (default) levels 2 and 3 are learned, and their probabilities meant, for rows positive at level 1
  — the abnormal specimens the paper divides into sub-classes.

``fit hierarchical`` (``HierarchicalClassifier.fit_in_store``) runs the IMPC protocol of
``classifiers.impc`` on a stored embedding table (``--features``; without it the dataset's embedding
table, multiview composite first), 5 seeds unless ``--seeds``; with ``--compare-views BACKBONE`` the
paper's DV-only vs LAT-only vs multiview comparison. ``fit_hierarchical``, ``hierarchical_targets``,
``format_level_table`` and ``HierarchicalReport`` are ``classifiers.impc``'s, importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from classifiers._registry import register_model
from classifiers.impc import (
    HierarchicalReport,
    compare_views,
    default_features,
    fit_hierarchical,
    format_level_table,
    hierarchical_targets,
    parse_backbone,
)
from classifiers.models import ChronoClassifier, _is_number
from features.errors import EvaluationError, ParameterError, check_param, is_int

__all__ = [
    "TorchMLPEstimator",
    "MLP",
    "HierarchicalClassifier",
    "HierarchicalReport",
    "hierarchical_targets",
    "fit_hierarchical",
    "format_level_table",
]


def _hidden_ok(hidden) -> bool:
    return isinstance(hidden, (tuple, list)) and len(hidden) >= 1 and all(is_int(h, 1) for h in hidden)


def _keep_params(estimator, values: dict) -> None:
    """Store ``__init__``'s arguments (``locals()``) as attributes of the same names, as scikit-learn expects."""
    for name, value in values.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def _check_training_params(owner: str, head) -> None:
    """``ParameterError`` for a training parameter both torch heads share that is out of range."""
    check_param(owner, "dropout", head.dropout, kind="a float in [0, 1)",
                ok=_is_number(head.dropout, low=0) and head.dropout < 1)
    check_param(owner, "lr", head.lr, kind="a float in (0, inf)", ok=_is_number(head.lr, low=0, low_open=True))
    check_param(owner, "weight_decay", head.weight_decay, kind="a float in [0, inf)",
                ok=_is_number(head.weight_decay, low=0))
    check_param(owner, "batch_size", head.batch_size, kind="an int in [2, inf)", ok=is_int(head.batch_size, 2))
    check_param(owner, "max_epochs", head.max_epochs, kind="an int in [1, inf)", ok=is_int(head.max_epochs, 1))
    check_param(owner, "patience", head.patience, kind="an int in [1, inf)", ok=is_int(head.patience, 1))
    check_param(owner, "val_fraction", head.val_fraction, kind="a float in (0, 0.5]",
                ok=_is_number(head.val_fraction, low=0, low_open=True) and head.val_fraction <= 0.5)
    check_param(owner, "device", head.device, kind="one of 'auto', 'cpu', 'cuda'",
                ok=head.device in ("auto", "cpu", "cuda"))


def _validation_rows(y_strata: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int):
    """(train, val) row indices inside a training set: subject-grouped when ``groups``; None if impossible."""
    from features.splits import inner_splits

    n_splits = max(2, int(round(1.0 / fraction)))
    splits = inner_splits(y_strata, groups, n_splits=n_splits, seed=seed)
    if not splits:
        return None
    train, val = splits[0]
    return (train, val) if len(val) and len(train) else None


def _fit_and_val_rows(rows: np.ndarray, y_strata: np.ndarray, groups, fraction: float, seed: int):
    """``rows`` cut into the rows trained on and the validation rows (none when a split is impossible)."""
    split = _validation_rows(y_strata, groups, fraction, seed)
    return (rows[split[0]], rows[split[1]]) if split is not None else (rows, np.array([], np.int64))


def _mlp(n_in: int, hidden: Sequence[int], n_out: int, dropout: float):
    from torch import nn

    layers, previous = [], n_in
    for width in hidden:
        layers += [nn.Linear(previous, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        previous = width
    layers.append(nn.Linear(previous, n_out))
    return nn.Sequential(*layers)


def _balanced_weight(y: np.ndarray, k: int):
    """``n / (k * n_c)`` per class of ``y`` as a tensor (0 for absent classes)."""
    import torch

    counts = np.bincount(y, minlength=k).astype(np.float32)
    return torch.from_numpy(np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0).astype(np.float32))


class _RowsLoss:
    """``loss_fn(model(X[rows]), Y[rows])`` for a batch of row indices: the loss of the torch heads."""

    def __init__(self, model, X, Y, loss_fn, device):
        self.model, self.X, self.Y, self.loss_fn, self.device = model, X, Y, loss_fn, device

    def rows_tensor(self, rows: np.ndarray):
        import torch

        return torch.from_numpy(rows).to(self.device)

    def inputs(self, batch):
        return self.rows_tensor(batch.rows)

    def __call__(self, idx):
        return self.loss_fn(self.model(self.X[idx]).float(), self.Y[idx])

    def validate_on(self, rows: np.ndarray):
        """A ``validate(epoch)`` giving the loss on ``rows`` as ``val_loss``; None without rows."""
        from extractors.training import autocast

        if not len(rows):
            return None

        def validate(epoch: int) -> dict:
            idx = self.rows_tensor(rows)
            with autocast(self.device):
                return {"val_loss": float(self(idx))}

        return validate


class TorchMLPEstimator(ClassifierMixin, BaseEstimator):
    """The plain estimator inside ``MLP``: integer classes ``0..k-1`` in, softmax probabilities out."""

    def __init__(self, *, hidden=(256, 128), dropout=0.3, lr=1e-3, weight_decay=1e-4, batch_size=64,
                 max_epochs=200, patience=10, val_fraction=0.2, class_weight=None, device="auto",
                 random_state=None, groups=None):
        _keep_params(self, locals())

    def fit(self, X, y):
        """Train on ``X`` (n, d) and integer classes ``y``; early stopping on an inner validation part."""
        import torch

        from extractors.training import deterministic, fit_minibatches, select_device, torch_threads

        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(np.int64)
        self.classes_ = np.unique(y)
        k = int(y.max()) + 1
        seed = 0 if self.random_state is None else int(self.random_state)
        device = select_device(self.device)
        train_idx, val_idx = _fit_and_val_rows(np.arange(len(y)), y, self.groups, self.val_fraction, seed)
        weight = _balanced_weight(y[train_idx], k).to(device) if self.class_weight == "balanced" else None
        Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        with deterministic(seed), torch_threads(1 if device.type == "cpu" else None):
            model = _mlp(X.shape[1], self.hidden, k, self.dropout).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            loss = _RowsLoss(model, Xt, yt, torch.nn.CrossEntropyLoss(weight=weight), device)
            loop = fit_minibatches(model=model, optimizer=optimizer, loss=loss, inputs=loss.inputs, samples=train_idx,
                                   epochs=self.max_epochs, seed=seed, stream=4, batch_size=self.batch_size,
                                   validate=loss.validate_on(val_idx), patience=self.patience, progress=False,
                                   name="mlp", unit="row")
        self.model_ = model.cpu().eval()
        self.n_classes_ = k
        self.epochs_run_, self.best_epoch_ = loop.epochs_run, loop.best_epoch
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Softmax probabilities (n, k)."""
        import torch

        with torch.no_grad():
            logits = self.model_(torch.from_numpy(np.asarray(X, dtype=np.float32)))
        return torch.softmax(logits.float(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """Integer classes (n,)."""
        return np.argmax(self.predict_proba(X), axis=1)


_MLP_HEAD_PARAMS = ("hidden", "dropout", "lr", "weight_decay", "batch_size", "max_epochs", "patience", "val_fraction",
                    "class_weight", "device", "random_state")


@register_model("mlp")
class MLP(ChronoClassifier):
    """Fully connected head (Linear-BatchNorm-ReLU-Dropout per hidden layer) trained with Adam,
    early-stopped on a validation part of the training rows (subject-grouped when possible)."""

    uses_scaling: ClassVar[bool] = True

    def __init__(self, *, hidden=(256, 128), dropout=0.3, lr=1e-3, weight_decay=1e-4, batch_size=64,
                 max_epochs=200, patience=10, val_fraction=0.2, class_weight=None, device="auto",
                 variance_threshold=0.0, scale=True, random_state=None):
        _keep_params(self, locals())

    def validate_params(self) -> None:
        super().validate_params()
        owner = "MLP"
        check_param(
            owner, "hidden", self.hidden, kind="a non-empty tuple of ints in [1, inf)", ok=_hidden_ok(self.hidden)
        )
        _check_training_params(owner, self)
        check_param(
            owner,
            "class_weight",
            self.class_weight,
            kind="None or 'balanced'",
            ok=self.class_weight in (None, "balanced"),
        )

    def check_available(self) -> None:
        from extractors.training import select_device

        select_device(self.device)

    def search_space(self, level: str) -> dict[str, list]:
        if level == "quick":
            return {"dropout": [0.1, 0.3, 0.5]}
        if level == "thorough":
            return {
                "dropout": [0.1, 0.3, 0.5],
                "hidden": [(128,), (256, 128), (512, 256)],
                "weight_decay": [1e-4, 1e-3],
            }
        return {}

    def _estimator(self, y, groups):
        params = {name: getattr(self, name) for name in _MLP_HEAD_PARAMS}
        return TorchMLPEstimator(**{**params, "hidden": tuple(self.hidden)}, groups=groups)


# --- hierarchical ------------------------------------------------------------------------------------
def _test_fraction(text) -> float:
    """``--test-subjects`` for ``fit hierarchical``: None -> 0.3, else a fraction in (0, 1)."""
    if text is None:
        return 0.3
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = -1.0
    if not 0 < value < 1:
        raise ParameterError(
            f"fit hierarchical takes --test-subjects as a fraction of the subjects in (0, 1), e.g. 0.3. Got {text!r}."
        )
    return value


class _Level:
    """One level's block (dense layers fed by the level above's hidden features) and sigmoid output."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, dropout: float):
        from torch import nn

        layers, previous = [], n_in
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            previous = width
        self.block = nn.Sequential(*layers)
        self.out = nn.Linear(previous, n_out)
        self.module = nn.ModuleDict({"block": self.block, "out": self.out})


@dataclass
class _LevelData:
    """What every level of one ``HierarchicalClassifier.fit`` learns from."""

    X: object  # projected, standardised inputs (tensor on the device)
    Yt: object  # the indicator (tensor on the device)
    Y: np.ndarray  # the indicator
    groups: np.ndarray | None
    device: object
    seed: int


class _Stacked:
    """A level on top of the frozen levels above it: their blocks (without gradients), then its own."""

    def __init__(self, frozen: list, level: _Level):
        self.frozen, self.level = list(frozen), level

    def __call__(self, h):
        import torch

        with torch.no_grad():
            for above in self.frozen:
                h = above.block(h)
        return self.level.out(self.level.block(h))


@register_model("hierarchical")
class HierarchicalClassifier(ClassifierMixin, BaseEstimator):
    """Hierarchical multi-label head: ``fit(X, Y)`` with ``Y`` a 0/1 indicator whose columns are the
    levels side by side, ``levels`` giving how many columns each level has (e.g. ``(1, 3, 9)``).

    ``predict_proba`` returns ``(n, sum(levels))`` sigmoid probabilities in the same column order; with
    ``conditional`` the columns of levels >= 2 are P(class | positive at level 1). Inputs are
    projected on ``input_components`` (default 32) principal components of the training rows, then
    standardised: embeddings have thousands of columns and a few hundred specimens, and the compact
    input generalises better on held-out subjects (IMPC demo, CAE features: level-1 AUC 0.67 without,
    0.79 with).
    """

    combines_members: ClassVar[bool] = False

    def __init__(self, *, levels=(1, 3, 9), hidden=((64,), (64, 32), (64, 32)), dropout=0.3, lr=1e-3,
                 weight_decay=1e-3, batch_size=32, max_epochs=200, patience=20, val_fraction=0.2,
                 conditional=True, input_components=32, device="auto", random_state=None):
        _keep_params(self, locals())

    def validate_params(self) -> None:
        owner = "HierarchicalClassifier"
        levels_ok = (isinstance(self.levels, (tuple, list)) and len(self.levels) >= 1
                     and all(is_int(v, 1) for v in self.levels))
        check_param(owner, "levels", self.levels, kind="a tuple of column counts per level, each >= 1", ok=levels_ok)
        hidden_ok = (isinstance(self.hidden, (tuple, list)) and levels_ok and len(self.hidden) == len(self.levels)
                     and all(_hidden_ok(h) for h in self.hidden))
        check_param(owner, "hidden", self.hidden, kind="one tuple of layer widths per level", ok=hidden_ok)
        _check_training_params(owner, self)
        check_param(owner, "conditional", self.conditional, kind="a bool", ok=isinstance(self.conditional, bool))
        check_param(owner, "input_components", self.input_components, kind="None or an int in [1, inf)",
                    ok=self.input_components is None or is_int(self.input_components, 1))

    def check_available(self) -> None:
        from extractors.training import select_device

        select_device(self.device)

    def search_space(self, level: str) -> dict[str, list]:
        return {"dropout": [0.1, 0.3, 0.5]} if level in ("quick", "thorough") else {}

    @classmethod
    def fit_in_store(cls, store, request):
        """``fit hierarchical``: the IMPC protocol (``classifiers.impc.fit_hierarchical``) on ``request.features``
        (None: ``classifiers.impc.default_features``), or with ``request.compare_views`` the DV vs LAT vs
        multiview comparison (``classifiers.impc.compare_views``). ``seeds`` defaults to 5 (the paper),
        ``test_subjects`` may be a fraction (default 0.3), ``device`` the model's default.
        """
        if not request.dataset:
            raise ParameterError("fit hierarchical needs --dataset NAME: the dataset whose specimens are judged.")
        seeds = request.seeds or 5
        test_fraction = _test_fraction(request.test_subjects)
        compare = getattr(request, "compare_views", None)
        if compare:
            if request.features:
                raise ParameterError("--compare-views makes its own three feature tables; drop --features.")
            backbone, weights = parse_backbone(compare)
            return compare_views(store, dataset=request.dataset, backbone=backbone, weights=weights, seeds=seeds,
                                 test_fraction=test_fraction, device=request.device or "auto",
                                 progress=request.progress)
        features, note = (request.features, "") if request.features else default_features(store, request.dataset)
        params = {"device": request.device} if request.device else {}
        report = fit_hierarchical(store, dataset=request.dataset, features=features, seeds=seeds,
                                  test_fraction=test_fraction, **params)
        if note:
            report.notes.insert(0, note)
        return report

    def _slices(self) -> list[slice]:
        bounds = np.cumsum([0, *self.levels])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _fit_inputs(self, X: np.ndarray, seed: int) -> None:
        """Learn the input projection (principal components, when fewer than the columns) and scaling."""
        from sklearn.preprocessing import StandardScaler

        self.pca_ = None
        if self.input_components is not None and self.input_components < min(X.shape) - 1:
            from sklearn.decomposition import PCA

            self.pca_ = PCA(n_components=int(self.input_components), random_state=seed).fit(X)
        self.scaler_ = StandardScaler().fit(self.pca_.transform(X) if self.pca_ is not None else X)

    def fit(self, X, y, groups=None):
        """Learn the levels in turn from ``X`` (n, d) and the indicator ``y`` (n, sum(levels))."""
        import torch

        from extractors.training import deterministic, select_device, torch_threads

        self.validate_params()
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(y, dtype=np.float32)
        if Y.ndim != 2 or Y.shape[1] != sum(self.levels):
            raise EvaluationError(
                f"hierarchical: the target must be a 0/1 indicator with {sum(self.levels)} columns (levels "
                f"{tuple(self.levels)}); got shape {Y.shape}. Pass levels matching the target's columns."
            )
        seed = 0 if self.random_state is None else int(self.random_state)
        device = select_device(self.device)
        self._fit_inputs(X, seed)
        data = _LevelData(torch.from_numpy(self._inputs(X)).to(device), torch.from_numpy(Y).to(device), Y,
                          None if groups is None else np.asarray(groups), device, seed)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.arange(Y.shape[1])
        self.levels_ = []
        self.epochs_run_ = []
        with deterministic(seed), torch_threads(1 if device.type == "cpu" else None):
            for depth, (cols, hidden) in enumerate(zip(self._slices(), self.hidden, strict=True)):
                self._fit_level(data, depth, cols, hidden)
        for level in self.levels_:
            level.module.cpu().eval()
        return self

    def _level_rows(self, data: _LevelData, depth: int, cols: slice) -> np.ndarray:
        """The rows level ``depth`` learns from (level-1 positives for deeper levels when ``conditional``)."""
        positive = data.Y[:, self._slices()[0]].max(axis=1) > 0
        rows = np.flatnonzero(positive) if (self.conditional and depth > 0) else np.arange(len(data.Y))
        target = data.Y[rows][:, cols]
        if len(rows) < 4 or np.all(target.max(axis=0) == target.min(axis=0)):
            raise EvaluationError(
                f"hierarchical: level {depth + 1} has {len(rows)} training rows and no label that varies; "
                "it cannot be learned. Use more training subjects or fewer test subjects."
            )
        return rows

    def _fit_level(self, data: _LevelData, depth: int, cols: slice, hidden) -> None:
        """Train level ``depth`` on the frozen levels above it; then freeze it too."""
        import torch

        from extractors.training import fit_minibatches

        width = int(data.X.shape[1]) if depth == 0 else self.hidden[depth - 1][-1]
        level = _Level(width, hidden, cols.stop - cols.start, self.dropout)
        level.module.to(data.device)
        rows = self._level_rows(data, depth, cols)
        target = data.Y[rows][:, cols]
        strata = target.astype(int) @ (1 << np.arange(target.shape[1]))
        train_rows, val_rows = _fit_and_val_rows(rows, strata, None if data.groups is None else data.groups[rows],
                                                 self.val_fraction, data.seed + depth)
        optimizer = torch.optim.Adam(level.module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for above in self.levels_:
            above.module.eval()
        loss = _RowsLoss(_Stacked(self.levels_, level), data.X, data.Yt[:, cols], torch.nn.BCEWithLogitsLoss(),
                         data.device)
        loop = fit_minibatches(model=level.module, optimizer=optimizer, loss=loss, inputs=loss.inputs,
                               samples=train_rows, epochs=self.max_epochs, seed=data.seed + depth, rng_seed=data.seed,
                               stream=10 + depth, batch_size=self.batch_size, validate=loss.validate_on(val_rows),
                               patience=self.patience, progress=False, name=f"hierarchical-level{depth + 1}",
                               unit="row")
        level.module.eval()
        for p in level.module.parameters():
            p.requires_grad_(False)
        self.levels_.append(level)
        self.epochs_run_.append(loop.epochs_run)

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        """Features projected on the training rows' principal components (``input_components``), standardised."""
        Z = self.pca_.transform(X) if self.pca_ is not None else X
        return self.scaler_.transform(Z).astype(np.float32)

    def predict_proba(self, X) -> np.ndarray:
        """Sigmoid probabilities ``(n, sum(levels))`` in the target's column order."""
        import torch

        h = torch.from_numpy(self._inputs(np.asarray(X, dtype=np.float32)))
        outs = []
        with torch.no_grad():
            for level in self.levels_:
                h = level.block(h)
                outs.append(torch.sigmoid(level.out(h)).numpy())
        return np.hstack(outs)

    def predict(self, X) -> np.ndarray:
        """0/1 indicator (probability >= 0.5); with ``conditional``, levels >= 2 only where level 1 is positive."""
        proba = self.predict_proba(X)
        out = (proba >= 0.5).astype(int)
        if self.conditional and len(self.levels) > 1:
            first = self._slices()[0]
            out[:, first.stop :] *= out[:, first].max(axis=1, keepdims=True)
        return out
