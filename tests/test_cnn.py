"""CNN embeddings: intensity policy, preprocessing, layers, table identity, weights, demos end to end.

Cost plan (CI: 2 cores, no GPU, no internet). The three short names (inception_v3 at 299 px,
efficientnet_b0, convnext_tiny) run with random weights on each demo for a few units (``limit``)
— enough to check the key, the width (2048 / 1280 / 768) and one row per unit. Whole-dataset runs
(every scan / pair / specimen, a second run that does nothing, SIGKILL + resume) use timm's tiny
``test_efficientnet`` through ``model=`` — the same code path at a fraction of the cost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors import build_from_options, create_extractor
from extractors._cnn_data import Preprocess, fit_to_input, preprocess_image
from extractors._cnn_model import Embedder, arch_info, layer_width, resolve_layer
from extractors.runner import run_extraction
from features.errors import (
    BackendUnavailableError,
    InputError,
    ParameterError,
    WeightsError,
)
from features.intensity import (
    percentile_to_unit,
    to_three_channels,
    to_unit_range,
    window_to_unit,
)
from store.sql import query
from store.tables import (
    list_tables,
    read_table,
    table_exists,
    table_kv_metadata,
    table_parts,
)
from tests._demo_stores import core_copy, demo_store

REPO = Path(__file__).resolve().parent.parent
TINY = "test_efficientnet"  # timm's 0.36 M-parameter test network (160 px, 256 features)


# --- intensity policy ----------------------------------------------------------------------------------
def test_dicom_window_follows_the_standard_linear_voi_function():
    pixels = np.array([[0.0, 39.5, 40.0, 60.0, 80.5, 200.0]], np.float32)
    out = window_to_unit(pixels, center=40.0, width=81.0)  # linear on (-0.5, 79.5], 0 below, 1 above
    np.testing.assert_allclose(out, [[0.00625, 0.5, 0.50625, 0.75625, 1.0, 1.0]], atol=1e-6)
    assert window_to_unit(np.array([[-0.5, -0.6]]), center=40.0, width=81.0).max() == 0.0
    with pytest.raises(InputError, match="width"):
        window_to_unit(pixels, center=40.0, width=0.0)


def test_percentile_policy_ignores_outliers_and_flat_images_become_zero():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 10.0, (64, 64)).astype(np.float32)
    image[0, 0] = 1e6  # one hot pixel must not squash the contrast
    out = percentile_to_unit(image)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6
    assert not percentile_to_unit(np.full((8, 8), 7.0)).any()
    colour = np.stack([image, image * 0 + 5, image * 2], axis=-1)
    joint, separate = percentile_to_unit(colour), percentile_to_unit(colour, per_channel=True)
    assert not separate[..., 1].any() and joint[..., 1].max() == 0.0
    np.testing.assert_allclose(separate[..., 0], separate[..., 2], atol=1e-6)
    with pytest.raises(InputError, match="NaN"):
        percentile_to_unit(np.array([[1.0, np.nan]]))


def test_policy_uses_the_window_only_when_the_scan_has_one():
    image = np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(20, 20)
    windowed = to_unit_range(image, window_center=0.0, window_width=200.0)
    assert np.isclose(windowed.mean(), 0.5, atol=0.02) and (windowed == 0).mean() > 0.4
    for center, width in [(None, None), (float("nan"), float("nan")), (0.0, None)]:
        np.testing.assert_array_equal(
            to_unit_range(image, window_center=center, window_width=width), percentile_to_unit(image)
        )
    np.testing.assert_array_equal(
        to_unit_range(image, window_center=0.0, window_width=200.0, mode="percentile"), percentile_to_unit(image)
    )
    assert to_three_channels(np.zeros((4, 5))).shape == (4, 5, 3)
    with pytest.raises(InputError):
        to_three_channels(np.zeros((4, 5, 2)))


def test_fitting_keeps_the_aspect_ratio_and_pads_with_the_minimum():
    tall = np.full((200, 100), 0.8, np.float32)
    tall[:, :50] = 0.3
    out = fit_to_input(tall, (224, 224))
    assert out.shape == (224, 224)
    # scaled by 224/200 to 224 x 112 (no crop, no stretch), centred, border = the image minimum
    bright = np.flatnonzero(out.min(axis=0) > 0.7)
    assert bright.min() in (112, 113) and bright.max() == 167
    assert np.all(out[:, :56] == 0.3) and np.all(out[:, 168:] == 0.3)
    np.testing.assert_allclose(out[:, 60:108], 0.3, atol=1e-6)
    net_input = preprocess_image(np.random.default_rng(1).random((300, 500)) * 4000, Preprocess(size=(299, 299)))
    assert net_input.shape == (3, 299, 299) and net_input.dtype == np.float32
    np.testing.assert_array_equal(net_input[0], net_input[2])
    assert net_input.min() >= 0.0 and net_input.max() <= 1.0


# --- layers -------------------------------------------------------------------------------------------
def test_layer_names_timm_paths_and_keras_efficientnet_names():
    assert resolve_layer("efficientnet_b0", "block3b") == "blocks.2.1"
    assert resolve_layer("efficientnet_b0", "block3b_dwconv") == "blocks.2.1.conv_dw"
    assert resolve_layer("efficientnet_b0", "block1a_project_conv") == "blocks.0.0.conv_pw"
    assert layer_width("efficientnet_b0", "block3b_dwconv") == 240  # 40 channels x expansion 6
    assert layer_width("efficientnet_b0", "pooled") == 1280
    assert layer_width("convnext_tiny", "stages.2") == 384
    assert layer_width("inception_v3", "Mixed_6e") == 768
    with pytest.raises(ParameterError) as info:
        resolve_layer("efficientnet_b0", "block9z")
    assert "blocks.0, blocks.1, blocks.2, blocks.4, blocks.6" in str(info.value) and "block3b" in str(info.value)
    with pytest.raises(ParameterError, match="stages.0, stages.1"):
        resolve_layer("convnext_tiny", "block3b")  # Keras names exist only for EfficientNets


def test_intermediate_layer_matches_timms_feature_extraction_api():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("efficientnet_b0", pretrained=False).eval()
    stages = timm.create_model("efficientnet_b0", pretrained=False, features_only=True, out_indices=(2,)).eval()
    stages.load_state_dict({k: v for k, v in net.state_dict().items() if k in stages.state_dict()})
    batch = torch.rand(2, 3, 224, 224)
    embedder = Embedder(net, arch_info("efficientnet_b0"), "blocks.2.1")  # Keras block3b = end of stage 2
    with torch.inference_mode():
        ours = embedder(batch)
        theirs = stages(embedder.normalise(batch))[0].mean(dim=(2, 3))
    torch.testing.assert_close(ours, theirs)
    assert ours.shape == (2, 40)


def test_batch_composition_changes_values_only_at_rounding_level():
    import timm

    torch.manual_seed(0)
    net = timm.create_model(TINY, pretrained=False).eval().to(memory_format=torch.channels_last)
    embedder = Embedder(net, arch_info(TINY))
    images = torch.rand(5, 3, 160, 160).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        together = embedder(images)
        alone = torch.cat([embedder(images[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)  # why batch size is not identity


# --- parameters and table identity ------------------------------------------------------------------
def test_table_names_spell_the_configuration():
    def name(**params):
        return create_extractor("cnn", **params).table_name()

    assert name() == "inception_v3"
    assert name(model="efficientnet_b0", input="difference", reference="relative") == "efficientnet_b0_diff_relative"
    assert name(model="convnext_tiny", input="multiview", weights="random") == "convnext_tiny_multiview_random"
    assert name(model="efficientnet_b0", layer="block3b_dwconv") == "efficientnet_b0_blocks_2_1_conv_dw"
    assert name(model="efficientnet_b0", layer="blocks.2.1.conv_dw") == "efficientnet_b0_blocks_2_1_conv_dw"
    assert name(model="convnext_tiny.fb_in22k") == "convnext_tiny_fb_in22k"
    # settings that only reorder floating-point work keep the table; precision does not
    same = {
        name(model="efficientnet_b0", batch_size=b, workers=w, device="cpu", compile=c)
        for b, w, c in [(1, 0, False), (64, 3, True)]
    }
    assert same == {"efficientnet_b0"} == {name(model="efficientnet_b0", precision="fp32", device="cpu")}
    assert name(model="efficientnet_b0", precision="bf16") == "efficientnet_b0_bf16"
    hashed = name(model="efficientnet_b0", intensity="percentile")
    assert hashed.startswith("efficientnet_b0_") and len(hashed) == len("efficientnet_b0_") + 8


def test_weights_file_names_its_own_table(tmp_path):
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"x": torch.zeros(1)}, first)
    torch.save({"x": torch.ones(1)}, second)
    a = create_extractor("cnn", model="efficientnet_b0", weights=str(first)).table_name()
    b = create_extractor("cnn", model="efficientnet_b0", weights=str(second)).table_name()
    assert a != b and a.startswith("efficientnet_b0_") and b.startswith("efficientnet_b0_")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"batch_size": 0}, "The 'batch_size' parameter of CNNEmbedding must be an int in [1, 4096]. Got 0 instead."),
        ({"input": "video"}, "The 'input' parameter of CNNEmbedding must be a str among"),
        ({"precision": "int8"}, "The 'precision' parameter of CNNEmbedding must be a str among"),
        ({"device": "gpu"}, "The 'device' parameter of CNNEmbedding must be a str among"),
        ({"model": "inceptionv9"}, "timm has no model 'inceptionv9'"),
        ({"model": "efficientnet_b0", "layer": "nope"}, "has no layer 'nope'"),
    ],
)
def test_bad_parameters_raise_in_scikit_learn_wording(params, message):
    with pytest.raises(ParameterError) as info:
        create_extractor("cnn", **params)
    assert message in str(info.value)


def test_cli_builders_map_short_names_and_refuse_what_they_cannot_honour():
    expected = {"inception": "inception_v3", "efficientnet": "efficientnet_b0", "convnext": "convnext_tiny"}
    for alias, model in expected.items():
        assert build_from_options(alias, {"extractor": alias}).model == model
    built = build_from_options(
        "efficientnet", {"model": "convnext_small", "batch_size": 8, "compile": None, "weights": "random"}
    )
    assert (built.model, built.batch_size, built.weights) == ("convnext_small", 8, "random")
    with pytest.raises(ParameterError, match="--model"):
        build_from_options("cnn", {})
    with pytest.raises(ParameterError, match="--reference applies only to --input difference"):
        build_from_options("inception", {"reference": "relative"})
    with pytest.raises(ParameterError, match="--vocab-size"):
        build_from_options("inception", {"vocab_size": 50})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_cuda_is_refused_not_replaced_by_the_cpu(tmp_store):
    extractor = create_extractor("cnn", model=TINY, weights="random", device="cuda")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        extractor.prepare(tmp_store, None)


# --- demos end to end --------------------------------------------------------------------------------
# (dataset, input, extra params): the short names run on these for a few units each ...
SHORT_RUNS = [("crmo", "image", {}), ("chronomid", "difference", {"reference": "absolute"}), ("impc", "multiview", {})]
# ... and the tiny network on every unit of these (crmo's 90 'given' pairs instead of chronomid's 726
# absolute ones: registering 726 pairs would cost a minute of CI for no extra coverage).
FULL_RUNS = [("crmo", "image", {}), ("crmo", "difference", {"reference": "given"}), ("impc", "multiview", {})]


def _unit_count(store, dataset: str, kind: str, extra: dict) -> int:
    sql = {
        "image": "SELECT scan_id FROM scans WHERE dataset = '{d}'",
        "difference": "SELECT pair_id FROM pairs WHERE dataset = '{d}' AND reference_mode = '{r}'",
        "multiview": "SELECT DISTINCT subject, time_index FROM scans WHERE dataset = '{d}'",
    }[kind]
    return query(store, sql.format(d=dataset, r=extra.get("reference"))).num_rows


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return demo_store(tmp_path_factory, "crmo", "chronomid", "impc")


@pytest.fixture(scope="module")
def full_runs(demos, tmp_path_factory):
    """Every unit of each FULL_RUNS entry through the tiny network: (store, [summary, ...])."""
    store = core_copy(demos, tmp_path_factory.mktemp("full-runs"))
    summaries = []
    for dataset, kind, extra in FULL_RUNS:
        extractor = create_extractor(
            "cnn", model=TINY, weights="random", input=kind, batch_size=8, device="cpu", **extra
        )
        summaries.append(run_extraction(extractor, store, dataset=dataset, progress=False))
    return store, summaries


@pytest.mark.slow
@pytest.mark.parametrize("short, width", [("inception", 2048), ("efficientnet", 1280), ("convnext", 768)])
@pytest.mark.parametrize("dataset, kind, extra", SHORT_RUNS)
def test_short_names_on_each_demo(demos, tmp_path, short, width, dataset, kind, extra):
    store = core_copy(demos, tmp_path / "store")
    extractor = build_from_options(
        short, {"input": kind, "weights": "random", "batch_size": 3, "device": "cpu", **extra}
    )
    summary = run_extraction(extractor, store, dataset=dataset, limit=3, progress=False)
    assert (summary.units, summary.written, summary.failed) == (_unit_count(store, dataset, kind, extra), 3, 0)
    table = read_table(store, summary.table)
    assert table.schema.field("embedding").type.list_size == width
    assert table.column_names == [extractor.key_column(), "source_sha256", "embedding"]
    assert len(set(table.column(0).to_pylist())) == 3
    vectors = np.asarray(table.column("embedding").to_pylist(), np.float32)
    assert np.isfinite(vectors).all() and np.abs(vectors).sum(axis=1).min() > 0
    weights = table_kv_metadata(store, summary.table)["chronofeat.weights"]
    assert '"source":"random"' in weights and summary.table.endswith("_random")


@pytest.mark.slow
def test_whole_demos_give_one_row_per_unit_and_a_second_run_does_nothing(full_runs):
    store, summaries = full_runs
    for (dataset, kind, extra), summary in zip(FULL_RUNS, summaries, strict=True):
        units = _unit_count(store, dataset, kind, extra)
        assert (summary.units, summary.written, summary.failed, summary.skipped) == (units, units, 0, 0)
        table = read_table(store, summary.table)
        assert table.num_rows == units == len(set(table.column(0).to_pylist()))
        assert table.schema.field("embedding").type.list_size == 256

    def must_not_load(*args, **kwargs):
        raise AssertionError("a second run must not even load the network")

    for dataset, kind, extra in FULL_RUNS:
        extractor = create_extractor(
            "cnn", model=TINY, weights="random", input=kind, batch_size=8, device="cpu", **extra
        )
        before = table_parts(store, extractor.table_name())
        extractor.prepare = must_not_load
        again = run_extraction(extractor, store, dataset=dataset, progress=False)
        assert (again.written, again.skipped) == (0, again.units)
        assert table_parts(store, extractor.table_name()) == before


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_uninterrupted_table(full_runs, demos, tmp_path):
    reference_store, summaries = full_runs
    store = core_copy(demos, tmp_path / "killed")
    table, total = summaries[0].table, summaries[0].units  # crmo, every scan, batches of 8
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from store.layout import open_store\n"
        "from extractors import create_extractor\n"
        "from extractors.runner import run_extraction\n"
        f"e = create_extractor('cnn', model={TINY!r}, weights='random', batch_size=8, device='cpu', workers=0)\n"
        f"run_extraction(e, open_store({str(store.root)!r}), dataset='crmo', rows_per_part=16, progress=False)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:
        while not table_parts(store, table):
            assert process.poll() is None, "the extraction ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    done = read_table(store, table).num_rows
    assert 0 < done < total and done % 16 == 0
    extractor = create_extractor("cnn", model=TINY, weights="random", batch_size=8, device="cpu")
    resumed = run_extraction(extractor, store, dataset="crmo", rows_per_part=16, progress=False)
    assert (resumed.skipped, resumed.written) == (done, total - done)
    got = read_table(store, table).sort_by("scan_id")
    want = read_table(reference_store, table).sort_by("scan_id")
    assert got.column("scan_id").equals(want.column("scan_id"))
    assert got.column("source_sha256").equals(want.column("source_sha256"))
    np.testing.assert_array_equal(
        np.asarray(got.column("embedding").to_pylist(), np.float32),
        np.asarray(want.column("embedding").to_pylist(), np.float32),
    )


@pytest.mark.slow
def test_weights_file_gives_the_vectors_of_the_in_memory_model(demos, tmp_path):
    import timm

    from store.pixels import load_pixels

    torch.manual_seed(123)
    network = timm.create_model("efficientnet_b0", pretrained=False).eval()
    checkpoint = tmp_path / "my-finetuned-b0.pth"
    torch.save(network.state_dict(), checkpoint)
    store = core_copy(demos, tmp_path / "store")
    extractor = create_extractor("cnn", model="efficientnet_b0", weights=str(checkpoint), batch_size=4, device="cpu")
    summary = run_extraction(extractor, store, dataset="crmo", limit=4, progress=False)
    table = read_table(store, summary.table)
    scans = {row["scan_id"]: row for row in query(store, "SELECT * FROM scans WHERE dataset = 'crmo'").to_pylist()}
    batch = torch.from_numpy(np.stack([
        extractor.preprocess(
            load_pixels(store, "crmo", scans[key]["path"], scans[key]["frame"]),
            window_center=scans[key]["window_center"], window_width=scans[key]["window_width"],
        )
        for key in table.column("scan_id").to_pylist()
    ]))
    cfg = timm.data.resolve_model_data_config(network)
    normalised = (batch - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = network.forward_head(network.forward_features(normalised), pre_logits=True).numpy()
    np.testing.assert_allclose(np.asarray(table.column("embedding").to_pylist()), expected, rtol=1e-4, atol=1e-5)
    weights = table_kv_metadata(store, summary.table)["chronofeat.weights"]
    assert '"source":"file"' in weights and '"file":"my-finetuned-b0.pth"' in weights


@pytest.mark.slow
def test_precision_is_part_of_the_identity_and_bf16_stays_close(demos, tmp_path):
    store = core_copy(demos, tmp_path / "store")
    tables = {}
    for precision in ("fp32", "bf16"):
        extractor = create_extractor("cnn", model=TINY, weights="random", precision=precision, device="cpu")
        tables[precision] = run_extraction(extractor, store, dataset="crmo", limit=4, progress=False).table
    assert tables == {"fp32": f"{TINY}_random", "bf16": f"{TINY}_random_bf16"}
    fp32, bf16 = (
        np.asarray(read_table(store, t).sort_by("scan_id").column("embedding").to_pylist()) for t in tables.values()
    )
    assert not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(bf16, fp32, rtol=0.1, atol=0.05 * np.abs(fp32).max())


# --- offline -------------------------------------------------------------------------------------------
def _offline_env(empty: Path) -> dict:
    env = {name: str(empty) for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.slow
def test_offline_inception_fails_fast_before_any_image_and_writes_nothing(demos, tmp_path, monkeypatch, cli):
    store = core_copy(demos, tmp_path / "store")
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    for name, value in _offline_env(empty).items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    # no table (a table is a folder with parts; the writer lock may leave an empty folder behind)
    tables_before = sorted(t.name for t in list_tables(store))

    import store.pixels as pixels

    def no_pixels(*args, **kwargs):
        raise AssertionError("an image was read before the weights were checked")

    monkeypatch.setattr(pixels.PixelReader, "read", no_pixels)
    extractor = build_from_options("inception", {"extractor": "inception"})
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        run_extraction(extractor, store, dataset="crmo", progress=False)
    assert time.monotonic() - started < 10
    for needed in ("'inception_v3'", "timm/inception_v3.tv_in1k", "weights import inception_v3 FILE", "--weights FILE"):
        assert needed in str(info.value)
    assert sorted(t.name for t in list_tables(store)) == tables_before

    # The command line, timed against a child that only starts Python and imports what it imports.
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, timm, duckdb, pyarrow.parquet, sklearn"], check=True)
    imports = time.monotonic() - started
    started = time.monotonic()
    result = cli(
        "extract", "--extractor", "inception", "--dataset", "crmo", "--store", str(store.root), env=_offline_env(empty)
    )
    assert time.monotonic() - started < imports + 10
    assert result.returncode == 2, result.stderr
    assert "timm/inception_v3.tv_in1k" in result.stderr and "weights import inception_v3 FILE" in result.stderr
    assert sorted(t.name for t in list_tables(store)) == tables_before
    assert not table_exists(store, "inception_v3")
