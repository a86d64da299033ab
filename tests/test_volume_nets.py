"""3-D networks on volumes (issue 18): preparation, patches, the 3-D backbone and autoencoder, training, extraction."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from extractors.nets import SiameseNet, network_from_bytes, network_to_bytes
from extractors.nets3d import ConvAutoencoder3d, SmallCNN3d, grid_outputs, stitch_outputs
from features.errors import InputError, ParameterError
from features.volume_prep import (
    VolumeRecipe,
    common_spacing,
    cut_patches,
    grid_corners,
    patch_side,
    prepare_volume,
    random_corners,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- preparation -------------------------------------------------------------------------------------------
def test_prepare_volume_keeps_physical_size_on_the_common_spacing():
    volume = np.zeros((12, 20, 20), np.int16)  # 24 x 20 x 20 mm at (2, 1, 1) mm
    volume[2:10, 5:15, 5:15] = 1000  # a 16 x 10 x 10 mm block
    volume[0, 0, 0] = -50
    spacing = common_spacing([volume.shape], [(2.0, 1.0, 1.0)], 32)
    assert spacing == pytest.approx(24 / 32)
    cube = prepare_volume(volume, (2.0, 1.0, 1.0), VolumeRecipe(32, spacing))
    assert cube.shape == (32, 32, 32) and cube.dtype == np.float32
    assert cube.min() >= 0.0 and cube.max() <= 1.0
    bright = cube > 0.5
    extent_mm = [(np.ptp(np.flatnonzero(bright.any(axis=tuple(a for a in range(3) if a != ax)))) + 1) * spacing
                 for ax in range(3)]
    assert extent_mm == pytest.approx([16, 10, 10], abs=1.6)  # within about two voxels of the block's size
    centre = np.array(np.nonzero(bright)).mean(axis=1)
    assert centre == pytest.approx([15.5, 15.5, 15.5], abs=1.5)  # the volume is centred on the cube


def test_prepare_volume_refuses_bad_input_and_blank_volumes_are_zero():
    recipe = VolumeRecipe(32, 1.0)
    assert not prepare_volume(np.full((8, 8, 8), 7.0), (1, 1, 1), recipe).any()
    with pytest.raises(InputError):
        prepare_volume(np.full((8, 8, 8), np.nan), (1, 1, 1), recipe)
    with pytest.raises(InputError):
        prepare_volume(np.zeros((8, 8)), (1, 1, 1), recipe)
    with pytest.raises(InputError):
        prepare_volume(np.zeros((8, 8, 8)), (1, 0, 1), recipe)
    with pytest.raises(ParameterError, match="size"):
        VolumeRecipe(30, 1.0).validate()


def test_patch_rule_grid_and_random_patches():
    assert patch_side(32, None) is None and patch_side(64, None) is None
    assert patch_side(96, None) == 64 and patch_side(128, None, max_voxels=32**3) == 32
    assert patch_side(32, 16) == 16 and patch_side(32, 32) is None
    with pytest.raises(ParameterError, match="patch_size"):
        patch_side(32, 40)
    corners = grid_corners(48, 32)  # stride 16: starts 0, 16 on each axis
    assert len(corners) == 8 and set(corners[:, 0]) == {0, 16}
    covered = np.zeros((48, 48, 48), bool)
    for z, y, x in grid_corners(40, 16):
        covered[z : z + 16, y : y + 16, x : x + 16] = True
    assert covered[:40, :40, :40].all()
    cubes = np.arange(2 * 32**3, dtype=np.float32).reshape(2, 1, 32, 32, 32)
    corners = random_corners(np.random.default_rng(0), 2, 32, 16)
    patches = cut_patches(cubes, corners, 16)
    z, y, x = corners[1]
    assert patches.shape == (2, 1, 16, 16, 16) and np.array_equal(patches[1], cubes[1, :, z : z + 16, y : y + 16,
                                                                                     x : x + 16])


# --- networks ------------------------------------------------------------------------------------------------
def test_3d_backbone_siamese_and_autoencoder_shapes_and_serialisation():
    backbone = SmallCNN3d(widths=(4, 8, 16)).eval()
    assert backbone(torch.rand(2, 1, 16, 16, 16)).shape == (2, 16)
    net = SiameseNet(backbone="small3d", embed_dim=12, hidden=32, n_aux=3).eval()
    x = torch.rand(3, 1, 32, 32, 32)
    embedding, logits = net(x)
    assert embedding.shape == (3, 12) and logits.shape == (3, 3)
    config = {"family": "siamese", "arch": {"backbone": "small3d", "in_chans": 1, "embed_dim": 12, "hidden": 32,
                                            "n_aux": 3}}
    _, restored = network_from_bytes(network_to_bytes(config, net))
    assert torch.equal(restored.embed(x), net.embed(x))
    cae = ConvAutoencoder3d(base=4, depth=2, latent_channels=3).eval()
    assert cae(x).shape == x.shape and cae.encode(x).shape == (3, 3, 8, 8, 8)
    _, restored = network_from_bytes(network_to_bytes({"family": "cae3d", "arch": {"base": 4, "depth": 2,
                                                                                  "latent_channels": 3}}, cae))
    assert isinstance(restored, ConvAutoencoder3d) and torch.equal(restored(x), cae(x))


def test_patch_embedding_is_the_whole_volume_embedding_in_spirit():
    torch.manual_seed(0)
    net = SiameseNet(backbone="small3d", embed_dim=16, hidden=32, n_aux=0).eval()
    rng = np.random.default_rng(1)
    # a homogeneous texture: every patch sees the same statistics as the whole volume
    texture = torch.from_numpy(rng.random((2, 1, 48, 48, 48)).astype(np.float32))
    with torch.no_grad():
        whole = grid_outputs(net.embed, texture, patch=None)
        patched = grid_outputs(net.embed, texture, patch=32)
        again = grid_outputs(net.embed, texture, patch=32)
        full_patch = grid_outputs(net.embed, texture, patch=48)
    assert patched.shape == whole.shape == (2, 16) and torch.isfinite(patched).all()
    assert torch.equal(patched, again)  # deterministic
    assert torch.allclose(full_patch, whole, atol=1e-5)  # one patch = the whole volume
    cosine = torch.nn.functional.cosine_similarity(patched, whole)
    assert (cosine > 0.95).all()
    # and two different volumes stay apart: a blank cube's patch embedding is far from the texture's
    blank = torch.zeros((1, 1, 48, 48, 48))
    with torch.no_grad():
        blank_patched = grid_outputs(net.embed, blank, patch=32)
    assert torch.dist(blank_patched[0], patched[0]) > 5 * torch.dist(patched[0], whole[0])


def test_stitched_patches_rebuild_the_volume():
    volume = torch.rand(1, 40, 40, 40)
    rebuilt = stitch_outputs(lambda x: x * 2, volume, patch=16)
    assert torch.allclose(rebuilt, volume * 2, atol=1e-6)


# --- training on synthetic volumes ------------------------------------------------------------------------------
def _synthetic_volume(subject: int, session: int) -> np.ndarray:
    """A subject's anatomy: three blobs whose sizes, places and brightness depend on the subject, seen at one
    session with a shift of up to 1 mm and noise."""
    anatomy = np.random.default_rng(subject)
    seen = np.random.default_rng(1000 + 100 * subject + session)
    shape, spacing = (24, 28, 28), np.array([1.5, 1.2, 1.2])
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1) * spacing
    extent = np.array(shape) * spacing
    volume = seen.normal(0, 20, shape)
    shift = seen.uniform(-1, 1, 3)
    for _ in range(3):
        centre = anatomy.uniform(0.25, 0.75, 3) * extent + shift
        radius, brightness = anatomy.uniform(2.5, 6.0), anatomy.uniform(200, 600)
        volume += brightness * (((grid - centre) ** 2).sum(axis=-1) < radius**2)
    return volume.astype(np.float32)


@pytest.fixture
def synthetic_volumes(tmp_store, monkeypatch):
    """A store whose ``store.volumes`` serves 16 subjects x 3 sessions of synthetic volumes (labels a/b)."""
    import store.volumes as volumes

    n_subjects, sessions, spacing = 16, 3, (1.5, 1.2, 1.2)
    rows, arrays = [], {}
    for s in range(n_subjects):
        for t in range(sessions):
            vid = f"v{s:02d}{t}"
            arrays[vid] = _synthetic_volume(s, t)
            rows.append({"volume_id": vid, "pixel_sha256": f"h{vid}", "dataset": "synth", "subject": f"s{s:02d}",
                         "time_index": t, "view": "", "path": f"{vid}.nii.gz", "shape": list(arrays[vid].shape),
                         "spacing": list(spacing), "label": "ab"[s % 2]})
    table = pa.Table.from_pylist(rows)

    class Reader:
        def __init__(self, store):
            self.store = store

        def load(self, volume_id):
            if volume_id not in arrays:
                raise InputError(f"unknown volume {volume_id}")
            return volumes.Volume(arrays[volume_id], spacing, np.eye(4))

    monkeypatch.setattr(volumes, "read_volumes", lambda store, dataset: table)
    monkeypatch.setattr(volumes, "VolumeReader", Reader)
    return tmp_store


@pytest.mark.slow
def test_siamese_on_volumes_learns_subjects_and_extracts_one_row_per_volume(synthetic_volumes):
    from extractors import build_from_options
    from extractors.runner import run_extraction
    from extractors.siamese import network_subjects
    from extractors.volume_nets import train_siamese_volumes
    from store.tables import read_table, table_kv_metadata

    result = train_siamese_volumes(synthetic_volumes, "synth", epochs=3, batch_size=8, embed_dim=16, seed=0,
                                   device="cpu", progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_contrastive"] < result.history[0]["val_contrastive"]  # validation subjects
    assert result.auc > 0.75  # held-out subjects: same vs different subject from the embedding distance
    assert result.subjects["test"] >= 2 and result.test_pairs[0] > 0
    saw = network_subjects(result.artifact)
    assert not (saw["test"] & (saw["train"] | saw["val"]))
    again = train_siamese_volumes(synthetic_volumes, "synth", epochs=3, batch_size=8, embed_dim=16, seed=0,
                                  device="cpu", progress=False)  # finished: loaded from its checkpoint
    assert again.resumed_from == 3 and again.auc == result.auc and again.artifact.sha256 == result.artifact.sha256

    extractor = build_from_options("siamese", {"artifact": result.artifact.short, "input": "volume",
                                               "device": "cpu"})
    summary = run_extraction(extractor, synthetic_volumes, dataset="synth", progress=False)
    assert summary.failed == 0
    table = read_table(synthetic_volumes, extractor.table_name())
    assert table.num_rows == 48 and table.column_names == ["volume_id", "source_sha256", "embedding"]
    assert table.schema.field("embedding").type.list_size == 16
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.isfinite(embeddings).all()
    meta = table_kv_metadata(synthetic_volumes, extractor.table_name())
    assert result.artifact.sha256 in str(meta)  # the leakage rule finds the network behind the table


@pytest.mark.slow
def test_cae_on_volume_patches_reconstructs_and_gives_features(synthetic_volumes):
    from extractors import build_from_options
    from extractors.runner import run_extraction
    from extractors.volume_nets import train_cae_volumes
    from store.tables import read_table

    result = train_cae_volumes(synthetic_volumes, "synth", epochs=3, batch_size=4, volume_size=32, patch_size=16,
                               base=4, depth=2, latent_channels=4, lr=3e-3, seed=0, device="cpu", progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.metrics["reconstruction MSE"] < 0.1 and result.metrics["volumes"] >= 3
    extractor = build_from_options("cae", {"artifact": result.artifact.short, "input": "volume", "device": "cpu"})
    run_extraction(extractor, synthetic_volumes, dataset="synth", progress=False)
    table = read_table(synthetic_volumes, extractor.table_name())
    assert table.num_rows == 48 and table.schema.field("embedding").type.list_size == 4 * 4**3


def test_volume_options_are_checked(synthetic_volumes):
    from extractors import build_from_options
    from extractors.volume_nets import train_cae_volumes, train_on_volumes, train_siamese_volumes

    with pytest.raises(ParameterError, match="patch_size"):
        train_siamese_volumes(synthetic_volumes, "synth", volume_size=32, patch_size=12, device="cpu")
    with pytest.raises(ParameterError, match="image_size"):
        train_cae_volumes(synthetic_volumes, "synth", volume_size=40, device="cpu")
    with pytest.raises(ParameterError, match="volume-size"):
        train_on_volumes(synthetic_volumes, "synth", "cae", image_size=64)
    with pytest.raises(ParameterError, match="Siamese options"):
        train_on_volumes(synthetic_volumes, "synth", "cae", margin=2.0)
    with pytest.raises(ParameterError, match="--views"):
        train_on_volumes(synthetic_volumes, "synth", "siamese", views="DV")
    with pytest.raises(ParameterError, match="--artifact"):
        build_from_options("siamese", {"input": "volume"})


# --- the volumetric demo, end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_tibia3d_train_extract_and_fit_on_volumes(tmp_path, cli):
    import re

    store = ["--store", str(tmp_path / "store")]
    done = cli("ingest", "--dataset", "tibia3d", *store)
    assert done.returncode == 0, done.stderr
    trained = cli("train", "siamese", "--input", "volume", "--dataset", "tibia3d", "--epochs", "2", "--volume-size",
                  "48", "--patch-size", "32", "--device", "cpu", *store)
    assert trained.returncode == 0, trained.stderr
    assert "same-vs-different-subject ROC AUC" in trained.stdout
    artifact = re.search(r"network artifact: ([0-9a-f]{12})", trained.stdout).group(1)
    refused = cli("extract", "--extractor", "siamese", "--artifact", artifact, "--dataset", "tibia3d", *store)
    assert refused.returncode == 2 and "--input volume" in refused.stdout + refused.stderr
    extracted = cli("extract", "--extractor", "siamese", "--input", "volume", "--artifact", artifact, "--dataset",
                    "tibia3d", *store)
    assert extracted.returncode == 0 and "wrote 24 rows" in extracted.stdout + extracted.stderr
    fitted = cli("fit", "logistic", "--dataset", "tibia3d", "--features", f"siamese_volume_{artifact}", *store)
    said = fitted.stdout + fitted.stderr
    assert fitted.returncode == 0, said
    assert "unit: volumes" in said and "24 volumes of 8 subjects" in said
    assert "never saw" in said  # the held-out subjects are those the network did not train on (leakage rule)

    trained = cli("train", "cae", "--input", "volume", "--dataset", "tibia3d", "--epochs", "1", "--device", "cpu",
                  *store)
    assert trained.returncode == 0, trained.stderr
    artifact = re.search(r"network artifact: ([0-9a-f]{12})", trained.stdout).group(1)
    extracted = cli("extract", "--extractor", "cae", "--input", "volume", "--artifact", artifact, "--dataset",
                    "tibia3d", *store)
    assert extracted.returncode == 0 and "wrote 24 rows" in extracted.stdout + extracted.stderr
    counted = cli("sql", f"SELECT count(*) AS n, min(len(embedding)) AS d FROM cae_volume_{artifact}", *store)
    assert re.search(r"\b24\s+512\b", counted.stdout), counted.stdout  # 8 channels x 4^3 latent voxels
