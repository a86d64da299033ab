"""Siamese self-supervision (seed 001): pair rules, loss, augmentation, training on the spine demo, extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.siamese import (
    class_balanced_weights,
    contrastive_loss,
    evaluation_pairs,
    group_column,
    positive_pairs,
    sample_negatives,
)
from features.augment import AugmentConfig, augment_batch, sample_params
from features.errors import ParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- pure pieces ------------------------------------------------------------------------------------
def test_positive_pairs_same_subject_same_level_different_time():
    subjects = np.array(["a", "a", "a", "a", "b", "b", "a"])
    times = np.array([0, 5, 0, 5, 0, 5, 9])
    levels = np.array(["L1", "L1", "L2", "L2", "L1", "L1", "L1"])
    pairs = positive_pairs(subjects, times, levels)
    got = {tuple(p) for p in pairs.tolist()}
    assert got == {(0, 1), (0, 6), (1, 6), (2, 3), (4, 5)}
    for i, j in pairs:
        assert subjects[i] == subjects[j] and levels[i] == levels[j] and times[i] != times[j]


def test_negatives_are_other_subjects_at_the_same_level():
    rng = np.random.default_rng(0)
    subjects = np.array(["a", "a", "b", "b", "c", "c"] * 5)
    levels = np.array(["L1", "L2"] * 15)
    negatives = sample_negatives(np.arange(len(subjects)), subjects, levels, rng)
    assert len(negatives) == len(subjects)
    assert all(subjects[i] != subjects[j] and levels[i] == levels[j] for i, j in negatives)
    lonely = sample_negatives(np.array([0]), np.array(["a", "b"]), np.array(["L1", "L2"]), rng)
    assert lonely.shape == (0, 2)  # no other subject at that level: no negative


def test_evaluation_pairs_are_balanced_and_fixed():
    subjects = np.repeat(np.array(["a", "b", "c", "d"]), 4)
    times = np.tile([0, 0, 1, 1], 4)
    levels = np.tile(["L1", "L2"], 8)
    pairs, same = evaluation_pairs(subjects, times, levels, seed=3)
    again, _ = evaluation_pairs(subjects, times, levels, seed=3)
    assert same.sum() == len(same) - same.sum() == 8
    assert np.array_equal(pairs, again)
    assert all((subjects[i] == subjects[j]) == bool(s) for (i, j), s in zip(pairs, same, strict=True))


def test_contrastive_loss_matches_its_formula():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]])
    same = torch.tensor([1.0, 0.0, 0.0])
    # d = 5, 0.5, 5 ; y d^2 + (1 - y) max(0, m - d)^2 with m = 1 -> 25, 0.25, 0
    assert float(contrastive_loss(a, b, same, margin=1.0)) == pytest.approx((25 + 0.25 + 0) / 3, rel=1e-4)


def test_class_balanced_weights():
    weights = class_balanced_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    counts = np.array([3, 1, 2, 0])
    assert weights[3] == 0
    assert np.allclose(weights[:3] * counts[:3], weights[0] * 3)  # every present class weighs the same in total
    assert np.isclose((weights[:3] * counts[:3]).sum(), 6)


def test_group_column():
    assert group_column(["scan_id", "level", "view"]) == "level"
    assert group_column(["scan_id", "view"]) == "view"


def test_augmentation_ranges_translation_and_flip():
    rng = np.random.default_rng(0)
    params = sample_params(rng, 2000)
    assert np.abs(params["angle"]).max() <= 15 and params["scale"].min() >= 0.9 and params["scale"].max() <= 1.1
    assert np.abs(params["shift"]).max() <= 0.2 and 0.4 < params["flip"].mean() < 0.6
    image = np.zeros((1, 1, 64, 48), np.float32)
    image[..., 20:40, 10:20] = 1.0
    still = {"angle": [0.0], "tx": [0.25], "ty": [0.0], "scale": [1.0], "shift": [0.0], "flip": [False]}
    moved = augment_batch(image, still)[0, 0]
    cols = np.flatnonzero(moved.sum(axis=0) > 0.5)
    assert (cols[0], cols[-1]) == (22, 31)  # 0.25 * 48 = 12 px to the right
    flipped = augment_batch(image, {**still, "tx": [0.0], "flip": [True]})[0, 0]
    assert np.allclose(flipped, image[0, 0, :, ::-1], atol=1e-5)
    shifted = augment_batch(image, {**still, "tx": [0.0], "shift": [0.1]})
    assert np.allclose(shifted, image + 0.1, atol=1e-5)
    with pytest.raises(ParameterError):
        sample_params(rng, 1, AugmentConfig(scale=(1.2, 0.8)))


def test_augmentation_pads_with_the_image_minimum():
    image = np.full((1, 1, 32, 32), 5.0, np.float32)
    image[..., 8:24, 8:24] = 9.0
    out = augment_batch(
        image, {"angle": [30.0], "tx": [0.3], "ty": [0.1], "scale": [0.9], "shift": [0.0], "flip": [False]}
    )
    assert out.min() >= 5.0 - 1e-4 and out.max() <= 9.0 + 1e-4
    assert out[0, 0, 0, 0] == pytest.approx(5.0)


# --- training on the spine demo ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spine_store(tmp_path_factory):
    from store.ingest import ingest_dataset
    from store.layout import open_store

    store = open_store(tmp_path_factory.mktemp("siamese") / "store")
    ingest_dataset(store, "spine", progress=False)
    return store


@pytest.fixture(scope="module")
def trained(spine_store):
    from extractors.siamese import train_siamese

    return train_siamese(spine_store, "spine", epochs=3, batch_size=32, image_size=32, seed=0, device="cpu",
                         progress=False)


def test_train_siamese_reports_held_out_figures(spine_store, trained):
    assert trained.subjects["test"] >= 5 and trained.subjects["train"] > trained.subjects["test"]
    positives, negatives = trained.test_pairs
    assert positives > 50 and positives == negatives
    assert 0.6 < trained.auc <= 1.0  # distances already separate held-out subjects after three epochs
    assert 0.0 <= trained.aux_accuracy <= 1.0
    assert trained.epochs_run == 3 and len(trained.history) == 3
    meta = trained.artifact.meta
    assert meta["family"] == "siamese" and meta["group_column"] == "level"
    from extractors.siamese import load_network_artifact

    _, config, model = load_network_artifact(spine_store, trained.artifact.short, family="siamese")
    subjects = config["subjects"]
    assert not set(subjects["test"]) & set(subjects["train"]) and not set(subjects["val"]) & set(subjects["train"])
    assert config["aux_classes"] == sorted(["T12", "L1", "L2", "L3", "L4", "L5", "S1"])
    with pytest.raises(ParameterError, match="not a 'cae'"):
        load_network_artifact(spine_store, trained.artifact.short, family="cae")


def test_rerun_resumes_from_the_finished_checkpoint(spine_store, trained):
    from extractors.siamese import train_siamese

    again = train_siamese(spine_store, "spine", epochs=3, batch_size=32, image_size=32, seed=0, device="cpu",
                          progress=False)
    assert again.resumed_from == 3 and again.epochs_run == 3
    assert again.artifact.sha256 == trained.artifact.sha256 and again.auc == trained.auc


def test_extract_siamese_embeddings(spine_store, trained):
    from extractors import build_from_options
    from extractors.runner import run_extraction
    from store.tables import read_table, table_kv_metadata

    extractor = build_from_options(
        "siamese",
        {
            "extractor": "siamese",
            "artifact": trained.artifact.short,
            "device": "cpu",
            "batch_size": None,
            "model": None,
        },
    )
    summary = run_extraction(extractor, spine_store, dataset="spine", progress=False)
    assert summary.written == 707 and summary.failed == 0
    table = read_table(spine_store, summary.table)
    assert table.schema.field("embedding").type.list_size == 128
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.isfinite(embeddings).all() and embeddings.std(axis=0).mean() > 0
    meta = table_kv_metadata(spine_store, summary.table)
    assert trained.artifact.sha256 in meta["chronofeat.network_artifact"]
    rerun = run_extraction(extractor, spine_store, dataset="spine", progress=False)
    assert rerun.written == 0 and rerun.skipped == 707


def test_cli_alias_needs_an_artifact_and_rejects_other_options():
    from extractors import build_from_options

    with pytest.raises(ParameterError, match="--artifact"):
        build_from_options("siamese", {"artifact": None})
    with pytest.raises(ParameterError, match="--vocab-size"):
        build_from_options("siamese", {"artifact": "abcdef123456", "vocab_size": 50})
    with pytest.raises(ParameterError, match="artifact"):
        build_from_options("siamese", {"artifact": "xyz"})


# --- the network's size, embedding and learning rate (issue 16) -------------------------------------------
@pytest.mark.slow
def test_train_options_shape_the_network_and_are_recorded(spine_store):
    from extractors import build_from_options
    from extractors.runner import run_extraction
    from extractors.siamese import load_network_artifact, train_siamese
    from store.tables import read_table, table_kv_metadata

    result = train_siamese(spine_store, "spine", epochs=1, image_size=48, embed_dim=24, lr=3e-4, seed=0,
                           device="cpu", progress=False)
    meta = result.artifact.meta
    assert meta["lr"] == 3e-4 and meta["image_size"] == 48 and meta["embed_dim"] == 24
    assert meta["params"]["lr"] == 3e-4 and meta["params"]["embed_dim"] == 24
    _, config, model = load_network_artifact(spine_store, result.artifact.short, family="siamese")
    assert config["recipe"]["size"] == 48 and model.fc7.out_features == 24 and config["params"]["lr"] == 3e-4
    sides = {side: set(v) for side, v in meta["subjects"].items()}  # the artifact says whom it trained on
    assert sides == {side: set(v) for side, v in config["subjects"].items()}
    assert len(sides["train"] | sides["val"] | sides["test"]) == 40 and not sides["train"] & sides["test"]
    extractor = build_from_options("siamese", {"extractor": "siamese", "artifact": result.artifact.short,
                                               "device": "cpu"})
    summary = run_extraction(extractor, spine_store, dataset="spine", progress=False)
    assert read_table(spine_store, summary.table).schema.field("embedding").type.list_size == 24
    provenance = table_kv_metadata(spine_store, summary.table)
    assert '"lr":0.0003' in provenance["chronofeat.network_params"]
    assert result.artifact.sha256 == provenance["chronofeat.network_artifact"]


def test_train_option_checks_and_help_cite_the_paper(spine_store):
    from extractors.siamese import train_siamese
    from tests.conftest import run_cli

    with pytest.raises(ParameterError, match="'lr' parameter of train_siamese must be a float in"):
        train_siamese(spine_store, "spine", lr=0.0, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="'embed_dim' parameter"):
        train_siamese(spine_store, "spine", embed_dim=1, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="'image_size' parameter"):
        train_siamese(spine_store, "spine", image_size=40, device="cpu", progress=False)
    helped = " ".join(run_cli("train", "--help").stdout.split())
    assert "--embedding-dim" in helped and "paper: 1024" in helped and "1e-5" in helped and "224" in helped
