"""Generic folders: PNG/NPY/TIFF through manifest.csv, labels and list columns, dates, errors."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
import tifffile
from PIL import Image

from features.errors import DatasetError, ParameterError
from store.ingest import ingest_dataset
from store.layout import open_store
from store.pixels import load_pixels, pixel_sha256
from store.secret import load_secret
from store.tables import read_table


def _rows(store, table, dataset):
    data = read_table(store, table)
    return data.filter(pc.equal(data.column("dataset"), dataset)).to_pylist()


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "images"
    (root / "png").mkdir(parents=True)
    (root / "arrays").mkdir()
    arrays = {
        "png/grey8.png": rng.integers(0, 256, (20, 30), dtype=np.uint8),
        "png/grey16.png": rng.integers(0, 65536, (16, 12), dtype=np.uint16),
        "png/colour.png": rng.integers(0, 256, (10, 14, 3), dtype=np.uint8),
        "arrays/float.npy": rng.normal(size=(9, 11)).astype(np.float64),
        "arrays/stack.npy": rng.integers(0, 1000, (3, 8, 8), dtype=np.int32),
        "scan.tif": rng.integers(0, 4096, (13, 17), dtype=np.uint16),
        "rgb.tiff": rng.integers(0, 256, (6, 7, 3), dtype=np.uint8),
    }
    for rel, array in arrays.items():
        path = root / rel
        if rel.endswith(".png"):
            Image.fromarray(array).save(path)
        elif rel.endswith(".npy"):
            np.save(path, array)
        else:
            tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else "minisblack")
    manifest = (
        "path,subject,time,view,label,labels,grade,site\n"
        "png/grey8.png,S1,0,AP,healthy,a;b,g1,north\n"
        "png/grey16.png,S1,2,AP,sick,b,g2,\n"
        "png/colour.png,S2,0,,healthy,,,south\n"
        "arrays/float.npy,S2,1,LAT,sick, c ; d ;,g3,south\n"
        "arrays/stack.npy,S3,0,AP,healthy,,g1,north\n"
        "scan.tif,S3,4,AP,sick,a,g2,north\n"
        "rgb.tiff,S4,,,,,,\n"
    )
    (root / "manifest.csv").write_text(manifest)
    return root, arrays


def test_manifest_images_with_labels_and_list_columns(tmp_path, image_folder):
    root, arrays = image_folder
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "imgs", root=root, progress=False)
    assert (summary.files, summary.ingested, summary.failed, summary.layout) == (7, 7, 0, "generic")
    scans = {(r["path"], r["frame"]): r for r in _rows(store, "scans", "imgs")}
    assert len(scans) == 9  # stack.npy holds three frames

    for rel, array in arrays.items():
        if rel == "arrays/stack.npy":
            for k in range(3):
                assert np.array_equal(load_pixels(store, "imgs", rel, k), array[k].astype(np.float32))
            continue
        pixels = load_pixels(store, "imgs", rel)
        assert np.array_equal(pixels, array.astype(np.float32)), rel
        assert pixel_sha256(pixels, secret=load_secret(store)) == scans[(rel, 0)]["pixel_sha256"]
        assert scans[(rel, 0)]["channels"] == (3 if array.ndim == 3 else 1)

    grey8, grey16 = scans[("png/grey8.png", 0)], scans[("png/grey16.png", 0)]
    assert grey8["subject"] == grey16["subject"] != scans[("png/colour.png", 0)]["subject"]
    assert len(grey8["subject"]) == 32 and "S1" not in grey8["subject"]
    assert (grey8["time_index"], grey16["time_index"], scans[("scan.tif", 0)]["time_index"]) == (0, 2, 4)
    assert scans[("rgb.tiff", 0)]["time_index"] is None and scans[("rgb.tiff", 0)]["label"] is None
    assert grey8["labels"] == ["a", "b"] and scans[("arrays/float.npy", 0)]["labels"] == ["c", "d"]
    assert scans[("png/colour.png", 0)]["labels"] == [] and scans[("png/colour.png", 0)]["view"] == ""
    assert (grey8["view"], grey8["label"], grey8["grade"], grey8["site"]) == ("AP", "healthy", "g1", "north")
    assert grey16["site"] is None
    assert [scans[("arrays/stack.npy", k)]["slice"] for k in range(3)] == [0, 1, 2]
    dataset = _rows(store, "datasets", "imgs")[0]
    assert dataset["time_unit"] == "index" and dataset["root"] == str(root.resolve())

    # pairs: absolute/relative within subject and view, S1 has AP at time 0 and 2
    pairs = _rows(store, "pairs", "imgs")
    grey_pairs = [p for p in pairs if p["comparison_scan_id"] == grey16["scan_id"]]
    assert sorted(p["reference_mode"] for p in grey_pairs) == ["absolute", "relative"]
    assert {p["reference_scan_id"] for p in grey_pairs} == {grey8["scan_id"]}


def test_manifest_edit_relabels_without_decoding(tmp_path, image_folder):
    root, _ = image_folder
    store = open_store(tmp_path / "store")
    ingest_dataset(store, "imgs", root=root, progress=False)
    text = (
        (root / "manifest.csv").read_text().replace("png/grey8.png,S1,0,AP,healthy", "png/grey8.png,S1,0,AP,relabelled")
    )
    (root / "manifest.csv").write_text(text)
    again = ingest_dataset(store, "imgs", root=root / "manifest.csv", progress=False)  # --root may name the manifest
    assert (again.ingested, again.skipped) == (0, 7)
    labels = {r["path"]: r["label"] for r in _rows(store, "scans", "imgs")}
    assert labels["png/grey8.png"] == "relabelled"
    assert len(_rows(store, "scans", "imgs")) == 9


def test_dates_give_weeks_and_missing_files_are_failures(tmp_path):
    root = tmp_path / "dated"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png", "unlisted.png"):
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "manifest.csv").write_text(
        "path,subject,date,label\na.png,P1,2024-01-01,x\nb.png,P1,2024-01-16,x\nc.png,P1,,x\ngone.png,P1,2024-02-01,x\n"
    )
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "dated", root=root, progress=False)
    scans = {r["path"]: r for r in _rows(store, "scans", "dated")}
    assert (scans["a.png"]["time_index"], scans["b.png"]["time_index"]) == (0, 2)
    assert scans["b.png"]["days_from_baseline"] == 15
    assert scans["c.png"]["time_index"] is None and scans["c.png"]["days_from_baseline"] is None
    failures = {r["path"]: r["message"] for r in _rows(store, "failures", "dated")}
    assert set(failures) == {"unlisted.png", "notes.txt", "gone.png"}
    assert "manifest.csv" in failures["unlisted.png"] and "not found" in failures["gone.png"]
    assert (summary.files, summary.ingested, summary.failed, summary.exit_code) == (6, 3, 3, 1)
    assert _rows(store, "datasets", "dated")[0]["time_unit"] == "week"
    assert "3 failed" in summary.summary_line()


def test_bad_inputs_raise_clear_errors(tmp_path):
    store = open_store(tmp_path / "store")
    with pytest.raises(DatasetError, match="--root"):
        ingest_dataset(store, "my_study", progress=False)
    with pytest.raises(DatasetError, match="Unknown layout"):
        ingest_dataset(store, "x", root=tmp_path, layout="nope", progress=False)
    with pytest.raises(DatasetError, match="not a folder"):
        ingest_dataset(store, "x", root=tmp_path / "absent", progress=False)
    with pytest.raises(ParameterError, match="'workers' parameter"):
        ingest_dataset(store, "x", root=tmp_path, workers=0, progress=False)
    root = tmp_path / "bad"
    root.mkdir()
    (root / "manifest.csv").write_text("path,time\na.png,soon\n")
    with pytest.raises(DatasetError, match=r"line 2: column 'time' must be an integer"):
        ingest_dataset(store, "bad", root=root, progress=False)
    (root / "manifest.csv").write_text("path,rows\na.png,3\n")
    with pytest.raises(DatasetError, match="shadow"):
        ingest_dataset(store, "bad", root=root, progress=False)
    (root / "manifest.csv").write_text("path\n../outside.png\n")
    with pytest.raises(DatasetError, match="inside"):
        ingest_dataset(store, "bad", root=root, progress=False)
