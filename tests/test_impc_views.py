"""IMPC views (seed 003, Tables 4-5): DV-only / LAT-only / multiview inputs, their tables, the comparison."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from classifiers.impc import HierarchicalReport, ViewComparison, compare_views, parse_backbone
from extractors.cnn import CNNEmbedding, build_cnn_from_options
from features.errors import InputError, ParameterError
from features.multiview import multiview_composite, parse_views, specimen_image, view_group, view_mean

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "test_efficientnet"  # timm's 0.36 M-parameter test network (160 px, 256 features)


def test_views_are_parsed_and_single_view_inputs_are_that_views_mean():
    assert parse_views(None) is None
    assert parse_views("lat") == ("LAT",) and parse_views("LAT,DV") == ("DV", "LAT") == parse_views("DV+LATERAL")
    assert view_group(" vd ") == "DV" and view_group("LV") == "LAT" and view_group("SKULL") is None
    with pytest.raises(InputError, match="DV, LAT or DV,LAT"):
        parse_views("DV,SKULL")
    dv = [data.camera().astype(np.float32), data.camera()[::-1].astype(np.float32)]
    lat = [data.coins().astype(np.float32)]
    only_dv = specimen_image(dv, lat, views="DV", size=(64, 80))
    assert only_dv.shape == (64, 80, 3)
    np.testing.assert_allclose(only_dv[..., 1], view_mean(dv, (64, 80)), atol=1e-6)  # no LAT anywhere
    assert np.array_equal(only_dv[..., 0], only_dv[..., 2])
    only_lat = specimen_image(dv, lat, views="LAT", size=(64, 80))
    np.testing.assert_allclose(only_lat[..., 0], view_mean(lat, (64, 80)), atol=1e-6)
    np.testing.assert_array_equal(specimen_image(dv, lat, views="DV,LAT", size=(64, 80)),
                                  multiview_composite(dv, lat, size=(64, 80)))
    with pytest.raises(InputError, match="no LAT image"):
        specimen_image(dv, [], views="LAT", size=(32, 32))


def test_views_name_their_own_tables_and_are_refused_where_meaningless():
    def name(**params):
        return CNNEmbedding(model="efficientnet_b0", weights="random", device="cpu", **params).table_name()

    assert name(input="multiview") == name(input="multiview", views="DV,LAT") == "efficientnet_b0_multiview_random"
    assert name(input="multiview", views="DV") == "efficientnet_b0_specimen_dv_random"
    assert name(input="multiview", views="lat") == "efficientnet_b0_specimen_lat_random"
    assert name(input="image", views="DV") == "efficientnet_b0_dv_random"
    assert name(input="image") == "efficientnet_b0_random"
    dv = CNNEmbedding(model="efficientnet_b0", input="multiview", views="DV", weights="random")
    assert dv.config()["views"] == "DV" and "views" not in CNNEmbedding(input="multiview").config()
    with pytest.raises(ParameterError, match="views"):
        CNNEmbedding(input="difference", views="DV").validate_params()
    with pytest.raises(ParameterError, match="'views' parameter"):
        CNNEmbedding(input="multiview", views="SKULL").validate_params()
    assert build_cnn_from_options("efficientnet", {"input": "multiview", "views": "LAT"}).views == "LAT"
    assert parse_backbone("efficientnet:random") == ("efficientnet", "random") and parse_backbone("cae") == ("cae", "")
    with pytest.raises(ParameterError, match="hub' or 'random"):
        parse_backbone("efficientnet:imagenet")


def test_seeds_left_out_are_said_not_silently_averaged():
    names = [("Level_1", "Binary"), ("Level_2", "Spine"), ("Level_2", "Ribcage")]
    aucs = np.array([[0.9, 0.8, np.nan], [0.8, 0.6, 0.7]])
    report = HierarchicalReport("r1", names, aucs, "t", train_aucs=aucs)
    assert report.seeds_used().tolist() == [2, 2, 1]
    text = "\n".join(report.summary_lines())
    assert "Level_2 Ribcage: AUC over 1 of 2 seeds" in text
    assert "Spine: AUC over" not in text
    comparison = ViewComparison("impc", "test", {"DV only": report, "LAT only": report, "multiview": report}, 1.0)
    rows = comparison.rows()
    ribcage = [r for r in rows if r["class"] == "Ribcage"]
    assert len(ribcage) == 3 and all(r["seeds"] == 1 and r["mean"] == pytest.approx(0.7) for r in ribcage)
    level2_mean = next(r for r in rows if r["level"] == "Level_2" and r["class"] == "mean")
    assert level2_mean["aucs"] == pytest.approx([0.8, 0.65]) and level2_mean["seeds"] == 2


@pytest.fixture(scope="module")
def impc_store(tmp_path_factory):
    from tests._demo_stores import core_copy, demo_store

    return core_copy(demo_store(tmp_path_factory, "impc"), tmp_path_factory.mktemp("impc-views") / "store")


@pytest.fixture(scope="module")
def view_tables(impc_store):
    from extractors.runner import run_extraction

    tables = {}
    for label, views in (("DV only", "DV"), ("LAT only", "LAT"), ("multiview", "DV,LAT")):
        extractor = CNNEmbedding(model=TINY, input="multiview", views=views, weights="random", device="cpu")
        tables[label] = run_extraction(extractor, impc_store, dataset="impc", progress=False)
    return tables


@pytest.mark.slow
def test_views_give_distinct_specimen_tables_with_one_row_per_specimen(impc_store, view_tables):
    from store.sql import query
    from store.tables import read_table, table_kv_metadata

    names = {s.table for s in view_tables.values()}
    assert names == {"test_efficientnet_specimen_dv_random", "test_efficientnet_specimen_lat_random",
                     "test_efficientnet_multiview_random"}
    specimens = query(impc_store, "SELECT count(DISTINCT (subject, time_index)) FROM scans WHERE dataset = 'impc'")
    n = specimens.column(0)[0].as_py()
    vectors = {}
    for label, summary in view_tables.items():
        assert summary.written == n and summary.failed == 0
        table = read_table(impc_store, summary.table).sort_by("specimen_id")
        vectors[label] = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        recorded = table_kv_metadata(impc_store, summary.table)
        assert recorded["chronofeat.views"] == {"DV only": "DV", "LAT only": "LAT", "multiview": "all"}[label]
    assert not np.allclose(vectors["DV only"], vectors["LAT only"], atol=1e-3)
    assert not np.allclose(vectors["DV only"], vectors["multiview"], atol=1e-3)


@pytest.mark.slow
def test_image_input_views_keep_only_that_views_scans(impc_store):
    from extractors.runner import run_extraction
    from store.sql import query

    extractor = CNNEmbedding(model=TINY, input="image", views="LAT", weights="random", device="cpu")
    summary = run_extraction(extractor, impc_store, dataset="impc", progress=False)
    assert summary.table == "test_efficientnet_lat_random"
    views = query(impc_store, f'SELECT s.view, count(*) FROM "{summary.table}" f JOIN scans s USING (scan_id) '
                              "GROUP BY 1").to_pylist()
    total = query(impc_store, "SELECT count(*) FROM scans WHERE dataset = 'impc' AND view = 'LAT'").column(0)[0]
    assert views == [{"view": "LAT", "count_star()": total.as_py()}]


@pytest.mark.slow
def test_comparison_prints_three_rows_per_level_with_seed_counts(impc_store, view_tables):
    from store.runs import run_metrics

    tables = {label: summary.table for label, summary in view_tables.items()}
    result = compare_views(impc_store, dataset="impc", tables=tables, seeds=2, device="cpu", max_epochs=15)
    lines = result.summary_lines()
    for level in ("Level_1", "Level_2", "Level_3"):
        at = next(i for i, line in enumerate(lines) if line.startswith(level))
        assert [line.split()[0] for line in lines[at + 1: at + 4]] == ["DV", "LAT", "multiview"]
        assert all(line.count("[") == len(lines[at].split()) - 1 for line in lines[at + 1: at + 4])
    rows = result.rows()
    assert {r["input"] for r in rows} == {"DV only", "LAT only", "multiview"}
    assert all(0 <= r["seeds"] <= 2 for r in rows) and any(r["seeds"] == 2 for r in rows)
    assert "wall time" in lines[-1]
    runs = {r["run_id"] for r in rows}
    assert len(runs) == 3
    splits = {m["split"] for run in runs for m in run_metrics(impc_store, run).to_pylist()}
    assert splits == {"train", "test"}
