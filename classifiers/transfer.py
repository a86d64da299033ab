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

import numpy as np

from features.errors import EvaluationError, ParameterError, check_param

__all__ = ["TRANSFER_METHODS", "nested_subsets", "transfer_command", "format_transfer_table", "plot_transfer"]

TRANSFER_METHODS = ("siamese (frozen)", "scratch", "random (frozen)")


def nested_subsets(subjects: Sequence, fractions: Sequence[float], *, seed: int) -> list[list]:
    """Growing subject subsets: one random order from ``seed``, the first ceil(f * n) subjects per fraction."""
    ordered = sorted(set(subjects), key=str)
    order = np.random.default_rng(seed).permutation(len(ordered))
    ordered = [ordered[i] for i in order]
    return [ordered[: max(1, math.ceil(f * len(ordered)))] for f in fractions]


def _resolve_target(columns: list[str], labels_of: Callable[[str], list], target: str, out) -> tuple[str, list]:
    if target in columns:
        return target, labels_of(target)
    values = [v for v in labels_of("label") if v is not None]
    if values and all(str(v).startswith(f"{target}_") for v in values):
        out(f"note: scans have no {target!r} column; its classes are in 'label' ({', '.join(sorted(set(values)))}).")
        return "label", labels_of("label")
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
    for method, marker in zip(TRANSFER_METHODS, "osv"):
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


def _backbone_features(backbone, images, device, batch_size: int = 256) -> np.ndarray:
    import torch

    from extractors.training import autocast

    backbone.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            with autocast(device):
                chunks.append(backbone(images[start : start + batch_size]).float().cpu().numpy())
    return np.concatenate(chunks)


def _train_scratch(images, y, groups, train_rows, *, arch: dict, n_classes: int, seed: int, epochs: int, batch_size: int,
                   device, store, key: str, progress: bool):
    """End-to-end ``ClassifierNet`` on ``train_rows`` (augmented), early-stopped on validation subjects."""
    import torch

    from extractors.nets import ClassifierNet
    from extractors.siamese import class_balanced_weights
    from extractors.training import autocast, deterministic, epoch_rng, train_epochs
    from features.augment import augment_batch, sample_params
    from features.splits import inner_splits

    splits = inner_splits(y[train_rows], groups[train_rows], n_splits=5, seed=seed)
    fit_rows, val_rows = (train_rows[splits[0][0]], train_rows[splits[0][1]]) if splits else (train_rows, np.array([], np.int64))
    weights = torch.from_numpy(class_balanced_weights(y[fit_rows], n_classes)).to(device)
    y_t = torch.from_numpy(y).to(device)
    with deterministic(seed):
        model = ClassifierNet(backbone=arch["backbone"], in_chans=arch.get("in_chans", 1), n_classes=n_classes).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)

        def run_epoch(epoch: int) -> dict:
            rng = epoch_rng(seed, epoch, stream=5)
            order = fit_rows[rng.permutation(len(fit_rows))]
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2:
                    continue
                x = augment_batch(images[torch.from_numpy(idx).to(device)], sample_params(rng, len(idx)))
                with autocast(device):
                    logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y_t[torch.from_numpy(idx).to(device)], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            return {"loss": total / max(len(order), 1)}

        def validate(epoch: int) -> dict:
            idx = torch.from_numpy(val_rows).to(device)
            with autocast(device):
                logits = model(images[idx])
            return {"val_loss": float(torch.nn.functional.cross_entropy(logits.float(), y_t[idx], weight=weights))}

        train_epochs(model=model, optimizer=optimizer, run_epoch=run_epoch, validate=validate if len(val_rows) else None,
                     epochs=epochs, seed=seed, patience=8, store=store, name="transfer", key=key, progress=progress,
                     desc="scratch")
    return model.eval()


def transfer_command(
    store,
    artifact: str,
    *,
    dataset: str = "spine",
    target: str = "grade",
    train_sizes: Sequence[float] = (0.25, 0.5, 1.0),
    seed: int = 0,
    out: Callable[[str], None] = print,
    epochs: int = 40,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
):
    """Run the transfer protocol (module docstring) with the Siamese network ``artifact`` on ``dataset``.

    ``train_sizes`` are fractions in (0, 1] of the training subjects (nested subsets). Prints the table
    and returns ``(rows, png_path)``: ``rows`` a list of dicts (fraction, subjects, images, and the mean
    per-class accuracy of each method in ``TRANSFER_METHODS``), ``png_path`` the stored figure.
    """
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from classifiers.torch_heads import MLP
    from extractors.images import ImageLoader, ImageRecipe, dataset_canvas
    from extractors.nets import build_backbone
    from extractors.siamese import _column, _scans, load_network_artifact
    from extractors.training import deterministic, select_device
    from features.splits import held_out_subjects
    from store.artifacts import save_artifact
    from store.provenance import params_hash

    sizes = [float(s) for s in train_sizes]
    check_param("transfer_command", "train_sizes", train_sizes, kind="fractions in (0, 1], increasing",
                ok=bool(sizes) and all(0 < s <= 1 for s in sizes) and sizes == sorted(sizes))
    check_param("transfer_command", "epochs", epochs, kind="an int in [1, inf)", ok=isinstance(epochs, int) and epochs >= 1)
    dev = select_device(device)
    started = time.perf_counter()
    net_artifact, config, siamese = load_network_artifact(store, artifact, family="siamese")

    scans = _scans(store, dataset)
    column, raw = _resolve_target(scans.column_names, lambda c: _column(scans, c, None).tolist(), target, out)
    keep = np.array([v is not None for v in raw])
    scans = scans.filter(keep)
    labels = np.array([v for v in raw if v is not None]).astype(str)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise EvaluationError(f"The target {target!r} has a single class in {dataset!r}; nothing to classify.")
    y = np.searchsorted(np.array(classes), labels)
    subjects = _column(scans, "subject").astype(str)

    if dataset == config["dataset"]:
        test_subjects = frozenset(config["subjects"]["test"]) & set(subjects)
        where = "the Siamese network's held-out subjects (it never saw them)"
        recipe = ImageRecipe.from_dict(config["recipe"])
    else:
        test_subjects = held_out_subjects(subjects, labels, rule="fraction", seed=seed, test_fraction=0.3)
        where = "held-out subjects (features.splits, 30 %)"
        recipe = ImageRecipe(config["recipe"]["size"], dataset_canvas(scans.column("rows").to_pylist(), scans.column("cols").to_pylist()))
    if not test_subjects:
        raise EvaluationError(f"No held-out subjects of the Siamese network are in {dataset!r}; cannot judge transfer.")
    is_test = np.isin(subjects, list(test_subjects))
    test_rows, pool_rows = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    subsets = nested_subsets(subjects[pool_rows], sizes, seed=seed)

    rows_in = scans.select([c for c in ("path", "frame", "window_center", "window_width") if c in scans.column_names]).to_pylist()
    images = torch.from_numpy(ImageLoader(store, dataset, recipe).stack(rows_in, progress=progress, desc=f"{dataset} images")).to(dev)
    siamese_backbone = siamese.backbone.to(dev)
    with deterministic(seed):
        random_backbone = build_backbone(config["arch"]["backbone"], config["arch"].get("in_chans", 1)).to(dev)
    features = {
        "siamese (frozen)": _backbone_features(siamese_backbone, images, dev),
        "random (frozen)": _backbone_features(random_backbone, images, dev),
    }
    out(f"transfer on {dataset!r}, target {target!r} ({len(classes)} classes), test: {len(test_subjects)} {where}, "
        f"{len(test_rows)} scans; metric: mean per-class accuracy")
    table = []
    for fraction, chosen in zip(sizes, subsets):
        train_rows = pool_rows[np.isin(subjects[pool_rows], chosen)]
        row = {"fraction": fraction, "subjects": len(chosen), "images": int(len(train_rows))}
        for method in ("siamese (frozen)", "random (frozen)"):
            head = MLP(hidden=(256,), dropout=0.5, class_weight="balanced", random_state=seed, device=device,
                       max_epochs=300, patience=15)
            head.fit(features[method][train_rows], labels[train_rows], groups=subjects[train_rows])
            row[method] = float(balanced_accuracy_score(labels[test_rows], head.predict(features[method][test_rows])))
        key = params_hash({"trainer": "transfer-scratch", "artifact": net_artifact.sha256, "dataset": dataset,
                           "target": column, "rows": [int(r) for r in train_rows], "seed": seed, "epochs": epochs,
                           "batch_size": batch_size}, length=20)
        model = _train_scratch(images, y, subjects, train_rows, arch=config["arch"], n_classes=len(classes), seed=seed,
                               epochs=epochs, batch_size=batch_size, device=dev, store=store, key=key, progress=progress)
        with torch.no_grad():
            logits = torch.cat([model(images[torch.from_numpy(test_rows[i:i + 256]).to(dev)]).float().cpu()
                                for i in range(0, len(test_rows), 256)])
        row["scratch"] = float(balanced_accuracy_score(y[test_rows], logits.argmax(1).numpy()))
        table.append(row)
        out(f"  size {fraction:.2f}: {len(chosen)} subjects, {len(train_rows)} scans — "
            + ", ".join(f"{m} {row[m]:.3f}" for m in TRANSFER_METHODS))
    title = (f"Transfer ({dataset}, {target}): Siamese {net_artifact.short} frozen vs scratch vs random; "
             f"{len(test_subjects)} held-out subjects")
    png = plot_transfer(table, title=title)
    figure = save_artifact(store, "figures", png, suffix=".png",
                           meta={"figure": "transfer", "network_artifact": net_artifact.sha256, "dataset": dataset,
                                 "target": target, "seed": seed, "table": table})
    out(format_transfer_table(table))
    out(f"figure: {figure.path}   ({time.perf_counter() - started:.0f} s)")
    return table, figure.path
