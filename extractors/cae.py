"""Convolutional autoencoder features (seed 003, section 4.2).

``train_cae(store, dataset)`` trains ``ConvAutoencoder`` (encoder to a small latent map, decoder back,
mean squared error) on the scans of the training subjects, with early stopping on validation
subjects, and reports the reconstruction MSE and SSIM (mean ± std per image) on held-out subjects'
scans. The network is stored as a ``networks`` artifact; ``extract --extractor cae --artifact ID``
writes the encoder's latent map, flattened, as ``embedding`` FLOAT[d] per scan — a feature table
``fit`` uses like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from extractors._registry import register_cli_alias, register_extractor
from extractors.siamese import (
    SiameseEmbedding,
    TrainingScans,
    TrainingSettings,
    TrainResult,
    build_from_cli,
    store_network,
    training_key,
    training_scans,
)
from features.errors import check_param, is_int

__all__ = ["train_cae", "reconstruction_scores", "CAEFeatures"]


def reconstruction_scores(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """Per-image MSE and SSIM (data range 1) of ``(N, 1, H, W)`` arrays in [0, 1]: means and stds."""
    from skimage.metrics import structural_similarity

    mse = ((originals - reconstructions) ** 2).reshape(len(originals), -1).mean(axis=1)
    ssim = np.array([
        structural_similarity(o[0], r[0], data_range=1.0) for o, r in zip(originals, reconstructions, strict=True)
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

    owner: ClassVar[str] = "train_cae"

    def check_own(self, owner: str) -> None:
        check_param(owner, "depth", self.depth, kind="an int in [1, 4]", ok=is_int(self.depth, 1) and self.depth <= 4)
        check_param(owner, "latent_channels", self.latent_channels, kind="an int in [1, 256]",
                    ok=is_int(self.latent_channels, 1) and self.latent_channels <= 256)
        check_param(owner, "base", self.base, kind="an int in [4, 128]", ok=is_int(self.base, 4) and self.base <= 128)

    @property
    def arch(self) -> dict:
        return {"in_chans": 1, "base": self.base, "depth": self.depth, "latent_channels": self.latent_channels}


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


def train_cae(
    store, dataset: str, *, epochs: int = 30, batch_size: int = 32, seed: int = 0, device: str = "auto",
    progress: bool = True, image_size: int = 64, base: int = 16, depth: int = 3, latent_channels: int = 16,
    lr: float = 1e-3, patience: int = 5, test_fraction: float = 0.2, val_fraction: float = 0.15,
) -> TrainResult:
    """Train the autoencoder on ``dataset``; store it; return held-out MSE/SSIM in ``result.metrics``.

    Subjects are divided as in ``train_siamese`` (whole subjects, stratified by label). Resumable
    from the store's checkpoint like every chronofeat training.
    """
    from extractors.training import deterministic, fit_minibatches, select_device

    settings = _CaeSettings(epochs, batch_size, seed, image_size, base, depth, latent_channels, lr, patience,
                            test_fraction, val_fraction)
    settings.check()
    dev = select_device(device)
    started = time.perf_counter()
    data = training_scans(store, dataset, image_size=image_size, seed=seed, test_fraction=test_fraction,
                          val_fraction=val_fraction)
    params = settings.params()
    key = training_key("cae", data, params, format=1)
    images = data.images(store, dev, progress=progress)
    with deterministic(seed):
        run = _CaeTraining(settings, data, images, dev)
        loop = fit_minibatches(
            model=run.model, optimizer=run.optimizer, loss=run.loss, inputs=run.inputs, samples=data.rows("train"),
            epochs=epochs, seed=seed, stream=3, batch_size=batch_size,
            validate=run.validate if len(data.rows("val")) else None, patience=patience, store=store, name="cae",
            key=key, progress=progress, desc=f"cae {dataset}", unit="img",
        )
        run.model.eval()
        test_rows = data.rows("test")
        scores = reconstruction_scores(run.originals(test_rows), run.reconstruct(test_rows))
    latent_side = image_size // 2**depth
    config = {
        "family": "cae", "arch": settings.arch, "recipe": data.recipe.to_dict(), "dataset": dataset, "params": params,
        "embed_dim": latent_channels * latent_side * latent_side, "subjects": data.subject_lists(),
        "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch, "held_out": scores,
    }
    artifact = store_network(store, config, run.model, meta={
        "family": "cae", "dataset": dataset, "embed_dim": config["embed_dim"], "params": params,
        "training_key": key, "epochs_run": loop.epochs_run, "held_out": scores})
    return TrainResult.of_loop(
        artifact, loop, data, started=started, auc=None, aux_accuracy=None,
        metrics={"reconstruction MSE": scores["mse"], "reconstruction MSE std": scores["mse_std"],
                 "SSIM": scores["ssim"], "SSIM std": scores["ssim_std"], "images": int(scores["images"])},
    )


@register_extractor("cae")
class CAEFeatures(SiameseEmbedding):
    """Per-scan encoder features of a trained autoencoder artifact: the latent map flattened, FLOAT[d]."""

    family = "cae"

    def _dim(self) -> int:
        return int(self.config_["embed_dim"])

    def _features(self, batch) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model_.encode(batch).flatten(1).float().cpu().numpy()


register_cli_alias("cae", build_from_cli(CAEFeatures))
