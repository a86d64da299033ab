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

``fit_hierarchical`` runs the IMPC protocol end to end on a stored embedding table: specimen
targets (union over the specimen's images), held-out subjects drawn per seed, per-class ROC AUC, the
``runs``/``metrics``/``predictions`` rows, and the mean ± std table laid out like the paper's Table 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from classifiers._registry import register_model
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
    def fit_in_store(cls, store, request) -> HierarchicalReport:
        """``fit hierarchical``: the IMPC protocol (``fit_hierarchical``) on ``request.features``.

        ``request`` is a ``classifiers.fitting.FitRequest``; ``features`` is required, ``seeds``
        defaults to 3, ``device`` to the model's default.
        """
        if not request.features:
            raise ParameterError(
                "fit hierarchical needs --features TABLE: an embedding table of the dataset (e.g. one written by "
                "'extract --extractor cae --artifact ID'). List the tables with 'python cli.py tables'."
            )
        if not request.dataset:
            raise ParameterError("fit hierarchical needs --dataset NAME: the dataset whose specimens are judged.")
        params = {"device": request.device} if request.device else {}
        return fit_hierarchical(store, dataset=request.dataset, features=request.features, seeds=request.seeds or 3,
                                **params)

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


# --- the IMPC protocol -----------------------------------------------------------------------------
def hierarchical_targets(level1: Sequence, level2: Sequence, level3: Sequence, *, positive: str = "abnormal",
                         classes2: Sequence[str] | None = None, classes3: Sequence[str] | None = None):
    """0/1 indicator ``(n, 1 + k2 + k3)`` and the column names from per-unit level values.

    ``level1`` holds strings (``positive`` marks 1); ``level2``/``level3`` hold lists of class names.
    Class lists default to the sorted names present.
    """
    classes2 = sorted({c for v in level2 for c in (v or [])}) if classes2 is None else list(classes2)
    classes3 = sorted({c for v in level3 for c in (v or [])}) if classes3 is None else list(classes3)
    n = len(level1)
    Y = np.zeros((n, 1 + len(classes2) + len(classes3)), dtype=np.int8)
    Y[:, 0] = [1 if str(v) == positive else 0 for v in level1]
    for i, values in enumerate(level2):
        for c in values or []:
            Y[i, 1 + classes2.index(c)] = 1
    for i, values in enumerate(level3):
        for c in values or []:
            Y[i, 1 + len(classes2) + classes3.index(c)] = 1
    names = [("Level_1", "Binary")] + [("Level_2", c) for c in classes2] + [("Level_3", c) for c in classes3]
    return Y, names


def format_level_table(names: list[tuple[str, str]], aucs: np.ndarray, *, title: str) -> str:
    """Table-4 layout: level, class, mean AUC and std over seeds (``aucs`` is (seeds, classes), NaN = undefined)."""
    lines = [title, f"{'Abnormality':<10} {'Class':<14} {'Mean AUC':>9} {'Std':>7} {'seeds':>6}"]
    previous = None
    for j, (level, cls) in enumerate(names):
        values = aucs[:, j][np.isfinite(aucs[:, j])]
        mean = f"{values.mean():.3f}" if len(values) else "n/a"
        std = f"{values.std():.3f}" if len(values) else "n/a"
        lines.append(f"{level if level != previous else '':<10} {cls:<14} {mean:>9} {std:>7} {len(values):>6}")
        previous = level
    for level in dict.fromkeys(n[0] for n in names):
        cols = [j for j, n in enumerate(names) if n[0] == level]
        per_seed = np.array([row[np.isfinite(row)].mean() for row in aucs[:, cols] if np.isfinite(row).any()])
        if len(per_seed):
            lines.append(f"{level} mean AUC over classes: {per_seed.mean():.3f} ± {per_seed.std():.3f}")
    return "\n".join(lines)


@dataclass
class _SpecimenTargets:
    """Specimen units and each specimen's level 1 (normal|abnormal), level-2 and level-3 class lists."""

    units: object  # pa.Table from store.featureset.load_units
    level1: list
    level2: list
    level3: list


def _specimen_targets(store, dataset: str) -> _SpecimenTargets:
    """Specimen units of ``dataset`` with level1 / level2 / level3 as unions over the specimen's scans."""
    from store.featureset import load_units
    from store.sql import connect

    units = load_units(store, dataset, "specimens")
    con = connect(store)
    try:
        columns = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE scans)").fetchall()}
        missing = [c for c in ("level1", "level2", "level3") if c not in columns]
        if missing:
            raise EvaluationError(
                f"hierarchical needs scans columns level1 (normal|abnormal), level2 and level3 (lists); dataset "
                f"{dataset!r} lacks {', '.join(missing)}. "
                "Ingest a dataset with hierarchical labels (e.g. the impc demo)."
            )
        result = con.execute("""
            SELECT subject, time_index,
                   max(CASE WHEN level1 = 'abnormal' THEN 1 ELSE 0 END) AS abnormal,
                   list_sort(list_distinct(flatten(list(coalesce(level2, []))))) AS level2,
                   list_sort(list_distinct(flatten(list(coalesce(level3, []))))) AS level3
            FROM scans WHERE dataset = ? GROUP BY subject, time_index""", [dataset])
        rows = {(r[0], r[1]): r[2:] for r in result.fetchall()}
    finally:
        con.close()
    subjects = units.column("subject").to_pylist()
    times = units.column("time_index").to_pylist()
    keys = list(zip(subjects, times, strict=True))
    return _SpecimenTargets(units, ["abnormal" if rows[k][0] else "normal" for k in keys], [rows[k][1] for k in keys],
                            [rows[k][2] for k in keys])


@dataclass
class _SpecimenFeatures:
    """Features per specimen ``X`` and whether the table had any row for it (``present``)."""

    X: np.ndarray
    present: np.ndarray


def _specimen_features(store, dataset: str, table: str, units) -> _SpecimenFeatures:
    """Features per specimen: a specimen-keyed table as stored; a per-scan table as the mean embedding
    of each view, views side by side (a view a specimen lacks is zeros)."""
    from features.sets import parse_feature_set
    from store.featureset import feature_tables, load_feature_set, load_matrix
    from store.sql import connect

    tables = feature_tables(store)
    info = tables.get(table)
    if info is None:
        from features.errors import TableNotFoundError

        raise TableNotFoundError(
            f"Feature table {table!r} does not exist in {store.root} "
            f"(feature tables: {', '.join(sorted(tables)) or 'none'}). "
            "Extract it first, e.g. 'python cli.py extract --extractor efficientnet --input multiview --dataset impc'."
        )
    if info.key == "specimen_id":
        loaded = load_feature_set(store, parse_feature_set(table), units, "specimens", tables=tables)
        block = loaded.blocks[0]
        return _SpecimenFeatures(block.matrix[block.index].astype(np.float32), loaded.present)
    if info.key != "scan_id":
        raise EvaluationError(
            f"Feature table {table!r} is keyed by {info.key}; hierarchical needs scan_id or specimen_id rows."
        )
    con = connect(store)
    try:
        scans = con.execute(
            "SELECT scan_id, pixel_sha256, subject, time_index, view FROM scans WHERE dataset = ?", [dataset]
        ).fetchall()
    finally:
        con.close()
    import pyarrow as pa

    wanted = pa.table({"k": [r[0] for r in scans], "h": [r[1] for r in scans]})
    keys, matrix, _ = load_matrix(store, table, "scan_id", list(info.columns), wanted)
    position = {k: i for i, k in enumerate(keys)}
    views = sorted({r[4] or "" for r in scans})
    unit_keys = zip(units.column("subject").to_pylist(), units.column("time_index").to_pylist(), strict=True)
    specimen = {(s, t): i for i, (s, t) in enumerate(unit_keys)}
    d = matrix.shape[1]
    sums = np.zeros((units.num_rows, len(views), d), np.float64)
    counts = np.zeros((units.num_rows, len(views)))
    for scan_id, _, subject, time_index, view in scans:
        if scan_id in position:
            i, v = specimen[(subject, time_index)], views.index(view or "")
            sums[i, v] += matrix[position[scan_id]]
            counts[i, v] += 1
    present = counts.sum(axis=1) > 0
    means = sums / np.maximum(counts, 1)[:, :, None]
    return _SpecimenFeatures(means.reshape(units.num_rows, -1).astype(np.float32), present)


@dataclass
class _Specimens:
    """The specimens a hierarchical fit judges: features, targets, their names and the level sizes."""

    X: np.ndarray
    Y: np.ndarray
    names: list[tuple[str, str]]
    keys: np.ndarray
    subjects: np.ndarray
    levels: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)


def _specimens(store, dataset: str, features: str) -> _Specimens:
    targets = _specimen_targets(store, dataset)
    units = targets.units
    Y, names = hierarchical_targets(targets.level1, targets.level2, targets.level3)
    found = _specimen_features(store, dataset, features, units)
    X, present = found.X, found.present
    notes = [] if present.all() else [
        f"note: {int((~present).sum())} of {len(present)} specimens have no row in {features!r} and are left out."]
    keep = np.flatnonzero(present)
    levels = (1, sum(1 for n in names if n[0] == "Level_2"), sum(1 for n in names if n[0] == "Level_3"))
    return _Specimens(X[keep], Y[keep], names, np.asarray(units.column("key").to_pylist(), dtype=object)[keep],
                      np.asarray(units.column("subject").to_pylist(), dtype=object)[keep], levels, notes)


@dataclass
class HierarchicalReport:
    """What ``fit_hierarchical`` did: the run, the class names and per-seed ROC AUCs ``(seeds, classes)``."""

    run_id: str
    names: list[tuple[str, str]]
    aucs: np.ndarray
    title: str
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The notes and the Table-4-style table (mean ± std over seeds)."""
        return [*self.notes, *format_level_table(self.names, self.aucs, title=self.title).splitlines()]


@dataclass
class _SeedFit:
    model: HierarchicalClassifier
    aucs: np.ndarray  # per class, NaN where undefined


def _judge_seed(data: _Specimens, seed: int, *, test_fraction: float, model_params: dict, run) -> _SeedFit:
    """Fit on all but seed ``seed``'s held-out subjects; record per-class AUCs and predictions in ``run``."""
    from sklearn.metrics import roc_auc_score

    from features.splits import held_out_subjects, holdout_split

    test_subjects = held_out_subjects(data.subjects, data.Y[:, 0], rule="fraction", seed=seed,
                                      test_fraction=test_fraction)
    split = holdout_split(data.subjects, test_subjects)
    model = HierarchicalClassifier(levels=data.levels, random_state=seed, **model_params)
    model.fit(data.X[split.train], data.Y[split.train], groups=data.subjects[split.train])
    proba, truth = model.predict_proba(data.X[split.test]), data.Y[split.test]
    aucs = np.full(len(data.names), np.nan)
    for j, (level, cls) in enumerate(data.names):
        rows = np.ones(len(truth), bool) if (j == 0 or not model.conditional) else truth[:, 0] == 1
        column = truth[rows, j]
        if 0 < column.sum() < len(column):
            aucs[j] = roc_auc_score(column, proba[rows, j])
            run.add_metric(metric="auc", value=float(aucs[j]), seed=seed, cls=f"{level}:{cls}")
    labels = [f"{a}:{b}" for a, b in data.names]
    predicted = model.predict(data.X[split.test])
    run.add_predictions(
        keys=data.keys[split.test], subjects=data.subjects[split.test], seed=seed,
        y_true=["|".join(n for n, t in zip(labels, row, strict=True) if t) for row in truth],
        y_pred=["|".join(n for n, t in zip(labels, row, strict=True) if t) for row in predicted],
        proba=[dict(zip(labels, map(float, row), strict=True)) for row in proba],
    )
    return _SeedFit(model, aucs)


def fit_hierarchical(store, *, dataset: str, features: str, seeds: int = 3, test_fraction: float = 0.3,
                     **model_params) -> HierarchicalReport:
    """The IMPC hierarchical protocol on feature table ``features`` of ``dataset``, over ``seeds`` seeds.

    Per seed: held-out subjects (``features.splits.held_out_subjects``, rule ``fraction``, stratified
    by level 1) — the model is fitted on the others; per-class ROC AUC on the held-out specimens (levels
    2-3 among the abnormal ones when ``conditional``). Writes one run (``runs``/``metrics``/
    ``predictions``) and returns a ``HierarchicalReport`` (``aucs`` of shape (seeds, classes)) whose
    ``summary_lines()`` are the Table-4-style summary.
    """
    from store.runs import RunRecorder
    from store.tables import table_kv_metadata

    check_param("fit_hierarchical", "seeds", seeds, kind="an int in [1, inf)", ok=is_int(seeds, 1))
    data = _specimens(store, dataset, features)
    run = RunRecorder(dataset=dataset, model="hierarchical", target="level1+level2+level3", unit="specimens")
    fits = [_judge_seed(data, seed, test_fraction=test_fraction, model_params=model_params, run=run)
            for seed in range(seeds)]
    aucs = np.array([f.aucs for f in fits])
    for level in ("Level_1", "Level_2", "Level_3"):
        cols = [j for j, n in enumerate(data.names) if n[0] == level]
        for seed in range(seeds):
            values = aucs[seed, cols][np.isfinite(aucs[seed, cols])]
            if len(values):
                run.add_metric(metric="auc_mean", value=float(values.mean()), seed=seed, cls=level)
    model = fits[-1].model
    columns = [f"{a}:{b}" for a, b in data.names]
    config = {"command": "fit hierarchical", "features": features, "test_fraction": test_fraction,
              "levels": data.levels, "columns": columns, "model_params": model_params,
              "conditional_levels": bool(model.conditional)}
    run.write(store, model, config=config, seeds=list(range(seeds)), n_units=len(data.Y),
              n_subjects=len(set(data.subjects)), classes=columns, members=["hierarchical"],
              feature_hashes={features: table_kv_metadata(store, features).get("chronofeat.params_hash")},
              model_meta={"kind": "hierarchical", "features": features})
    scope = "levels 2-3 among held-out abnormal specimens" if model.conditional else "all held-out specimens"
    title = (f"run {run.run_id}: hierarchical on {features!r}, dataset {dataset!r} — per-class ROC AUC on held-out "
             f"subjects (mean ± std over {seeds} seeds; {scope})")
    return HierarchicalReport(run.run_id, data.names, aucs, title, data.notes)
