"""The transfer protocol of the spine Siamese paper (seed 001, section 4.2, Fig. 8).

Does longitudinal pre-training help a supervised task when labels are few? For growing training sets
(nested subsets of the training subjects) three classifiers of the target (disc grade) are trained and
judged on the same held-out subjects by the mean per-class accuracy (the mean of the diagonal of the
normalised confusion matrix):

- ``siamese (frozen)`` — the Siamese network's convolutional backbone, frozen; a fully connected head
  is trained on its features;
- ``scratch`` — the same architecture (backbone + head) trained end to end from random weights, with
  the paper's augmentation;
- ``random (frozen)`` — a randomly initialised backbone, frozen; the same head on its features.

The held-out subjects are the Siamese network's own test subjects when the target dataset is the one
it was trained on (so it never saw them), otherwise ``features.splits.held_out_subjects``. The
table is printed and drawn (matplotlib, Agg) into a PNG stored as an artifact of kind ``figures``.
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
    "TransferResult",
    "nested_subsets",
    "run_transfer",
    "format_transfer_table",
    "plot_transfer",
]

TRANSFER_METHODS = ("siamese (frozen)", "scratch", "random (frozen)")


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


def format_transfer_table(rows: list[dict]) -> str:
    """The Fig. 8 figures as text: one line per training size, mean per-class accuracy per method."""
    header = f"{'train size':>10} {'subjects':>8} {'images':>7}  " + "  ".join(f"{m:>16}" for m in TRANSFER_METHODS)
    lines = [header]
    for row in rows:
        lines.append(f"{row['fraction']:>10.2f} {row['subjects']:>8d} {row['images']:>7d}  "
                     + "  ".join(f"{row[m]:>16.3f}" for m in TRANSFER_METHODS))
    return "\n".join(lines)


def plot_transfer(rows: list[dict], *, title: str) -> bytes:
    """PNG bytes of accuracy against training images, one line per method (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = [r["images"] for r in rows]
    for method, marker in zip(TRANSFER_METHODS, "osv", strict=True):
        ax.plot(x, [r[method] for r in rows], marker=marker, label=method)
    ax.set_xlabel("training images")
    ax.set_ylabel("mean per-class accuracy (held-out subjects)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
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
    """The transfer table (one row per training size), the stored figure, and how it was judged."""

    rows: list[dict]
    figure: Path
    header: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """The notes, the set-up, one line per training size, the table and the figure's path."""
        lines = [*self.notes, self.header]
        for row in self.rows:
            lines.append(f"  size {row['fraction']:.2f}: {row['subjects']} subjects, {row['images']} scans — "
                         + ", ".join(f"{m} {row[m]:.3f}" for m in TRANSFER_METHODS))
        lines += format_transfer_table(self.rows).splitlines()
        lines.append(f"figure: {self.figure}   ({self.seconds:.0f} s)")
        return lines


@dataclass
class _TransferRun:
    """What every training size of one transfer run shares."""

    store: object
    data: _TransferData
    images: object  # (N, 1, S, S) tensor on the device
    features: dict  # frozen-backbone features per method
    network: object  # the Siamese artifact
    arch: dict
    dataset: str
    seed: int
    epochs: int
    batch_size: int
    device: str
    torch_device: object
    progress: bool


def _judge_size(run: _TransferRun, fraction: float, chosen: list, pool_rows: np.ndarray) -> dict:
    """One table row: the frozen-feature heads and the scratch network trained on ``chosen`` subjects."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from classifiers.torch_heads import MLP
    from extractors.training import batched_outputs
    from store.provenance import params_hash

    data = run.data
    test_rows = np.flatnonzero(data.is_test)
    train_rows = pool_rows[np.isin(data.subjects[pool_rows], chosen)]
    row = {"fraction": fraction, "subjects": len(chosen), "images": int(len(train_rows))}
    for method in ("siamese (frozen)", "random (frozen)"):
        head = MLP(hidden=(256,), dropout=0.5, class_weight="balanced", random_state=run.seed, device=run.device,
                   max_epochs=300, patience=15)
        head.fit(run.features[method][train_rows], data.labels[train_rows], groups=data.subjects[train_rows])
        predicted = head.predict(run.features[method][test_rows])
        row[method] = float(balanced_accuracy_score(data.labels[test_rows], predicted))
    key = params_hash({"trainer": "transfer-scratch", "artifact": run.network.sha256, "dataset": run.dataset,
                       "target": data.target.column, "rows": [int(r) for r in train_rows], "seed": run.seed,
                       "epochs": run.epochs, "batch_size": run.batch_size}, length=20)
    model = _train_scratch(run.images, data.y, data.subjects, train_rows, arch=run.arch, n_classes=len(data.classes),
                           seed=run.seed, epochs=run.epochs, batch_size=run.batch_size, device=run.torch_device,
                           store=run.store, key=key, progress=run.progress)
    dev = run.torch_device
    logits = batched_outputs(lambda chunk: model(run.images[torch.from_numpy(chunk).to(dev)]), test_rows, mixed=False)
    row["scratch"] = float(balanced_accuracy_score(data.y[test_rows], logits.argmax(1)))
    return row


def _frozen_features(siamese, arch: dict, images, device, *, seed: int) -> dict:
    """Features of every scan from the Siamese backbone and from a randomly initialised one."""
    from extractors.nets import build_backbone
    from extractors.training import deterministic

    siamese_backbone = siamese.backbone.to(device)
    with deterministic(seed):
        random_backbone = build_backbone(arch["backbone"], arch.get("in_chans", 1)).to(device)
    return {"siamese (frozen)": _backbone_features(siamese_backbone, images, device),
            "random (frozen)": _backbone_features(random_backbone, images, device)}


def run_transfer(
    store, artifact: str, *, dataset: str = "spine", target: str = "grade",
    train_sizes: Sequence[float] = (0.25, 0.5, 1.0), seed: int = 0, epochs: int = 40, batch_size: int = 32,
    device: str = "auto", progress: bool = True,
) -> TransferResult:
    """Run the transfer protocol (module docstring) with the Siamese network ``artifact`` on ``dataset``.

    ``train_sizes`` are fractions in (0, 1] of the training subjects (nested subsets). Returns a
    ``TransferResult``: ``rows`` a list of dicts (fraction, subjects, images, and the mean per-class
    accuracy of each method in ``TRANSFER_METHODS``), ``figure`` the stored PNG, ``summary_lines()``.
    """
    import torch

    from extractors.images import scan_images
    from extractors.siamese import load_network_artifact
    from extractors.training import select_device
    from store.artifacts import save_artifact

    sizes = [float(s) for s in train_sizes]
    check_param("run_transfer", "train_sizes", train_sizes, kind="fractions in (0, 1], increasing",
                ok=bool(sizes) and all(0 < s <= 1 for s in sizes) and sizes == sorted(sizes))
    check_param("run_transfer", "epochs", epochs, kind="an int in [1, inf)", ok=is_int(epochs, 1))
    dev = select_device(device)
    started = time.perf_counter()
    network, config, siamese = load_network_artifact(store, artifact, family="siamese")
    data = _transfer_data(store, dataset, target, config, seed=seed)
    pool_rows = np.flatnonzero(~data.is_test)
    images = torch.from_numpy(scan_images(store, dataset, data.scans, data.recipe, progress=progress)).to(dev)
    run = _TransferRun(store, data, images, _frozen_features(siamese, config["arch"], images, dev, seed=seed), network,
                       config["arch"], dataset, seed, epochs, batch_size, device, dev, progress)
    subsets = nested_subsets(data.subjects[pool_rows], sizes, seed=seed)
    table = [_judge_size(run, fraction, chosen, pool_rows) for fraction, chosen in zip(sizes, subsets, strict=True)]
    title = (f"Transfer ({dataset}, {target}): Siamese {network.short} frozen vs scratch vs random; "
             f"{len(data.test_subjects)} held-out subjects")
    figure = save_artifact(store, "figures", plot_transfer(table, title=title), suffix=".png",
                           meta={"figure": "transfer", "network_artifact": network.sha256, "dataset": dataset,
                                 "target": target, "seed": seed, "table": table})
    header = (f"transfer on {dataset!r}, target {target!r} ({len(data.classes)} classes), test: "
              f"{len(data.test_subjects)} {data.where}, {int(data.is_test.sum())} scans; "
              "metric: mean per-class accuracy")
    notes = [data.target.note] if data.target.note else []
    return TransferResult(table, figure.path, header, notes, time.perf_counter() - started)
