"""Attacks on ingestion: hostile file names and file kinds, identifiers in paths and headers, linkable
identities, decompression bombs, and concurrent or killed ingest runs (issue 13, cases 3, 6 and 8).

Each test runs the real CLI (``cli.py ingest``) in a subprocess where the CLI is the promise, on real
DICOM / PNG / NPY files written for it, and reads the store's Parquet parts directly.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import RLELossless

from tests._ingest_samples import strings_in, write_dicom

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1", "PYTHONPATH": str(REPO)}
ENV.pop("CHRONOFEAT_STORE", None)
ENV.pop("CHRONOFEAT_MAX_DECODED_MB", None)


def _ingest(
    store: Path, root: Path, *extra: str, dataset: str = "attack", timeout: float = 60
) -> subprocess.CompletedProcess:
    """``cli.py ingest`` in a subprocess; a run still going after ``timeout`` seconds fails the test (a hang)."""
    command = [
        sys.executable,
        "cli.py",
        "ingest",
        "--dataset",
        dataset,
        "--root",
        str(root),
        "--store",
        str(store),
        *extra,
    ]
    try:
        return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cli.py ingest still running after {timeout}s (it hangs)")


def _table(store: Path, name: str) -> list[dict]:
    """Every row of table ``name`` (all parts), read with pyarrow alone; [] when it has no part."""
    parts = sorted((store / "tables" / name).glob("part-*.parquet"))
    if not parts:
        return []
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default").to_pylist()


def _stored_texts(store: Path) -> list[str]:
    """Every string in every Parquet part under the store (tables and the private ingest index)."""
    texts = []
    for part in store.rglob("*.parquet"):
        table = pq.read_table(part)
        for column in table.columns:
            for value in column.to_pylist():
                texts.extend(strings_in(value))
    return texts


def _grey(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size), value, dtype=np.uint16)


# ------------------------------------------------------------------------------- case 3: names


def test_names_that_are_not_utf8_are_ingested_and_their_pixels_load(tmp_path):
    root = tmp_path / "data"
    write_dicom(root / "plain" / "a.dcm", _grey(1))
    write_dicom(Path(os.fsdecode(os.fsencode(root / "plain") + b"/caf\xe9.dcm")), _grey(2))  # a Latin-1 file name
    write_dicom(Path(os.fsdecode(os.fsencode(root) + b"/d\xe9partement/x.dcm")), _grey(3))  # a Latin-1 folder name
    store = tmp_path / "store"
    run = _ingest(store, root)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    scans = _table(store, "scans")
    assert len(scans) == 3
    for row in scans:
        row["path"].encode("utf-8")  # valid UTF-8: a Parquet string
    assert len({r["path"] for r in scans}) == 3

    from store.layout import open_store
    from store.pixels import load_pixels

    opened = open_store(store)
    values = sorted(float(load_pixels(opened, "attack", r["path"], r["frame"])[0, 0]) for r in scans)
    assert values == [1.0, 2.0, 3.0]  # every stored path leads back to its own file
    again = _ingest(store, root)  # a rerun finds them all indexed: nothing decoded twice
    assert again.returncode == 0 and "3 already present" in again.stderr + again.stdout


# ------------------------------------------------------------------------ case 8: special files


def test_a_fifo_named_dcm_is_recorded_without_being_opened(tmp_path):
    root = tmp_path / "data"
    write_dicom(root / "a.dcm", _grey(1))
    os.mkfifo(root / "pipe.dcm")
    store = tmp_path / "store"
    started = time.monotonic()
    run = _ingest(store, root, timeout=60)
    assert time.monotonic() - started < 30
    assert run.returncode == 1, run.stderr[-2000:]
    assert [r["path"] for r in _table(store, "scans")] == ["a.dcm"]
    failures = _table(store, "failures")
    assert [(f["path"], f["stage"]) for f in failures] == [("pipe.dcm", "ingest:read")]
    assert "FIFO" in failures[0]["message"] and "not a regular file" in failures[0]["message"]


def test_a_socket_and_a_device_are_recorded_as_special_files(tmp_path):
    root = tmp_path / "d"
    write_dicom(root / "a.dcm", _grey(1))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(root / "s.dcm"))
    expected = {"s.dcm": "socket"}
    try:  # only a privileged user may make a device node: /dev/zero's numbers, an endless stream
        os.mknod(root / "zero.dcm", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        expected["zero.dcm"] = "device"
    except PermissionError:
        pass
    try:
        store = tmp_path / "store"
        run = _ingest(store, root)
    finally:
        server.close()
    assert run.returncode == 1, run.stderr[-2000:]
    failures = {f["path"]: f for f in _table(store, "failures")}
    assert set(failures) == set(expected)
    for path, kind in expected.items():
        assert failures[path]["stage"] == "ingest:read"
        assert f"a {kind}, not a regular file" in failures[path]["message"]


def test_symbolic_links_leaving_the_root_are_refused_directly_and_through_the_manifest(tmp_path):
    outside = tmp_path / "elsewhere"
    write_dicom(outside / "secret.dcm", _grey(7), patient_id="NOT-IN-THIS-DATASET")
    root = tmp_path / "data"
    write_dicom(root / "a.dcm", _grey(1))
    write_dicom(root / "inner" / "b.dcm", _grey(2))
    (root / "link.dcm").symlink_to(outside / "secret.dcm")  # a file link out of the root
    (root / "away").symlink_to(outside, target_is_directory=True)  # a folder link out of the root
    (root / "inside.dcm").symlink_to(root / "inner" / "b.dcm")  # a link within the root is fine
    (root / "manifest.csv").write_text("path,label\na.dcm,x\naway/secret.dcm,y\n")  # no '..', yet outside
    store = tmp_path / "store"
    run = _ingest(store, root)
    assert run.returncode == 1, run.stderr[-2000:]
    scans = sorted(r["path"] for r in _table(store, "scans"))
    assert scans == ["a.dcm", "inner/b.dcm", "inside.dcm"]
    assert all(r["pixel_sha256"] for r in _table(store, "scans"))
    failures = {f["path"]: f["message"] for f in _table(store, "failures")}
    assert set(failures) == {"link.dcm", "away", "away/secret.dcm"}
    assert all("symbolic link leading out of the dataset root" in m for m in failures.values())


# ------------------------------------------------------------------------------- case 6: PHI

PATIENT_ID = "PHI-ID-ZQX-5521"
PATIENT_NAME = "Quimbrelle^Orvantha"
BIRTH = "19441122"
NEEDLES = (PATIENT_ID, "Quimbrelle", "Orvantha", BIRTH, "quimbrelle", "orvantha")


def _phi_dataset(root: Path) -> None:
    person = {"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME, "birth_date": BIRTH}
    crafted = {"ViewPosition": PATIENT_ID, "SeriesDescription": f"Orvantha Quimbrelle {PATIENT_ID} DV"}
    write_dicom(root / PATIENT_ID / "visit1" / "a.dcm", _grey(1), study_date="20210104", attributes=crafted, **person)
    write_dicom(root / PATIENT_ID / "visit2" / "a.dcm", _grey(2), study_date="20210301", **person,
                attributes={"ViewPosition": "LAT"})
    write_dicom(root / "quimbrelle_orvantha" / f"scan_{BIRTH}.dcm", _grey(3), study_date="20210401", **person)
    (root / PATIENT_ID / "junk.dcm").write_bytes(b"not dicom at all " * 40)  # fails before its header is read
    write_dicom(root / "other" / "b.dcm", _grey(4), patient_id="SOMEONE-ELSE-88", patient_name="Plain^Person",
                attributes={"ViewPosition": "DV", "SeriesDescription": "Full body DV"})


def test_identifiers_in_folder_names_views_and_descriptions_never_reach_the_store(tmp_path):
    root = tmp_path / "clinic"
    _phi_dataset(root)
    store = tmp_path / "store"
    run = _ingest(store, root)
    assert run.returncode == 1, run.stderr[-2000:]  # the junk file failed
    scans = _table(store, "scans")
    failures = _table(store, "failures")
    assert len(scans) == 4 and len(failures) == 1
    texts = _stored_texts(store) + [run.stdout, run.stderr]
    for needle in NEEDLES:
        for text in texts:
            assert needle not in text, f"{needle!r} leaked: {text[:200]!r}"
    by_view = sorted(r["view"] for r in scans)
    assert by_view == ["", "DV", "LAT", "other"]  # coded values only; the crafted ViewPosition became 'other'
    other = next(r for r in scans if r["view"] == "DV")
    assert other["path"] == "other/b.dcm"  # paths without identifiers are kept as they are
    # one folder is shown one way: the junk file's folder is redacted although its own header was unreadable
    folders = {r["path"].split("/")[0] for r in scans if r["path"] != "other/b.dcm" and "visit" in r["path"]}
    assert len(folders) == 1 and failures[0]["path"].split("/")[0] in folders

    from store.layout import open_store
    from store.pixels import load_pixels

    opened = open_store(store)
    assert sorted(float(load_pixels(opened, "attack", r["path"])[0, 0]) for r in scans) == [1.0, 2.0, 3.0, 4.0]


# ----------------------------------------------------------------------- case 6: linkable ids


def test_scan_ids_and_pixel_hashes_do_not_link_two_stores(tmp_path):
    root = tmp_path / "data"
    write_dicom(root / "a.dcm", _grey(5))
    write_dicom(root / "twin.dcm", _grey(5))  # same pixels: one pixel_sha256 within a store
    write_dicom(root / "b.dcm", _grey(6))
    tables = []
    for name in ("one", "two"):
        run = _ingest(tmp_path / name, root)
        assert run.returncode == 0, run.stderr[-2000:]
        tables.append({r["path"]: r for r in _table(tmp_path / name, "scans")})
    one, two = tables
    assert one["a.dcm"]["pixel_sha256"] == one["twin.dcm"]["pixel_sha256"] != one["b.dcm"]["pixel_sha256"]
    assert not {r["scan_id"] for r in one.values()} & {r["scan_id"] for r in two.values()}
    assert not {r["pixel_sha256"] for r in one.values()} & {r["pixel_sha256"] for r in two.values()}


# ------------------------------------------------------------------------------ case 8: bombs

_MEASURE = """
import resource, subprocess, sys, time
started = time.monotonic()
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
elapsed = time.monotonic() - started
print(run.returncode, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _measured_ingest(store: Path, root: Path) -> tuple[int, float, int]:
    """``(exit code, seconds, peak RSS in MiB)`` of one ``cli.py ingest`` run, measured in a fresh process."""
    command = [sys.executable, "cli.py", "ingest", "--dataset", "attack", "--root", str(root), "--store", str(store)]
    try:
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, *command], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("cli.py ingest of a bomb still running after 120s")
    code, seconds, rss_kib = out.stdout.split()
    return int(code), float(seconds), int(rss_kib) // 1024


def test_an_rle_file_claiming_60000_squared_pixels_fails_fast_with_the_numbers(tmp_path):
    root = tmp_path / "bomb"
    path = write_dicom(root / "bomb.dcm", np.zeros((64, 64), np.uint16))
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = 60000
    ds.save_as(path)
    assert path.stat().st_size < 30_000
    store = tmp_path / "store"
    code, seconds, peak_mib = _measured_ingest(store, root)
    assert code == 1
    assert seconds < 5, f"{seconds:.1f}s"
    assert peak_mib < 1024, f"peak RSS {peak_mib} MiB"
    [failure] = _table(store, "failures")
    assert failure["error_class"] == "ResourceLimitError"
    assert "60000 x 60000" in failure["message"] and "--max-decoded-mb" in failure["message"]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with one tiny data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_png_and_npy_headers_claiming_huge_images_are_refused_before_decoding(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    _png_header_only(root / "wide.png", 12000, 12000)  # 144 Mpx RGB: under Pillow's own limit, 1.6 GiB as float32
    with open(root / "huge.npy", "wb") as handle:  # a header announcing 20000 x 20000 float32, and no data
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (20000, 20000)})
    np.save(root / "fine.npy", np.ones((4, 4), np.float32))
    (root / "manifest.csv").write_text("path,subject\nwide.png,s1\nhuge.npy,s2\nfine.npy,s3\n")
    store = tmp_path / "store"
    code, seconds, peak_mib = _measured_ingest(store, root)
    assert code == 1 and seconds < 10 and peak_mib < 1024
    assert [r["path"] for r in _table(store, "scans")] == ["fine.npy"]
    failures = {f["path"]: f for f in _table(store, "failures")}
    assert failures["wide.png"]["error_class"] == failures["huge.npy"]["error_class"] == "ResourceLimitError"
    assert "12000 x 12000" in failures["wide.png"]["message"]
    assert "20000 x 20000" in failures["huge.npy"]["message"]


# ---------------------------------------------------------------------- retrying failed files


def test_retry_failed_resolves_fixed_files_and_keeps_one_row_per_input(tmp_path):
    root = tmp_path / "data"
    write_dicom(root / "a.dcm", _grey(1))
    (root / "bad.dcm").write_bytes(b"junk" * 50)
    (root / "worse.dcm").write_bytes(b"junk" * 60)
    store = tmp_path / "store"
    assert _ingest(store, root).returncode == 1
    first = {f["path"]: f for f in _table(store, "failures")}
    assert set(first) == {"bad.dcm", "worse.dcm"}
    write_dicom(root / "bad.dcm", _grey(2))  # fixed; worse.dcm stays broken
    for extra in (("--retry-failed",), ("--retry-failed",), ()):
        run = _ingest(store, root, *extra)
        assert run.returncode == 1, run.stderr[-2000:]
        failures = _table(store, "failures")
        assert sorted(f["path"] for f in failures) == ["bad.dcm", "worse.dcm"]  # one current row per input
        rows = {f["path"]: f for f in failures}
        assert rows["bad.dcm"]["resolved_at"] is not None and rows["worse.dcm"]["resolved_at"] is None
        assert (
            rows["bad.dcm"]["key"] == first["bad.dcm"]["key"] and rows["worse.dcm"]["key"] == first["worse.dcm"]["key"]
        )
        assert sorted(r["path"] for r in _table(store, "scans")) == ["a.dcm", "bad.dcm"]


# ------------------------------------------------------------------ faults: concurrency, kill -9


def _fault_dataset(root: Path) -> None:
    """38 inputs: 4 subjects x 3 weekly visits x 3 slices, one junk file and one truncated file."""
    rng = np.random.default_rng(13)
    for subject in range(4):
        for week in range(3):
            day = 4 + 7 * week + subject
            for k in range(3):
                write_dicom(
                    root / f"s{subject}" / f"w{week}" / f"{k}.dcm", rng.integers(0, 4096, (48, 48), dtype=np.uint16),
                    patient_id=f"FAULT-{subject}", study_date=f"202301{day:02d}", instance=k + 1,
                )
    (root / "s0" / "junk.dcm").write_bytes(b"junk" * 64)
    cut = write_dicom(root / "s1" / "cut.dcm", rng.integers(0, 4096, (48, 48), dtype=np.uint16), patient_id="FAULT-1")
    cut.write_bytes(cut.read_bytes()[:-500])


_TIMES = {"failures": ("time", "resolved_at"), "datasets": ("ingested_at",)}
_KEYS = {"scans": ("scan_id",), "pairs": ("pair_id",), "failures": ("dataset", "key")}


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _snapshot(store: Path) -> dict[str, set]:
    """Each table as a set of rows (write times left out); asserts no key appears twice."""
    out = {}
    for name in ("scans", "pairs", "failures", "datasets"):
        rows = [{k: v for k, v in r.items() if k not in _TIMES.get(name, ())} for r in _table(store, name)]
        if name in _KEYS:
            keys = [tuple(r[k] for k in _KEYS[name]) for r in rows]
            assert len(keys) == len(set(keys)), f"duplicate keys in {name}"
        out[name] = {tuple(sorted((k, _freeze(v)) for k, v in r.items())) for r in rows}
        assert len(out[name]) == len(rows), f"duplicate rows in {name}"
    index = [p for p in (store / "ingest" / "tables").rglob("part-*.parquet")]
    keys = [(r.get("file_key", r.get("path")), r["frame"]) for p in index for r in pq.read_table(p).to_pylist()]
    assert len(keys) == len(set(keys)), "a file was indexed twice"
    return out


_STARTED = b"ingest attack:"  # the progress bar appears (stderr) when the files start being decoded
_FINISHED = b"ingest attack ["  # the summary line (stdout) once every table is written


def _wait_for(process: subprocess.Popen, stream, marker: bytes, timeout: float = 60) -> float:
    """Read ``stream`` of ``process`` until ``marker`` appears; the time it did (``time.monotonic``)."""
    import select

    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        if not chunk:
            pytest.fail(f"{marker!r} never came (exit {process.poll()}): {seen[-2000:]!r}")
        seen += chunk
    return time.monotonic()


def _wait_until_working(process: subprocess.Popen) -> float:
    return _wait_for(process, process.stderr, _STARTED)


@pytest.fixture(scope="module")
def fault_reference(tmp_path_factory):
    """The dataset, the tables one uninterrupted run writes (its store's secret is reused by the other
    runs), and how long that run worked after it started decoding (seconds)."""
    base = tmp_path_factory.mktemp("faults")
    root = base / "data"
    _fault_dataset(root)
    store = base / "reference"
    process = _start(store, root, 1)
    working = _wait_until_working(process)
    work_s = _wait_for(process, process.stdout, _FINISHED) - working
    process.communicate(timeout=120)
    assert process.returncode == 1
    tables = _snapshot(store)
    assert len(tables["scans"]) == 36 and len(tables["failures"]) == 2 and tables["pairs"]
    return root, store, tables, work_s


def _store_with_secret(path: Path, reference: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copyfile(reference / "secret", path / "secret")
    os.chmod(path / "secret", 0o600)
    return path


def _start(store: Path, root: Path, workers: int) -> subprocess.Popen:
    command = [sys.executable, "cli.py", "ingest", "--dataset", "attack", "--root", str(root), "--store", str(store),
               "--workers", str(workers)]
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


@pytest.mark.slow
def test_two_concurrent_ingests_of_one_dataset_write_each_row_once(tmp_path, fault_reference):
    root, reference, expected, _ = fault_reference
    for rep in range(10):
        # odd repetitions: both runs start on an empty store, so they also race to create its secret
        fresh = rep % 2 == 1
        store = tmp_path / f"rep{rep}" if fresh else _store_with_secret(tmp_path / f"rep{rep}", reference)
        order = (1, 2) if rep % 4 < 2 else (2, 1)  # which of '--workers 1' and '--workers 2' starts first
        first = _start(store, root, order[0])
        time.sleep(random.Random(rep).uniform(0.0, 0.3))
        second = _start(store, root, order[1])
        for process in (first, second):
            try:
                _, err = process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                pytest.fail(f"repetition {rep}: an ingest still running after 120s")
            assert process.returncode == 1, f"repetition {rep}: exit {process.returncode}\n{err[-2000:]!r}"
        if fresh:  # the same tables as one run under the secret they created
            single = _store_with_secret(tmp_path / f"single{rep}", store)
            assert _ingest(single, root).returncode == 1
            assert _snapshot(store) == _snapshot(single), f"repetition {rep} (workers {order}, fresh store)"
        else:
            assert _snapshot(store) == expected, f"repetition {rep} (workers {order})"


@pytest.mark.slow
def test_an_ingest_killed_at_a_random_point_resumes_to_the_same_tables(tmp_path, fault_reference):
    root, reference, expected, work_s = fault_reference
    for seed in range(10):
        store = _store_with_secret(tmp_path / f"seed{seed}", reference)
        process = _start(store, root, 1 + seed % 2)
        _wait_until_working(process)
        # anywhere in decoding, writing the index and failures, deriving, writing scans/pairs/datasets
        time.sleep(random.Random(seed).uniform(0.0, work_s))
        process.kill()  # SIGKILL to the ingest itself, wherever it is
        process.communicate()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # and whatever it had started (decoding workers, hasher)
        run = _ingest(store, root)
        assert run.returncode == 1, f"seed {seed}: {run.stderr[-2000:]}"
        assert _snapshot(store) == expected, f"seed {seed}"
