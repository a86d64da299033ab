"""``fit xcnn``: the six networks of ChronoMID's Table 1 on image tensors, judged on held-out subjects.

Variants (``classifiers._xcnn_nets.XCNN_VARIANTS``): baseline CNN, baseline + timestamp, X-CNN with
absolute or relative difference images, each with and without the timestamp. Inputs follow the paper:
every slice is padded to the dataset's common canvas with its own minimum, brought to [0, 1] by the
intensity policy and (for CPU) resampled to ``image_size``; a difference image is the comparison
minus the registered reference from the ``pairs`` table (first week: uniform at the comparison's
minimum); the timestamp is the integer time index, never normalised. The baseline trains on every
scan; the X-CNNs on every pair of their reference mode (slices without a k-th partner are unused,
as in the paper). The test subjects are one subject per class (``store.vocabulary.dataset_subject_split``,
the rule ``fit`` uses for ChronoMID); no augmentation (the paper explains why differencing forbids it).

Each variant is written as a run (``runs``/``metrics``/``predictions``, model ``xcnn``, the variant in
the run's config) like ``fit`` writes, and a Table-1-style comparison is printed: test accuracy,
seconds per training epoch and parameter count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from classifiers._xcnn_nets import (
    XCNN_VARIANTS,
    build_xcnn,
    count_parameters,
    l2_penalty,
)
from features.errors import DatasetError, ParameterError, check_param

__all__ = ["XcnnResult", "select_variants", "fit_xcnn_command", "format_table1"]


@dataclass
class XcnnResult:
    """One variant's outcome on the held-out subjects."""

    label: str
    arch: str
    reference: str | None
    timestamps: bool
    accuracy: float
    balanced_accuracy: float
    seconds_per_epoch: float
    parameters: int
    paper_parameters: int
    epochs: int
    n_train: int
    n_test: int
    run_id: str
    resumed_from: int = 0
    history: list = field(default_factory=list)


def select_variants(reference: str | None, timestamps: bool | None) -> list[tuple[str, str, str | None, bool]]:
    """The Table-1 rows asked for: ``reference`` None = baseline and both modes; ``timestamps`` None = both.

    A ``reference`` keeps the plain CNN rows too (the comparison the paper makes).
    """
    if reference not in (None, "absolute", "relative"):
        raise ParameterError(f"The 'reference' parameter of fit xcnn must be 'absolute', 'relative' or None. Got {reference!r} instead.")
    if timestamps not in (None, True, False):
        raise ParameterError(f"The 'timestamps' parameter of fit xcnn must be a bool or None. Got {timestamps!r} instead.")
    chosen = []
    for variant in XCNN_VARIANTS:
        _, arch, ref, ts = variant
        if timestamps is not None and ts != timestamps:
            continue
        if reference is not None and arch == "xcnn" and ref != reference:
            continue
        chosen.append(variant)
    return chosen


def format_table1(results: list[XcnnResult], *, epochs: int, image_size: int) -> str:
    """Table 1 of ChronoMID, for this run: accuracy, mean seconds per epoch, parameters."""
    lines = [
        f"{'Method':<32} {'Accuracy %':>10} {'Bal. acc. %':>11} {'s/epoch':>8} {'Parameters':>11} {'@501x763':>10}",
    ]
    for r in results:
        lines.append(f"{r.label:<32} {100 * r.accuracy:>10.2f} {100 * r.balanced_accuracy:>11.2f} "
                     f"{r.seconds_per_epoch:>8.2f} {r.parameters:>11,d} {r.paper_parameters:>10,d}")
    lines.append(f"({epochs} epochs at {image_size}x{image_size}; test = held-out subjects; parameters counted as Keras "
                 "does; last column: the same network at the paper's 501x763 canvas, Table 1 lists 863,883 / 1,643,323)")
    return "\n".join(lines)


def _scan_rows(scans) -> list[dict]:
    cols = [c for c in ("scan_id", "path", "frame", "window_center", "window_width") if c in scans.column_names]
    return scans.select(cols).to_pylist()


def fit_xcnn_command(
    store,
    *,
    dataset: str = "chronomid",
    reference: str | None = None,
    timestamps: bool | None = None,
    epochs: int = 10,
    seed: int = 0,
    device: str = "auto",
    out: Callable[[str], None] = print,
    image_size: int = 64,
    batch_size: int = 32,
    lr: float = 1e-3,
    progress: bool = True,
) -> list[XcnnResult]:
    """Train and judge the Table-1 variants selected by ``reference``/``timestamps`` (None: all six).

    Returns one ``XcnnResult`` per variant (each also stored as a run) and prints the comparison.
    """
    import sys
    from datetime import datetime, timezone

    import pyarrow as pa
    import torch
    from tqdm.auto import tqdm

    from classifiers.metrics import classification_metrics
    from extractors.images import (
        ImageLoader,
        ImageRecipe,
        dataset_canvas,
        one_blas_thread,
    )
    from extractors.training import (
        autocast,
        deterministic,
        epoch_rng,
        select_device,
        train_epochs,
    )
    from features.splits import PER_CLASS_FRACTION, holdout_split
    from store.datasets import synthetic_notice
    from store.provenance import canonical_json, params_hash
    from store.runs import METRICS, PREDICTIONS, new_run_id, write_run
    from store.subjects import dataset_subject_split
    from store.units import pair_units, scan_units

    check_param("fit xcnn", "epochs", epochs, kind="an int in [1, inf)", ok=isinstance(epochs, int) and epochs >= 1)
    check_param("fit xcnn", "image_size", image_size, kind="an int in [32, 1024]", ok=isinstance(image_size, int) and 32 <= image_size <= 1024)
    check_param("fit xcnn", "batch_size", batch_size, kind="an int in [2, inf)", ok=isinstance(batch_size, int) and batch_size >= 2)
    variants = select_variants(reference, timestamps)
    dev = select_device(device)
    notice = synthetic_notice(store, dataset)
    if notice:
        out(notice)

    scans = scan_units(store, dataset)
    recipe = ImageRecipe(image_size, dataset_canvas(scans.column("rows").to_pylist(), scans.column("cols").to_pylist()))
    loader = ImageLoader(store, dataset, recipe)
    scan_info = {r["scan_id"]: r for r in scans.to_pylist()}
    labels_all = [r["label"] for r in scan_info.values()]
    if any(v is None for v in labels_all):
        raise DatasetError(f"Some scans of {dataset!r} have no label; fit xcnn needs the class of every scan (column 'label').")
    classes = sorted(set(labels_all))
    if len(classes) < 2:
        raise DatasetError(f"Dataset {dataset!r} has a single class; nothing to classify.")
    test_subjects = frozenset(dataset_subject_split(store, dataset, test_fraction=PER_CLASS_FRACTION, seed=seed).test)
    out(f"fit xcnn on {dataset!r}: {len(variants)} variant(s), {epochs} epochs, {image_size}x{image_size} inputs "
        f"(canvas {recipe.canvas[0]}x{recipe.canvas[1]}), held-out test subjects: {len(test_subjects)} (one per class), device {dev}")

    # inputs: every scan (baseline), and pairs of each needed mode (X-CNN)
    image_cache: dict[str, np.ndarray] = {}

    def image_of(scan_id: str) -> np.ndarray:
        if scan_id not in image_cache:
            image_cache[scan_id] = loader.image(scan_info[scan_id])
        return image_cache[scan_id]

    datasets: dict = {}
    for mode in [None] + sorted({v[2] for v in variants if v[2]}):
        if mode is None:
            keys = scans.column("scan_id").to_pylist()
            comparison = keys
            diffs = None
            time_index = [scan_info[k]["time_index"] for k in keys]
        else:
            pairs = pair_units(store, dataset, mode)
            keys = pairs.column("pair_id").to_pylist()
            refs, comparison = pairs.column("reference_scan_id").to_pylist(), pairs.column("comparison_scan_id").to_pylist()
            time_index = pairs.column("time_index").to_pylist()
            with one_blas_thread():
                diffs = np.stack([
                    loader.difference(scan_info[r], scan_info[c], is_first=(r == c))
                    for r, c in tqdm(list(zip(refs, comparison)), desc=f"{mode} differences", unit="pair",
                                     disable=not progress, file=sys.stderr, leave=False)
                ])[:, None]
        with one_blas_thread():
            images = np.stack([image_of(c) for c in comparison])[:, None]
        if any(t is None for t in time_index):
            raise DatasetError(f"Some {'scans' if mode is None else mode + ' pairs'} of {dataset!r} have no time index; timestamps need it.")
        subjects = np.array([scan_info[c]["subject"] for c in comparison], dtype=object)
        labels = np.array([scan_info[c]["label"] for c in comparison], dtype=object)
        datasets[mode] = {"keys": np.array(keys, dtype=object), "images": images, "diffs": diffs,
                          "time": np.array(time_index, np.float32), "subjects": subjects, "labels": labels,
                          "y": np.searchsorted(np.array(classes), labels.astype(str))}

    results: list[XcnnResult] = []
    for label, arch, mode, use_time in variants:
        data = datasets[mode if arch == "xcnn" else None]
        split = holdout_split(data["subjects"], test_subjects)
        train_rows, test_rows = split.train, split.val
        images = torch.from_numpy(data["images"]).to(dev)
        diffs = torch.from_numpy(data["diffs"]).to(dev) if data["diffs"] is not None else None
        times = torch.from_numpy(data["time"]).to(dev)
        y = torch.from_numpy(data["y"]).to(dev)
        params = {"arch": arch, "reference": mode, "timestamps": use_time, "epochs": epochs, "seed": seed,
                  "image_size": image_size, "batch_size": batch_size, "lr": lr}
        key = params_hash({"trainer": "xcnn", "format": 1, "dataset": dataset, "keys": data["keys"].tolist(),
                           "test": sorted(test_subjects), "canvas": list(recipe.canvas), "params": params}, length=20)
        with deterministic(seed):
            model = build_xcnn(arch, image_shape=(image_size, image_size), n_classes=len(classes), timestamps=use_time).to(dev)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)

            def forward(idx: torch.Tensor):
                with autocast(dev):
                    return model(images[idx], diffs[idx] if diffs is not None else None, times[idx] if use_time else None)

            def run_epoch(epoch: int) -> dict:
                rng = epoch_rng(seed, epoch, stream=6)
                order = train_rows[rng.permutation(len(train_rows))]
                total, seen = 0.0, 0
                for start in range(0, len(order), batch_size):
                    idx = torch.from_numpy(order[start : start + batch_size]).to(dev)
                    if len(idx) < 2:  # batch norm needs two rows
                        continue
                    loss = torch.nn.functional.cross_entropy(forward(idx).float(), y[idx]) + l2_penalty(model)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                return {"loss": total / max(seen, 1)}

            loop = train_epochs(model=model, optimizer=optimizer, run_epoch=run_epoch, validate=None, epochs=epochs,
                                seed=seed, store=store, name="xcnn", key=key, progress=progress, desc=label)
            model.eval()
            with torch.no_grad():
                logits = torch.cat([forward(torch.from_numpy(test_rows[i:i + 256]).to(dev)).float().cpu()
                                    for i in range(0, len(test_rows), 256)])
        proba = torch.softmax(logits, dim=1).numpy()
        truth = data["labels"][test_rows].astype(str)
        predicted = np.array(classes)[proba.argmax(axis=1)]
        values = classification_metrics(truth, predicted, proba, np.array(classes), groups=data["subjects"][test_rows],
                                        n_boot=1000, seed=seed)
        run_id = new_run_id()
        metric_rows = [{"run_id": run_id, "model": "xcnn", "member": "xcnn", "split": "test", "fold": -1, "seed": seed,
                        "metric": v.metric, "class": v.cls, "value": v.value, "ci_low": v.ci_low, "ci_high": v.ci_high}
                       for v in values]
        n = len(test_rows)
        predictions = pa.table({
            "run_id": [run_id] * n, "dataset": [dataset] * n, "member": ["xcnn"] * n,
            "key": data["keys"][test_rows].tolist(), "subject": data["subjects"][test_rows].tolist(),
            "split": ["test"] * n, "fold": [-1] * n, "seed": [seed] * n, "y_true": truth.tolist(),
            "y_pred": predicted.tolist(), "proba": [list(zip(classes, map(float, p))) for p in proba],
        }, schema=PREDICTIONS)
        unit = "scans" if arch == "baseline" else "pairs"
        config = {"command": "fit xcnn", "variant": label, "unit": unit, "test_rule": "per_class",
                  "test_subjects": len(test_subjects), "params": params, "canvas": list(recipe.canvas),
                  "epochs_run": loop.epochs_run, "history": loop.history, "parameters": count_parameters(model)}
        run = {"run_id": run_id, "created": datetime.now(timezone.utc), "dataset": dataset, "target": "label",
               "unit": unit, "model": "xcnn", "members": [], "config": canonical_json(config), "feature_tables": [],
               "feature_hashes": [], "seeds": [seed], "folds": 0, "n_units": int(len(data["keys"])),
               "n_subjects": int(len(set(data["subjects"].tolist()))), "classes": classes,
               "timings": [("seconds_per_epoch", float(loop.seconds_per_epoch)), ("train", float(sum(h["seconds"] for h in loop.history)))]}
        state = {"kind": "xcnn", "variant": label, "arch": arch, "image_shape": [image_size, image_size],
                 "classes": classes, "timestamps": use_time, "reference": mode, "recipe": recipe.to_dict(),
                 "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
        write_run(store, run, pa.Table.from_pylist(metric_rows, schema=METRICS), predictions, state,
                  model_meta={"kind": "xcnn", "variant": label})
        overall = {v.metric: v.value for v in values if v.cls is None}
        paper = count_parameters(build_xcnn(arch, image_shape=(501, 763), n_classes=len(classes), timestamps=use_time))
        results.append(XcnnResult(label, arch, mode, use_time, overall["accuracy"], overall["balanced_accuracy"],
                                  loop.seconds_per_epoch, count_parameters(model), paper, loop.epochs_run,
                                  len(train_rows), n, run_id, loop.start_epoch, loop.history))
        out(f"  {label}: accuracy {100 * overall['accuracy']:.2f} % on {n} held-out {unit}, "
            f"{loop.seconds_per_epoch:.2f} s/epoch, run {run_id}")
    out("")
    out(format_table1(results, epochs=epochs, image_size=image_size))
    return results
