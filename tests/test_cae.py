"""Convolutional autoencoder (seed 003, 4.2): reconstruction scores, training, encoder features in ``fit``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.cae import reconstruction_scores
from extractors.nets import ConvAutoencoder, network_from_bytes, network_to_bytes
from features.errors import WeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reconstruction_scores_of_perfect_and_poor_copies():
    rng = np.random.default_rng(0)
    images = rng.random((4, 1, 32, 32)).astype(np.float32)
    perfect = reconstruction_scores(images, images.copy())
    assert perfect["mse"] == 0 and perfect["ssim"] == pytest.approx(1.0)
    blurred = reconstruction_scores(images, np.full_like(images, 0.5))
    assert blurred["mse"] > 0.05 and blurred["ssim"] < 0.1


def test_autoencoder_shapes_and_serialisation():
    model = ConvAutoencoder(base=8, depth=3, latent_channels=4).eval()
    x = torch.rand(2, 1, 32, 32)
    assert model(x).shape == x.shape and model.encode(x).shape == (2, 4, 4, 4)
    config = {
        "family": "cae",
        "arch": {"in_chans": 1, "base": 8, "depth": 3, "latent_channels": 4},
        "value": np.float32(0.5),
    }
    restored_config, restored = network_from_bytes(network_to_bytes(config, model))
    assert restored_config["value"] == 0.5
    assert torch.equal(restored(x), model(x))
    with pytest.raises(WeightsError):
        network_from_bytes(b"junk")


@pytest.fixture(scope="module")
def spine_store(tmp_path_factory):
    from store.ingest import ingest_dataset
    from store.layout import open_store

    store = open_store(tmp_path_factory.mktemp("cae") / "store")
    ingest_dataset(store, "spine", progress=False)
    return store


def test_train_cae_extract_and_fit(spine_store):
    from classifiers.evaluate import fit_model
    from extractors import build_from_options
    from extractors.cae import train_cae
    from extractors.runner import run_extraction
    from store.tables import read_table

    result = train_cae(spine_store, "spine", epochs=3, image_size=32, base=8, depth=2, latent_channels=4, seed=0,
                       device="cpu", progress=False)
    scores = result.metrics
    assert scores["images"] > 50  # held-out subjects' scans
    assert 0 < scores["reconstruction MSE"] < 0.05
    assert 0.2 < scores["SSIM"] <= 1.0
    config = network_from_bytes(result.artifact.path.read_bytes())[0]
    assert not set(config["subjects"]["test"]) & set(config["subjects"]["train"])

    extractor = build_from_options("cae", {"artifact": result.artifact.short, "device": "cpu"})
    summary = run_extraction(extractor, spine_store, dataset="spine", progress=False)
    assert summary.written == 707 and summary.failed == 0
    table = read_table(spine_store, summary.table)
    assert table.schema.field("embedding").type.list_size == 4 * 8 * 8

    fit = fit_model(spine_store, "logistic", dataset="spine", target="level", features=summary.table, folds=3,
                      n_boot=100, progress=False)
    test = fit.summary[0]["test"]
    assert test["accuracy"][0] > 0.3  # seven vertebral levels: chance is 1/7
