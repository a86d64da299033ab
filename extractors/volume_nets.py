"""The Siamese network and the convolutional autoencoder on volumes (3-D convolutions, seed 001 section 2.4).

``train_siamese_volumes(store, dataset)`` and ``train_cae_volumes(store, dataset)`` are the 3-D twins of
``extractors.siamese.train_siamese`` and ``extractors.cae.train_cae``: the same subject division (whole
subjects, stratified by label, into training, validation and held-out test subjects), the same pair
rule (positive: one subject, same ``level``/``view``, different time points; negative: another subject),
the same losses (contrastive + class-balanced auxiliary; MSE), the same training loop
(``extractors.training.fit_minibatches``: early stopping, checkpoints, resume) and the same artifacts
(kind ``networks``, with the subjects the network saw, for ``classifiers.leakage``). The units are the
rows of the ``volumes`` table (``store.volumes``), keyed by ``volume_id``.

Inputs (``features.volume_prep``): every volume is scaled to [0, 1] by its own 0.5-99.5th percentiles,
resampled to one isotropic spacing (default: the dataset's largest physical extent over
``volume_size`` voxels) and centred on a ``volume_size`` ** 3 cube. The Siamese network is
``SiameseNet(backbone="small3d")`` (``extractors.nets3d.SmallCNN3d``); the autoencoder is
``ConvAutoencoder3d``. Siamese training augments each pair with one shared left-right flip, a random
shift of up to 1/8 of the cube per volume (zeros come in) and an intensity offset of +-0.2 per volume.

Patch mode: when the cube has more voxels than ``max_voxels`` (default 64 ** 3), or ``patch_size`` is
given, the networks train on random ``patch_size`` ** 3 patches (one corner shared by both volumes of a
pair, as the cubes share one spacing and centre), and describe a whole volume by averaging their outputs
over the patches of a sliding grid with stride ``patch_size // 2``: the FC7 embedding for the Siamese
network, the flattened latent map for the autoencoder; its reconstruction is stitched from the patches
(overlaps averaged) for the held-out MSE/SSIM.

``extract --extractor siamese|cae --input volume --artifact ID`` writes one row per volume
(``volume_id``, ``source_sha256`` = the volume's ``pixel_sha256``, ``embedding`` FLOAT[d]) to table
``siamese_volume_<artifact>`` / ``cae_volume_<artifact>``, from the artifact's own recipe and patch side.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from extractors._registry import register_cli_alias, register_extractor
from extractors.base import ExtractedBatch
from extractors.cae import _CaeSettings, _CaeTraining, reconstruction_scores
from extractors.siamese import (
    SiameseEmbedding,
    TrainingScans,
    TrainResult,
    _PairBatch,
    _siamese_task,
    _SiameseSettings,
    _SiameseTraining,
    build_from_cli,
    load_network_artifact,
    split_subjects,
    store_network,
)
from features.errors import DatasetError, ParameterError, check_param, is_int
from features.volume_prep import (
    DEFAULT_MAX_VOXELS,
    VolumeRecipe,
    common_spacing,
    cut_patches,
    patch_side,
    prepare_volume,
    random_corners,
)
from store.failures import Failure

__all__ = [
    "volume_units",
    "volume_recipe",
    "volume_cubes",
    "augment_volumes",
    "network_outputs",
    "train_siamese_volumes",
    "train_cae_volumes",
    "train_on_volumes",
    "VolumeSiameseEmbedding",
    "VolumeCAEFeatures",
    "volume_extractor_from_cli",
]


# --- volumes as inputs ---------------------------------------------------------------------------------
def volume_units(store, dataset: str) -> pa.Table:
    """``dataset``'s rows of the ``volumes`` table plus ``source_sha256`` (= the volume's ``pixel_sha256``)."""
    from store.volumes import read_volumes

    table = read_volumes(store, dataset)
    if "source_sha256" in table.column_names:
        return table
    return table.append_column("source_sha256", table.column("pixel_sha256"))


def volume_recipe(units: pa.Table, *, size: int, spacing: float | None = None,
                  intensity: str = "percentile") -> VolumeRecipe:
    """The recipe for ``units`` (rows of ``volume_units``): ``spacing`` mm, or when None the spacing at which
    the largest physical extent among them fills ``size`` voxels (``features.volume_prep.common_spacing``)."""
    if spacing is None:
        spacing = common_spacing(units.column("shape").to_pylist(), units.column("spacing").to_pylist(), size)
    recipe = VolumeRecipe(int(size), float(spacing), intensity)
    recipe.validate()
    return recipe


def volume_cubes(store, units: pa.Table, recipe: VolumeRecipe, *, progress: bool = False,
                 stage: str = "volumes") -> tuple[np.ndarray, list[Failure]]:
    """Every volume of ``units`` as a network input ``(N, 1, S, S, S)`` float32, and the volumes that failed.

    A volume that cannot be read or prepared is a ``Failure`` (key ``volume_id``, ``stage``) and its cube is
    all zeros; callers drop the failed rows (``Failure.key`` names them).
    """
    from tqdm.auto import tqdm

    from store.volumes import VolumeReader

    reader = VolumeReader(store)
    size = recipe.size
    cubes = np.zeros((units.num_rows, 1, size, size, size), np.float32)
    failures = []
    rows = units.select([c for c in ("volume_id", "dataset", "path") if c in units.column_names]).to_pylist()
    for i, row in enumerate(tqdm(rows, desc="volumes", unit="vol", disable=not progress, leave=False)):
        try:
            volume = reader.load(row["volume_id"])
            cubes[i, 0] = prepare_volume(volume.array, volume.spacing, recipe)
        except Exception as exc:  # recorded per volume; the others go on
            failures.append(Failure.from_exception(exc, key=row["volume_id"], dataset=row.get("dataset"),
                                                   path=row.get("path"), stage=stage))
    return cubes, failures


def augment_volumes(volumes, rng: np.random.Generator, *, flip: np.ndarray, max_shift: int, intensity: float = 0.2):
    """``volumes`` ``(N, C, S, S, S)`` (a tensor) shifted by up to ``max_shift`` voxels per axis (zeros come in),
    flipped left-right (last axis) where ``flip`` is True, plus one intensity offset in +-``intensity`` each;
    parameters drawn from ``rng``."""
    import torch

    n, side = len(volumes), int(volumes.shape[-1])
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 3)) + max_shift
    offsets = torch.from_numpy(rng.uniform(-intensity, intensity, size=n).astype(np.float32)).to(volumes.device)
    padded = torch.nn.functional.pad(volumes, (max_shift,) * 6) if max_shift else volumes
    out = torch.stack([padded[i, :, z : z + side, y : y + side, x : x + side] for i, (z, y, x) in enumerate(shifts)])
    chosen = torch.from_numpy(np.asarray(flip, bool)).to(volumes.device)
    out = torch.where(chosen[:, None, None, None, None], out.flip(-1), out)
    return out + offsets[:, None, None, None, None]


def network_outputs(forward, volumes, *, patch: int | None, device, mixed: bool = True,
                    batch_size: int = 16) -> np.ndarray:
    """``forward`` of every volume of the tensor ``volumes`` (whole, or averaged over its grid patches when
    ``patch`` is set; ``extractors.nets3d.grid_outputs``) as a float32 array, without gradients; bf16
    autocast on CUDA only with ``mixed``."""
    import contextlib

    import torch

    from extractors.nets3d import grid_outputs
    from extractors.training import autocast

    with torch.no_grad(), autocast(device) if mixed else contextlib.nullcontext():
        out = grid_outputs(forward, volumes, patch=patch, batch_size=batch_size)
    return out.float().cpu().numpy()


def _check_volume_settings(owner: str, settings, *, divisor: int) -> None:
    """``ParameterError`` for a spacing, voxel budget or patch side out of range (``divisor``: sides must divide)."""
    spacing = settings.spacing
    check_param(owner, "spacing", spacing, kind="a float in (0, inf) mm or None",
                ok=spacing is None or (isinstance(spacing, (int, float)) and not isinstance(spacing, bool)
                                       and spacing > 0))
    check_param(owner, "max_voxels", settings.max_voxels, kind="an int in [512, inf)",
                ok=is_int(settings.max_voxels, 512))
    size = settings.image_size
    check_param(owner, "patch_size", settings.patch_size, kind=f"None or an int in [8, volume_size={size}] "
                f"divisible by {max(8, divisor)}", ok=settings.patch_size is None or (
                    is_int(settings.patch_size, 8) and settings.patch_size <= size
                    and settings.patch_size % max(8, divisor) == 0))
    side = settings.patch or size
    if side % divisor:
        raise ParameterError(f"{owner}: the network input side {side} must be divisible by {divisor}; choose "
                             f"another --patch-size or --volume-size.")


@dataclass
class _VolumeData:
    """The training volumes: subjects divided as for scans (``TrainingScans``), their cubes, the checkpoint key."""

    data: TrainingScans
    cubes: np.ndarray
    key: str
    notes: list


def _training_volumes(store, dataset: str, settings, *, trainer: str, progress: bool) -> _VolumeData:
    """``dataset``'s volumes as cubes, divided into training, validation and test subjects; unreadable volumes
    are left out with a note."""
    from extractors.images import column_values
    from store.provenance import params_hash

    units = volume_units(store, dataset)
    recipe = volume_recipe(units, size=settings.image_size, spacing=settings.spacing)
    cubes, failed = volume_cubes(store, units, recipe, progress=progress, stage=f"train:{trainer}")
    notes = []
    if failed:
        bad = {f.key for f in failed}
        keep = np.array([v not in bad for v in units.column("volume_id").to_pylist()])
        units, cubes = units.filter(pa.array(keep)), cubes[keep]
        notes.append(f"{len(failed)} volume(s) could not be read and were left out, e.g. {failed[0].message}")
    if units.num_rows < 3:
        raise DatasetError(f"{trainer}: dataset {dataset!r} has {units.num_rows} readable volumes; a network "
                           "needs more.")
    subjects = column_values(units, "subject").astype(str)
    labels = column_values(units, "label").astype(str)
    test_s, val_s = split_subjects(subjects, labels, seed=settings.seed, test_fraction=settings.test_fraction,
                                   val_fraction=settings.val_fraction)
    side = np.where(np.isin(subjects, list(test_s)), "test", np.where(np.isin(subjects, list(val_s)), "val", "train"))
    data = TrainingScans(dataset, units, subjects, side, test_s, val_s, recipe)
    identity = params_hash({"volumes": units.column("volume_id").to_pylist(),
                            "sources": units.column("source_sha256").to_pylist()}, length=20)
    key = params_hash({"trainer": trainer, "format": 1, "dataset": dataset, "data": identity,
                       "recipe": recipe.to_dict(), "params": settings.params()}, length=20)
    return _VolumeData(data, cubes, key, notes)


# --- the Siamese network on volumes -----------------------------------------------------------------------
@dataclass
class _VolumeSiameseSettings(_SiameseSettings):
    """``train_siamese`` settings (``image_size`` = the cube side, ``--volume-size``) plus the volume options."""

    patch_size: int | None = None
    spacing: float | None = None
    max_voxels: int = DEFAULT_MAX_VOXELS

    owner: ClassVar[str] = "train_siamese_volumes"

    @property
    def patch(self) -> int | None:
        """The patch side the network trains on, or None for whole cubes."""
        return patch_side(self.image_size, self.patch_size, self.max_voxels)

    def check_own(self, owner: str) -> None:
        super().check_own(owner)
        check_param(owner, "backbone", self.backbone, kind="'small3d' (the 3-D backbone)",
                    ok=self.backbone == "small3d")
        _check_volume_settings(owner, self, divisor=8)

    def params(self) -> dict:
        """Every setting by name, with ``input`` 'volume'."""
        return {**super().params(), "input": "volume"}


class _VolumeSiameseTraining(_SiameseTraining):
    """The Siamese training on cubes ``(N, 1, S, S, S)``: pairs of (patches of) volumes, 3-D augmentation."""

    def __init__(self, settings: _VolumeSiameseSettings, task, data: TrainingScans, images, device):
        super().__init__(settings, task, data, images, device)
        self.patch = settings.patch

    def inputs(self, batch) -> _PairBatch:
        import torch

        rows = batch.rows
        a, b = torch.from_numpy(rows[:, 0]).to(self.device), torch.from_numpy(rows[:, 1]).to(self.device)
        xa, xb = self.images[a], self.images[b]
        if self.patch:
            corners = random_corners(batch.rng, len(rows), int(xa.shape[-1]), self.patch)
            xa, xb = cut_patches(xa, corners, self.patch), cut_patches(xb, corners, self.patch)
        if self.settings.augment:
            flip = batch.rng.random(len(rows)) < 0.5  # one flip per pair, as in the paper
            shift = max(1, int(xa.shape[-1]) // 8)
            xa = augment_volumes(xa, batch.rng, flip=flip, max_shift=shift)
            xb = augment_volumes(xb, batch.rng, flip=flip, max_shift=shift)
        same = torch.from_numpy(rows[:, 2].astype(np.float32)).to(self.device)
        return _PairBatch(a, b, same, xa, xb)

    def embeddings(self) -> np.ndarray:
        self.model.eval()
        return network_outputs(self.model.embed, self.images, patch=self.patch, device=self.device)

    def aux_logits(self, rows: np.ndarray) -> np.ndarray:
        import torch

        embedded = torch.from_numpy(self.embeddings()[rows]).to(self.device)
        with torch.no_grad():  # FC8 is linear: the logits of the mean embedding are the mean logits
            return self.model.fc8(embedded).float().cpu().numpy()


def train_siamese_volumes(
    store, dataset: str, *, epochs: int = 30, batch_size: int = 8, margin: float = 1.0, seed: int = 0,
    device: str = "auto", progress: bool = True, volume_size: int = 32, patch_size: int | None = None,
    spacing: float | None = None, max_voxels: int = DEFAULT_MAX_VOXELS, embed_dim: int = 128, lr: float = 1e-3,
    weight_decay: float = 5e-4, aux_weight: float = 1.0, patience: int = 8, test_fraction: float = 0.2,
    val_fraction: float = 0.15, augment: bool = True,
) -> TrainResult:
    """Train the 3-D Siamese network on ``dataset``'s volumes; store it; report held-out AUC and aux accuracy.

    ``volume_size``: side of the cube every volume is fitted to (an int in [32, 512] divisible by 16);
    ``spacing``: its isotropic voxel size in mm (default: the dataset's largest extent / ``volume_size``);
    ``patch_size`` / ``max_voxels``: patch mode (module docstring). The other options are ``train_siamese``'s.
    Returns a ``TrainResult``; ``extract --extractor siamese --input volume --artifact ID`` writes its
    embeddings.
    """
    import torch

    from extractors.training import deterministic, fit_minibatches, select_device

    settings = _VolumeSiameseSettings(epochs, batch_size, float(margin), "small3d", seed, volume_size, embed_dim, lr,
                                      weight_decay, aux_weight, patience, test_fraction, val_fraction, augment,
                                      patch_size=patch_size, spacing=spacing, max_voxels=max_voxels)
    settings.check()
    dev = select_device(device)
    started = time.perf_counter()
    volumes = _training_volumes(store, dataset, settings, trainer="siamese_volume", progress=progress)
    data = volumes.data
    task = _siamese_task(data, seed=seed)
    with deterministic(seed):
        run = _VolumeSiameseTraining(settings, task, data, torch.from_numpy(volumes.cubes).to(dev), dev)
        loop = fit_minibatches(
            model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs, samples=run.samples,
            epochs=epochs, seed=seed, stream=2, batch_size=batch_size,
            validate=run.validate if len(task.val.pairs) else None, patience=patience, plateau_factor=0.1,
            store=store, name="siamese", key=volumes.key, progress=progress, desc=f"siamese {dataset} volumes",
            unit="pair",
        )
        run.model.eval()
        judged = run.judge(task.test)
    params = settings.params()
    held_out = {"auc": judged["auc"], "aux_accuracy": judged["aux_accuracy"]}
    config = {
        "family": "siamese", "input": "volume", "patch": settings.patch, "arch": run.arch,
        "recipe": data.recipe.to_dict(), "dataset": dataset, "group_column": task.group_column,
        "aux_classes": task.classes if task.n_aux else [], "margin": float(margin), "params": params,
        "subjects": data.subject_lists(), "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch,
        "held_out": held_out,
    }
    artifact = store_network(store, config, run.model, meta={
        "family": "siamese", "input": "volume", "dataset": dataset, "backbone": "small3d", "embed_dim": embed_dim,
        "lr": lr, "volume_size": volume_size, "patch": settings.patch, "group_column": task.group_column,
        "params": params, "training_key": volumes.key, "epochs_run": loop.epochs_run,
        "held_out_auc": judged["auc"], "held_out_aux_accuracy": judged["aux_accuracy"]}, subjects=data.subject_lists())
    same = task.test.same
    return TrainResult.of_loop(
        artifact, loop, data, started=started, auc=judged["auc"],
        aux_accuracy=judged["aux_accuracy"] if task.n_aux else None,
        test_pairs=(int(same.sum()), int(len(same) - same.sum())), notes=volumes.notes + task.notes,
    )


# --- the autoencoder on volumes -----------------------------------------------------------------------------
@dataclass
class _VolumeCaeSettings(_CaeSettings):
    """``train_cae`` settings (``image_size`` = the cube side, ``--volume-size``) plus the volume options."""

    patch_size: int | None = None
    spacing: float | None = None
    max_voxels: int = DEFAULT_MAX_VOXELS

    owner: ClassVar[str] = "train_cae_volumes"

    @property
    def patch(self) -> int | None:
        """The patch side the autoencoder trains on, or None for whole cubes."""
        return patch_side(self.image_size, self.patch_size, self.max_voxels)

    @property
    def arch(self) -> dict:
        return {"in_chans": 1, "base": self.base, "depth": self.depth, "latent_channels": self.latent_channels}

    def check_own(self, owner: str) -> None:
        super().check_own(owner)
        _check_volume_settings(owner, self, divisor=2**self.depth)

    def params(self) -> dict:
        """Every setting by name, with ``input`` 'volume'."""
        return {**super().params(), "input": "volume"}


class _VolumeCaeTraining(_CaeTraining):
    """The autoencoder training on cubes: whole cubes or random patches; reconstructions stitched from patches."""

    def __init__(self, settings: _VolumeCaeSettings, data: TrainingScans, images, device):
        import torch

        from extractors.nets3d import ConvAutoencoder3d

        self.data, self.images, self.device, self.patch = data, images, device, settings.patch
        self.model = ConvAutoencoder3d(**settings.arch).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)

    def inputs(self, batch):
        x = super().inputs(batch)
        if self.patch:
            x = cut_patches(x, random_corners(batch.rng, len(x), int(x.shape[-1]), self.patch), self.patch)
        return x

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        if not self.patch:
            return super().reconstruct(rows)
        import torch

        from extractors.nets3d import stitch_outputs

        with torch.no_grad():
            out = [stitch_outputs(self.model, self.images[int(i)], patch=self.patch).float().cpu().numpy()
                   for i in rows]
        return np.stack(out) if out else np.zeros((0,) + tuple(self.images.shape[1:]), np.float32)


def train_cae_volumes(
    store, dataset: str, *, epochs: int = 30, batch_size: int = 8, seed: int = 0, device: str = "auto",
    progress: bool = True, volume_size: int = 32, patch_size: int | None = None, spacing: float | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS, base: int = 8, depth: int = 3, latent_channels: int = 8, lr: float = 1e-3,
    patience: int = 5, test_fraction: float = 0.2, val_fraction: float = 0.15,
) -> TrainResult:
    """Train ``ConvAutoencoder3d`` on ``dataset``'s volumes; store it; held-out MSE/SSIM in ``result.metrics``.

    Volume options as in ``train_siamese_volumes``; the features (``extract --extractor cae --input volume``)
    are the latent map flattened: ``latent_channels * (side / 2**depth) ** 3`` values, ``side`` the cube
    or patch side (patch mode: averaged over the grid patches).
    """
    import torch

    from extractors.training import deterministic, fit_minibatches, select_device

    settings = _VolumeCaeSettings(epochs, batch_size, seed, volume_size, base, depth, latent_channels, lr, patience,
                                  test_fraction, val_fraction, patch_size=patch_size, spacing=spacing,
                                  max_voxels=max_voxels)
    settings.check()
    dev = select_device(device)
    started = time.perf_counter()
    volumes = _training_volumes(store, dataset, settings, trainer="cae_volume", progress=progress)
    data = volumes.data
    with deterministic(seed):
        run = _VolumeCaeTraining(settings, data, torch.from_numpy(volumes.cubes).to(dev), dev)
        loop = fit_minibatches(
            model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs, samples=data.rows("train"),
            epochs=epochs, seed=seed, stream=3, batch_size=batch_size,
            validate=run.validate if len(data.rows("val")) else None, patience=patience, store=store, name="cae",
            key=volumes.key, progress=progress, unit="vol", desc=f"cae {dataset} volumes",
        )
        run.model.eval()
        test_rows = data.rows("test")
        scores = reconstruction_scores(run.originals(test_rows), run.reconstruct(test_rows))
    params = settings.params()
    side = settings.patch or volume_size
    config = {
        "family": "cae3d", "input": "volume", "patch": settings.patch, "arch": settings.arch,
        "recipe": data.recipe.to_dict(), "dataset": dataset, "params": params,
        "embed_dim": latent_channels * (side // 2**depth) ** 3, "subjects": data.subject_lists(),
        "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch, "held_out": scores,
    }
    artifact = store_network(store, config, run.model, meta={
        "family": "cae", "input": "volume", "dataset": dataset, "embed_dim": config["embed_dim"], "params": params,
        "patch": settings.patch, "training_key": volumes.key, "epochs_run": loop.epochs_run, "held_out": scores},
        subjects=data.subject_lists())
    return TrainResult.of_loop(
        artifact, loop, data, started=started, auc=None, aux_accuracy=None, notes=volumes.notes,
        metrics={"reconstruction MSE": scores["mse"], "reconstruction MSE std": scores["mse_std"],
                 "SSIM": scores["ssim"], "SSIM std": scores["ssim_std"], "volumes": int(scores["images"])},
    )


_SIAMESE_ONLY = ("margin", "embed_dim", "backbone")


def train_on_volumes(store, dataset: str, network: str, **options) -> TrainResult:
    """``train siamese|cae --input volume``: ``train_siamese_volumes`` or ``train_cae_volumes`` with the
    given ``options`` (None values dropped); ``ParameterError`` for an option the network does not take."""
    options = {k: v for k, v in options.items() if v is not None}
    if "image_size" in options:
        raise ParameterError("--image-size is for 2-D inputs; give volumes their cube side with --volume-size.")
    if "views" in options:
        raise ParameterError("--views is for 'train cae --input multiview'; a volume network reads each volume whole.")
    if network == "siamese":
        backbone = options.pop("backbone", "small3d")
        if backbone != "small3d":
            raise ParameterError(f"train siamese --input volume uses the 3-D backbone 'small3d'; got --backbone "
                                 f"{backbone!r}.")
        return train_siamese_volumes(store, dataset, **options)
    if network == "cae":
        given = sorted(set(options) & set(_SIAMESE_ONLY))
        if given:
            raise ParameterError(f"train cae --input volume does not take {', '.join(given)} (Siamese options).")
        return train_cae_volumes(store, dataset, **options)
    raise ParameterError(f"The 'network' parameter of train_on_volumes must be 'siamese' or 'cae'. Got {network!r}.")


# --- extraction ------------------------------------------------------------------------------------------------
class _VolumeNetworkFeatures(SiameseEmbedding):
    """One row per volume (``volume_id``) from a network trained with ``--input volume``."""

    network_family: ClassVar[str] = "siamese"

    def __init__(self, *, artifact: str | None = None, batch_size: int = 8, device: str = "auto"):
        super().__init__(artifact=artifact, batch_size=batch_size, device=device)

    def key_column(self):
        return "volume_id"

    def units(self, store, dataset: str) -> pa.Table:
        self.dataset_ = dataset
        return volume_units(store, dataset)

    def prepare(self, store, pending: pa.Table) -> None:
        from extractors.training import select_device

        self.device_ = select_device(self.device)
        artifact, config, model = load_network_artifact(store, self.artifact, family=self.network_family)
        if config.get("input") != "volume":
            raise ParameterError(f"Network artifact {artifact.short} was trained on 2-D scans, not volumes; extract "
                                 f"it without --input volume.")
        self.artifact_, self.config_ = artifact, config
        self.model_ = model.to(self.device_).eval()
        self.recipe_ = VolumeRecipe.from_dict(config["recipe"])
        self.patch_ = config.get("patch")
        self.dim_ = self._dim()

    def provenance(self) -> dict:
        out = super().provenance()
        if out:
            out.update({"input": "volume", "patch": self.patch_})
        return out

    def output_schema(self) -> pa.Schema:
        return super().output_schema().set(0, pa.field("volume_id", pa.string()))

    def _forward(self):
        return self.model_.embed

    def transform(self, store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        import torch

        from extractors.training import true_fp32

        for start in range(0, pending.num_rows, self.batch_size):
            chunk = pending.slice(start, self.batch_size)
            cubes, failures = volume_cubes(store, chunk, self.recipe_, stage=f"extract:{self.name}")
            bad = {f.key for f in failures}
            good = np.array([v not in bad for v in chunk.column("volume_id").to_pylist()], dtype=bool)
            schema = self.output_schema()
            if not good.any():
                yield ExtractedBatch(schema.empty_table(), failures)
                continue
            with true_fp32():
                features = network_outputs(self._forward(), torch.from_numpy(cubes[good]).to(self.device_),
                                           patch=self.patch_, device=self.device_, mixed=False)
            kept = chunk.filter(pa.array(good))
            flat = pa.array(features.astype(np.float32).reshape(-1), type=pa.float32())
            rows = pa.table({"volume_id": kept.column("volume_id"), "source_sha256": kept.column("source_sha256"),
                             "embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim_)}, schema=schema)
            yield ExtractedBatch(rows, failures)


@register_extractor("siamese_volume")
class VolumeSiameseEmbedding(_VolumeNetworkFeatures):
    """Per-volume FC7 embedding of a 3-D Siamese network (``train siamese --input volume``): FLOAT[d].

    ``artifact``: the network id. The volume is prepared with the network's own recipe (spacing, cube
    side, intensity policy); in patch mode the embedding is the mean over the sliding-grid patches.
    """

    family = "siamese"
    network_family = "siamese"


@register_extractor("cae_volume")
class VolumeCAEFeatures(_VolumeNetworkFeatures):
    """Per-volume encoder features of a 3-D autoencoder (``train cae --input volume``): the latent map
    flattened (patch mode: averaged over the sliding-grid patches), FLOAT[d]."""

    family = "cae"
    network_family = "cae3d"

    def _dim(self) -> int:
        return int(self.config_["embed_dim"])

    def _forward(self):
        model = self.model_
        return lambda x: model.encode(x).flatten(1)


def volume_extractor_from_cli(family: str, options: dict):
    """``extract --extractor siamese|cae --input volume`` (or ``--extractor siamese_volume|cae_volume``): the
    volume extractor of ``family`` with ``--artifact`` (required), ``--device`` and ``--batch-size``; other
    options are refused."""
    classes = {"siamese": VolumeSiameseEmbedding, "cae": VolumeCAEFeatures}
    if family not in classes:
        raise ParameterError(f"--input volume works with --extractor siamese or cae; got {family!r}.")
    if options.get("input") not in (None, "volume"):
        raise ParameterError(f"extract --extractor {family}_volume reads volumes; drop --input {options['input']}.")
    options = {k: v for k, v in dict(options).items() if k != "input"}
    return build_from_cli(classes[family])(options)


register_cli_alias("siamese_volume", lambda options: volume_extractor_from_cli("siamese", options))
register_cli_alias("cae_volume", lambda options: volume_extractor_from_cli("cae", options))
