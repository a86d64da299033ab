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


@pytest.fixture(scope="module")
def impc_store(tmp_path_factory):
    from tests._demo_stores import core_copy, demo_store

    return core_copy(demo_store(tmp_path_factory, "impc"), tmp_path_factory.mktemp("cae-impc") / "store")


@pytest.mark.slow
def test_cae_on_the_multiview_composite_trains_and_extracts_per_specimen(impc_store):
    from extractors import build_from_options
    from extractors.cae import CAEFeatures, train_cae
    from extractors.runner import run_extraction
    from features.errors import ParameterError
    from store.tables import read_table, table_kv_metadata

    small = dict(epochs=2, image_size=32, base=8, depth=2, latent_channels=2, device="cpu", progress=False)
    composite = train_cae(impc_store, "impc", input="multiview", **small)
    config = network_from_bytes(composite.artifact.path.read_bytes())[0]
    assert config["input"] == "multiview" and config["views"] is None and config["arch"]["in_chans"] == 3
    assert 0 < composite.metrics["images"] < 300  # held-out specimens, one composite each
    assert 0 < composite.metrics["reconstruction MSE"] < 0.2 and 0 < composite.metrics["SSIM"] <= 1
    dv = train_cae(impc_store, "impc", input="multiview", views="dv", **small)
    assert network_from_bytes(dv.artifact.path.read_bytes())[0]["arch"]["in_chans"] == 1
    assert dv.artifact.sha256 != composite.artifact.sha256

    tables = {}
    for name, net in (("composite", composite), ("dv", dv)):
        extractor = build_from_options("cae", {"artifact": net.artifact.short, "device": "cpu", "input": "multiview"})
        summary = run_extraction(extractor, impc_store, dataset="impc", progress=False)
        assert summary.written == 300 and summary.failed == 0
        table = read_table(impc_store, summary.table)
        assert table.column_names[0] == "specimen_id" and table.schema.field("embedding").type.list_size == 2 * 8 * 8
        tables[name] = summary.table
        assert table_kv_metadata(impc_store, summary.table)["chronofeat.views"] == ("DV" if name == "dv" else "DV+LAT")
    assert tables["composite"] != tables["dv"]
    with pytest.raises(ParameterError, match="--input multiview"):
        run_extraction(CAEFeatures(artifact=composite.artifact.short, device="cpu"), impc_store, dataset="impc",
                       progress=False)
    with pytest.raises(ParameterError, match="--views"):
        build_from_options("cae", {"artifact": dv.artifact.short, "views": "DV"})
    with pytest.raises(ParameterError, match="views"):
        train_cae(impc_store, "impc", views="DV", **small)
