"""Ingestion of DICOM folders: pydicom's own test files, pixel policy, time indices and pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from features.errors import DatasetError
from store.dicom import read_dicom
from store.ingest import ingest_dataset
from store.layout import open_store
from store.pixels import PixelReader, frame_sha256s, load_pixels
from store.secret import load_secret
from store.tables import read_table
from tests._ingest_samples import write_dicom

PYDICOM_FILES = Path(get_testdata_file("MR_small.dcm")).parent


def _rows(store, table, dataset):
    data = read_table(store, table)
    return data.filter(pc.equal(data.column("dataset"), dataset)).to_pylist()


@pytest.fixture(scope="module")
def pydicom_ingest(tmp_path_factory):
    base = tmp_path_factory.mktemp("pydicom")
    root = base / "test_files"
    shutil.copytree(PYDICOM_FILES, root)
    store = open_store(base / "store")
    summary = ingest_dataset(store, "pydicom", root=root, progress=False)
    return store, root, summary


def test_every_pydicom_test_file_is_a_scan_or_a_failure(pydicom_ingest):
    store, root, summary = pydicom_ingest
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    scan_paths = {r["path"] for r in _rows(store, "scans", "pydicom")}
    failures = _rows(store, "failures", "pydicom")
    failed_paths = {r["path"] for r in failures if r["stage"] != "ingest:volume"}  # volume: a series, not a file
    assert not scan_paths & failed_paths
    assert len(scan_paths) + len(failed_paths) == len(files)
    assert summary.files == len(files)
    volume_failures = len(failures) - len(failed_paths)
    assert summary.ingested == len(scan_paths) and summary.failed == len(failed_paths) + volume_failures
    assert summary.exit_code == 1
    assert len(scan_paths) > 60 and {"README.txt", "rtplan.dcm", "no_meta.dcm"} <= failed_paths


def test_compressed_syntaxes_decode_to_the_uncompressed_pixels(pydicom_ingest):
    store, _, _ = pydicom_ingest
    by_path = {r["path"]: r for r in _rows(store, "scans", "pydicom") if r["frame"] == 0}
    reference = by_path["MR_small.dcm"]["pixel_sha256"]
    for name in (
        "MR_small_RLE.dcm",  # RLE Lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        assert by_path[name]["pixel_sha256"] == reference, name
    for name, shape in (
        ("JPEG2000.dcm", (1024, 256)),
        ("JPGExtended.dcm", (1024, 256)),
        ("JPEGLSNearLossless_16.dcm", (50, 10)),
    ):
        assert (by_path[name]["rows"], by_path[name]["cols"]) == shape, name

    # JPEG baseline in YBR_FULL: kept in colour and converted to RGB (close to the lossless RGB original)
    assert by_path["SC_rgb_jpeg_dcmtk.dcm"]["channels"] == 3
    jpeg = load_pixels(store, "pydicom", "SC_rgb_jpeg_dcmtk.dcm")
    lossless = load_pixels(store, "pydicom", "SC_rgb_rle.dcm")
    assert jpeg.shape == lossless.shape == (100, 100, 3) and jpeg.dtype == np.float32
    assert np.abs(jpeg - lossless).mean() < 2.0
    ybr = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm").pixel_array  # reference decode
    assert np.array_equal(jpeg, ybr.astype(np.float32))
    # palette colour expanded through its LUT, multi-frame colour one row per frame
    assert by_path["examples_palette.dcm"]["channels"] == 3
    frames = [r for r in _rows(store, "scans", "pydicom") if r["path"] == "examples_ybr_color.dcm"]
    assert sorted(r["frame"] for r in frames) == list(range(30)) and {r["channels"] for r in frames} == {3}


def test_truncated_file_is_a_failure_naming_file_and_problem(pydicom_ingest):
    store, _, _ = pydicom_ingest
    failures = [r for r in _rows(store, "failures", "pydicom") if r["path"] == "MR_truncated.dcm"]
    assert len(failures) == 1
    assert failures[0]["stage"] == "ingest:decode" and failures[0]["error_class"] == "DecodeError"
    assert "MR_truncated.dcm" in failures[0]["message"] and "truncated" in failures[0]["message"]


def test_stored_hash_identifies_the_pixels_read_back(pydicom_ingest):
    store, root, _ = pydicom_ingest
    reader = PixelReader(store, "pydicom")
    by_digest: dict[str, tuple[str, np.ndarray]] = {}
    rows = _rows(store, "scans", "pydicom")
    for row in rows:
        pixels = reader.read(row["path"], row["frame"])
        assert pixels.dtype == np.float32
        assert pixels.shape[:2] == (row["rows"], row["cols"])
        assert (pixels.shape[2] if pixels.ndim == 3 else 1) == row["channels"]
        # a folder named after its files' PatientID is stored redacted; the reader still finds the file
        file = reader.locate(row["path"])
        assert frame_sha256s(file, secret=load_secret(store))[row["frame"]] == row["pixel_sha256"], row["path"]
        # equal digests mean equal arrays (the lossless re-encodings of MR_small share one digest)
        first = by_digest.setdefault(row["pixel_sha256"], (row["path"], pixels))
        assert np.array_equal(first[1], pixels), (first[0], row["path"])
    assert len(by_digest) < len(rows)


def test_digest_changes_with_any_pixel_or_the_rescale(tmp_path):
    values = np.random.default_rng(5).integers(0, 4096, (64, 48), dtype=np.uint16)
    write_dicom(tmp_path / "a.dcm", values)
    write_dicom(tmp_path / "same.dcm", values.copy(), instance=7)  # other header, same pixels
    changed = values.copy()
    changed[10, 20] += 1
    write_dicom(tmp_path / "pixel.dcm", changed)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.save_as(tmp_path / "rescaled.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    digests = {
        name: frame_sha256s(tmp_path / f"{name}.dcm", secret=b"k" * 32)[0]
        for name in ("a", "same", "pixel", "rescaled", "inverted")
    }
    assert digests["a"] == digests["same"]
    assert len({digests[k] for k in ("a", "pixel", "rescaled", "inverted")}) == 4
    pixels = {name: read_dicom(tmp_path / f"{name}.dcm").frames[0] for name in ("a", "rescaled", "inverted")}
    assert np.array_equal(pixels["rescaled"], pixels["a"] - 1024)
    assert not np.array_equal(pixels["inverted"], pixels["rescaled"])


def test_real_monochrome1_file_is_inverted(pydicom_ingest):
    store, root, _ = pydicom_ingest
    path = "dicomdirtests/77654033/CR1/6154"
    ds = pydicom.dcmread(root / path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    lowest, highest = intercept, (2 ** int(ds.BitsStored) - 1) * slope + intercept  # modality value range
    expected = (lowest + highest) - values
    assert np.allclose(load_pixels(store, "pydicom", path), expected, rtol=0, atol=1e-3)


def test_monochrome1_rescale_window_and_multiframe(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 4096, size=(12, 10), dtype=np.uint16)
    signed = rng.integers(-1000, 3000, size=(12, 10), dtype=np.int16)
    stack = rng.integers(0, 256, size=(4, 6, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    root = tmp_path / "data"
    write_dicom(root / "mono1.dcm", grey, photometric="MONOCHROME1", bits_stored=12, window=(1000, 400))
    write_dicom(root / "ct.dcm", signed, slope=1, intercept=-1024, window=([40, 400], [400, 1500]))
    write_dicom(root / "scaled.dcm", grey, slope=0.37, intercept=3.25)
    write_dicom(root / "multi.dcm", stack)
    write_dicom(root / "rgb.dcm", rgb, photometric="RGB")
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "px", root=root, progress=False)
    assert summary.failed == 0 and summary.ingested == 5
    scans = {(r["path"], r["frame"]): r for r in _rows(store, "scans", "px")}

    assert np.array_equal(load_pixels(store, "px", "mono1.dcm"), 4095.0 - grey)
    assert scans[("mono1.dcm", 0)]["window_center"] == 4095 - 1000
    assert np.array_equal(load_pixels(store, "px", "ct.dcm"), signed.astype(np.float32) - 1024)
    assert scans[("ct.dcm", 0)]["window_center"] == 40 and scans[("ct.dcm", 0)]["window_width"] == 400
    expected = (grey.astype(np.float64) * 0.37 + 3.25).astype(np.float32)
    assert np.array_equal(load_pixels(store, "px", "scaled.dcm"), expected)

    frames = sorted((k, r) for k, r in scans.items() if k[0] == "multi.dcm")
    assert [r["frame"] for _, r in frames] == [0, 1, 2, 3] == [r["slice"] for _, r in frames]
    assert len({r["scan_id"] for _, r in frames}) == 4
    for index in range(4):
        assert np.array_equal(load_pixels(store, "px", "multi.dcm", index), stack[index].astype(np.float32))

    assert scans[("rgb.dcm", 0)]["channels"] == 3
    assert np.array_equal(load_pixels(store, "px", "rgb.dcm"), rgb.astype(np.float32))


def _volume(root: Path, subject: str, week: int, slices: int, *, day_offset: int = 0) -> None:
    from datetime import date, timedelta

    study = (date(2023, 3, 6) + timedelta(weeks=week, days=day_offset)).strftime("%Y%m%d")
    for k in range(slices):
        pixels = np.full((8, 8), 100 * week + k, dtype=np.uint16)
        write_dicom(root / subject / f"week{week}" / f"s{k:02d}.dcm", pixels, patient_id=f"ID {subject}",
                    study_date=study, instance=k + 1)


def test_chronomid_weeks_missing_week_kth_slice_pairs(tmp_path):
    root = tmp_path / "mice"
    # mouse A: weeks 0, 1, 3 (week 2 missing); 3, 2 and 3 slices; week 1 scanned two days late
    _volume(root, "MOUSE-A", 0, 3)
    _volume(root, "MOUSE-A", 1, 2, day_offset=2)
    _volume(root, "MOUSE-A", 3, 3)
    _volume(root, "MOUSE-B", 0, 2)
    _volume(root, "MOUSE-B", 1, 2)
    lines = ["path,label"] + [
        f"{p.relative_to(root).as_posix()},{'pth' if 'MOUSE-B' in str(p) else 'wild_type'}"
        for p in sorted(root.rglob("*.dcm"))
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "mice", root=root, layout="chronomid", progress=False)
    assert summary.failed == 0 and summary.scans_rows == 12

    scans = {r["scan_id"]: r for r in _rows(store, "scans", "mice")}
    by_path = {r["path"]: r for r in scans.values()}
    assert {r["time_index"] for r in scans.values() if "MOUSE-A" in r["path"]} == {0, 1, 3}
    assert by_path["MOUSE-A/week1/s00.dcm"]["days_from_baseline"] == 9
    assert by_path["MOUSE-A/week3/s02.dcm"]["days_from_baseline"] == 21
    assert by_path["MOUSE-A/week3/s02.dcm"]["slice"] == 3
    assert len({r["subject"] for r in scans.values()}) == 2

    pairs = _rows(store, "pairs", "mice")
    assert summary.pairs_rows == len(pairs) == len({p["pair_id"] for p in pairs})

    def described(mode, subject_path):
        out = []
        for p in pairs:
            ref, cmp = scans[p["reference_scan_id"]], scans[p["comparison_scan_id"]]
            if p["reference_mode"] == mode and cmp["path"].startswith(subject_path):
                out.append(
                    (ref["path"].split("/", 1)[1], cmp["path"].split("/", 1)[1], p["interval_days"], p["time_index"])
                )
        return sorted(out)

    assert described("absolute", "MOUSE-A") == [
        ("week0/s00.dcm", "week0/s00.dcm", 0, 0), ("week0/s00.dcm", "week1/s00.dcm", 9, 1),
        ("week0/s00.dcm", "week3/s00.dcm", 21, 3), ("week0/s01.dcm", "week0/s01.dcm", 0, 0),
        ("week0/s01.dcm", "week1/s01.dcm", 9, 1), ("week0/s01.dcm", "week3/s01.dcm", 21, 3),
        ("week0/s02.dcm", "week0/s02.dcm", 0, 0), ("week0/s02.dcm", "week3/s02.dcm", 21, 3),
    ]
    assert described("relative", "MOUSE-A") == [
        ("week0/s00.dcm", "week0/s00.dcm", 0, 0), ("week0/s00.dcm", "week1/s00.dcm", 9, 1),
        ("week0/s01.dcm", "week0/s01.dcm", 0, 0), ("week0/s01.dcm", "week1/s01.dcm", 9, 1),
        ("week0/s02.dcm", "week0/s02.dcm", 0, 0),
        ("week1/s00.dcm", "week3/s00.dcm", 12, 3), ("week1/s01.dcm", "week3/s01.dcm", 12, 3),
    ]
    # week 3 slice 3 has no week-1 partner (relative); mouse B's volumes match exactly
    assert summary.unpaired_slices == 1
    assert {p["label"] for p in pairs if "MOUSE-B" in scans[p["comparison_scan_id"]]["path"]} == {"pth"}
    assert {p["label"] for p in pairs if "MOUSE-A" in scans[p["comparison_scan_id"]]["path"]} == {"wild_type"}
    datasets = _rows(store, "datasets", "mice")
    assert datasets[0]["time_unit"] == "week" and datasets[0]["layout"] == "chronomid" and not datasets[0]["synthetic"]


def test_spine_days_and_pairs_within_level(tmp_path):
    root = tmp_path / "spine"
    lines = ["path,label,level"]
    for visit, date in enumerate(("20180105", "20190210")):
        for level in ("L4-L5", "L5-S1"):
            path = root / f"visit{visit}_{level}.dcm"
            write_dicom(path, np.full((6, 6), visit, dtype=np.uint16), patient_id="SPINE-1", study_date=date)
            lines.append(f"{path.name},grade_{visit + 1},{level}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "spine_test", root=root, layout="spine", progress=False)
    scans = {r["scan_id"]: r for r in _rows(store, "scans", "spine_test")}
    assert sorted({r["time_index"] for r in scans.values()}) == [0, 401]
    pairs = [p for p in _rows(store, "pairs", "spine_test") if p["reference_scan_id"] != p["comparison_scan_id"]]
    assert len(pairs) == 4 and summary.unpaired_slices == 0
    for pair in pairs:
        reference, comparison = scans[pair["reference_scan_id"]], scans[pair["comparison_scan_id"]]
        assert reference["level"] == comparison["level"]
        assert pair["interval_days"] == 401 and pair["label"] == comparison["label"] == "grade_2"


def test_impc_views_lists_and_constant_time(tmp_path):
    root = tmp_path / "impc"
    lines = ["path,label,labels,level1,level2,level3"]
    for specimen, abnormal in (("SPEC-1", True), ("SPEC-2", False)):
        for view in ("DV", "LAT"):
            path = root / specimen / f"{view}.dcm"
            write_dicom(path, np.zeros((5, 5), dtype=np.uint16), patient_id=f"ID {specimen}", photometric="MONOCHROME1",
                        attributes={"ViewPosition": view})
            rel = path.relative_to(root).as_posix()
            if abnormal:
                lines.append(f"{rel},abnormal,abnormal;spine,abnormal,Spine;Ribcage,scoliosis")
            else:
                lines.append(f"{rel},normal,,normal,,")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "impc_test", root=root, layout="impc", progress=False)
    assert summary.pairs_rows == 0 and summary.failed == 0
    scans = {r["path"]: r for r in _rows(store, "scans", "impc_test")}
    assert {r["view"] for r in scans.values()} == {"DV", "LAT"}
    assert {r["time_index"] for r in scans.values()} == {0}
    assert scans["SPEC-1/DV.dcm"]["level2"] == ["Spine", "Ribcage"] and scans["SPEC-1/DV.dcm"]["labels"] == [
        "abnormal",
        "spine",
    ]
    assert scans["SPEC-2/LAT.dcm"]["level2"] == [] and scans["SPEC-2/LAT.dcm"]["labels"] == []
    assert scans["SPEC-1/LAT.dcm"]["level3"] == ["scoliosis"] and scans["SPEC-2/DV.dcm"]["level1"] == "normal"
    assert np.array_equal(load_pixels(store, "impc_test", "SPEC-1/DV.dcm"), np.full((5, 5), 65535.0, dtype=np.float32))


def test_crmo_pairs_come_from_pairs_csv(tmp_path):
    root = tmp_path / "crmo"
    for patient in ("CRMO-1", "CRMO-2"):
        for visit, date in ((0, "20200101"), (1, "20200601")):
            write_dicom(root / f"{patient}_{visit}.dcm", np.full((4, 4), visit, dtype=np.uint16), patient_id=patient,
                        study_date=date)
    store = open_store(tmp_path / "store")
    with pytest.raises(DatasetError, match="pairs.csv"):
        ingest_dataset(store, "crmo_test", root=root, layout="crmo", progress=False)
    (root / "pairs.csv").write_text(
        "reference_path,comparison_path,label\nCRMO-1_0.dcm,CRMO-1_1.dcm,improved\nCRMO-2_0.dcm,CRMO-2_1.dcm,regressed\n"
        "CRMO-3_0.dcm,CRMO-3_1.dcm,persisted\n"
    )
    summary = ingest_dataset(store, "crmo_test", root=root, layout="crmo", progress=False)
    pairs = _rows(store, "pairs", "crmo_test")
    assert {p["reference_mode"] for p in pairs} == {"given"}
    assert sorted(p["label"] for p in pairs) == ["improved", "regressed"]
    assert {p["interval_days"] for p in pairs} == {152}
    # the pairs.csv line naming files that do not exist is reported, once, and fails the run
    assert summary.failed == 1 and summary.exit_code == 1
    again = ingest_dataset(store, "crmo_test", root=root, layout="crmo", progress=False)
    failures = [f for f in _rows(store, "failures", "crmo_test") if f["stage"] == "ingest:pairs"]
    assert len(failures) == 1 and "line 4" in failures[0]["message"] and again.failed == 1


def test_uncompressed_reads_match_pydicom_pixel_array(tmp_path):
    rng = np.random.default_rng(2)
    garbage = (rng.integers(0, 4096, (8, 9)) | 0xF000).astype(np.uint16)  # unused high bits set
    values = rng.integers(-2048, 2048, (8, 9))
    signed12 = (values & 0x0FFF).astype(np.int16)  # 12-bit two's complement, not sign-extended
    write_dicom(tmp_path / "garbage.dcm", garbage, bits_stored=12)
    write_dicom(tmp_path / "signed12.dcm", signed12, bits_stored=12)
    paths = [tmp_path / "garbage.dcm", tmp_path / "signed12.dcm"] + [
        PYDICOM_FILES / name for name in ("MR_small.dcm", "CT_small.dcm", "rtdose.dcm", "liver_1frame.dcm")
    ]

    for path in paths:
        ds = pydicom.dcmread(path)
        reference = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        frames = read_dicom(path).frames
        assert np.array_equal(frames.reshape(reference.shape), reference), path.name
    assert read_dicom(tmp_path / "signed12.dcm").frames.min() == values.min()


def test_hashing_on_a_helper_process_gives_the_same_rows(tmp_path, monkeypatch):
    import store.ingest

    rng = np.random.default_rng(4)
    root = tmp_path / "large"
    for k in range(9):  # 300x300 16-bit frames are large enough to be read and hashed by the helper process
        write_dicom(root / f"{k}.dcm", rng.integers(0, 4096, (300, 300), dtype=np.uint16), instance=k + 1)
    write_dicom(root / "multi.dcm", rng.integers(0, 4096, (3, 300, 300), dtype=np.uint16))
    tables = []
    for helper in (True, False):
        monkeypatch.setattr(store.ingest, "_spare_core", lambda workers, helper=helper: helper)
        store_ = open_store(tmp_path / f"store-{helper}")
        if tables:
            (store_.root / "secret").write_bytes((tmp_path / "store-True" / "secret").read_bytes())
        ingest_dataset(store_, "large", root=root, progress=False, chunk_size=3)
        tables.append(read_table(store_, "scans").sort_by("scan_id"))
        for row in tables[-1].to_pylist():
            assert row["pixel_sha256"] == frame_sha256s(root / row["path"], secret=load_secret(store_))[row["frame"]]
    assert tables[0].num_rows == 12 and tables[0].equals(tables[1])
