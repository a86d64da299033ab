"""Convolutional autoencoder features (seed 003, section 4.2).

``train_cae(store, dataset)`` trains ``ConvAutoencoder`` (encoder to a small latent map, decoder back,
mean squared error) on the scans of the training subjects, with early stopping on validation
subjects, and reports the reconstruction MSE and SSIM (mean ± std per image) on held-out subjects'
scans. The network is stored as a ``networks`` artifact; ``extract --extractor cae --artifact ID``
writes the encoder's latent map, flattened, as ``embedding`` FLOAT[d] per scan — a feature table
``fit`` uses like any other.

IMPC (seed 003) trains its CAE on one image per specimen: ``train_cae(..., input="multiview")`` trains
on the specimens' multiview composites (3 channels: mean DV, mean LAT, blended edges), or with
``views="DV"`` / ``"LAT"`` on the specimen's mean image of that view (1 channel) — the inputs of the
paper's DV-only / LAT-only / multiview comparison (``extractors.images.specimen_stack``). Subjects are
divided the same way (whole subjects, stratified by label). ``extract --extractor cae --input multiview
--artifact ID`` then writes one row per specimen (key ``specimen_id``) from the same input the network
was trained on (its configuration records ``input`` and ``views``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from extractors._registry import build_from_options, register_cli_alias, register_extractor
from extractors.siamese import (
    SiameseEmbedding,
    TrainingScans,
    TrainingSettings,
    TrainResult,
    build_from_cli,
    load_network_artifact,
    split_subjects,
    store_network,
    training_key,
    training_scans,
)
from features.errors import DatasetError, InputError, ParameterError, check_param, is_int
from features.multiview import parse_views
from store.failures import Failure

__all__ = ["train_cae", "reconstruction_scores", "CAEFeatures"]


def reconstruction_scores(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """Per-image MSE and SSIM (data range 1) of ``(N, C, H, W)`` arrays in [0, 1]: means and stds (SSIM
    of a multi-channel image is the mean over its channels)."""
    from skimage.metrics import structural_similarity

    mse = ((originals - reconstructions) ** 2).reshape(len(originals), -1).mean(axis=1)
    ssim = np.array([
        structural_similarity(o[0], r[0], data_range=1.0) if o.shape[0] == 1
        else structural_similarity(o, r, data_range=1.0, channel_axis=0)
        for o, r in zip(originals, reconstructions, strict=True)
    ])
    return {
        "mse": float(mse.mean()),
        "mse_std": float(mse.std()),
        "ssim": float(ssim.mean()),
        "ssim_std": float(ssim.std()),
        "images": float(len(originals)),
    }


@dataclass
class _CaeSettings(TrainingSettings):
    """Every parameter of ``train_cae`` that shapes the network (stored in its configuration)."""

    epochs: int
    batch_size: int
    seed: int
    image_size: int
    base: int
    depth: int
    latent_channels: int
    lr: float
    patience: int
    test_fraction: float
    val_fraction: float
    input: str = "image"
    views: str | None = None

    owner: ClassVar[str] = "train_cae"

    def params(self) -> dict:
        """The settings; ``input`` / ``views`` only for specimen inputs (scan trainings keep their keys)."""
        out = super().params()
        if self.input == "image":
            out.pop("input")
            out.pop("views")
        return out

    def check_own(self, owner: str) -> None:
        check_param(owner, "depth", self.depth, kind="an int in [1, 4]", ok=is_int(self.depth, 1) and self.depth <= 4)
        check_param(owner, "latent_channels", self.latent_channels, kind="an int in [1, 256]",
                    ok=is_int(self.latent_channels, 1) and self.latent_channels <= 256)
        check_param(owner, "base", self.base, kind="an int in [4, 128]", ok=is_int(self.base, 4) and self.base <= 128)
        check_param(owner, "input", self.input, kind="one of 'image', 'multiview'",
                    ok=self.input in ("image", "multiview"))
        try:
            parse_views(self.views)
        except InputError:
            check_param(owner, "views", self.views, kind="None, 'DV', 'LAT' or 'DV,LAT'", ok=False)
        if self.views is not None and self.input != "multiview":
            raise ParameterError("train_cae: 'views' applies to input='multiview' (one image per specimen); "
                                 "pass input='multiview' (--input multiview) or drop views.")

    @property
    def arch(self) -> dict:
        from extractors.images import specimen_channels

        chans = 1 if self.input == "image" else specimen_channels(self.views)
        return {"in_chans": chans, "base": self.base, "depth": self.depth, "latent_channels": self.latent_channels}


class _CaeTraining:
    """The autoencoder, its optimizer and the images: the loss, reconstruction and validation."""

    def __init__(self, settings: _CaeSettings, data: TrainingScans, images, device):
        import torch

        from extractors.nets import ConvAutoencoder

        self.data, self.images, self.device = data, images, device
        self.model = ConvAutoencoder(**settings.arch).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)

    def inputs(self, batch):
        import torch

        return self.images[torch.from_numpy(batch.rows).to(self.device)]

    def loss(self, batch):
        import torch

        return torch.nn.functional.mse_loss(self.model(batch).float(), batch)

    def originals(self, rows: np.ndarray) -> np.ndarray:
        import torch

        return self.images[torch.from_numpy(rows).to(self.device)].cpu().numpy()

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        import torch

        from extractors.training import batched_outputs

        out = batched_outputs(lambda chunk: self.model(self.images[torch.from_numpy(chunk).to(self.device)]), rows,
                              device=self.device)
        return out if len(out) else np.zeros((0,) + tuple(self.images.shape[1:]), np.float32)

    def validate(self, epoch: int) -> dict:
        rows = self.data.rows("val")
        return {"val_loss": float(((self.reconstruct(rows) - self.originals(rows)) ** 2).mean())}


def _canonical_views(views) -> str | None:
    """``views`` as stored: None for the composite (no choice, or both views), else 'DV' or 'LAT'."""
    chosen = parse_views(views)
    return None if chosen is None or len(chosen) == 2 else chosen[0]


def _specimen_training(store, dataset: str, settings: _CaeSettings, device, *, progress: bool):
    """(data, images on ``device``, checkpoint key) for a CAE trained on one image per specimen.

    ``data`` is a ``TrainingScans`` whose rows are specimens (its ``scans`` table holds the specimen
    units); specimens without an image of the chosen views are left out.
    """
    import torch

    from extractors.images import ImageRecipe, column_values, specimen_stack, specimens_with_views
    from store.provenance import params_hash
    from store.units import specimen_units

    units = specimens_with_views(specimen_units(store, dataset), settings.views)
    stack, failed = specimen_stack(store, dataset, units, views=settings.views, size=settings.image_size,
                                   progress=progress)
    if failed:
        keep = np.setdiff1d(np.arange(units.num_rows), [f[0] for f in failed])
        units, stack = units.take(pa.array(keep)), stack[keep]
    if units.num_rows < 3:
        raise DatasetError(f"train_cae: dataset {dataset!r} has {units.num_rows} specimens with a "
                           f"{settings.views or 'DV or LAT'} image; a CAE needs more.")
    subjects = column_values(units, "subject").astype(str)
    labels = column_values(units, "label").astype(str)
    test_s, val_s = split_subjects(subjects, labels, seed=settings.seed, test_fraction=settings.test_fraction,
                                   val_fraction=settings.val_fraction)
    side = np.where(np.isin(subjects, list(test_s)), "test", np.where(np.isin(subjects, list(val_s)), "val", "train"))
    size = settings.image_size
    data = TrainingScans(dataset, units, subjects, side, test_s, val_s, ImageRecipe(size, (size, size)))
    identity = params_hash({"specimens": units.column("specimen_id").to_pylist(),
                            "sources": units.column("source_sha256").to_pylist()}, length=20)
    key = params_hash({"trainer": "cae", "format": 1, "dataset": dataset, "data": identity,
                       "recipe": data.recipe.to_dict(), "params": settings.params()}, length=20)
    return data, torch.from_numpy(stack).to(device), key


def train_cae(
    store, dataset: str, *, epochs: int = 30, batch_size: int = 32, seed: int = 0, device: str = "auto",
    progress: bool = True, image_size: int = 64, base: int = 16, depth: int = 3, latent_channels: int = 16,
    lr: float = 1e-3, patience: int = 5, test_fraction: float = 0.2, val_fraction: float = 0.15,
    input: str = "image", views: str | None = None,
) -> TrainResult:
    """Train the autoencoder on ``dataset``; store it; return held-out MSE/SSIM in ``result.metrics``.

    ``input`` 'image': every scan; 'multiview': one image per specimen, the composite or with ``views``
    'DV' / 'LAT' that view's mean image (module docstring). Subjects are divided as in
    ``train_siamese`` (whole subjects, stratified by label). Resumable from the store's checkpoint like
    every chronofeat training.
    """
    from extractors.training import deterministic, fit_minibatches, select_device

    settings = _CaeSettings(epochs, batch_size, seed, image_size, base, depth, latent_channels, lr, patience,
                            test_fraction, val_fraction, input, _canonical_views(views))
    settings.check()
    dev = select_device(device)
    started = time.perf_counter()
    params = settings.params()
    if input == "multiview":
        data, images, key = _specimen_training(store, dataset, settings, dev, progress=progress)
    else:
        data = training_scans(store, dataset, image_size=image_size, seed=seed, test_fraction=test_fraction,
                              val_fraction=val_fraction)
        key = training_key("cae", data, params, format=1)
        images = data.images(store, dev, progress=progress)
    with deterministic(seed):
        run = _CaeTraining(settings, data, images, dev)
        loop = fit_minibatches(
            model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs, samples=data.rows("train"),
            epochs=epochs, seed=seed, stream=3, batch_size=batch_size,
            validate=run.validate if len(data.rows("val")) else None, patience=patience, store=store, name="cae",
            key=key, progress=progress, unit="img",
        desc=f"cae {dataset}" if input == "image" else f"cae {dataset} specimens {settings.views or 'DV+LAT'}",
        )
        run.model.eval()
        test_rows = data.rows("test")
        scores = reconstruction_scores(run.originals(test_rows), run.reconstruct(test_rows))
    latent_side = image_size // 2**depth
    config = {
        "family": "cae", "arch": settings.arch, "recipe": data.recipe.to_dict(), "dataset": dataset, "params": params,
        "input": input, "views": settings.views,
        "embed_dim": latent_channels * latent_side * latent_side, "subjects": data.subject_lists(),
        "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch, "held_out": scores,
    }
    params = {**params, "input": input, "views": settings.views}  # in the artifact's description too
    artifact = store_network(store, config, run.model, meta={
        "family": "cae", "dataset": dataset, "embed_dim": config["embed_dim"], "params": params,
        "training_key": key, "epochs_run": loop.epochs_run, "held_out": scores}, subjects=data.subject_lists())
    return TrainResult.of_loop(
        artifact, loop, data, started=started, auc=None, aux_accuracy=None,
        metrics={"reconstruction MSE": scores["mse"], "reconstruction MSE std": scores["mse_std"],
                 "SSIM": scores["ssim"], "SSIM std": scores["ssim_std"], "images": int(scores["images"])},
    )


@register_extractor("cae")
class CAEFeatures(SiameseEmbedding):
    """Encoder features of a trained autoencoder artifact: the latent map flattened, FLOAT[d].

    ``input`` 'image' (default): one row per scan (key ``scan_id``), for a network trained on scans.
    'multiview': one row per specimen (key ``specimen_id``) from the input the network was trained on —
    the composite, or the mean DV / LAT image (its configuration's ``views``); specimens without an
    image of those views are recorded in ``failures``.
    """

    family = "cae"

    def __init__(self, *, artifact: str | None = None, batch_size: int = 64, device: str = "auto",
                 input: str = "image"):
        super().__init__(artifact=artifact, batch_size=batch_size, device=device)
        self.input = input

    def validate_params(self) -> None:
        super().validate_params()
        check_param("CAEFeatures", "input", self.input, kind="one of 'image', 'multiview'",
                    ok=self.input in ("image", "multiview"))

    def config(self) -> dict:
        out = super().config()
        if self.input != "image":
            out["params"]["input"] = self.input
        return out

    def key_column(self):
        return "specimen_id" if self.input == "multiview" else "scan_id"

    def _network_config(self, store) -> dict:
        """The artifact's configuration, checked to be a network trained on this extractor's ``input``."""
        artifact, config, model = load_network_artifact(store, self.artifact, family=self.family)
        trained = config.get("input", "image")
        if trained != self.input:
            raise ParameterError(
                f"CAE artifact {artifact.short} was trained on input {trained!r}; extract it with --input {trained} "
                f"(got input={self.input!r})."
            )
        return config

    def units(self, store, dataset: str) -> pa.Table:
        config = self._network_config(store)  # before any stored row is looked at: the table name is the artifact's
        if self.input == "image":
            return super().units(store, dataset)
        from extractors.images import specimens_with_views
        from store.units import specimen_units

        self.dataset_ = dataset
        units = specimens_with_views(specimen_units(store, dataset), config.get("views"))
        return units.append_column("dataset", pa.array([dataset] * units.num_rows, pa.string()))

    def prepare(self, store, pending: pa.Table) -> None:
        self._network_config(store)
        if self.input == "image":
            super().prepare(store, pending)
            return
        from extractors.training import select_device

        self.device_ = select_device(self.device)
        self.artifact_, self.config_, model = load_network_artifact(store, self.artifact, family=self.family)
        self.model_ = model.to(self.device_).eval()
        self.dim_ = self._dim()

    def provenance(self) -> dict:
        out = super().provenance()
        if out and self.input != "image":
            out.update({"input": self.input, "views": self.config_.get("views") or "DV+LAT"})
        return out

    def output_schema(self) -> pa.Schema:
        schema = super().output_schema()
        if self.input == "image":
            return schema
        return schema.set(0, pa.field("specimen_id", pa.string()))

    def _dim(self) -> int:
        return int(self.config_["embed_dim"])

    def _features(self, batch) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model_.encode(batch).flatten(1).float().cpu().numpy()

    def transform(self, store, pending: pa.Table):
        if self.input == "image":
            yield from super().transform(store, pending)
            return
        for start in range(0, pending.num_rows, self.batch_size):
            yield self._specimen_batch(store, pending.slice(start, self.batch_size))

    def _specimen_batch(self, store, chunk: pa.Table):
        """One ``ExtractedBatch`` of specimen rows: the artifact's input for each specimen, encoded."""
        import torch

        from extractors.base import ExtractedBatch
        from extractors.images import specimen_stack
        from extractors.training import true_fp32

        dataset = self.dataset_
        size = int(self.config_["recipe"]["size"])
        stack, failed = specimen_stack(store, dataset, chunk, views=self.config_.get("views"), size=size,
                                       progress=False)
        ids, paths = chunk.column("specimen_id").to_pylist(), chunk.column("paths").to_pylist()
        failures = [Failure(key=ids[i], dataset=dataset, path=";".join(paths[i]), stage=f"extract:{self.name}",
                            error_class=cls, message=message) for i, cls, message in failed]
        good = np.setdiff1d(np.arange(chunk.num_rows), [f[0] for f in failed])
        schema = self.output_schema()
        if not len(good):
            return ExtractedBatch(schema.empty_table(), failures)
        with true_fp32():
            features = self._features(torch.from_numpy(stack[good]).to(self.device_)).astype(np.float32)
        sources = chunk.column("source_sha256").to_pylist()
        flat = pa.array(features.reshape(-1), type=pa.float32())
        rows = pa.table({"specimen_id": pa.array([ids[i] for i in good], pa.string()),
                         "source_sha256": pa.array([sources[i] for i in good], pa.string()),
                         "embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim_)}, schema=schema)
        return ExtractedBatch(rows, failures)


def _cae_from_cli(options: dict) -> CAEFeatures:
    """``extract --extractor cae``: ``--artifact`` (required), ``--device``, ``--batch-size``, and ``--input
    image|multiview`` (multiview for a network from ``train cae --input multiview``)."""
    options = dict(options or {})
    chosen = options.pop("input", None)
    if chosen == "volume":  # a network from 'train cae --input volume': extractors.volume_nets
        return build_from_options("cae_volume", options)
    if chosen not in (None, "image", "multiview"):
        raise ParameterError(f"extract --extractor cae takes --input image or multiview; got {chosen!r}.")
    if options.get("views") is not None:
        raise ParameterError("extract --extractor cae takes no --views: the network's own views are used "
                             "(give them to 'train cae --input multiview --views ...').")
    options.pop("views", None)
    extractor = build_from_cli(CAEFeatures)(options)
    if chosen:
        extractor = CAEFeatures(**{**extractor.get_params(deep=False), "input": chosen})
    return extractor


register_cli_alias("cae", _cae_from_cli)
