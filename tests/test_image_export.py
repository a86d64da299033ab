"""``cli.py export images``: PNGs hold exactly what the extractors see, the index lists them, --where and
--out are guarded, and a rerun resumes."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from extractors.image_export import ExportSettings, export_images
from extractors.images import ImageLoader, recipe_for_scans, specimen_stack
from features.errors import InputError, ParameterError, ReadOnlyQueryError, UnsafeLocationError
from store.image_files import read_png
from store.sql import query
from store.units import pair_units, scan_units, specimen_units
from tests._demo_stores import core_copy, demo_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return demo_store(tmp_path_factory, "chronomid")


def _index(summary) -> list[dict]:
    with open(summary.index, newline="") as handle:
        return list(csv.DictReader(handle))


def _loader(store, size=None):
    scans = scan_units(store, "chronomid")
    recipe = recipe_for_scans(scans, size or 1)
    return ImageLoader(store, "chronomid", recipe), {r["scan_id"]: r for r in scans.to_pylist()}


def _count(store, sql: str) -> int:
    return query(store, sql).column(0).to_pylist()[0]


def test_image_pngs_equal_the_loaders_policy_image(store, tmp_path):
    summary = export_images(store, "chronomid", ExportSettings(kind="image", limit=12), tmp_path, progress=False)
    rows = _index(summary)
    assert (summary.written, summary.skipped, len(rows), summary.failures) == (12, 0, 12, [])
    loader, scans = _loader(store)
    for row in rows:
        scan = scans[row["scan_id"]]
        expected = np.round(loader.unit(scan) * 255).astype(np.uint8)
        np.testing.assert_array_equal(read_png(summary.folder / row["file"]), expected)
        assert row["subject"] == scan["subject"] and row["label"] == scan["label"]
        assert row["intensity_policy"] == "dicom_window" and row["bits"] == "8"
        assert int(row["time_index"]) == scan["time_index"]
        assert hashlib.sha256((summary.folder / row["file"]).read_bytes()).hexdigest() == row["sha256"]
    assert "path" not in rows[0]  # source paths can hold patient names: never exported


def test_padded_16_bit_round_trips_the_raw_values(store, tmp_path):
    settings = ExportSettings(kind="padded", bits=16, where="time_index = 0 AND slice <= 2")
    summary = export_images(store, "chronomid", settings, tmp_path, progress=False)
    rows = _index(summary)
    expected_rows = _count(store, "SELECT count(*) FROM scans WHERE dataset = 'chronomid' AND time_index = 0 "
                                  "AND slice <= 2")
    assert len(rows) == expected_rows > 0
    loader, scans = _loader(store)
    from features.canvas import pad_to_canvas

    for row in rows:
        pixels = read_png(summary.folder / row["file"])
        assert pixels.dtype == np.uint16 and pixels.shape == loader.recipe.canvas
        raw = pad_to_canvas(loader.raw(scans[row["scan_id"]]), loader.recipe.canvas)
        assert raw.min() < 0 and float(row["offset"]) == -32768  # CT-like signed values
        np.testing.assert_array_equal(pixels.astype(np.float64) + float(row["offset"]), raw)


def test_difference_pngs_equal_the_loaders_difference(store, tmp_path):
    where = "reference_mode = 'relative' AND reference_scan_id <> comparison_scan_id"
    settings = ExportSettings(kind="difference", where=where, limit=8)
    summary = export_images(store, "chronomid", settings, tmp_path / "a", progress=False)
    rows = _index(summary)
    assert len(rows) == 8 and {r["reference_mode"] for r in rows} == {"relative"}
    loader, _ = _loader(store)
    pairs = {p["pair_id"]: p for p in pair_units(store, "chronomid", "relative").to_pylist()}

    def sides(pair):
        names = ("path", "frame", "window_center", "window_width")
        return ({k: pair[f"{s}_{k}"] for k in names} for s in ("ref", "cmp"))

    changes = []
    for row in rows:
        ref, cmp = sides(pairs[row["pair_id"]])
        first = row["reference_scan_id"] == row["comparison_scan_id"]  # a first time point: the uniform image
        diff = loader.difference_canvas(ref, cmp, is_first=first)
        changes.append(np.abs(diff).max())
        expected = np.round((np.clip(diff, -1, 1) + 1) * 127.5).astype(np.uint8)
        np.testing.assert_array_equal(read_png(summary.folder / row["file"]), expected)
    assert max(changes) > 0.05  # real differences, not only blank images
    # 16 bits at the network size: value = offset + scale * pixel is the loader's difference to 1/65535
    settings = ExportSettings(kind="difference", bits=16, size=32, where=where, limit=3)
    summary = export_images(store, "chronomid", settings, tmp_path / "b", progress=False)
    sized = ImageLoader(store, "chronomid", recipe_for_scans(scan_units(store, "chronomid"), 32))
    for row in _index(summary):
        ref, cmp = sides(pairs[row["pair_id"]])
        first = row["reference_scan_id"] == row["comparison_scan_id"]
        value = float(row["offset"]) + float(row["scale"]) * read_png(summary.folder / row["file"]).astype(np.float64)
        assert value.shape == (32, 32)
        assert np.abs(value - sized.difference(ref, cmp, is_first=first)).max() <= 1 / 65535 + 1e-6


def test_where_keeps_only_the_matching_rows(store, tmp_path):
    where = "label = 'pth' AND time_index >= 2 AND slice = 1"
    summary = export_images(store, "chronomid", ExportSettings(kind="image", where=where), tmp_path, progress=False)
    rows = _index(summary)
    expected = _count(store, f"SELECT count(*) FROM scans WHERE dataset = 'chronomid' AND {where}")
    assert len(rows) == expected > 0
    assert all(r["label"] == "pth" and int(r["time_index"]) >= 2 for r in rows)
    assert len(list(summary.folder.glob("*.png"))) == expected


@pytest.mark.parametrize("where, error, words", [
    ("no_such_column = 1", InputError, "scans columns"),
    ("1=1) OR (1=1", InputError, "not one condition"),
    ("1=1; DROP TABLE scans", InputError, "holds a ;"),
    ("label = 'pth' -- and more", InputError, "comment"),
    ("(label = 'pth'", InputError, "open"),
    ("  ", InputError, "empty"),
    ("label IN (SELECT * FROM enable_profiling())", ReadOnlyQueryError, "refused"),
    ("scan_id IN (SELECT * FROM read_csv('/etc/passwd'))", UnsafeLocationError, "refused"),
])
def test_a_bad_where_is_refused_before_anything_is_written(store, tmp_path, where, error, words):
    with pytest.raises(error, match=f"(?i){words}"):
        export_images(store, "chronomid", ExportSettings(kind="image", where=where), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_out_inside_the_store_or_the_source_folder_is_refused(store, tmp_path):
    from store.pixels import dataset_root

    with pytest.raises(UnsafeLocationError, match="inside the store"):
        export_images(store, "chronomid", ExportSettings(kind="image", limit=1), store.root / "exports",
                      progress=False)
    # a store whose dataset folder lies outside it: the source folder is refused on its own
    copy = core_copy(store, tmp_path / "copy")
    source = dataset_root(copy, "chronomid")
    assert copy.root not in source.parents
    with pytest.raises(UnsafeLocationError, match="source folder"):
        export_images(copy, "chronomid", ExportSettings(kind="image", limit=1), source / "exports", progress=False)
    assert not (source / "exports").exists()


def test_a_rerun_skips_what_was_exported_and_redoes_what_changed(store, tmp_path):
    settings = ExportSettings(kind="difference", limit=6)
    first = export_images(store, "chronomid", settings, tmp_path, progress=False)
    assert (first.written, first.skipped) == (6, 0)
    rows = _index(first)
    again = export_images(store, "chronomid", settings, tmp_path, progress=False)
    assert (again.written, again.skipped) == (0, 6)
    assert _index(again) == rows
    (first.folder / rows[0]["file"]).unlink()
    (first.folder / rows[1]["file"]).write_bytes(b"torn")
    resumed = export_images(store, "chronomid", settings, tmp_path, progress=False)
    assert (resumed.written, resumed.skipped) == (2, 4)
    assert _index(resumed) == rows  # the same bytes again
    other = export_images(store, "chronomid", ExportSettings(kind="difference", limit=6, size=16), tmp_path,
                          progress=False)
    assert other.written == 6  # other settings: recomputed, not mistaken for the files already there


def test_multiview_pngs_equal_the_specimen_stack(tmp_path_factory, tmp_path):
    store = demo_store(tmp_path_factory, "impc")
    settings = ExportSettings(kind="multiview", size=40, limit=3)
    summary = export_images(store, "impc", settings, tmp_path, progress=False)
    rows = _index(summary)
    assert len(rows) == 3 and {r["view"] for r in rows} == {"DV+LAT"}
    units = specimen_units(store, "impc")
    stack, failures = specimen_stack(store, "impc", units.slice(0, 3), size=40, progress=False)
    assert failures == [] and [r["specimen_id"] for r in rows] == units.column("specimen_id").to_pylist()[:3]
    for row, image in zip(rows, stack, strict=True):
        pixels = read_png(summary.folder / row["file"])
        assert pixels.shape == (40, 40, 3)
        np.testing.assert_array_equal(pixels, np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8))
    one_view = export_images(store, "impc", ExportSettings(kind="multiview", size=40, limit=2, views="LAT",
                                                           where="label = 'abnormal' AND n_scans >= 2"),
                             tmp_path / "lat", progress=False)
    rows = _index(one_view)
    assert [read_png(one_view.folder / r["file"]).shape for r in rows] == [(40, 40)] * 2  # one view: grey
    assert {r["label"] for r in rows} == {"abnormal"} and {r["view"] for r in rows} == {"LAT"}


@pytest.mark.parametrize("options, words", [
    ({"kind": "scans"}, "'kind'"),
    ({"kind": "image", "bits": 12}, "'bits'"),
    ({"kind": "image", "bits": 16, "size": 64}, "raw stored values"),
    ({"kind": "multiview", "bits": 16}, "8-bit"),
    ({"kind": "image", "views": "DV"}, "--views"),
    ({"kind": "image", "limit": 0}, "'limit'"),
    ({"kind": "padded", "overlap_only": True}, "--overlap-only"),
])
def test_bad_options_are_refused(store, tmp_path, options, words):
    with pytest.raises(ParameterError, match=words):
        export_images(store, "chronomid", ExportSettings(**options), tmp_path, progress=False)


def test_cli_export_images(store, tmp_path, capsys):
    from cli import main

    out = tmp_path / "out"
    args = ["export", "images", "--dataset", "chronomid", "--store", str(store.root), "--out", str(out)]
    assert main([*args, "--kind", "padded", "--size", "48", "--limit", "4"]) == 0
    assert "export padded: 4 files" in capsys.readouterr().out
    assert read_png(next((out / "padded").glob("*.png"))).shape == (48, 48)
    assert main([*args, "--kind", "image", "--where", "1) OR (1"]) == 2
    assert "not one condition" in capsys.readouterr().err


def test_an_interrupted_export_keeps_its_finished_files_and_writes_no_index(store, tmp_path, monkeypatch):
    import extractors.image_export as image_export

    real, calls = image_export._encode_unit, []

    def interrupted_at_the_fourth(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(image_export, "_encode_unit", interrupted_at_the_fourth)
    settings = ExportSettings(kind="image", limit=6)
    with pytest.raises(KeyboardInterrupt):
        export_images(store, "chronomid", settings, tmp_path, progress=False)
    names = sorted(p.name for p in (tmp_path / "image").iterdir())
    assert len(names) == 3 and all(n.endswith(".png") and not n.startswith(".") for n in names)  # no index, no temp
    monkeypatch.undo()
    resumed = export_images(store, "chronomid", settings, tmp_path, progress=False)
    assert (resumed.written, resumed.skipped) == (3, 3) and len(_index(resumed)) == 6
