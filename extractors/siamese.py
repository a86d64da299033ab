"""Longitudinal self-supervision: a Siamese CNN trained on "same subject or not" (seed 001).

``train_siamese(store, dataset)`` needs nothing but the ``scans`` table: a positive pair is two scans
of one subject at different time points showing the same level (spine: column ``level``; otherwise
``view``), a negative pair two scans of different subjects at the same level/view. The loss is the
contrastive loss of Chopra et al. on the embedding,
``y d² + (1 - y) max(0, m - d)²`` with ``d`` the Euclidean distance and margin ``m``, plus the
auxiliary softmax loss predicting the level from each scan's embedding, with class-balanced weights
(section 2.3). Training images are augmented as in section 3.2 (``features.augment``). Subjects are
divided into training, validation (early stopping) and held-out test subjects; the reported figures —
ROC AUC of the embedding distance for same vs different subject, and the auxiliary accuracy — are
measured on the held-out subjects only. The trained network is stored as an artifact of kind
``networks``; ``extract --extractor siamese --artifact ID`` writes its embeddings (FC7) per scan.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from extractors._registry import build_from_options, register_cli_alias, register_extractor
from extractors.base import ExtractedBatch, Extractor
from features.errors import DatasetError, ParameterError, check_param, is_int
from store.failures import Failure

__all__ = [
    "TrainResult",
    "TrainingScans",
    "training_scans",
    "training_key",
    "store_network",
    "network_subjects",
    "TrainingSettings",
    "train_siamese",
    "group_column",
    "positive_pairs",
    "sample_negatives",
    "evaluation_pairs",
    "contrastive_loss",
    "class_balanced_weights",
    "split_subjects",
    "load_network_artifact",
    "SiameseEmbedding",
]

NETWORK_KIND = "networks"


# --- pure pieces ---------------------------------------------------------------------------------
def group_column(columns) -> str:
    """The column pairs must agree on: ``level`` when the scans have one, else ``view``."""
    return "level" if "level" in columns else "view"


def positive_pairs(subjects: np.ndarray, times: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``(P, 2)`` row indices of every pair of one subject, same group, different time (i < j)."""
    subjects, times, groups = (np.asarray(a) for a in (subjects, times, groups))
    order = np.lexsort((times, groups.astype(str), subjects.astype(str)))
    pairs = []
    start = 0
    keys = list(zip(subjects[order].astype(str), groups[order].astype(str), strict=True))
    for stop in range(1, len(order) + 1):
        if stop == len(order) or keys[stop] != keys[start]:
            members = order[start:stop]
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    i, j = members[a], members[b]
                    if times[i] != times[j]:
                        pairs.append((min(i, j), max(i, j)))
            start = stop
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def sample_negatives(
    anchors: np.ndarray, subjects: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each anchor row, a row of a different subject in the same group: ``(len(anchors), 2)``.

    Anchors whose group holds no other subject are dropped.
    """
    subjects, groups = np.asarray(subjects).astype(str), np.asarray(groups).astype(str)
    by_group: dict[str, np.ndarray] = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    out = []
    for i in np.asarray(anchors):
        candidates = by_group[groups[i]]
        candidates = candidates[subjects[candidates] != subjects[i]]
        if len(candidates):
            out.append((int(i), int(candidates[rng.integers(len(candidates))])))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def evaluation_pairs(subjects, times, groups, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed pairs for judging: all positives plus as many negatives; returns (pairs, same_subject)."""
    positives = positive_pairs(subjects, times, groups)
    rng = np.random.default_rng(seed)
    negatives = (
        sample_negatives(positives[:, 0], subjects, groups, rng) if len(positives) else np.zeros((0, 2), np.int64)
    )
    pairs = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    return pairs, labels


def contrastive_loss(a, b, same, margin: float):
    """Mean of ``y d² + (1 - y) max(0, m - d)²`` over pairs (Chopra et al. 2005); tensors in, scalar out."""
    import torch

    distance = torch.sqrt(((a.float() - b.float()) ** 2).sum(dim=1) + 1e-9)
    same = same.float()
    return (same * distance**2 + (1 - same) * torch.clamp(margin - distance, min=0) ** 2).mean()


def class_balanced_weights(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights ``n / (k * n_c)`` per class (scikit-learn's "balanced"); absent classes get 0."""
    counts = np.bincount(np.asarray(codes), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def split_subjects(
    subjects, labels, *, seed: int, test_fraction: float, val_fraction: float
) -> tuple[frozenset, frozenset]:
    """(test, validation) subjects: whole subjects, stratified by majority label, from ``seed``.

    The test subjects follow ``features.splits.held_out_subjects`` (rule ``fraction``); the
    validation subjects are drawn the same way from the rest.
    """
    from features.splits import held_out_subjects

    subjects, labels = np.asarray(subjects).astype(str), np.asarray(labels).astype(str)
    test = held_out_subjects(subjects, labels, rule="fraction", seed=seed, test_fraction=test_fraction)
    rest = ~np.isin(subjects, list(test))
    share = min(0.9, val_fraction / (1.0 - test_fraction))
    val = held_out_subjects(subjects[rest], labels[rest], rule="fraction", seed=seed + 1, test_fraction=share)
    return test, val


# --- data --------------------------------------------------------------------------------------------
def _scans(store, dataset: str) -> pa.Table:
    from store.units import scan_units

    return scan_units(store, dataset)


def data_identity(table: pa.Table) -> str:
    """A hash of the scans a network is trained on (ids and pixel hashes, in order)."""
    import hashlib

    digest = hashlib.sha256()
    ids, pixels = table.column("scan_id").to_pylist(), table.column("pixel_sha256").to_pylist()
    for scan_id, pixel in zip(ids, pixels, strict=True):
        digest.update(f"{scan_id}\0{pixel}\n".encode())
    return digest.hexdigest()


def load_network_artifact(store, ref: str, *, family: str):
    """The ``networks`` artifact ``ref`` as (artifact, config, model); ``ParameterError`` for another family."""
    from extractors.nets import network_from_bytes
    from store.artifacts import find_artifact

    artifact = find_artifact(store, NETWORK_KIND, ref)
    config, model = network_from_bytes(artifact.path.read_bytes(), what=f"network artifact {artifact.short}")
    if config.get("family") != family:
        hint = " (a network trained with --input volume: extract it with --input volume)" if (
            config.get("input") == "volume") else ""
        raise ParameterError(
            f"Artifact {artifact.short} is a {config.get('family')!r} network, not a {family!r} one{hint}; give the "
            f"id printed by 'train {family}'."
        )
    return artifact, config, model


@dataclass
class TrainingScans:
    """The scans a network trains on, divided into training, validation and held-out test subjects."""

    dataset: str
    scans: pa.Table
    subjects: np.ndarray  # per scan
    side: np.ndarray  # per scan: "train" | "val" | "test"
    test_subjects: frozenset
    val_subjects: frozenset
    recipe: object  # extractors.images.ImageRecipe

    def rows(self, side: str) -> np.ndarray:
        """Row indices of the scans on ``side`` ("train", "val" or "test")."""
        return np.flatnonzero(self.side == side)

    def subject_counts(self) -> dict[str, int]:
        """Subjects per side, for ``TrainResult.subjects``."""
        return {"train": len(set(self.subjects[self.rows("train")])), "val": len(self.val_subjects),
                "test": len(self.test_subjects)}

    def subject_lists(self) -> dict[str, list]:
        """Subjects per side, for a network's configuration."""
        return {"train": sorted(set(self.subjects[self.rows("train")])), "val": sorted(self.val_subjects),
                "test": sorted(self.test_subjects)}

    def images(self, store, device, *, progress: bool):
        """Every scan as a network input, ``(N, 1, size, size)`` on ``device``."""
        import torch

        from extractors.images import scan_images

        return torch.from_numpy(scan_images(store, self.dataset, self.scans, self.recipe, progress=progress)).to(device)


def training_scans(store, dataset: str, *, image_size: int, seed: int, test_fraction: float,
                   val_fraction: float) -> TrainingScans:
    """``dataset``'s scans with whole subjects, stratified by label, held out for testing and validation."""
    from extractors.images import column_values, recipe_for_scans

    scans = _scans(store, dataset)
    subjects = column_values(scans, "subject").astype(str)
    labels = column_values(scans, "label").astype(str)
    test_s, val_s = split_subjects(subjects, labels, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    side = np.where(np.isin(subjects, list(test_s)), "test", np.where(np.isin(subjects, list(val_s)), "val", "train"))
    return TrainingScans(dataset, scans, subjects, side, test_s, val_s, recipe_for_scans(scans, image_size))


def training_key(trainer: str, data: TrainingScans, params: dict, *, format: int) -> str:
    """The checkpoint key of a training: the trainer, the scans, the image recipe and every parameter."""
    from store.provenance import params_hash

    return params_hash({"trainer": trainer, "format": format, "dataset": data.dataset,
                        "data": data_identity(data.scans), "recipe": data.recipe.to_dict(), "params": params},
                       length=20)


def store_network(store, config: dict, model, meta: dict, *, subjects: dict | None = None):
    """Save ``model`` with its ``config`` as a ``networks`` artifact (returns the artifact).

    ``subjects`` ({"train": [...], "val": [...], "test": [...]}, e.g. ``TrainingScans.subject_lists()``;
    default ``config["subjects"]``) is recorded in the configuration and in the artifact's JSON
    description with the ``dataset``: which subjects the network trained on, which it used for early
    stopping, and which it never saw. ``classifiers.leakage`` reads them so that ``fit`` on the
    network's features never judges on subjects the network trained on.
    """
    from extractors.nets import network_to_bytes
    from store.artifacts import save_artifact

    subjects = config.get("subjects") if subjects is None else subjects
    if not isinstance(subjects, dict) or not {"train", "val", "test"} <= set(subjects):
        raise ParameterError(
            "store_network needs the network's subjects as {'train': [...], 'val': [...], 'test': [...]} "
            f"(TrainingScans.subject_lists()). Got {type(subjects).__name__} instead."
        )
    subjects = {side: sorted(str(s) for s in subjects[side]) for side in ("train", "val", "test")}
    config = {**config, "subjects": subjects}
    meta = {**meta, "dataset": config.get("dataset", meta.get("dataset")), "subjects": subjects}
    return save_artifact(store, NETWORK_KIND, network_to_bytes(config, model.cpu()), suffix=".pt", meta=meta)


def network_subjects(artifact) -> dict[str, frozenset]:
    """The subjects a ``networks`` artifact trained on, validated on and held out: {"train", "val", "test"}.

    Read from the artifact's description, or for an artifact stored before descriptions carried them,
    from the configuration inside the network file. ``WeightsError`` when neither records them.
    """
    from extractors.nets import network_from_bytes
    from features.errors import WeightsError

    subjects = artifact.meta.get("subjects")
    if not isinstance(subjects, dict):
        config, _ = network_from_bytes(artifact.path.read_bytes(), what=f"network artifact {artifact.short}")
        subjects = config.get("subjects")
    if not isinstance(subjects, dict) or not {"train", "val", "test"} <= set(subjects):
        raise WeightsError(
            f"Network artifact {artifact.short} does not record which subjects it trained on; retrain it with "
            "this version ('python cli.py train ...') so its features can be judged on subjects it never saw."
        )
    return {side: frozenset(str(s) for s in subjects[side]) for side in ("train", "val", "test")}


# --- training ----------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """A finished training: the stored network and its held-out figures."""

    artifact: object  # store.artifacts.Artifact
    auc: float | None  # Siamese: same-vs-different-subject ROC AUC of the distance, held-out subjects
    aux_accuracy: float | None  # Siamese: level accuracy on held-out scans
    epochs_run: int
    best_epoch: int
    resumed_from: int
    seconds: float
    seconds_per_epoch: float
    subjects: dict = field(default_factory=dict)  # {"train": n, "val": n, "test": n}
    test_pairs: tuple[int, int] = (0, 0)  # (positive, negative) held-out pairs
    metrics: dict = field(default_factory=dict)  # other figures (CAE: mse, ssim ...)
    history: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what the training left out or changed, and why

    @classmethod
    def of_loop(cls, artifact, loop, data: TrainingScans, *, started: float, **figures) -> TrainResult:
        """The result of the training ``loop`` (an ``extractors.training.LoopResult``) on ``data``."""
        return cls(artifact=artifact, epochs_run=loop.epochs_run, best_epoch=loop.best_epoch,
                   resumed_from=loop.start_epoch, seconds=time.perf_counter() - started,
                   seconds_per_epoch=loop.seconds_per_epoch, subjects=data.subject_counts(), history=loop.history,
                   **figures)

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the command line."""
        lines = [f"note: {note}" for note in self.notes]
        lines.append(f"network artifact: {self.artifact.short}  ({self.artifact.path})")
        if self.resumed_from and self.resumed_from >= self.epochs_run:
            resumed = ", already trained: loaded from its checkpoint"
        elif self.resumed_from:
            resumed = f", resumed after epoch {self.resumed_from}"
        else:
            resumed = ""
        lines.append(
            f"epochs: {self.epochs_run} (best {self.best_epoch + 1}{resumed}), "
            f"{self.seconds_per_epoch:.1f} s/epoch, subjects train/val/test = "
            + "/".join(str(self.subjects.get(k, 0)) for k in ("train", "val", "test"))
        )
        if self.auc is not None:
            lines.append(
                f"held-out subjects: same-vs-different-subject ROC AUC = {self.auc:.3f} "
                f"({self.test_pairs[0]} positive / {self.test_pairs[1]} negative pairs)"
            )
        if self.aux_accuracy is not None:
            lines.append(f"held-out auxiliary level accuracy = {self.aux_accuracy:.3f}")
        for name, value in self.metrics.items():
            lines.append(f"held-out {name} = {value:.4f}" if isinstance(value, float) else f"{name} = {value}")
        return lines


class TrainingSettings:
    """Base of the settings dataclasses of the networks trained on scans: the checks they all share.

    A subclass has the fields ``epochs``, ``batch_size``, ``seed``, ``image_size``, ``patience``,
    ``test_fraction`` and ``val_fraction``, names its trainer in ``owner`` and checks its own fields
    in ``check_own``.
    """

    owner: ClassVar[str] = "training"

    def check(self) -> None:
        """``ParameterError`` naming the trainer for any setting that is out of range."""
        self.check_shared(self.owner)
        self.check_own(self.owner)

    def check_own(self, owner: str) -> None:
        """Check the settings only this network has (none here)."""

    def check_shared(self, owner: str) -> None:
        """``ParameterError`` naming ``owner`` for a shared training parameter that is out of range."""
        check_param(owner, "epochs", self.epochs, kind="an int in [1, inf)", ok=is_int(self.epochs, 1))
        check_param(owner, "batch_size", self.batch_size, kind="an int in [2, inf)", ok=is_int(self.batch_size, 2))
        check_param(owner, "seed", self.seed, kind="an int", ok=is_int(self.seed))
        size = self.image_size
        check_param(owner, "image_size", size, kind="an int in [32, 512] divisible by 16",
                    ok=is_int(size, 32) and size <= 512 and size % 16 == 0)
        check_param(owner, "patience", self.patience, kind="an int in [0, inf)", ok=is_int(self.patience, 0))
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            check_param(owner, name, value, kind="a float in (0, 0.5]", ok=0 < value <= 0.5)

    def params(self) -> dict:
        """Every setting by name, in field order (stored in the network's configuration)."""
        from dataclasses import asdict

        return asdict(self)


@dataclass
class _EvalPairs:
    """Fixed pairs of one side's subjects for judging: global row pairs, same-subject flags, the side's rows."""

    pairs: np.ndarray
    same: np.ndarray
    rows: np.ndarray

    @classmethod
    def of_rows(cls, rows: np.ndarray, subjects, times, groups, *, seed: int) -> _EvalPairs:
        pairs, same = evaluation_pairs(subjects[rows], times[rows], groups[rows], seed=seed)
        return cls(rows[pairs] if len(pairs) else pairs, same, rows)


@dataclass
class _SiameseTask:
    """What the Siamese network learns on one dataset: training positives, judging pairs, the auxiliary task."""

    group_column: str
    groups: np.ndarray
    classes: list[str]
    codes: np.ndarray  # group code per scan
    train_positive: np.ndarray  # global row pairs
    val: _EvalPairs
    test: _EvalPairs
    notes: list[str]

    @property
    def n_aux(self) -> int:
        return len(self.classes) if len(self.classes) > 1 else 0


def _siamese_task(data: TrainingScans, *, seed: int) -> _SiameseTask:
    """Pairs and auxiliary classes of ``data``; ``DatasetError`` when training subjects have no positive pair."""
    from extractors.images import column_values

    scans = data.scans
    gcol = group_column(scans.column_names)
    times = np.array([-1 if v is None else v for v in scans.column("time_index").to_pylist()], dtype=np.int64)
    groups = column_values(scans, gcol).astype(str)
    train_rows = data.rows("train")
    positives = positive_pairs(data.subjects[train_rows], times[train_rows], groups[train_rows])
    if len(positives) == 0:
        raise DatasetError(
            f"Dataset {data.dataset!r} has no positive pairs among its training subjects (two scans of one subject "
            f"at different time points with the same {gcol}); the Siamese network needs longitudinal data."
        )
    classes = sorted(set(groups.tolist()))
    notes = [] if len(classes) > 1 else [f"every scan has the same {gcol!r}; the auxiliary {gcol} task is left out."]
    val = _EvalPairs.of_rows(data.rows("val"), data.subjects, times, groups, seed=seed)
    if not len(val.pairs):
        notes.append("the validation subjects have no positive pairs; training runs every epoch without early "
                     "stopping.")
    return _SiameseTask(gcol, groups, classes, np.searchsorted(np.array(classes), groups), train_rows[positives], val,
                        _EvalPairs.of_rows(data.rows("test"), data.subjects, times, groups, seed=seed + 7), notes)


@dataclass
class _SiameseSettings(TrainingSettings):
    """Every parameter of ``train_siamese`` that shapes the network (stored in its configuration)."""

    epochs: int
    batch_size: int
    margin: float
    backbone: str
    seed: int
    image_size: int
    embed_dim: int
    lr: float
    weight_decay: float
    aux_weight: float
    patience: int
    test_fraction: float
    val_fraction: float
    augment: bool

    owner: ClassVar[str] = "train_siamese"

    def check_own(self, owner: str) -> None:
        check_param(owner, "margin", self.margin, kind="a float in (0, inf)",
                    ok=isinstance(self.margin, (int, float)) and self.margin > 0)
        check_param(owner, "embed_dim", self.embed_dim, kind="an int in [2, 8192]",
                    ok=is_int(self.embed_dim, 2) and self.embed_dim <= 8192)
        check_param(owner, "lr", self.lr, kind="a float in (0, 1]",
                    ok=isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and 0 < self.lr <= 1)


@dataclass
class _PairBatch:
    a: object  # row indices (tensor) of the first scans
    b: object
    same: object  # 1.0 for a same-subject pair
    xa: object  # the (augmented) images
    xb: object


class _SiameseTraining:
    """The Siamese network, its optimizer and the data it sees: the loss, epoch samples and judging."""

    def __init__(self, settings: _SiameseSettings, task: _SiameseTask, data: TrainingScans, images, device):
        import torch

        from extractors.nets import SiameseNet

        self.settings, self.task, self.data, self.images, self.device = settings, task, data, images, device
        self.codes = torch.from_numpy(task.codes).to(device)
        self.aux_weights = torch.from_numpy(
            class_balanced_weights(task.codes[data.rows("train")], max(task.n_aux, 1))).to(device)
        self.arch = {"backbone": settings.backbone, "in_chans": 1, "embed_dim": settings.embed_dim, "hidden": 256,
                     "n_aux": task.n_aux}
        self.model = SiameseNet(**self.arch).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def samples(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's pairs as rows (first, second, same): every training positive and a fresh negative each."""
        train_groups = np.where(self.data.side == "train", self.task.groups, "\0held-out")
        positives = self.task.train_positive
        negatives = sample_negatives(positives[:, 0], self.data.subjects, train_groups, rng)
        same = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))]).astype(np.int64)
        return np.column_stack([np.concatenate([positives, negatives]), same])

    def inputs(self, batch) -> _PairBatch:
        import torch

        from features.augment import augment_batch, sample_params

        rows = batch.rows
        a, b = torch.from_numpy(rows[:, 0]).to(self.device), torch.from_numpy(rows[:, 1]).to(self.device)
        xa, xb = self.images[a], self.images[b]
        if self.settings.augment:
            pa_, pb_ = sample_params(batch.rng, len(rows)), sample_params(batch.rng, len(rows))
            pb_["flip"] = pa_["flip"]  # one flip per pair, as in the paper
            xa, xb = augment_batch(xa, pa_), augment_batch(xb, pb_)
        same = torch.from_numpy(rows[:, 2].astype(np.float32)).to(self.device)
        return _PairBatch(a, b, same, xa, xb)

    def loss(self, batch: _PairBatch):
        import torch

        from extractors.training import Losses

        emb, logits = self.model(torch.cat([batch.xa, batch.xb]))
        n = len(batch.a)
        contrast = contrastive_loss(emb[:n], emb[n:], batch.same, self.settings.margin)
        aux = torch.zeros((), device=self.device)
        if self.task.n_aux:
            target = torch.cat([self.codes[batch.a], self.codes[batch.b]])
            aux = torch.nn.functional.cross_entropy(logits.float(), target, weight=self.aux_weights)
        return Losses(contrast + self.settings.aux_weight * aux, {"loss": contrast, "aux_loss": aux})

    def judge(self, side: _EvalPairs) -> dict:
        """Contrastive loss, ROC AUC of the distance and auxiliary accuracy on ``side``'s pairs and scans."""
        import torch
        from sklearn.metrics import roc_auc_score

        if len(side.pairs) == 0:
            return {"loss": float("nan"), "auc": float("nan"), "aux_accuracy": float("nan")}
        margin, same = self.settings.margin, side.same
        emb = self.embeddings()
        distance = np.sqrt(((emb[side.pairs[:, 0]] - emb[side.pairs[:, 1]]) ** 2).sum(axis=1))
        contrast = np.mean(same * distance**2 + (1 - same) * np.clip(margin - distance, 0, None) ** 2)
        auc = roc_auc_score(same, -distance) if 0 < same.sum() < len(same) else float("nan")
        result = {"loss": float(contrast), "auc": float(auc), "aux_accuracy": float("nan"), "total": float(contrast)}
        if self.task.n_aux and len(side.rows):
            codes = self.task.codes[side.rows]
            logits = self.aux_logits(side.rows)
            result["aux_accuracy"] = float((logits.argmax(1) == codes).mean())
            aux = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(codes),
                                                    weight=self.aux_weights.cpu())
            result["total"] += self.settings.aux_weight * float(aux)
        return result

    def embeddings(self) -> np.ndarray:
        """FC7 embeddings of every input (eval mode), ``(N, embed_dim)`` float32."""
        return _embed(self.model, self.images, self.device, batch_size=256)

    def aux_logits(self, rows: np.ndarray) -> np.ndarray:
        """Auxiliary (FC8) logits of the inputs ``rows`` as a float32 array."""
        import torch

        return _aux_logits(self.model, self.images[torch.from_numpy(rows).to(self.device)], self.device)

    def validate(self, epoch: int) -> dict:
        judged = self.judge(self.task.val)
        return {"val_loss": judged["total"], "val_contrastive": judged["loss"], "val_auc": judged["auc"],
                "val_aux_accuracy": judged["aux_accuracy"]}


def train_siamese(
    store, dataset: str, *, epochs: int = 30, batch_size: int = 32, margin: float = 1.0, backbone: str = "small",
    seed: int = 0, device: str = "auto", progress: bool = True, image_size: int = 64, embed_dim: int = 128,
    lr: float = 1e-3, weight_decay: float = 5e-4, aux_weight: float = 1.0, patience: int = 8,
    test_fraction: float = 0.2, val_fraction: float = 0.15, augment: bool = True,
) -> TrainResult:
    """Train the Siamese network on ``dataset``'s scans; store it; report held-out AUC and aux accuracy.

    ``image_size`` (side of the square input), ``embed_dim`` (width of the FC7 embedding, hence of the
    extracted features) and ``lr`` (Adam learning rate) shape the network and are recorded in its
    configuration (``params``) and its artifact description. The defaults suit a CPU demo; the paper
    used 224 x 224 inputs, a 1024-d embedding and learning rate 1e-5 (SGD, momentum 0.9, ~500 epochs).

    Checkpoints go to the store after every epoch; rerunning the same call resumes (or, when it had
    finished, re-evaluates without training). Returns a ``TrainResult`` whose ``artifact.short`` is the
    id for ``extract --extractor siamese --artifact ID`` and ``transfer --artifact ID``; its ``notes``
    say what was left out (an auxiliary task without classes, early stopping without validation pairs).
    """
    from extractors.training import deterministic, fit_minibatches, select_device

    settings = _SiameseSettings(epochs, batch_size, float(margin), backbone, seed, image_size, embed_dim, lr,
                                weight_decay, aux_weight, patience, test_fraction, val_fraction, augment)
    settings.check()
    dev = select_device(device)
    started = time.perf_counter()
    data = training_scans(store, dataset, image_size=image_size, seed=seed, test_fraction=test_fraction,
                          val_fraction=val_fraction)
    task = _siamese_task(data, seed=seed)
    params = settings.params()
    key = training_key("siamese", data, params, format=2)
    images = data.images(store, dev, progress=progress)
    with deterministic(seed):
        run = _SiameseTraining(settings, task, data, images, dev)
        loop = fit_minibatches(
            model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs, samples=run.samples,
            epochs=epochs, seed=seed, stream=2, batch_size=batch_size,
            validate=run.validate if len(task.val.pairs) else None, patience=patience, plateau_factor=0.1,
            store=store, name="siamese", key=key, progress=progress, desc=f"siamese {dataset}", unit="pair",
        )
        run.model.eval()
        judged = run.judge(task.test)
    held_out = {"auc": judged["auc"], "aux_accuracy": judged["aux_accuracy"]}
    config = {
        "family": "siamese", "arch": run.arch, "recipe": data.recipe.to_dict(), "dataset": dataset,
        "group_column": task.group_column, "aux_classes": task.classes if task.n_aux else [], "margin": float(margin),
        "params": params, "subjects": data.subject_lists(), "epochs_run": loop.epochs_run,
        "best_epoch": loop.best_epoch, "held_out": held_out,
    }
    artifact = store_network(store, config, run.model, meta={
        "family": "siamese", "dataset": dataset, "backbone": backbone, "embed_dim": embed_dim, "lr": lr,
        "image_size": image_size,
        "group_column": task.group_column, "params": params, "training_key": key, "epochs_run": loop.epochs_run,
        "held_out_auc": judged["auc"], "held_out_aux_accuracy": judged["aux_accuracy"]},
        subjects=data.subject_lists())
    same = task.test.same
    return TrainResult.of_loop(
        artifact, loop, data, started=started, auc=judged["auc"],
        aux_accuracy=judged["aux_accuracy"] if task.n_aux else None,
        test_pairs=(int(same.sum()), int(len(same) - same.sum())), notes=task.notes,
    )


def _embed(model, images, device, *, batch_size: int = 256, mixed: bool = True) -> np.ndarray:
    """FC7 embeddings of ``images`` (a tensor on ``device``) as a float32 array, eval mode.

    ``mixed`` allows bf16 autocast on CUDA (judging during training); extraction passes False so
    stored features are fp32 on every device.
    """
    from extractors.training import batched_outputs

    model.eval()
    embedded = batched_outputs(lambda chunk: model.embed(images[chunk]), len(images), batch_size=batch_size,
                               device=device, mixed=mixed)
    return embedded if len(embedded) else np.zeros((0, model.fc7.out_features), np.float32)


def _aux_logits(model, images, device) -> np.ndarray:
    import torch

    from extractors.training import autocast

    with torch.no_grad(), autocast(device):
        _, logits = model(images)
    return logits.float().cpu().numpy()


# --- extraction ----------------------------------------------------------------------------------------
@register_extractor("siamese")
class SiameseEmbedding(Extractor):
    """Per-scan embedding (FC7) of a trained Siamese network artifact: ``embedding`` FLOAT[d].

    ``artifact``: id (>= 6 hex characters) of a ``networks`` artifact from ``train_siamese``. The scan
    is prepared exactly as in training (the artifact's recipe); on another dataset than the one it
    was trained on, that dataset's own canvas is used. Inference is true fp32 on every device (no
    autocast, no TF32), so ``device`` and ``batch_size`` do not change the table's identity.
    """

    family = "siamese"

    def __init__(self, *, artifact: str | None = None, batch_size: int = 64, device: str = "auto"):
        self.artifact = artifact
        self.batch_size = batch_size
        self.device = device

    def validate_params(self) -> None:
        owner = type(self).__name__
        ok = (
            isinstance(self.artifact, str)
            and len(self.artifact) >= 6
            and all(c in "0123456789abcdef" for c in self.artifact.lower())
        )
        check_param(
            owner,
            "artifact",
            self.artifact,
            kind=f"the id (at least 6 hex characters) of a network printed by 'train {self.family}'",
            ok=ok,
        )
        check_param(
            owner,
            "batch_size",
            self.batch_size,
            kind="an int in [1, inf)",
            ok=isinstance(self.batch_size, int) and self.batch_size >= 1,
        )
        check_param(
            owner, "device", self.device, kind="one of 'auto', 'cpu', 'cuda'", ok=self.device in ("auto", "cpu", "cuda")
        )

    def config(self) -> dict:
        # device and batch size change nothing in the output: they stay out of the table identity
        return {"extractor": self.name, "params": {"artifact": self.artifact.lower()[:12]}}

    def table_name(self) -> str:
        return f"{self.name}_{self.artifact.lower()[:12]}"

    def units(self, store, dataset: str) -> pa.Table:
        self.dataset_ = dataset
        return _scans(store, dataset)

    def prepare(self, store, pending: pa.Table) -> None:
        from extractors.images import ImageLoader, ImageRecipe, recipe_for_scans
        from extractors.training import select_device

        self.device_ = select_device(self.device)
        artifact, config, model = load_network_artifact(store, self.artifact, family=self.family)
        if config.get("input") == "volume":
            raise ParameterError(f"Network artifact {artifact.short} was trained on volumes; extract it with "
                                 f"--input volume (one row per volume).")
        self.artifact_, self.config_ = artifact, config
        self.model_ = model.to(self.device_).eval()
        recipe = ImageRecipe.from_dict(config["recipe"])
        dataset = getattr(self, "dataset_", None) or config["dataset"]
        if dataset != config["dataset"]:
            recipe = recipe_for_scans(_scans(store, dataset), recipe.size)
        self.loader_ = ImageLoader(store, dataset, recipe, cache=0)
        self.dim_ = self._dim()

    def _dim(self) -> int:
        return int(self.config_["arch"]["embed_dim"])

    def _features(self, batch) -> np.ndarray:
        return _embed(self.model_, batch, self.device_, batch_size=len(batch), mixed=False)

    def provenance(self) -> dict:
        if not hasattr(self, "artifact_"):
            return {}
        subjects = self.config_.get("subjects") or {}
        return {"network_artifact": self.artifact_.sha256, "network_family": self.family,
                "network_dataset": self.config_["dataset"], "network_arch": self.config_["arch"],
                "network_recipe": self.config_["recipe"], "network_params": self.config_.get("params", {}),
                "network_subjects": {side: len(subjects.get(side, ())) for side in ("train", "val", "test")}}

    def output_schema(self) -> pa.Schema:
        if not hasattr(self, "dim_"):
            raise ParameterError(
                f"{type(self).__name__}.output_schema() is known only after prepare() has loaded the network."
            )
        return pa.schema(
            [("scan_id", pa.string()), ("source_sha256", pa.string()), ("embedding", pa.list_(pa.float32(), self.dim_))]
        )

    def transform(self, store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        import torch

        from extractors.images import one_blas_thread
        from extractors.training import true_fp32

        rows = pending.to_pylist()
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            good, images, failures = [], [], []
            with one_blas_thread():
                for row in chunk:
                    try:
                        images.append(self.loader_.image(row))
                        good.append(row)
                    except Exception as exc:  # recorded per scan; the run goes on
                        failures.append(Failure.from_exception(exc, key=row["scan_id"], dataset=row["dataset"],
                                                               path=row["path"], stage=f"extract:{self.name}"))
            if good:
                batch = torch.from_numpy(np.stack(images)[:, None]).to(self.device_)
                with true_fp32():
                    features = self._features(batch).astype(np.float32)
                flat = pa.array(features.reshape(-1), type=pa.float32())
                table = pa.table({
                    "scan_id": pa.array([r["scan_id"] for r in good], pa.string()),
                    "source_sha256": pa.array([r["source_sha256"] for r in good], pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim_),
                }, schema=self.output_schema())
            else:
                table = self.output_schema().empty_table()
            yield ExtractedBatch(table, failures)


_RUNTIME_OPTIONS = {"extractor", "artifact", "device", "batch_size"}


def build_from_cli(cls):
    """A CLI-alias builder for ``cls``: takes ``artifact``, ``device``, ``batch_size``; rejects the rest."""

    def builder(options: dict):
        if options.get("input") == "volume":  # a network from 'train ... --input volume': extractors.volume_nets
            return build_from_options(f"{cls.family}_volume", options)
        given = {k: v for k, v in dict(options).items() if v not in (None, False) and k not in _RUNTIME_OPTIONS}
        if given:
            raise ParameterError(
                f"extract --extractor {cls.family} takes --artifact, --device and --batch-size only; "
                f"it cannot use {', '.join('--' + k.replace('_', '-') for k in sorted(given))}."
            )
        if not options.get("artifact"):
            raise ParameterError(
                f"extract --extractor {cls.family} needs --artifact ID: the network id printed by 'train {cls.family}' "
                "(list them with: ls <store>/artifacts/networks)."
            )
        params = {"artifact": options["artifact"]}
        if options.get("device"):
            params["device"] = options["device"]
        if options.get("batch_size"):
            params["batch_size"] = int(options["batch_size"])
        return cls(**params)

    return builder


register_cli_alias("siamese", build_from_cli(SiameseEmbedding))
