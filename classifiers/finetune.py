"""``fit finetune --model TIMM_NAME``: a timm network fine-tuned end to end, judged on held-out subjects.

The IMPC paper (seed 003) fine-tunes EfficientNet and ConvNeXt backbones on one compact image per
specimen; this does the same for any timm CNN and any of the CNN extractor's inputs:

* ``--input image`` (one unit per scan), ``difference`` (per pair of ``--reference`` mode: the registered
  difference image) or ``multiview`` (per specimen: the DV/LAT/edge composite) — built exactly as
  ``extract --extractor cnn`` builds them (``extractors.timm_classifier``), at ``--image-size`` (default:
  the architecture's own input size);
* ``--weights hub`` (pretrained: imported into the store, timm's cache or a download; offline with nothing
  cached a ``WeightsError`` at once, naming ``weights import`` and ``--weights FILE``), a checkpoint FILE,
  an imported weights hash, or ``random``; the classifier layer is always new, one output per class;
* splits as every ``fit``: the dataset profile's held-out test subjects (``--test-subjects`` overrides;
  per seed, ``store.subjects.dataset_subject_split``), then a subject-grouped validation split of the
  training subjects (``VAL_FRACTION`` of each label stratum) for early stopping on the validation loss;
* training: ``extractors.training.fit_minibatches`` (the one loop: AdamW, bf16 autocast on CUDA, the
  best validation epoch's weights, a checkpoint after every epoch so an interrupted run resumes where it
  stopped); ``--augment`` adds the random rotation / shift / scale / intensity / flip of
  ``features.augment`` on the device, drawn from the epoch's generator (so a resumed run repeats it).

One run is written (``runs`` / ``metrics`` / ``predictions``, model ``finetune``) with metrics and
predictions for the splits ``train``, ``val`` and ``test`` of every seed; its artifact holds the first
seed's fine-tuned network (``state_dict`` in timm's keys, importable with ``--weights FILE`` after
``torch.save``), which ``cli.py report`` uses for its Grad-CAM maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from classifiers._registry import register_model
from features.errors import DatasetError, ParameterError, check_param, is_int

__all__ = ["VAL_FRACTION", "FinetuneSettings", "FinetuneReport", "FinetuneModel", "fit_finetune"]

VAL_FRACTION = 0.2
INPUTS = ("image", "difference", "multiview")


@dataclass(frozen=True)
class FinetuneSettings:
    """Every choice of one fine-tuning run (``params()`` is its identity in checkpoints and the run)."""

    model: str = "efficientnet_b0"
    input: str = "image"
    reference: str | None = None  # difference input: None = the dataset profile's mode, else 'absolute'
    weights: str = "hub"
    epochs: int = 10
    lr: float | None = None  # None: 1e-4 for pretrained weights, 1e-3 for random ones
    batch_size: int = 32
    image_size: int | None = None
    patience: int = 5
    augment: bool = False
    device: str = "auto"

    def learning_rate(self) -> float:
        """The learning rate used: ``lr``, or the default for the kind of weights."""
        return float(self.lr) if self.lr is not None else (1e-3 if self.weights == "random" else 1e-4)

    def validate(self) -> None:
        """``ParameterError`` naming the first setting out of range."""
        owner = "fit finetune"
        check_param(owner, "input", self.input, kind=f"one of {INPUTS}", ok=self.input in INPUTS)
        check_param(owner, "reference", self.reference, kind="None or one of ('absolute', 'relative', 'given')",
                    ok=self.reference in (None, "absolute", "relative", "given"))
        check_param(owner, "epochs", self.epochs, kind="an int in [1, inf)", ok=is_int(self.epochs, 1))
        check_param(owner, "batch_size", self.batch_size, kind="an int in [2, 4096]",
                    ok=is_int(self.batch_size, 2) and self.batch_size <= 4096)
        check_param(owner, "image_size", self.image_size, kind="None or an int in [16, 2048]",
                    ok=self.image_size is None or (is_int(self.image_size, 16) and self.image_size <= 2048))
        check_param(owner, "patience", self.patience, kind="an int in [0, inf)", ok=is_int(self.patience, 0))
        check_param(owner, "lr", self.lr, kind="None or a float in (0, 1]",
                    ok=self.lr is None or (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1))
        check_param(owner, "weights", self.weights, kind="'hub', 'random', a checkpoint file or an imported hash",
                    ok=isinstance(self.weights, str) and bool(self.weights))

    def params(self) -> dict:
        """The settings that change what is learned (device excluded), as plain JSON."""
        return {"model": self.model, "input": self.input, "reference": self.reference if self.input == "difference"
                else None, "weights": self.weights, "epochs": self.epochs, "lr": self.learning_rate(),
                "batch_size": self.batch_size, "image_size": self.image_size, "patience": self.patience,
                "augment": self.augment, "val_fraction": VAL_FRACTION}


@dataclass
class _Data:
    """The labelled units of one dataset as network inputs."""

    dataset: str
    unit: str
    target: str
    classes: list
    keys: np.ndarray
    subjects: np.ndarray
    labels: np.ndarray  # class names (str)
    y: np.ndarray  # class codes
    images: np.ndarray  # (n, 3, H, W) float32 in [0, 1]
    preprocess: object
    notes: list = field(default_factory=list)


def _target_values(labelled, target) -> dict:
    """key -> target value of every labelled unit that has one (after the target's row filter and mapping)."""
    columns = labelled.column_names
    missing = [c for c in [target.column, *(c for c, _ in target.where)] if c not in columns]
    if missing:
        raise DatasetError(f"The units have no column {missing[0]!r} for target {target.name!r}; their columns are: "
                           f"{', '.join(columns)}. Choose --target among them.")
    raw = labelled.column(target.column).to_pylist()
    if any(isinstance(v, (list, tuple)) for v in raw):
        raise ParameterError(f"Target {target.name!r} is multi-label; fit finetune trains single-label classifiers. "
                             "Choose a single-label target (e.g. --target level1) or a COLUMN=VALUE binary target.")
    keep = np.ones(len(raw), dtype=bool)
    for column, value in target.where:
        keep &= np.array([v == value for v in labelled.column(column).to_pylist()])
    keys = labelled.column("key").to_pylist()
    values = {k: target.map_value(v) for k, v, ok in zip(keys, raw, keep, strict=True) if ok}
    return {k: str(v) for k, v in values.items() if v is not None and v != ""}


def _load_data(store, dataset: str, settings: FinetuneSettings, target, *, progress: bool) -> _Data:
    """Units, targets and preprocessed images of ``dataset`` for ``settings.input``."""
    from extractors.timm_classifier import INPUT_KEYS, INPUT_UNITS, input_recipe, input_units, unit_images
    from store.featureset import load_units

    unit = INPUT_UNITS[settings.input]
    units = input_units(store, dataset, input=settings.input, reference=settings.reference)
    labelled = load_units(store, dataset, unit, reference_mode=settings.reference if unit == "pairs" else None)
    values = _target_values(labelled, target)
    subject_of = dict(zip(labelled.column("key").to_pylist(), labelled.column("subject").to_pylist(), strict=True))
    keys = units.column(INPUT_KEYS[settings.input]).to_pylist()
    rows = [i for i, k in enumerate(keys) if k in values]
    classes = sorted({values[keys[i]] for i in rows})
    if len(classes) < 2:
        raise DatasetError(f"Dataset {dataset!r} has {len(classes)} class(es) of target {target.name!r} among its "
                           f"{unit}; fine-tuning a classifier needs two or more.")
    pre = input_recipe(settings.model, settings.image_size)
    read = unit_images(store, units.take(rows), settings.input, pre, progress=progress)
    kept = [keys[rows[i]] for i in read.rows]
    notes = [f"{len(read.failed)} {unit} could not be read and were left out (first: {read.failed[0][2]})"
             ] if read.failed else []
    if len(rows) < len(keys):
        notes.append(f"{len(keys) - len(rows)} {unit} without a value of target {target.name!r} are not used")
    labels = np.array([values[k] for k in kept], dtype=object)
    return _Data(dataset, unit, target.name, classes, np.array(kept, dtype=object),
                 np.array([subject_of[k] for k in kept], dtype=object), labels,
                 np.searchsorted(np.array(classes), labels.astype(str)), read.images, pre, notes)


@dataclass(frozen=True)
class _SeedSplit:
    """Row indices of one seed: training, validation (subject-grouped inside training) and test."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_subjects: frozenset


def _seed_split(store, data: _Data, rule, seed: int) -> _SeedSplit:
    """Held-out test subjects by ``rule`` (a ``classifiers.planning.TestRule``), then validation subjects."""
    from features.errors import EvaluationError
    from features.splits import check_disjoint, held_out_subjects, holdout_split
    from store.subjects import dataset_subject_split

    if rule.rule == "none":
        test = frozenset()
    elif rule.rule == "list":
        test = frozenset(rule.subjects or ())
    else:
        test = frozenset(dataset_subject_split(store, data.dataset, test_fraction=rule.fraction, seed=seed).test)
    outer = holdout_split(data.subjects, test)
    if len(outer.train) == 0:
        raise EvaluationError("Every subject was held out for testing; hold out fewer (--test-subjects).")
    val_subjects = held_out_subjects(data.subjects[outer.train], data.labels[outer.train], rule="fraction",
                                     seed=seed, test_fraction=VAL_FRACTION)
    inner = holdout_split(data.subjects[outer.train], val_subjects)
    train, val = outer.train[inner.train], outer.train[inner.test]
    check_disjoint(data.subjects, train, val, what="validation")
    check_disjoint(data.subjects, np.concatenate([train, val]), outer.test, what="test")
    return _SeedSplit(train, val, outer.test, test)


class _Training:
    """One seed's network on the dataset's images: batches (augmented when asked), loss, validation."""

    def __init__(self, store, data: _Data, settings: FinetuneSettings, seed: int, device):
        import torch

        from extractors.timm_classifier import build_classifier

        self.data, self.settings, self.seed, self.device = data, settings, seed, device
        self.built = build_classifier(store, settings.model, settings.weights, len(data.classes), seed=seed)
        self.network = self.built.network.to(device)
        if device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        self.images = torch.from_numpy(data.images)
        self.y = torch.from_numpy(np.asarray(data.y, dtype=np.int64))
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=settings.learning_rate(), weight_decay=0.05)

    def batch_of(self, rows: np.ndarray):
        """Images of ``rows`` on the device."""
        x = self.images[torch_index(rows)].to(self.device, non_blocking=True)
        return x.contiguous(memory_format=_memory_format(self.device))

    def inputs(self, batch):
        """A training batch: images (augmented from the epoch's generator when asked) and class codes."""
        x = self.batch_of(batch.rows)
        if self.settings.augment:
            from features.augment import augment_batch, sample_params

            x = augment_batch(x, sample_params(batch.rng, len(batch.rows)))
        return x, self.y[torch_index(batch.rows)].to(self.device)

    def loss(self, prepared):
        import torch

        x, y = prepared
        return torch.nn.functional.cross_entropy(self.network(x).float(), y)

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """Class scores (n, K) of ``rows`` (eval mode, no gradients, autocast on CUDA)."""
        from extractors.training import batched_outputs

        self.network.eval()
        return batched_outputs(lambda chunk: self.network(self.batch_of(chunk)), np.asarray(rows),
                               batch_size=max(2, self.settings.batch_size), device=self.device)

    def validator(self, rows: np.ndarray):
        """``validate(epoch)`` for the training loop: loss and accuracy on the validation ``rows``."""
        import torch

        def validate(epoch: int) -> dict:
            logits = torch.from_numpy(self.logits(rows))
            truth = self.y[torch_index(rows)]
            loss = torch.nn.functional.cross_entropy(logits, truth).item()
            return {"val_loss": float(loss), "val_accuracy": float((logits.argmax(1) == truth).float().mean())}

        return validate


def torch_index(rows):
    """``rows`` (NumPy indices) as a torch index tensor."""
    import torch

    return torch.from_numpy(np.asarray(rows, dtype=np.int64))


def _memory_format(device):
    import torch

    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@dataclass
class _SeedResult:
    """What one seed produced: its split, probabilities of every row it saw, the loop's record."""

    seed: int
    split: _SeedSplit
    proba: dict  # split name -> (rows, (n, K) probabilities)
    loop: object  # extractors.training.LoopResult
    weights: dict
    state: dict | None  # the network's state (first seed only)


def _train_seed(store, data: _Data, settings: FinetuneSettings, split: _SeedSplit, seed: int, *, device,
                progress: bool, keep_state: bool) -> _SeedResult:
    """Fine-tune for one seed (resuming a checkpoint of the same configuration) and predict every split."""
    import torch

    from extractors.training import deterministic, fit_minibatches
    from store.provenance import params_hash

    with deterministic(seed):
        run = _Training(store, data, settings, seed, device)
        key = params_hash({"trainer": "finetune", "format": 1, "dataset": data.dataset, "target": data.target,
                           "keys": data.keys.tolist(), "classes": data.classes, "train": split.train.tolist(),
                           "val": split.val.tolist(), "params": settings.params(), "seed": seed,
                           "weights": run.built.digest, "preprocess": data.preprocess.describe()}, length=20)
        validate = run.validator(split.val) if len(split.val) else None
        loop = fit_minibatches(model=run.network, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs,
                               samples=split.train, epochs=settings.epochs, seed=seed, stream=7,
                               batch_size=settings.batch_size, validate=validate, patience=settings.patience,
                               store=store, name="finetune", key=key, progress=progress,
                               desc=f"finetune {settings.model} seed {seed}", unit="img")
        proba = {}
        for name, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
            if len(rows):
                proba[name] = (rows, torch.softmax(torch.from_numpy(run.logits(rows)), dim=1).numpy())
    state = {k: v.detach().cpu() for k, v in run.network.net.state_dict().items()} if keep_state else None
    return _SeedResult(seed, split, proba, loop, run.built.describe(), state)


def _record(recorder, data: _Data, result: _SeedResult, n_boot: int) -> dict:
    """Metrics and predictions of one seed into ``recorder``; returns the seed's overall figures by split."""
    from classifiers.metrics import classification_metrics

    classes = np.array(data.classes)
    figures = {}
    for name, (rows, proba) in result.proba.items():
        truth, predicted = data.labels[rows].astype(str), classes[proba.argmax(axis=1)]
        values = classification_metrics(truth, predicted, proba, classes, groups=data.subjects[rows],
                                        n_boot=n_boot if name == "test" else 0, seed=result.seed)
        for v in values:
            recorder.add_metric(metric=v.metric, value=v.value, seed=result.seed, split=name, cls=v.cls,
                                ci_low=v.ci_low, ci_high=v.ci_high)
        recorder.add_predictions(keys=data.keys[rows], subjects=data.subjects[rows], y_true=truth, y_pred=predicted,
                                 proba=proba, classes=data.classes, seed=result.seed, split=name)
        figures[name] = {v.metric: v.value for v in values if v.cls is None}
    return figures


@dataclass
class FinetuneReport:
    """What ``fit_finetune`` did: the run id, per-seed figures, and the lines ``cli.py fit`` prints."""

    run_id: str
    header: list
    seeds: list  # one dict per seed: seed, figures by split, epochs, resumed_from, best_epoch, s/epoch
    notes: list = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """Notes, set-up, one line per seed, the mean test figures and where the run is saved."""
        lines = [*self.notes, *self.header]
        for s in self.seeds:
            test, train = s["figures"].get("test", {}), s["figures"].get("train", {})
            resumed = f", resumed after epoch {s['resumed_from']}" if s["resumed_from"] else ""
            lines.append(
                f"  seed {s['seed']}: test accuracy {_pct(test.get('accuracy'))}, "
                f"balanced {_pct(test.get('balanced_accuracy'))}, "
                f"AUC {_num(test.get('auc_macro'))}; train accuracy {_pct(train.get('accuracy'))}; "
                f"{s['epochs']} epochs (best {s['best_epoch']}{resumed}), {s['seconds_per_epoch']:.2f} s/epoch")
        tests = [s["figures"]["test"] for s in self.seeds if "test" in s["figures"]]
        if len(tests) > 1:
            acc = [t["accuracy"] for t in tests]
            lines.append(f"  mean over {len(tests)} seeds: test accuracy {100 * np.mean(acc):.2f} "
                         f"± {100 * np.std(acc):.2f} %")
        return [*lines, f"saved: run {self.run_id} (report with Grad-CAM maps: python cli.py report {self.run_id})"]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _num(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _write_run(store, data: _Data, settings: FinetuneSettings, results: list[_SeedResult], rule, n_boot: int):
    """Write the run (all seeds); returns (run id, per-seed summaries)."""
    from store.runs import RunRecorder

    recorder = RunRecorder(dataset=data.dataset, model="finetune", target=data.target, unit=data.unit)
    seeds = []
    for r in results:
        figures = _record(recorder, data, r, n_boot)
        seeds.append({"seed": r.seed, "figures": figures, "epochs": r.loop.epochs_run,
                      "resumed_from": r.loop.start_epoch,
                      "best_epoch": r.loop.best_epoch, "seconds_per_epoch": r.loop.seconds_per_epoch,
                      "history": r.loop.history, "test_subjects": len(r.split.test_subjects),
                      "n": {k: len(v[0]) for k, v in r.proba.items()}})
    first = results[0]
    state = {"kind": "finetune", "model": settings.model, "classes": data.classes, "input": settings.input,
             "reference": settings.reference, "preprocess": data.preprocess.describe(), "seed": first.seed,
             "weights": first.weights, "state_dict": first.state}
    config = {"command": "fit finetune", "params": settings.params(), "device": settings.device,
              "test_rule": rule.rule, "test_fraction": rule.fraction, "split": "auto", "weights": first.weights,
              "seeds": seeds, "notes": data.notes, "preprocess": data.preprocess.describe()}
    recorder.write(store, state, config=config, seeds=[r.seed for r in results], n_units=len(data.keys),
                   n_subjects=len(set(data.subjects.tolist())), classes=data.classes,
                   timings={"train": float(sum(r.loop.seconds for r in results))},
                   model_meta={"kind": "finetune", "backbone": settings.model})
    return recorder.run_id, seeds


def fit_finetune(store, settings: FinetuneSettings, *, dataset: str | None = None, target: str | None = None,
                 seeds: int | None = None, test_subjects: str | None = None, n_boot: int = 1000,
                 progress: bool = True) -> FinetuneReport:
    """Fine-tune ``settings.model`` on ``dataset`` for every seed and write one run; returns its report.

    ``dataset`` None: the only ingested dataset. ``target`` / ``seeds`` / ``test_subjects``: None takes the
    dataset profile's. Raises ``WeightsError`` (weights unavailable), ``DatasetError``, ``ParameterError``.
    """
    from classifiers.planning import parse_test_subjects
    from classifiers.profiles import profile_for, resolve_target
    from extractors.training import select_device
    from store.datasets import synthetic_notice
    from store.weights import check_model_name, resolve_weights

    settings.validate()
    check_model_name(settings.model)
    device = select_device(settings.device)
    dataset = dataset or _only_dataset(store)
    profile = profile_for(dataset, unit=_unit_name(settings.input))
    if settings.reference is None:
        settings = replace(settings, reference=profile.reference_mode or "absolute")
    spec = resolve_target(profile, target)
    rule = parse_test_subjects(test_subjects, profile)
    resolved = resolve_weights(store, settings.model, settings.weights)  # fail fast, before reading images
    data = _load_data(store, dataset, settings, spec, progress=progress)
    n_seeds = int(seeds if seeds is not None else profile.seeds)
    results = [_train_seed(store, data, settings, _seed_split(store, data, rule, seed), seed, device=device,
                           progress=progress, keep_state=seed == 0) for seed in range(n_seeds)]
    run_id, per_seed = _write_run(store, data, settings, results, rule, n_boot)
    size = data.preprocess.size
    header = [f"fit finetune {settings.model} on {dataset!r} ({settings.input} -> {data.unit}, {size[0]}x{size[1]}), "
              f"target {spec.name} ({', '.join(data.classes)}), {len(data.keys)} {data.unit} of "
              f"{len(set(data.subjects.tolist()))} subjects; weights: {resolved.describe()}",
              f"splits: {rule.rule} held-out test subjects, {VAL_FRACTION:g} of the training subjects for validation "
              f"(early stopping on val_loss, patience {settings.patience}); {settings.epochs} epochs max, batch "
              f"{settings.batch_size}, lr {settings.learning_rate():g}, "
              f"augmentation {'on' if settings.augment else 'off'}, "
              f"device {device}"]
    notice = synthetic_notice(store, dataset)
    return FinetuneReport(run_id, header, per_seed, [notice] if notice else [])


def _unit_name(input: str) -> str:
    return {"image": "scans", "difference": "pairs", "multiview": "specimens"}.get(input, "scans")


def _only_dataset(store) -> str:
    from store.sql import query

    names = query(store, "SELECT DISTINCT dataset FROM scans ORDER BY 1").column(0).to_pylist()
    if len(names) != 1:
        raise ParameterError(f"fit finetune needs --dataset NAME: the store holds {len(names)} datasets "
                             f"({', '.join(names) or 'none; ingest one first'}).")
    return names[0]


@register_model("finetune")
class FinetuneModel:
    """``fit finetune``: a timm network fine-tuned on images (not on feature tables); see the module docstring.

    Parameters are ``FinetuneSettings``'; ``fit_in_store`` takes them from a ``classifiers.fitting.FitRequest``.
    """

    def __init__(self, *, model="efficientnet_b0", input="image", reference=None, weights="hub", epochs=10,
                 lr=None, batch_size=32, image_size=None, patience=5, augment=False, device="auto"):
        self.model, self.input, self.reference, self.weights = model, input, reference, weights
        self.epochs, self.lr, self.batch_size, self.image_size = epochs, lr, batch_size, image_size
        self.patience, self.augment, self.device = patience, augment, device

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn convention)."""
        return {name: getattr(self, name) for name in ("model", "input", "reference", "weights", "epochs", "lr",
                                                        "batch_size", "image_size", "patience", "augment",
                                                        "device")}

    def settings(self) -> FinetuneSettings:
        """These parameters as ``FinetuneSettings`` (validated)."""
        settings = FinetuneSettings(**self.get_params())
        settings.validate()
        return settings

    @classmethod
    def fit_in_store(cls, store, request) -> FinetuneReport:
        """``cli.py fit finetune``: ``--model`` (timm name, required), ``--input``, ``--weights`` (default hub),
        ``--epochs`` (10), ``--lr``, ``--batch-size`` (32), ``--image-size``, ``--patience`` (5; 0: never stop
        early), ``--augment``, ``--device``,
        ``--reference``; dataset, target, seeds and test subjects as every ``fit``."""
        backbone = getattr(request, "backbone", None)
        if not backbone:
            raise ParameterError("fit finetune needs --model TIMM_NAME, e.g. --model efficientnet_b0 or "
                                 "--model convnext_tiny (any timm CNN; python -c \"import timm; "
                                 "print(timm.list_models('*efficientnet*'))\" lists them).")
        given = {name: getattr(request, name, None)
                 for name in ("input", "reference", "weights", "epochs", "lr", "batch_size", "image_size", "patience",
                              "device")}
        model = cls(model=backbone, augment=bool(request.augment), **{k: v for k, v in given.items() if v is not None})
        return fit_finetune(store, model.settings(), dataset=request.dataset, target=request.target,
                            seeds=request.seeds, test_subjects=request.test_subjects, n_boot=request.n_boot,
                            progress=request.progress)
