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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from extractors._registry import register_cli_alias, register_extractor
from extractors.base import ExtractedBatch, Extractor
from features.errors import DatasetError, ParameterError, check_param
from store.failures import Failure

__all__ = [
    "TrainResult",
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
    keys = list(zip(subjects[order].astype(str), groups[order].astype(str)))
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


def sample_negatives(anchors: np.ndarray, subjects: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    negatives = sample_negatives(positives[:, 0], subjects, groups, rng) if len(positives) else np.zeros((0, 2), np.int64)
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


def split_subjects(subjects, labels, *, seed: int, test_fraction: float, val_fraction: float) -> tuple[frozenset, frozenset]:
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


def _column(table: pa.Table, name: str, default="") -> np.ndarray:
    if name not in table.column_names:
        return np.array([default] * table.num_rows, dtype=object)
    return np.array([default if v is None else v for v in table.column(name).to_pylist()], dtype=object)


def data_identity(table: pa.Table) -> str:
    """A hash of the scans a network is trained on (ids and pixel hashes, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for scan_id, pixel in zip(table.column("scan_id").to_pylist(), table.column("pixel_sha256").to_pylist()):
        digest.update(f"{scan_id}\0{pixel}\n".encode())
    return digest.hexdigest()


def load_network_artifact(store, ref: str, *, family: str):
    """The ``networks`` artifact ``ref`` as (artifact, config, model); ``ParameterError`` for another family."""
    from extractors.nets import network_from_bytes
    from store.artifacts import find_artifact

    artifact = find_artifact(store, NETWORK_KIND, ref)
    config, model = network_from_bytes(artifact.path.read_bytes(), what=f"network artifact {artifact.short}")
    if config.get("family") != family:
        raise ParameterError(
            f"Artifact {artifact.short} is a {config.get('family')!r} network, not a {family!r} one; give the id "
            f"printed by 'train {family}'."
        )
    return artifact, config, model


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

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the command line."""
        lines = [f"network artifact: {self.artifact.short}  ({self.artifact.path})"]
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


def _check_training_params(owner: str, *, epochs, batch_size, seed, image_size, patience) -> None:
    check_param(owner, "epochs", epochs, kind="an int in [1, inf)", ok=isinstance(epochs, int) and epochs >= 1)
    check_param(owner, "batch_size", batch_size, kind="an int in [2, inf)", ok=isinstance(batch_size, int) and batch_size >= 2)
    check_param(owner, "seed", seed, kind="an int", ok=isinstance(seed, int))
    check_param(owner, "image_size", image_size, kind="an int in [32, 512] divisible by 16",
                ok=isinstance(image_size, int) and 32 <= image_size <= 512 and image_size % 16 == 0)
    check_param(owner, "patience", patience, kind="an int in [0, inf)", ok=isinstance(patience, int) and patience >= 0)


def train_siamese(
    store,
    dataset: str,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    margin: float = 1.0,
    backbone: str = "small",
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    out: Callable[[str], None] = print,
    image_size: int = 64,
    embed_dim: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    aux_weight: float = 1.0,
    patience: int = 8,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    augment: bool = True,
) -> TrainResult:
    """Train the Siamese network on ``dataset``'s scans; store it; report held-out AUC and aux accuracy.

    Checkpoints go to the store after every epoch; rerunning the same call resumes (or, when it had
    finished, re-evaluates without training). Returns a ``TrainResult`` whose ``artifact.short`` is the
    id for ``extract --extractor siamese --artifact ID`` and ``transfer --artifact ID``.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from extractors.images import ImageLoader, ImageRecipe, dataset_canvas
    from extractors.nets import SiameseNet, network_to_bytes
    from extractors.training import (
        autocast,
        deterministic,
        epoch_rng,
        select_device,
        train_epochs,
    )
    from features.augment import augment_batch, sample_params
    from store.artifacts import save_artifact
    from store.provenance import params_hash

    owner = "train_siamese"
    _check_training_params(owner, epochs=epochs, batch_size=batch_size, seed=seed, image_size=image_size, patience=patience)
    check_param(owner, "margin", margin, kind="a float in (0, inf)", ok=isinstance(margin, (int, float)) and margin > 0)
    check_param(owner, "embed_dim", embed_dim, kind="an int in [2, inf)", ok=isinstance(embed_dim, int) and embed_dim >= 2)
    check_param(owner, "test_fraction", test_fraction, kind="a float in (0, 0.5]", ok=0 < test_fraction <= 0.5)
    check_param(owner, "val_fraction", val_fraction, kind="a float in (0, 0.5]", ok=0 < val_fraction <= 0.5)
    dev = select_device(device)
    started = time.perf_counter()

    scans = _scans(store, dataset)
    gcol = group_column(scans.column_names)
    subjects = _column(scans, "subject").astype(str)
    times = np.array([-1 if v is None else v for v in scans.column("time_index").to_pylist()], dtype=np.int64)
    groups = _column(scans, gcol).astype(str)
    labels = _column(scans, "label").astype(str)
    test_s, val_s = split_subjects(subjects, labels, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    side = np.where(np.isin(subjects, list(test_s)), "test", np.where(np.isin(subjects, list(val_s)), "val", "train"))
    train_rows, val_rows, test_rows = (np.flatnonzero(side == s) for s in ("train", "val", "test"))
    train_pos_global = positive_pairs(subjects[train_rows], times[train_rows], groups[train_rows])
    if len(train_pos_global) == 0:
        raise DatasetError(
            f"Dataset {dataset!r} has no positive pairs among its training subjects (two scans of one subject "
            f"at different time points with the same {gcol}); the Siamese network needs longitudinal data."
        )
    classes = sorted(set(groups.tolist()))
    n_aux = len(classes) if len(classes) > 1 else 0
    if n_aux == 0:
        out(f"note: every scan has the same {gcol!r}; the auxiliary {gcol} task is left out.")
    codes = np.searchsorted(np.array(classes), groups)

    recipe = ImageRecipe(image_size, dataset_canvas(scans.column("rows").to_pylist(), scans.column("cols").to_pylist()))
    params = {
        "epochs": epochs, "batch_size": batch_size, "margin": float(margin), "backbone": backbone, "seed": seed,
        "image_size": image_size, "embed_dim": embed_dim, "lr": lr, "weight_decay": weight_decay,
        "aux_weight": aux_weight, "patience": patience, "test_fraction": test_fraction,
        "val_fraction": val_fraction, "augment": augment,
    }
    key = params_hash({"trainer": "siamese", "format": 2, "dataset": dataset, "data": data_identity(scans),
                       "recipe": recipe.to_dict(), "params": params}, length=20)

    rows = scans.select([c for c in ("path", "frame", "window_center", "window_width") if c in scans.column_names]).to_pylist()
    images = torch.from_numpy(ImageLoader(store, dataset, recipe).stack(rows, progress=progress, desc=f"{dataset} images"))
    images = images.to(dev)
    codes_t = torch.from_numpy(codes).to(dev)
    aux_weights = torch.from_numpy(class_balanced_weights(codes[train_rows], max(n_aux, 1))).to(dev)

    val_pairs, val_same = evaluation_pairs(subjects[val_rows], times[val_rows], groups[val_rows], seed=seed)
    val_pairs = val_rows[val_pairs] if len(val_pairs) else val_pairs
    test_pairs, test_same = evaluation_pairs(subjects[test_rows], times[test_rows], groups[test_rows], seed=seed + 7)
    test_pairs = test_rows[test_pairs] if len(test_pairs) else test_pairs
    train_pos = train_rows[train_pos_global]

    arch = {"backbone": backbone, "in_chans": 1, "embed_dim": embed_dim, "hidden": 256, "n_aux": n_aux}
    with deterministic(seed):
        model = SiameseNet(**arch).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

        def losses(a_idx: torch.Tensor, b_idx: torch.Tensor, same: torch.Tensor, xa, xb):
            with autocast(dev):
                emb, logits = model(torch.cat([xa, xb]))
            n = len(a_idx)
            loss = contrastive_loss(emb[:n], emb[n:], same, margin)
            aux = torch.zeros((), device=dev)
            if n_aux:
                target = torch.cat([codes_t[a_idx], codes_t[b_idx]])
                aux = torch.nn.functional.cross_entropy(logits.float(), target, weight=aux_weights)
            return loss, aux

        def run_epoch(epoch: int) -> dict:
            rng = epoch_rng(seed, epoch, stream=2)
            negatives = sample_negatives(train_pos[:, 0], subjects, np.where(side == "train", groups, "\0held-out"), rng)
            pairs = np.concatenate([train_pos, negatives])
            same = np.concatenate([np.ones(len(train_pos)), np.zeros(len(negatives))]).astype(np.float32)
            order = rng.permutation(len(pairs))
            total = aux_total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                if len(batch) < 2:
                    continue
                a_idx = torch.from_numpy(pairs[batch, 0]).to(dev)
                b_idx = torch.from_numpy(pairs[batch, 1]).to(dev)
                xa, xb = images[a_idx], images[b_idx]
                if augment:
                    pa_, pb_ = sample_params(rng, len(batch)), sample_params(rng, len(batch))
                    pb_["flip"] = pa_["flip"]  # one flip per pair, as in the paper
                    xa, xb = augment_batch(xa, pa_), augment_batch(xb, pb_)
                loss, aux = losses(a_idx, b_idx, torch.from_numpy(same[batch]).to(dev), xa, xb)
                optimizer.zero_grad(set_to_none=True)
                (loss + aux_weight * aux).backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                aux_total += float(aux.detach()) * len(batch)
            return {"loss": total / len(pairs), "aux_loss": aux_total / len(pairs)}

        def judge(pairs: np.ndarray, same: np.ndarray, rows_idx: np.ndarray) -> dict:
            if len(pairs) == 0:
                return {"loss": float("nan"), "auc": float("nan"), "aux_accuracy": float("nan")}
            emb = _embed(model, images, dev, batch_size=256)
            a, b = emb[pairs[:, 0]], emb[pairs[:, 1]]
            distance = np.sqrt(((a - b) ** 2).sum(axis=1))
            contrast = np.mean(same * distance**2 + (1 - same) * np.clip(margin - distance, 0, None) ** 2)
            auc = roc_auc_score(same, -distance) if 0 < same.sum() < len(same) else float("nan")
            result = {"loss": float(contrast), "auc": float(auc), "aux_accuracy": float("nan"), "total": float(contrast)}
            if n_aux and len(rows_idx):
                logits = _aux_logits(model, images[torch.from_numpy(rows_idx).to(dev)], dev)
                result["aux_accuracy"] = float((logits.argmax(1) == codes[rows_idx]).mean())
                aux = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(codes[rows_idx]),
                                                        weight=aux_weights.cpu())
                result["total"] += aux_weight * float(aux)
            return result

        def validate(epoch: int) -> dict:
            judged = judge(val_pairs, val_same, val_rows)
            return {"val_loss": judged["total"], "val_contrastive": judged["loss"], "val_auc": judged["auc"],
                    "val_aux_accuracy": judged["aux_accuracy"]}

        validate_fn = validate if len(val_pairs) else None
        if validate_fn is None:
            out("note: the validation subjects have no positive pairs; training runs every epoch without early stopping.")
        loop = train_epochs(
            model=model, optimizer=optimizer, run_epoch=run_epoch, validate=validate_fn, epochs=epochs, seed=seed,
            monitor="val_loss", mode="min", patience=patience, store=store, name="siamese", key=key,
            progress=progress, desc=f"siamese {dataset}", plateau_factor=0.1,
        )
        model.eval()
        with torch.no_grad():
            judged = judge(test_pairs, test_same, test_rows)

    config = {
        "family": "siamese", "arch": arch, "recipe": recipe.to_dict(), "dataset": dataset, "group_column": gcol,
        "aux_classes": classes if n_aux else [], "margin": float(margin), "params": params,
        "subjects": {"train": sorted(set(subjects[train_rows])), "val": sorted(val_s), "test": sorted(test_s)},
        "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch,
        "held_out": {"auc": judged["auc"], "aux_accuracy": judged["aux_accuracy"]},
    }
    artifact = save_artifact(
        store, NETWORK_KIND, network_to_bytes(config, model.cpu()), suffix=".pt",
        meta={"family": "siamese", "dataset": dataset, "backbone": backbone, "embed_dim": embed_dim,
              "group_column": gcol, "params": params, "training_key": key, "epochs_run": loop.epochs_run,
              "held_out_auc": judged["auc"], "held_out_aux_accuracy": judged["aux_accuracy"]},
    )
    return TrainResult(
        artifact=artifact,
        auc=judged["auc"],
        aux_accuracy=judged["aux_accuracy"] if n_aux else None,
        epochs_run=loop.epochs_run,
        best_epoch=loop.best_epoch,
        resumed_from=loop.start_epoch,
        seconds=time.perf_counter() - started,
        seconds_per_epoch=loop.seconds_per_epoch,
        subjects={"train": len(set(subjects[train_rows])), "val": len(val_s), "test": len(test_s)},
        test_pairs=(int(test_same.sum()), int(len(test_same) - test_same.sum())),
        history=loop.history,
    )


def _embed(model, images, device, *, batch_size: int = 256, mixed: bool = True) -> np.ndarray:
    """FC7 embeddings of ``images`` (a tensor on ``device``) as a float32 array, eval mode.

    ``mixed`` allows bf16 autocast on CUDA (judging during training); extraction passes False so
    stored features are fp32 on every device.
    """
    import contextlib

    import torch

    from extractors.training import autocast

    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            with autocast(device) if mixed else contextlib.nullcontext():
                chunks.append(model.embed(images[start : start + batch_size]).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.fc7.out_features), np.float32)


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
        ok = isinstance(self.artifact, str) and len(self.artifact) >= 6 and all(c in "0123456789abcdef" for c in self.artifact.lower())
        check_param(owner, "artifact", self.artifact, kind=f"the id (at least 6 hex characters) of a network printed by 'train {self.family}'", ok=ok)
        check_param(owner, "batch_size", self.batch_size, kind="an int in [1, inf)", ok=isinstance(self.batch_size, int) and self.batch_size >= 1)
        check_param(owner, "device", self.device, kind="one of 'auto', 'cpu', 'cuda'", ok=self.device in ("auto", "cpu", "cuda"))

    def config(self) -> dict:
        # device and batch size change nothing in the output: they stay out of the table identity
        return {"extractor": self.name, "params": {"artifact": self.artifact.lower()[:12]}}

    def table_name(self) -> str:
        return f"{self.name}_{self.artifact.lower()[:12]}"

    def units(self, store, dataset: str) -> pa.Table:
        self.dataset_ = dataset
        return _scans(store, dataset)

    def prepare(self, store, pending: pa.Table) -> None:
        from extractors.images import ImageLoader, ImageRecipe, dataset_canvas
        from extractors.training import select_device

        self.device_ = select_device(self.device)
        artifact, config, model = load_network_artifact(store, self.artifact, family=self.family)
        self.artifact_, self.config_ = artifact, config
        self.model_ = model.to(self.device_).eval()
        recipe = ImageRecipe.from_dict(config["recipe"])
        dataset = getattr(self, "dataset_", None) or config["dataset"]
        if dataset != config["dataset"]:
            scans = _scans(store, dataset)
            recipe = ImageRecipe(recipe.size, dataset_canvas(scans.column("rows").to_pylist(), scans.column("cols").to_pylist()))
        self.loader_ = ImageLoader(store, dataset, recipe, cache=0)
        self.dim_ = self._dim()

    def _dim(self) -> int:
        return int(self.config_["arch"]["embed_dim"])

    def _features(self, batch) -> np.ndarray:
        return _embed(self.model_, batch, self.device_, batch_size=len(batch), mixed=False)

    def provenance(self) -> dict:
        if not hasattr(self, "artifact_"):
            return {}
        return {"network_artifact": self.artifact_.sha256, "network_family": self.family,
                "network_dataset": self.config_["dataset"], "network_arch": self.config_["arch"],
                "network_recipe": self.config_["recipe"]}

    def output_schema(self) -> pa.Schema:
        if not hasattr(self, "dim_"):
            raise ParameterError(f"{type(self).__name__}.output_schema() is known only after prepare() has loaded the network.")
        return pa.schema([("scan_id", pa.string()), ("source_sha256", pa.string()), ("embedding", pa.list_(pa.float32(), self.dim_))])

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
