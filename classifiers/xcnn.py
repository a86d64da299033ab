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

from dataclasses import dataclass, field

import numpy as np

from classifiers._registry import register_model
from features.errors import DatasetError, ParameterError, check_param, is_int

__all__ = ["XcnnResult", "XcnnReport", "XcnnModel", "select_variants", "fit_xcnn", "format_table1"]


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

    @property
    def unit(self) -> str:
        """What the variant classifies: ``scans`` (baseline CNN) or ``pairs`` (X-CNN)."""
        return "scans" if self.arch == "baseline" else "pairs"


def select_variants(reference: str | None, timestamps: bool | None) -> list[tuple[str, str, str | None, bool]]:
    """The Table-1 rows asked for: ``reference`` None = baseline and both modes; ``timestamps`` None = both.

    A ``reference`` keeps the plain CNN rows too (the comparison the paper makes).
    """
    from classifiers._xcnn_nets import XCNN_VARIANTS

    if reference not in (None, "absolute", "relative"):
        raise ParameterError(
            f"The 'reference' parameter of fit xcnn must be 'absolute', 'relative' or None. Got {reference!r} instead."
        )
    if timestamps not in (None, True, False):
        raise ParameterError(
            f"The 'timestamps' parameter of fit xcnn must be a bool or None. Got {timestamps!r} instead."
        )
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
    lines.append(
        f"({epochs} epochs at {image_size}x{image_size}; test = held-out subjects; parameters counted as Keras "
        "does; last column: the same network at the paper's 501x763 canvas, Table 1 lists 863,883 / 1,643,323)"
    )
    return "\n".join(lines)


@dataclass
class _Inputs:
    """The training units of one kind: every scan (baseline CNN) or every pair of one reference mode (X-CNN)."""

    keys: np.ndarray
    images: np.ndarray  # (N, 1, S, S) the scan, or the pair's comparison scan
    diffs: np.ndarray | None  # (N, 1, S, S) difference images (pairs only)
    time: np.ndarray  # float32 time index
    subjects: np.ndarray
    labels: np.ndarray
    y: np.ndarray  # class codes


@dataclass
class _Dataset:
    """The scans of the dataset, their classes and images, and the held-out test subjects."""

    name: str
    scans: object  # pa.Table (store.units.scan_units)
    classes: list[str]
    recipe: object  # extractors.images.ImageRecipe
    images: np.ndarray  # every scan's image, in the scans' order
    position: dict  # scan_id -> row
    test_subjects: frozenset

    def inputs(self, scan_ids: list, keys: list, time_index: list, diffs: np.ndarray | None, what: str) -> _Inputs:
        if any(t is None for t in time_index):
            raise DatasetError(f"Some {what} of {self.name!r} have no time index; timestamps need it.")
        rows = np.array([self.position[k] for k in scan_ids], dtype=np.int64)
        subjects = np.array(self.scans.column("subject").to_pylist(), dtype=object)[rows]
        labels = np.array(self.scans.column("label").to_pylist(), dtype=object)[rows]
        return _Inputs(np.array(keys, dtype=object), self.images[rows], diffs, np.array(time_index, np.float32),
                       subjects, labels, np.searchsorted(np.array(self.classes), labels.astype(str)))


def _load_dataset(store, dataset: str, *, image_size: int, seed: int, progress: bool) -> _Dataset:
    """Scans, classes, every scan's image and the one-subject-per-class test split of ``dataset``."""
    from extractors.images import recipe_for_scans, scan_images
    from features.splits import PER_CLASS_FRACTION
    from store.subjects import dataset_subject_split
    from store.units import scan_units

    scans = scan_units(store, dataset)
    labels = scans.column("label").to_pylist()
    if any(v is None for v in labels):
        raise DatasetError(
            f"Some scans of {dataset!r} have no label; fit xcnn needs the class of every scan (column 'label')."
        )
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DatasetError(f"Dataset {dataset!r} has a single class; nothing to classify.")
    test_subjects = frozenset(dataset_subject_split(store, dataset, test_fraction=PER_CLASS_FRACTION, seed=seed).test)
    recipe = recipe_for_scans(scans, image_size)
    images = scan_images(store, dataset, scans, recipe, progress=progress)
    position = {k: i for i, k in enumerate(scans.column("scan_id").to_pylist())}
    return _Dataset(dataset, scans, classes, recipe, images, position, test_subjects)


def _unit_inputs(store, data: _Dataset, mode: str | None, *, progress: bool) -> _Inputs:
    """The baseline's scans (``mode`` None) or the pairs of reference ``mode`` with their difference images."""
    from extractors.images import ImageLoader
    from store.units import pair_units

    if mode is None:
        keys = data.scans.column("scan_id").to_pylist()
        return data.inputs(keys, keys, data.scans.column("time_index").to_pylist(), None, "scans")
    pairs = pair_units(store, data.name, mode)
    diffs = ImageLoader(store, data.name, data.recipe).pair_differences(pairs, progress=progress,
                                                                         desc=f"{mode} differences")
    return data.inputs(pairs.column("comparison_scan_id").to_pylist(), pairs.column("pair_id").to_pylist(),
                       pairs.column("time_index").to_pylist(), diffs, f"{mode} pairs")


@dataclass(frozen=True)
class _Variant:
    """One Table-1 row and the training settings it runs with."""

    label: str
    arch: str
    reference: str | None
    timestamps: bool
    epochs: int
    seed: int
    image_size: int
    batch_size: int
    lr: float

    def params(self) -> dict:
        return {"arch": self.arch, "reference": self.reference, "timestamps": self.timestamps, "epochs": self.epochs,
                "seed": self.seed, "image_size": self.image_size, "batch_size": self.batch_size, "lr": self.lr}


class _VariantTraining:
    """One variant's network on its units' tensors: the loss and the forward pass."""

    def __init__(self, variant: _Variant, inputs: _Inputs, n_classes: int, device):
        import torch

        from classifiers._xcnn_nets import build_xcnn

        self.variant, self.device = variant, device
        self.images = torch.from_numpy(inputs.images).to(device)
        self.diffs = torch.from_numpy(inputs.diffs).to(device) if inputs.diffs is not None else None
        self.times = torch.from_numpy(inputs.time).to(device)
        self.y = torch.from_numpy(inputs.y).to(device)
        side = variant.image_size
        self.model = build_xcnn(variant.arch, image_shape=(side, side), n_classes=n_classes,
                                timestamps=variant.timestamps).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=variant.lr)

    def forward(self, idx):
        return self.model(self.images[idx], self.diffs[idx] if self.diffs is not None else None,
                          self.times[idx] if self.variant.timestamps else None)

    def inputs(self, batch):
        return self.inputs_of(batch.rows)

    def loss(self, idx):
        import torch

        from classifiers._xcnn_nets import l2_penalty

        return torch.nn.functional.cross_entropy(self.forward(idx).float(), self.y[idx]) + l2_penalty(self.model)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """Softmax class probabilities of ``rows`` (eval mode)."""
        import torch

        from extractors.training import batched_outputs

        self.model.eval()
        logits = batched_outputs(lambda chunk: self.forward(self.inputs_of(chunk)), rows, device=self.device)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def inputs_of(self, rows: np.ndarray):
        import torch

        return torch.from_numpy(rows).to(self.device)


def _train_variant(store, data: _Dataset, variant: _Variant, inputs: _Inputs, *, device, progress: bool) -> XcnnResult:
    """Train ``variant`` on its units of the training subjects; judge it on the test subjects; write its run."""
    from classifiers._xcnn_nets import build_xcnn, count_parameters
    from extractors.training import deterministic, fit_minibatches
    from features.splits import holdout_split
    from store.provenance import params_hash

    split = holdout_split(inputs.subjects, data.test_subjects)
    key = params_hash({"trainer": "xcnn", "format": 1, "dataset": data.name, "keys": inputs.keys.tolist(),
                       "test": sorted(data.test_subjects), "canvas": list(data.recipe.canvas),
                       "params": variant.params()}, length=20)
    with deterministic(variant.seed):
        run = _VariantTraining(variant, inputs, len(data.classes), device)
        loop = fit_minibatches(model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs,
                               samples=split.train, epochs=variant.epochs, seed=variant.seed, stream=6,
                               batch_size=variant.batch_size, store=store, name="xcnn", key=key, progress=progress,
                               desc=variant.label, unit="unit")
        proba = run.probabilities(split.test)
    paper = count_parameters(build_xcnn(variant.arch, image_shape=(501, 763), n_classes=len(data.classes),
                                        timestamps=variant.timestamps))
    trained = XcnnResult(variant.label, variant.arch, variant.reference, variant.timestamps, float("nan"), float("nan"),
                         loop.seconds_per_epoch, count_parameters(run.model), paper, loop.epochs_run, len(split.train),
                         len(split.test), "", loop.start_epoch, loop.history)
    return _record_variant(store, data, variant, inputs, split.test, proba, run.model, trained)


def _record_variant(store, data: _Dataset, variant: _Variant, inputs: _Inputs, test_rows: np.ndarray, proba: np.ndarray,
                    model, result: XcnnResult) -> XcnnResult:
    """Write the variant's run (metrics, predictions, weights); ``result`` with its accuracy and run id."""
    from dataclasses import replace

    from classifiers.metrics import classification_metrics
    from store.runs import RunRecorder

    classes = data.classes
    truth = inputs.labels[test_rows].astype(str)
    predicted = np.array(classes)[proba.argmax(axis=1)]
    values = classification_metrics(truth, predicted, proba, np.array(classes), groups=inputs.subjects[test_rows],
                                    n_boot=1000, seed=variant.seed)
    run = RunRecorder(dataset=data.name, model="xcnn", target="label", unit=result.unit)
    for v in values:
        run.add_metric(metric=v.metric, value=v.value, seed=variant.seed, cls=v.cls, ci_low=v.ci_low, ci_high=v.ci_high)
    run.add_predictions(keys=inputs.keys[test_rows], subjects=inputs.subjects[test_rows], y_true=truth,
                        y_pred=predicted, proba=[dict(zip(classes, map(float, p), strict=True)) for p in proba],
                        seed=variant.seed)
    config = {"command": "fit xcnn", "variant": variant.label, "unit": result.unit, "test_rule": "per_class",
              "test_subjects": len(data.test_subjects), "params": variant.params(), "canvas": list(data.recipe.canvas),
              "epochs_run": result.epochs, "history": result.history, "parameters": result.parameters}
    state = {"kind": "xcnn", "variant": variant.label, "arch": variant.arch,
             "image_shape": [variant.image_size, variant.image_size], "classes": classes,
             "timestamps": variant.timestamps, "reference": variant.reference, "recipe": data.recipe.to_dict(),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    run.write(store, state, config=config, seeds=[variant.seed], n_units=len(inputs.keys),
              n_subjects=len(set(inputs.subjects.tolist())), classes=classes,
              timings={"seconds_per_epoch": float(result.seconds_per_epoch),
                       "train": float(sum(h["seconds"] for h in result.history))},
              model_meta={"kind": "xcnn", "variant": variant.label})
    overall = {v.metric: v.value for v in values if v.cls is None}
    return replace(result, accuracy=overall["accuracy"], balanced_accuracy=overall["balanced_accuracy"],
                   run_id=run.run_id)


@dataclass
class XcnnReport:
    """What ``fit_xcnn`` did: one ``XcnnResult`` per variant, and what to print about it."""

    results: list[XcnnResult]
    epochs: int
    image_size: int
    header: str
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The notes, the set-up, one line per variant, and the Table-1-style comparison."""
        lines = [*self.notes, self.header]
        lines += [f"  {r.label}: accuracy {100 * r.accuracy:.2f} % on {r.n_test} held-out {r.unit}, "
                  f"{r.seconds_per_epoch:.2f} s/epoch, run {r.run_id}" for r in self.results]
        return [*lines, "", *format_table1(self.results, epochs=self.epochs, image_size=self.image_size).splitlines()]


def fit_xcnn(
    store, *, dataset: str = "chronomid", reference: str | None = None, timestamps: bool | None = None,
    epochs: int = 10, seed: int = 0, device: str = "auto", image_size: int = 64, batch_size: int = 32,
    lr: float = 1e-3, progress: bool = True,
) -> XcnnReport:
    """Train and judge the Table-1 variants selected by ``reference``/``timestamps`` (None: all six).

    Each variant is written as a run; returns an ``XcnnReport`` (one ``XcnnResult`` per variant) whose
    ``summary_lines()`` are the comparison.
    """
    from extractors.training import select_device
    from store.datasets import synthetic_notice

    check_param("fit xcnn", "epochs", epochs, kind="an int in [1, inf)", ok=is_int(epochs, 1))
    check_param("fit xcnn", "image_size", image_size, kind="an int in [32, 1024]",
                ok=is_int(image_size, 32) and image_size <= 1024)
    check_param("fit xcnn", "batch_size", batch_size, kind="an int in [2, inf)", ok=is_int(batch_size, 2))
    variants = [_Variant(*v, epochs, seed, image_size, batch_size, lr) for v in select_variants(reference, timestamps)]
    dev = select_device(device)
    notice = synthetic_notice(store, dataset)
    data = _load_dataset(store, dataset, image_size=image_size, seed=seed, progress=progress)
    header = (f"fit xcnn on {dataset!r}: {len(variants)} variant(s), {epochs} epochs, {image_size}x{image_size} inputs "
              f"(canvas {data.recipe.canvas[0]}x{data.recipe.canvas[1]}), held-out test subjects: "
              f"{len(data.test_subjects)} (one per class), device {dev}")
    modes = [None] + sorted({v.reference for v in variants if v.reference})
    units = {mode: _unit_inputs(store, data, mode, progress=progress) for mode in modes}
    results = [_train_variant(store, data, v, units[v.reference if v.arch == "xcnn" else None], device=dev,
                              progress=progress) for v in variants]
    return XcnnReport(results, epochs, image_size, header, [notice] if notice else [])


@register_model("xcnn")
class XcnnModel:
    """``fit xcnn``: the ChronoMID networks of Table 1, trained on images rather than feature tables.

    Parameters are ``fit_xcnn``'s; ``fit_in_store`` takes them from a ``classifiers.fitting.FitRequest``.
    """

    def __init__(self, *, reference=None, timestamps=None, epochs=10, device="auto", seed=0, image_size=64,
                 batch_size=32, lr=1e-3):
        self.reference, self.timestamps, self.epochs, self.device = reference, timestamps, epochs, device
        self.seed, self.image_size, self.batch_size, self.lr = seed, image_size, batch_size, lr

    def validate_params(self) -> None:
        """``ParameterError`` for a parameter out of range (the variants, epochs, sizes)."""
        select_variants(self.reference, self.timestamps)
        check_param("fit xcnn", "epochs", self.epochs, kind="an int in [1, inf)", ok=is_int(self.epochs, 1))
        check_param("fit xcnn", "device", self.device, kind="one of 'auto', 'cpu', 'cuda'",
                    ok=self.device in ("auto", "cpu", "cuda"))

    def fit_store(self, store, *, dataset: str = "chronomid", progress: bool = True) -> XcnnReport:
        """``fit_xcnn`` with this model's parameters on ``dataset``."""
        return fit_xcnn(store, dataset=dataset, reference=self.reference, timestamps=self.timestamps,
                        epochs=self.epochs, seed=self.seed, device=self.device, image_size=self.image_size,
                        batch_size=self.batch_size, lr=self.lr, progress=progress)

    @classmethod
    def fit_in_store(cls, store, request) -> XcnnReport:
        """Fit for ``cli.py fit xcnn``: dataset ``chronomid``, 10 epochs, device auto, seed 0, and both
        reference modes and both timestamp settings unless the request names one."""
        model = cls(reference=request.reference, timestamps=request.timestamps, epochs=request.epochs or 10,
                    device=request.device or "auto", seed=0)
        model.validate_params()
        return model.fit_store(store, dataset=request.dataset or "chronomid")
