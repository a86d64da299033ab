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
from collections.abc import Callable

import numpy as np

from extractors._registry import register_cli_alias, register_extractor
from extractors.siamese import (
    NETWORK_KIND,
    SiameseEmbedding,
    TrainResult,
    _check_training_params,
    _column,
    _scans,
    build_from_cli,
    data_identity,
    split_subjects,
)
from features.errors import check_param

__all__ = ["train_cae", "reconstruction_scores", "CAEFeatures"]


def reconstruction_scores(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """Per-image MSE and SSIM (data range 1) of ``(N, 1, H, W)`` arrays in [0, 1]: means and stds."""
    from skimage.metrics import structural_similarity

    mse = ((originals - reconstructions) ** 2).reshape(len(originals), -1).mean(axis=1)
    ssim = np.array([
        structural_similarity(o[0], r[0], data_range=1.0) for o, r in zip(originals, reconstructions)
    ])
    return {"mse": float(mse.mean()), "mse_std": float(mse.std()), "ssim": float(ssim.mean()), "ssim_std": float(ssim.std()),
            "images": float(len(originals))}


def train_cae(
    store,
    dataset: str,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    out: Callable[[str], None] = print,
    image_size: int = 64,
    base: int = 16,
    depth: int = 3,
    latent_channels: int = 16,
    lr: float = 1e-3,
    patience: int = 5,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
) -> TrainResult:
    """Train the autoencoder on ``dataset``; store it; return held-out MSE/SSIM in ``result.metrics``.

    Subjects are divided as in ``train_siamese`` (whole subjects, stratified by label). Resumable
    from the store's checkpoint like every chronofeat training.
    """
    import torch

    from extractors.images import ImageLoader, ImageRecipe, dataset_canvas
    from extractors.nets import ConvAutoencoder, network_to_bytes
    from extractors.training import (
        autocast,
        deterministic,
        epoch_rng,
        select_device,
        train_epochs,
    )
    from store.artifacts import save_artifact
    from store.provenance import params_hash

    owner = "train_cae"
    _check_training_params(owner, epochs=epochs, batch_size=batch_size, seed=seed, image_size=image_size, patience=patience)
    check_param(owner, "depth", depth, kind="an int in [1, 4]", ok=isinstance(depth, int) and 1 <= depth <= 4)
    check_param(owner, "latent_channels", latent_channels, kind="an int in [1, 256]",
                ok=isinstance(latent_channels, int) and 1 <= latent_channels <= 256)
    check_param(owner, "base", base, kind="an int in [4, 128]", ok=isinstance(base, int) and 4 <= base <= 128)
    dev = select_device(device)
    started = time.perf_counter()

    scans = _scans(store, dataset)
    subjects = _column(scans, "subject").astype(str)
    labels = _column(scans, "label").astype(str)
    test_s, val_s = split_subjects(subjects, labels, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    side = np.where(np.isin(subjects, list(test_s)), "test", np.where(np.isin(subjects, list(val_s)), "val", "train"))
    train_rows, val_rows, test_rows = (np.flatnonzero(side == s) for s in ("train", "val", "test"))

    recipe = ImageRecipe(image_size, dataset_canvas(scans.column("rows").to_pylist(), scans.column("cols").to_pylist()))
    params = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "image_size": image_size, "base": base,
              "depth": depth, "latent_channels": latent_channels, "lr": lr, "patience": patience,
              "test_fraction": test_fraction, "val_fraction": val_fraction}
    key = params_hash({"trainer": "cae", "format": 1, "dataset": dataset, "data": data_identity(scans),
                       "recipe": recipe.to_dict(), "params": params}, length=20)
    rows = scans.select([c for c in ("path", "frame", "window_center", "window_width") if c in scans.column_names]).to_pylist()
    images = torch.from_numpy(ImageLoader(store, dataset, recipe).stack(rows, progress=progress, desc=f"{dataset} images")).to(dev)

    arch = {"in_chans": 1, "base": base, "depth": depth, "latent_channels": latent_channels}
    with deterministic(seed):
        model = ConvAutoencoder(**arch).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)

        def run_epoch(epoch: int) -> dict:
            rng = epoch_rng(seed, epoch, stream=3)
            order = train_rows[rng.permutation(len(train_rows))]
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = images[torch.from_numpy(order[start : start + batch_size]).to(dev)]
                if len(batch) < 2:
                    continue
                with autocast(dev):
                    recon = model(batch)
                loss = torch.nn.functional.mse_loss(recon.float(), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            return {"loss": total / max(len(order), 1)}

        def reconstruct(rows_idx: np.ndarray) -> np.ndarray:
            outs = []
            for start in range(0, len(rows_idx), 256):
                batch = images[torch.from_numpy(rows_idx[start : start + 256]).to(dev)]
                with autocast(dev):
                    outs.append(model(batch).float().cpu().numpy())
            return np.concatenate(outs) if outs else np.zeros((0,) + tuple(images.shape[1:]), np.float32)

        def validate(epoch: int) -> dict:
            recon = reconstruct(val_rows)
            return {"val_loss": float(((recon - images[torch.from_numpy(val_rows).to(dev)].cpu().numpy()) ** 2).mean())}

        loop = train_epochs(
            model=model, optimizer=optimizer, run_epoch=run_epoch, validate=validate if len(val_rows) else None,
            epochs=epochs, seed=seed, monitor="val_loss", mode="min", patience=patience, store=store, name="cae",
            key=key, progress=progress, desc=f"cae {dataset}",
        )
        model.eval()
        with torch.no_grad():
            scores = reconstruction_scores(images[torch.from_numpy(test_rows).to(dev)].cpu().numpy(), reconstruct(test_rows))

    latent_side = image_size // 2**depth
    config = {
        "family": "cae", "arch": arch, "recipe": recipe.to_dict(), "dataset": dataset, "params": params,
        "embed_dim": latent_channels * latent_side * latent_side,
        "subjects": {"train": sorted(set(subjects[train_rows])), "val": sorted(val_s), "test": sorted(test_s)},
        "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch, "held_out": scores,
    }
    artifact = save_artifact(
        store, NETWORK_KIND, network_to_bytes(config, model.cpu()), suffix=".pt",
        meta={"family": "cae", "dataset": dataset, "embed_dim": config["embed_dim"], "params": params,
              "training_key": key, "epochs_run": loop.epochs_run, "held_out": scores},
    )
    return TrainResult(
        artifact=artifact, auc=None, aux_accuracy=None, epochs_run=loop.epochs_run, best_epoch=loop.best_epoch,
        resumed_from=loop.start_epoch, seconds=time.perf_counter() - started, seconds_per_epoch=loop.seconds_per_epoch,
        subjects={"train": len(set(subjects[train_rows])), "val": len(val_s), "test": len(test_s)},
        metrics={"reconstruction MSE": scores["mse"], "reconstruction MSE std": scores["mse_std"],
                 "SSIM": scores["ssim"], "SSIM std": scores["ssim_std"], "images": int(scores["images"])},
        history=loop.history,
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
