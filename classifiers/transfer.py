"""The transfer protocol of the spine Siamese paper (seed 001, section 4.2, Fig. 8).

Does longitudinal pre-training help a supervised task when labels are few? For growing training sets
(nested subsets of the training subjects) classifiers of the target (disc grade) are trained and
judged on the same held-out subjects by the mean per-class accuracy (the mean of the diagonal of the
normalised confusion matrix):

- ``siamese (frozen)`` — the Siamese network's convolutional backbone, frozen; a fully connected head
  is trained on its features;
- ``scratch`` — the same architecture (backbone + head) trained end to end from random weights, with
  the paper's augmentation;
- ``random (frozen)`` — a randomly initialised backbone, frozen; the same head on its features;
- ``supervised (frozen)`` — the strongly supervised upper bound on transfer (the paper's "strongly
  supervised" curve): the backbone of the same architecture trained end to end with full supervision
  on the target labels of every training subject, frozen; the same head on its features. The
  supervised network itself, judged on the held-out subjects, is the ``supervised (end to end)`` bound.

Every method is repeated over ``seeds`` seeds (the subset order, the random backbone, the heads' and
networks' initialisation and augmentation change; the held-out subjects do not): the table gives mean ±
std over seeds per training size and method, the figure draws them with error bars and the bound as a
band. The held-out subjects are the Siamese network's own test subjects when the target dataset is the
one it was trained on (so it never saw them), otherwise ``features.splits.held_out_subjects``. The
figure (matplotlib, Agg) is stored as an artifact of kind ``figures``; the run lands in ``runs``,
``metrics`` (member = method, fold = training-size index, metric ``balanced_accuracy``) and
``predictions`` through ``store.runs.RunRecorder`` like every fit.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.errors import EvaluationError, ParameterError, check_param, is_int

__all__ = [
    "TRANSFER_METHODS",
    "SUPERVISED_BOUND",
    "TransferResult",
    "nested_subsets",
    "summarise_seeds",
    "run_transfer",
    "format_transfer_table",
    "plot_transfer",
]

TRANSFER_METHODS = ("siamese (frozen)", "scratch", "random (frozen)", "supervised (frozen)")
SUPERVISED_BOUND = "supervised (end to end)"
_METRIC = "balanced_accuracy"  # the mean per-class accuracy


def nested_subsets(subjects: Sequence, fractions: Sequence[float], *, seed: int) -> list[list]:
    """Growing subject subsets: one random order from ``seed``, the first ceil(f * n) subjects per fraction."""
    ordered = sorted(set(subjects), key=str)
    order = np.random.default_rng(seed).permutation(len(ordered))
    ordered = [ordered[i] for i in order]
    return [ordered[: max(1, math.ceil(f * len(ordered)))] for f in fractions]


@dataclass
class _Target:
    """The scans column holding the target's classes, its values per scan, and a note when it was 'label'."""

    column: str
    values: list
    note: str | None = None


def _resolve_target(columns: list[str], labels_of: Callable[[str], list], target: str) -> _Target:
    if target in columns:
        return _Target(target, labels_of(target))
    values = [v for v in labels_of("label") if v is not None]
    if values and all(str(v).startswith(f"{target}_") for v in values):
        classes = ", ".join(sorted(set(values)))
        return _Target("label", labels_of("label"),
                       f"note: scans have no {target!r} column; its classes are in 'label' ({classes}).")
    raise ParameterError(
        f"The target {target!r} is neither a scans column nor the kind of the 'label' values; use one of "
        f"{', '.join(c for c in columns if c not in ('scan_id', 'pixel_sha256', 'path'))}."
    )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarise_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """Rows of every seed (one list per seed, one dict per training size) -> one row per training size with
    ``method`` the mean and ``"method std"`` the standard deviation over seeds; ``images`` is the mean count
    and ``images_range`` (min, max) over seeds."""
    rows = []
    for i, first in enumerate(per_seed[0]):
        same = [seed_rows[i] for seed_rows in per_seed]
        images = [r["images"] for r in same]
        row = {"fraction": first["fraction"], "subjects": first["subjects"], "images": int(round(np.mean(images))),
               "images_range": (int(min(images)), int(max(images))), "seeds": len(same)}
        for method in TRANSFER_METHODS:
            row[method], row[f"{method} std"] = _mean_std([r[method] for r in same])
        rows.append(row)
    return rows


def _cell(row: dict, key: str) -> str:
    return f"{row[key]:.3f} ± {row.get(f'{key} std', 0.0):.3f}"


def format_transfer_table(rows: list[dict], bound: dict | None = None) -> str:
    """The Fig. 8 figures as text: one line per training size, mean ± std per-class accuracy per method;
    with ``bound`` ({"value", "std", "subjects", "images"}) a last line for the strongly supervised bound."""
    seeds = rows[0].get("seeds", 1) if rows else 1
    header = f"{'train size':>10} {'subjects':>8} {'images':>7}  " + "  ".join(f"{m:>19}" for m in TRANSFER_METHODS)
    lines = [f"mean per-class accuracy on the held-out subjects, mean ± std over {seeds} seed(s)", header]
    for row in rows:
        lines.append(f"{row['fraction']:>10.2f} {row['subjects']:>8d} {row['images']:>7d}  "
                     + "  ".join(f"{_cell(row, m):>19}" for m in TRANSFER_METHODS))
    if bound is not None:
        lines.append(f"{'bound':>10} {bound['subjects']:>8d} {bound['images']:>7d}  {SUPERVISED_BOUND}: "
                     f"{bound['value']:.3f} ± {bound['std']:.3f} (upper bound: the same network trained end to end "
                     "on every training subject's labels)")
    return "\n".join(lines)


def plot_transfer(rows: list[dict], *, title: str, bound: dict | None = None) -> bytes:
    """PNG bytes of accuracy against training images: one line per method with ± std error bars, and the
    strongly supervised ``bound`` as a dashed line with its ± std band (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    x = [r["images"] for r in rows]
    for method, marker in zip(TRANSFER_METHODS, "osv^", strict=True):
        ax.errorbar(x, [r[method] for r in rows], yerr=[r.get(f"{method} std", 0.0) for r in rows], marker=marker,
                    capsize=3, label=method)
    if bound is not None:
        ax.axhline(bound["value"], color="black", linestyle="--", linewidth=1, label=SUPERVISED_BOUND)
        ax.axhspan(bound["value"] - bound["std"], bound["value"] + bound["std"], color="black", alpha=0.08)
    ax.set_xlabel("training images")
    ax.set_ylabel("mean per-class accuracy (held-out subjects)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _backbone_features(backbone, images, device) -> np.ndarray:
    from extractors.training import batched_outputs

    backbone.eval()
    return batched_outputs(lambda chunk: backbone(images[chunk]), len(images), device=device)


class _ScratchTraining:
    """``ClassifierNet`` trained end to end on some rows (augmented), early-stopped on validation subjects."""

    def __init__(self, images, y, *, fit_rows, val_rows, arch: dict, n_classes: int, device):
        import torch

        from extractors.nets import ClassifierNet
        from extractors.siamese import class_balanced_weights

        self.images, self.device, self.val_rows = images, device, val_rows
        self.y = torch.from_numpy(y).to(device)
        self.weights = torch.from_numpy(class_balanced_weights(y[fit_rows], n_classes)).to(device)
        self.model = ClassifierNet(backbone=arch["backbone"], in_chans=arch.get("in_chans", 1),
                                   n_classes=n_classes).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, weight_decay=5e-4)

    def inputs(self, batch):
        import torch

        from features.augment import augment_batch, sample_params

        idx = torch.from_numpy(batch.rows).to(self.device)
        return augment_batch(self.images[idx], sample_params(batch.rng, len(batch.rows))), self.y[idx]

    def loss(self, inputs):
        import torch

        x, y = inputs
        return torch.nn.functional.cross_entropy(self.model(x).float(), y, weight=self.weights)

    def validate(self, epoch: int) -> dict:
        import torch

        from extractors.training import autocast

        idx = torch.from_numpy(self.val_rows).to(self.device)
        with autocast(self.device):
            logits = self.model(self.images[idx])
        return {"val_loss": float(torch.nn.functional.cross_entropy(logits.float(), self.y[idx], weight=self.weights))}


def _train_scratch(
    images,
    y,
    groups,
    train_rows,
    *,
    arch: dict,
    n_classes: int,
    seed: int,
    epochs: int,
    batch_size: int,
    device,
    store,
    key: str,
    progress: bool,
):
    """End-to-end ``ClassifierNet`` on ``train_rows`` (augmented), early-stopped on validation subjects."""
    from extractors.training import deterministic, fit_minibatches
    from features.splits import inner_splits

    splits = inner_splits(y[train_rows], groups[train_rows], n_splits=5, seed=seed)
    fit_rows, val_rows = (
        (train_rows[splits[0][0]], train_rows[splits[0][1]]) if splits else (train_rows, np.array([], np.int64))
    )
    with deterministic(seed):
        run = _ScratchTraining(images, y, fit_rows=fit_rows, val_rows=val_rows, arch=arch, n_classes=n_classes,
                               device=device)
        fit_minibatches(model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs, samples=fit_rows,
                        epochs=epochs, seed=seed, stream=5, batch_size=batch_size,
                        validate=run.validate if len(val_rows) else None, patience=8, store=store, name="transfer",
                        key=key, progress=progress, desc="scratch", unit="img")
    return run.model.eval()


@dataclass
class _TransferData:
    """The target dataset's labelled scans, split into held-out test scans and the training pool."""

    scans: object  # pa.Table of the labelled scans
    target: _Target
    labels: np.ndarray  # class name per scan
    y: np.ndarray  # class code per scan
    classes: list[str]
    subjects: np.ndarray
    test_subjects: frozenset
    where: str  # where the test subjects come from
    recipe: object  # extractors.images.ImageRecipe

    @property
    def is_test(self) -> np.ndarray:
        return np.isin(self.subjects, list(self.test_subjects))


def _transfer_data(store, dataset: str, target: str, config: dict, *, seed: int) -> _TransferData:
    from extractors.images import ImageRecipe, column_values, recipe_for_scans
    from features.splits import held_out_subjects
    from store.units import scan_units

    scans = scan_units(store, dataset)
    resolved = _resolve_target(scans.column_names, lambda c: column_values(scans, c, None).tolist(), target)
    keep = np.array([v is not None for v in resolved.values])
    scans = scans.filter(keep)
    labels = np.array([v for v in resolved.values if v is not None]).astype(str)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise EvaluationError(f"The target {target!r} has a single class in {dataset!r}; nothing to classify.")
    subjects = column_values(scans, "subject").astype(str)
    if dataset == config["dataset"]:
        test_subjects = frozenset(config["subjects"]["test"]) & set(subjects)
        where = "the Siamese network's held-out subjects (it never saw them)"
        recipe = ImageRecipe.from_dict(config["recipe"])
    else:
        test_subjects = held_out_subjects(subjects, labels, rule="fraction", seed=seed, test_fraction=0.3)
        where = "held-out subjects (features.splits, 30 %)"
        recipe = recipe_for_scans(scans, config["recipe"]["size"])
    if not test_subjects:
        raise EvaluationError(f"No held-out subjects of the Siamese network are in {dataset!r}; cannot judge transfer.")
    return _TransferData(scans, resolved, labels, np.searchsorted(np.array(classes), labels), classes, subjects,
                         test_subjects, where, recipe)


@dataclass
class TransferResult:
    """The transfer table (mean ± std over seeds per training size), the supervised bound, the figure, the run."""

    rows: list[dict]
    bound: dict  # {"value", "std", "values", "subjects", "images"}: the supervised network end to end
    figure: Path
    header: str
    run_id: str
    seeds: list[int]
    per_seed: list[list[dict]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """The notes, the set-up, the table (with the bound's line), the figure's path and the run id."""
        lines = [*self.notes, self.header, *format_transfer_table(self.rows, self.bound).splitlines()]
        lines.append(f"figure: {self.figure}")
        lines.append(f"saved: run {self.run_id} (runs, metrics, predictions: member = method, fold = training-size "
                     f"index, seeds {', '.join(map(str, self.seeds))})   ({self.seconds:.0f} s)")
        return lines


@dataclass
class _TransferRun:
    """What every seed and training size of one transfer run shares."""

    store: object
    data: _TransferData
    images: object  # (N, 1, S, S) tensor on the device
    siamese_features: np.ndarray  # frozen Siamese backbone features of every scan
    network: object  # the Siamese artifact
    arch: dict
    dataset: str
    epochs: int
    batch_size: int
    device: str
    torch_device: object
    progress: bool
    recorder: object  # store.runs.RunRecorder
    models: dict = field(default_factory=dict)  # scratch networks by training key (the bound = scratch at 1.0)

    @property
    def test_rows(self) -> np.ndarray:
        return np.flatnonzero(self.data.is_test)

    @property
    def pool_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.data.is_test)


def _scratch_model(run: _TransferRun, train_rows: np.ndarray, seed: int):
    """The architecture trained end to end on ``train_rows`` (trained once per rows and seed, checkpointed)."""
    from store.provenance import params_hash

    key = params_hash({"trainer": "transfer-scratch", "artifact": run.network.sha256, "dataset": run.dataset,
                       "target": run.data.target.column, "rows": [int(r) for r in train_rows], "seed": seed,
                       "epochs": run.epochs, "batch_size": run.batch_size}, length=20)
    if key not in run.models:
        run.models[key] = _train_scratch(run.images, run.data.y, run.data.subjects, train_rows, arch=run.arch,
                                         n_classes=len(run.data.classes), seed=seed, epochs=run.epochs,
                                         batch_size=run.batch_size, device=run.torch_device, store=run.store, key=key,
                                         progress=run.progress)
    return run.models[key]


def _scratch_proba(run: _TransferRun, model) -> np.ndarray:
    """Class probabilities (test scans x classes) of an end-to-end network."""
    import torch

    from extractors.training import batched_outputs

    dev = run.torch_device
    logits = batched_outputs(lambda chunk: model(run.images[torch.from_numpy(chunk).to(dev)]), run.test_rows,
                             mixed=False)
    return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()


def _head_proba(run: _TransferRun, features: np.ndarray, train_rows: np.ndarray, seed: int) -> np.ndarray:
    """Class probabilities (test scans x classes) of the fully connected head trained on frozen ``features``."""
    from classifiers.ensemble import align_proba
    from classifiers.torch_heads import MLP

    data = run.data
    head = MLP(hidden=(256,), dropout=0.5, class_weight="balanced", random_state=seed, device=run.device,
               max_epochs=300, patience=15)
    head.fit(features[train_rows], data.labels[train_rows], groups=data.subjects[train_rows])
    proba = head.predict_proba(features[run.test_rows])
    return align_proba(proba, np.asarray(head.classes_, dtype=object), np.array(data.classes, dtype=object))


def _score(run: _TransferRun, method: str, seed: int, fold: int, proba: np.ndarray) -> float:
    """Mean per-class accuracy of ``proba`` on the held-out scans; recorded as metric and predictions."""
    from sklearn.metrics import balanced_accuracy_score

    data, test = run.data, run.test_rows
    classes = np.array(data.classes, dtype=object)
    predicted = classes[proba.argmax(axis=1)]
    value = float(balanced_accuracy_score(data.labels[test], predicted))
    run.recorder.add_metric(metric=_METRIC, value=value, seed=seed, fold=fold, member=method)
    keys = np.asarray(data.scans.column("scan_id").to_pylist(), dtype=object)[test]
    run.recorder.add_predictions(keys=keys, subjects=data.subjects[test], y_true=data.labels[test], y_pred=predicted,
                                 proba=proba, classes=list(data.classes), seed=seed, fold=fold, member=method)
    return value


def _random_features(run: _TransferRun, seed: int) -> np.ndarray:
    """Features of every scan from a randomly initialised backbone of the same architecture (seeded)."""
    from extractors.nets import build_backbone
    from extractors.training import deterministic

    with deterministic(seed):
        backbone = build_backbone(run.arch["backbone"], run.arch.get("in_chans", 1)).to(run.torch_device)
    return _backbone_features(backbone, run.images, run.torch_device)


def _seed_rows(run: _TransferRun, seed: int, sizes: list[float]) -> tuple[list[dict], float]:
    """One seed: a row per training size (every method's score) and the supervised bound's score."""
    pool = run.pool_rows
    supervised = _scratch_model(run, pool, seed)
    bound = _score(run, SUPERVISED_BOUND, seed, -1, _scratch_proba(run, supervised))
    features = {"siamese (frozen)": run.siamese_features, "random (frozen)": _random_features(run, seed),
                "supervised (frozen)": _backbone_features(supervised.backbone, run.images, run.torch_device)}
    subsets = nested_subsets(run.data.subjects[pool], sizes, seed=seed)
    rows = []
    for fold, (fraction, chosen) in enumerate(zip(sizes, subsets, strict=True)):
        train_rows = pool[np.isin(run.data.subjects[pool], chosen)]
        row = {"fraction": fraction, "subjects": len(chosen), "images": int(len(train_rows))}
        for method in ("siamese (frozen)", "random (frozen)", "supervised (frozen)"):
            row[method] = _score(run, method, seed, fold, _head_proba(run, features[method], train_rows, seed))
        row["scratch"] = _score(run, "scratch", seed, fold, _scratch_proba(run, _scratch_model(run, train_rows, seed)))
        rows.append(row)
    return rows, bound


def _check_options(train_sizes, sizes: list[float], seeds, epochs) -> None:
    check_param("run_transfer", "train_sizes", train_sizes, kind="fractions in (0, 1], increasing",
                ok=bool(sizes) and all(0 < s <= 1 for s in sizes) and sizes == sorted(sizes))
    check_param("run_transfer", "seeds", seeds, kind="an int in [1, 100]", ok=is_int(seeds, 1) and seeds <= 100)
    check_param("run_transfer", "epochs", epochs, kind="an int in [1, inf)", ok=is_int(epochs, 1))


def _save_run(run: _TransferRun, table: list[dict], bound: dict, per_seed: list, seeds: list[int], *,
              figure, target: str, sizes: list[float]) -> None:
    """Write the run (runs / metrics / predictions) with the table as its saved 'model'."""
    data = run.data
    config = {"protocol": "transfer (seed 001, Fig. 8)", "network_artifact": run.network.sha256,
              "target": target, "target_column": data.target.column, "train_sizes": sizes,
              "folds": {str(i): f for i, f in enumerate(sizes)}, "epochs": run.epochs, "batch_size": run.batch_size,
              "test_subjects": sorted(data.test_subjects), "test_where": data.where, "metric": _METRIC,
              "table": table, "bound": bound, "per_seed": per_seed, "figure": figure.sha256}
    run.recorder.write(run.store, {"table": table, "bound": bound, "per_seed": per_seed}, config=config, seeds=seeds,
                       n_units=len(data.labels), n_subjects=len(set(data.subjects.tolist())), classes=data.classes,
                       members=[*TRANSFER_METHODS, SUPERVISED_BOUND], folds=len(sizes),
                       model_meta={"network_artifact": run.network.sha256, "figure": figure.sha256})


def run_transfer(
    store, artifact: str, *, dataset: str = "spine", target: str = "grade",
    train_sizes: Sequence[float] = (0.25, 0.5, 1.0), seed: int = 0, seeds: int = 1, epochs: int = 40,
    batch_size: int = 32, device: str = "auto", progress: bool = True,
) -> TransferResult:
    """Run the transfer protocol (module docstring) with the Siamese network ``artifact`` on ``dataset``.

    ``train_sizes`` are fractions in (0, 1] of the training subjects (nested subsets); ``seeds`` repeats
    everything with seeds ``seed, seed + 1, ...``. Returns a ``TransferResult``: ``rows`` a list of dicts
    (fraction, subjects, images, and per method of ``TRANSFER_METHODS`` the mean per-class accuracy and
    ``"<method> std"``), ``bound`` the strongly supervised network end to end, ``figure`` the stored PNG,
    ``run_id`` the run in ``runs`` / ``metrics`` / ``predictions``, ``summary_lines()``.
    """
    import torch

    from extractors.images import scan_images
    from extractors.siamese import load_network_artifact
    from extractors.training import select_device
    from store.artifacts import save_artifact
    from store.runs import RunRecorder

    sizes = [float(s) for s in train_sizes]
    _check_options(train_sizes, sizes, seeds, epochs)
    dev = select_device(device)
    started = time.perf_counter()
    network, config, siamese = load_network_artifact(store, artifact, family="siamese")
    data = _transfer_data(store, dataset, target, config, seed=seed)
    images = torch.from_numpy(scan_images(store, dataset, data.scans, data.recipe, progress=progress)).to(dev)
    recorder = RunRecorder(dataset=dataset, model="transfer", target=data.target.column, unit="scans")
    run = _TransferRun(store, data, images, _backbone_features(siamese.backbone.to(dev), images, dev), network,
                       config["arch"], dataset, epochs, batch_size, device, dev, progress, recorder)
    seed_list = [int(seed) + i for i in range(int(seeds))]
    per_seed, bounds = [], []
    for s in seed_list:
        rows, bound = _seed_rows(run, s, sizes)
        per_seed.append(rows)
        bounds.append(bound)
    table = summarise_seeds(per_seed)
    value, std = _mean_std(bounds)
    bound = {"value": value, "std": std, "values": bounds, "subjects": len(set(data.subjects[run.pool_rows])),
             "images": int(len(run.pool_rows))}
    title = (f"Transfer ({dataset}, {target}): Siamese {network.short} vs scratch vs random vs supervised\n"
             f"{len(data.test_subjects)} held-out subjects; mean ± std over {len(seed_list)} seed(s)")
    figure = save_artifact(store, "figures", plot_transfer(table, title=title, bound=bound), suffix=".png",
                           meta={"figure": "transfer", "network_artifact": network.sha256, "dataset": dataset,
                                 "target": target, "seeds": seed_list, "table": table, "bound": bound})
    _save_run(run, table, bound, per_seed, seed_list, figure=figure, target=target, sizes=sizes)
    header = (f"transfer on {dataset!r}, target {target!r} ({len(data.classes)} classes), test: "
              f"{len(data.test_subjects)} {data.where}, {int(data.is_test.sum())} scans; "
              f"metric: mean per-class accuracy; seeds {', '.join(map(str, seed_list))}")
    notes = [data.target.note] if data.target.note else []
    return TransferResult(table, bound, figure.path, header, recorder.run_id, seed_list, per_seed, notes,
                          time.perf_counter() - started)
