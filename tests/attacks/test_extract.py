"""Attacks on extraction: two writers of one table, kill -9 midway, failures that pile up.

The promises: two ``extract`` runs of one table never write a key twice (the second waits, says so,
then computes only what is missing); a killed run keeps every part it flushed (at least every
``CHRONOFEAT_FLUSH_SECONDS`` of work) and a rerun gives the table of an uninterrupted run;
``failures`` holds one current row per input, resolved when a retry succeeds.

Cost plan (CI: 2 cores): one 36-image DICOM dataset (6 subjects x 2 visits x 3 slices, 96 px),
ingested once through the CLI; reference tables from one uninterrupted run per extractor; every
attack works on a copy of that store. Child processes run the real ``cli.main`` with the
extractor's batches slowed down (``CHILD``) so a second run or a kill lands while work is going on;
reruns go through ``cli.main`` in this process. About 4 minutes in all.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from store.layout import open_store
from store.tables import read_table, table_exists, table_lock, table_parts
from tests._ingest_samples import write_dicom
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
DATASET = "toy"
N_IMAGES = 36
CORE = {"scans", "pairs", "datasets", "failures"}
BOVW = ["extract", "--extractor", "orb_bovw", "--dataset", DATASET, "--workers", "1"]
CNN = ["extract", "--extractor", "cnn", "--model", "test_efficientnet", "--weights", "random", "--device", "cpu",
       "--batch-size", "4", "--workers", "0", "--dataset", DATASET]
COMMANDS = {"bovw": BOVW, "cnn": CNN}

# The real CLI in a child process. Every extractor module is imported first; the extractors' batches
# are made small (4 units) and each one is followed by DELAY seconds, so a run takes a few seconds;
# with a GO file, the child waits for it to appear before it starts (two children then start at once).
CHILD = r"""
import os, sys, time
go, delay, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
import cli, cv2
if "cnn" in argv:
    import timm, torch
from extractors import cli_aliases
import extractors.bovw as bovw, extractors.keypoints as keypoints, extractors.cnn as cnn

cli_aliases()
bovw._BATCH = keypoints._BATCH = 4

def slowed(cls):
    original = cls.transform
    def transform(self, store, pending):
        for batch in original(self, store, pending):
            time.sleep(delay)
            yield batch
    cls.transform = transform

for cls in (bovw.BoVW, keypoints.KeypointDescriptors, cnn.CNNEmbedding):
    slowed(cls)
if go != "-":
    while not os.path.exists(go):
        time.sleep(0.005)
sys.exit(cli.main(argv))
"""


def _child(args: list[str], store: Path, *, go: Path | None = None, delay: float = 0.15, flush: float = 0.25,
           stderr=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1", "CHRONOFEAT_FLUSH_SECONDS": str(flush),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", CHILD, str(go) if go else "-", str(delay), *args, "--store", str(store)]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _cli_here(args: list[str], store: Path, monkeypatch) -> int:
    """``cli.main`` in this process (no interpreter start-up): the rerun after a kill."""
    import cli

    monkeypatch.setenv("CHRONOFEAT_NO_BOOTSTRAP", "1")
    return cli.main([*args, "--store", str(store)])


def _image(rng: np.random.Generator) -> np.ndarray:
    smooth = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 2)
    return ((smooth - smooth.min()) / np.ptp(smooth) * 4000).astype(np.uint16)


def _write_dataset(root: Path) -> Path:
    rng = np.random.default_rng(13)
    for subject in range(6):
        for visit, date in enumerate(("20220103", "20220117")):
            for k in range(3):
                write_dicom(root / f"s{subject}" / f"v{visit}" / f"{k}.dcm", _image(rng),
                            patient_id=f"ATTACK-{subject}", study_date=date, instance=k + 1)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("extract-attack") / "dicom")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, dataset) -> Path:
    """A store holding the dataset's core tables only (ingested through the CLI)."""
    store = tmp_path_factory.mktemp("extract-attack-store") / "store"
    result = run_cli("ingest", "--dataset", DATASET, "--root", str(dataset), "--store", str(store))
    assert result.returncode == 0, result.stderr
    return store


def _copy(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest, ignore=shutil.ignore_patterns(".lock", ".tmp-*"))
    return dest


def _feature_tables(store: Path) -> dict[str, pa.Table]:
    tables = store / "tables"
    names = sorted(p.name for p in tables.iterdir() if p.is_dir() and p.name not in CORE) if tables.is_dir() else []
    handle = open_store(store)
    return {name: read_table(handle, name) for name in names if table_exists(handle, name)}


@pytest.fixture(scope="module")
def references(tmp_path_factory, ingested) -> dict[str, dict[str, pa.Table]]:
    """The feature tables of one uninterrupted run of each command (``bovw``, ``cnn``)."""
    out = {}
    for name, args in COMMANDS.items():
        store = _copy(ingested, tmp_path_factory.mktemp(f"reference-{name}") / "store")
        result = run_cli(*args, "--store", str(store))
        assert result.returncode == 0, result.stderr
        out[name] = _feature_tables(store)
        assert all(t.num_rows == N_IMAGES for t in out[name].values()), {k: v.num_rows for k, v in out[name].items()}
    return out


def _key(table: pa.Table) -> str:
    return "scan_id" if "scan_id" in table.column_names else "pair_id"


def _assert_same_table(got: pa.Table, want: pa.Table, name: str) -> None:
    """No key twice, the same keys, and the same values (floats to 1e-6) as the uninterrupted run."""
    key = _key(want)
    keys = got.column(key).to_pylist()
    assert len(keys) == len(set(keys)), f"{name}: {len(keys) - len(set(keys))} duplicate keys"
    got, want = got.sort_by(key), want.sort_by(key)
    assert got.column_names == want.column_names and got.column(key).equals(want.column(key)), name
    for column in want.column_names:
        a, b = got.column(column), want.column(column)
        kind = want.schema.field(column).type
        vector = pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
        if pa.types.is_floating(kind) or (vector and pa.types.is_floating(kind.value_type)):
            np.testing.assert_allclose(np.asarray(a.to_pylist(), np.float64), np.asarray(b.to_pylist(), np.float64),
                                       rtol=1e-6, atol=1e-7, err_msg=f"{name}.{column}")
        else:
            assert a.equals(b), f"{name}.{column}"


def _assert_same_tables(store: Path, want: dict[str, pa.Table]) -> None:
    got = _feature_tables(store)
    assert sorted(got) == sorted(want)
    for name, table in want.items():
        _assert_same_table(got[name], table, name)


def _main_table(reference: dict[str, pa.Table], command: str) -> str:
    """The table the command is about (BoVW also writes its keypoint-descriptor table)."""
    return next(n for n in reference if n.startswith("orb_bovw" if command == "bovw" else "test_efficientnet"))


def _rows(parts: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def _wait_for(predicate, child: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if child.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {child.returncode}) before {what}: {child.communicate()[1][-2000:]}"
            )
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _kill(child: subprocess.Popen) -> None:
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL


# --- two writers of one table ---------------------------------------------------------------------
# 10 repetitions in all, the limited run (--limit 12) first or second in turn: BoVW (its vocabulary and
# keypoint table make it the richest case) and twice the CNN (whose child processes cost more to start).
REPETITIONS = [("cnn" if i in (4, 9) else "bovw", "limited-first" if i % 2 == 0 else "full-first") for i in range(10)]


@pytest.mark.slow
@pytest.mark.parametrize("command, order", REPETITIONS, ids=[f"{c}-{o}-{i}" for i, (c, o) in enumerate(REPETITIONS)])
def test_two_concurrent_extracts_never_write_a_key_twice(command, order, ingested, references, tmp_path):
    store = _copy(ingested, tmp_path / "store")
    table = _main_table(references[command], command)
    limited = [*COMMANDS[command], "--limit", "12"]
    first_args, second_args = (limited, COMMANDS[command]) if order == "limited-first" else (COMMANDS[command], limited)
    go_first, go_second = tmp_path / "go-first", tmp_path / "go-second"
    first = _child(first_args, store, go=go_first, delay=0.35)
    second = _child(second_args, store, go=go_second, delay=0.2)
    try:
        go_first.touch()
        # the first run holds the table's writer lock (and works on for a second or more) ...
        _wait_for(lambda: (store / "tables" / table / ".lock").exists(), first, "the first run took its lock")
        go_second.touch()  # ... when the second one starts
        out_first, err_first = first.communicate(timeout=300)
        out_second, err_second = second.communicate(timeout=300)
    finally:
        for child in (first, second):
            if child.poll() is None:
                child.kill()
                child.wait()
    assert (first.returncode, second.returncode) == (0, 0), err_first[-2000:] + err_second[-2000:]
    _assert_same_tables(store, references[command])
    assert "being written by another run; waiting" in err_second, err_second[-2000:]


@pytest.mark.slow
def test_ray_engine_takes_the_lock_before_it_computes_pending_work(ingested, tmp_path, capfd):
    pytest.importorskip("ray", reason="the Ray engine needs the optional 'ray' extra")
    from extractors.diffstats import DiffStats
    from extractors.ray_engine import run_extraction_ray
    from extractors.runner import run_extraction

    reference = open_store(_copy(ingested, tmp_path / "reference"))
    table = run_extraction(DiffStats(reference="absolute", workers=1), reference, dataset=DATASET, progress=False).table
    store = open_store(_copy(ingested, tmp_path / "store"))
    outcome: dict = {}

    def ray_run() -> None:
        try:
            outcome["summary"] = run_extraction_ray(DiffStats(reference="absolute"), store, dataset=DATASET,
                                                    num_cpus=2, block_rows=12, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    with table_lock(store, table) as directory:  # another writer holds the table ...
        worker = threading.Thread(target=ray_run)
        worker.start()
        _wait_until_ray_waits(worker, capfd)
        for part in table_parts(reference, table):  # ... and writes every row meanwhile
            shutil.copy2(part, directory / part.name)
    worker.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"].written == 0
    _assert_same_table(read_table(store, table), read_table(reference, table), table)


def _wait_until_ray_waits(worker: threading.Thread, capfd) -> None:
    """Until the Ray run says it waits for the lock (code that never says so: until it has had 40 s)."""
    deadline = time.monotonic() + 40
    seen = ""
    while "waiting for it to finish" not in seen:
        assert worker.is_alive(), "the Ray run ended while another writer held the table"
        if time.monotonic() > deadline:
            break
        seen += capfd.readouterr().err
        time.sleep(0.1)
    time.sleep(0.5)


# --- kill -9 at a random point ----------------------------------------------------------------------
def _part_digests(store: Path) -> dict[Path, str]:
    """sha256 of every part of the feature tables."""
    parts = (p for p in (store / "tables").glob("*/part-*.parquet") if p.parent.name not in CORE)
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in parts}


def _kept(flushed: dict[Path, str], store: Path) -> bool:
    """Every part flushed before the kill is still there, byte for byte."""
    after = _part_digests(store)
    return all(after.get(part) == digest for part, digest in flushed.items())


def _kill_after_a_first_part(command: list[str], store: Path, table: str, rng: random.Random, *, delay: float,
                             flush: float, longest_wait: float) -> dict[Path, str]:
    """Run ``command`` in a child, SIGKILL it at a random moment (up to ``longest_wait`` s) after ``table``
    got its first part; return the digests of the feature parts that existed just before the kill."""
    child = _child(command, store, delay=delay, flush=flush, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: bool(table_parts(open_store(store), table)), child, f"a first part of {table}")
        time.sleep(rng.uniform(0.0, longest_wait))
        flushed = _part_digests(store)
        _kill(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return flushed


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_bovw_killed_at_a_random_point_then_rerun_gives_the_uninterrupted_tables(seed, ingested, references,
                                                                                  tmp_path, monkeypatch):
    rng = random.Random(seed)
    store = _copy(ingested, tmp_path / "store")
    # even seeds: kill while keypoints are described; odd seeds: while histograms are computed
    watched = "orb_descriptors" if seed % 2 == 0 else _main_table(references["bovw"], "bovw")
    flushed = _kill_after_a_first_part(BOVW, store, watched, rng, delay=0.15, flush=0.25, longest_wait=0.6)
    done = _rows([p for p in flushed if p.parent.name == watched])
    assert 0 < done < N_IMAGES, f"{done} rows of {watched} at the kill: it was not written part by part"
    assert _kept(flushed, store), "a part flushed before the kill is gone or changed"
    assert _cli_here(BOVW, store, monkeypatch) == 0
    _assert_same_tables(store, references["bovw"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_cnn_killed_at_a_random_point_keeps_its_parts_and_rerun_gives_the_uninterrupted_table(
    seed, ingested, references, tmp_path, monkeypatch
):
    rng = random.Random(100 + seed)
    store = _copy(ingested, tmp_path / "store")
    table = _main_table(references["cnn"], "cnn")
    flushed = _kill_after_a_first_part(CNN, store, table, rng, delay=0.2, flush=0.3, longest_wait=0.8)
    assert 0 < _rows(list(flushed)) < N_IMAGES
    assert _kept(flushed, store), "a part flushed before the kill is gone or changed"
    for part in flushed:
        pq.read_table(part)  # complete and readable
    assert _cli_here(CNN, store, monkeypatch) == 0
    resumed = read_table(open_store(store), table)
    assert resumed.num_rows == N_IMAGES
    _assert_same_table(resumed, references["cnn"][table], table)


@pytest.mark.slow
def test_ingest_then_extract_killed_at_a_third_keeps_the_flushed_rows(dataset, ingested, references, tmp_path,
                                                                       monkeypatch, capfd):
    """The reported case: a kill at 128 of 360 images lost every row computed so far."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(ingested / "secret", store / "secret")  # the reference's pseudonyms and keys
    ingest = run_cli("ingest", "--dataset", DATASET, "--root", str(dataset), "--store", str(store))
    assert ingest.returncode == 0, ingest.stderr
    table = _main_table(references["cnn"], "cnn")
    child = _child(CNN, store, delay=0.25, flush=0.5)
    seen = []

    def progress() -> None:  # the progress bar on stderr: "... 12/36 ..."
        buffer = ""
        while chunk := child.stderr.read(1):
            buffer += chunk
            if chunk in "\r\n":
                found = re.search(rf"(\d+)/{N_IMAGES}\b", buffer)
                if found:
                    seen.append(int(found.group(1)))
                buffer = ""

    reader = threading.Thread(target=progress, daemon=True)
    reader.start()
    try:
        _wait_for(lambda: bool(seen) and seen[-1] >= N_IMAGES // 3, child, "a third of the images was done")
        at_kill = seen[-1]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert at_kill < N_IMAGES, "killed too late: the run had finished"
    kept = _rows(table_parts(open_store(store), table))
    # parts are written every 0.5 s of work; a batch of 4 takes >= 0.25 s: at most 3 batches are lost
    assert kept >= at_kill - 12 and kept >= 4, f"{kept} rows kept after a kill at {at_kill}/{N_IMAGES}"
    capfd.readouterr()
    assert _cli_here(CNN, store, monkeypatch) == 0
    assert f"skipped {kept} already present" in capfd.readouterr().out
    _assert_same_table(read_table(open_store(store), table), references["cnn"][table], table)


# --- failures: one current row per input --------------------------------------------------------------
def _failure_rows(store: Path, **where) -> list[dict]:
    handle = open_store(store)
    if not table_exists(handle, "failures"):
        return []
    rows = read_table(handle, "failures").to_pylist()
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _small_folder(root: Path) -> tuple[Path, Path]:
    """Four good images and one truncated file; returns (folder, the broken file)."""
    rng = np.random.default_rng(5)
    for k in range(4):
        write_dicom(root / "s0" / f"{k}.dcm", _image(rng), patient_id="RETRY-0", instance=k + 1)
    broken = root / "s0" / "9.dcm"
    write_dicom(broken, _image(rng), patient_id="RETRY-0", instance=10)
    broken.write_bytes(broken.read_bytes()[:-3000])
    return root, broken


def test_retry_failed_keeps_one_current_failure_row_per_input(tmp_path):
    folder, broken = _small_folder(tmp_path / "dicom")
    store = tmp_path / "store"
    first = run_cli("ingest", "--dataset", "retry", "--root", str(folder), "--store", str(store))
    assert first.returncode == 1, first.stderr
    for _ in range(2):
        again = run_cli("ingest", "--dataset", "retry", "--retry-failed", "--store", str(store))
        assert again.returncode == 1, again.stderr
    rows = _failure_rows(store, dataset="retry")
    assert [r["path"] for r in rows] == ["s0/9.dcm"], rows
    assert rows[0].get("resolved_at") is None


def test_ingest_retry_that_succeeds_marks_the_failure_resolved(tmp_path):
    folder, broken = _small_folder(tmp_path / "dicom")
    store = tmp_path / "store"
    assert run_cli("ingest", "--dataset", "retry", "--root", str(folder), "--store", str(store)).returncode == 1
    write_dicom(broken, _image(np.random.default_rng(6)), patient_id="RETRY-0", instance=10)  # the file is fixed
    fixed = run_cli("ingest", "--dataset", "retry", "--retry-failed", "--store", str(store))
    assert fixed.returncode == 0, fixed.stderr
    rows = _failure_rows(store, dataset="retry")
    assert len(rows) == 1 and rows[0]["path"] == "s0/9.dcm" and rows[0]["resolved_at"] is not None, rows


def test_extract_reruns_keep_one_failure_row_and_a_success_resolves_it(dataset, tmp_path, monkeypatch):
    folder, store = tmp_path / "dicom", tmp_path / "store"
    shutil.copytree(dataset, folder)
    assert run_cli("ingest", "--dataset", DATASET, "--root", str(folder), "--store", str(store)).returncode == 0
    scan = read_table(open_store(store), "scans").sort_by("path").to_pylist()[0]
    damaged = folder / scan["path"]
    good = damaged.read_bytes()
    damaged.write_bytes(good[: len(good) // 2])  # the file is damaged after ingest
    for _ in range(2):
        assert _cli_here(CNN, store, monkeypatch) == 1
    rows = _failure_rows(store, key=scan["scan_id"])
    assert len(rows) == 1 and rows[0]["stage"].startswith("extract:"), rows
    assert rows[0].get("resolved_at") is None
    damaged.write_bytes(good)  # fixed: the next run computes it
    assert _cli_here(CNN, store, monkeypatch) == 0
    rows = _failure_rows(store, key=scan["scan_id"])
    assert len(rows) == 1 and rows[0]["resolved_at"] is not None, rows
    assert read_table(open_store(store), "test_efficientnet_random").num_rows == N_IMAGES


def test_failures_written_before_resolved_at_existed_keep_working(tmp_path):
    """An old store's failures part (no ``resolved_at``): read as open, replaced, resolved, queried."""
    from store.failures import Failure, open_failures, record_failures, resolve_failures
    from store.sql import query

    store = open_store(tmp_path / "store")
    old_schema = pa.schema(
        [
            ("key", pa.string()),
            ("dataset", pa.string()),
            ("path", pa.string()),
            ("stage", pa.string()),
            ("error_class", pa.string()),
            ("message", pa.string()),
            ("time", pa.timestamp("us", tz="UTC")),
        ]
    )
    rows = [{"key": k, "dataset": "old", "path": f"{k}.dcm", "stage": "ingest:decode", "error_class": "DecodeError",
             "message": "truncated", "time": None} for k in ("a", "b", "c")]
    folder = store.tables_dir / "failures"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), folder / "part-00000000000000000001-old.parquet")

    assert sorted(open_failures(store, dataset="old").column("key").to_pylist()) == ["a", "b", "c"]
    record_failures(store, [Failure(key="a", dataset="old", path="a.dcm", stage="ingest:read", error_class="InputError",
                                    message="unreadable")], producer="store.ingest")
    assert resolve_failures(store, dataset="old", keys=["b"], producer="store.ingest") == 1
    table = read_table(store, "failures").sort_by("key").to_pylist()
    assert [(r["key"], r["stage"], r["resolved_at"] is None) for r in table] == [
        ("a", "ingest:read", True), ("b", "ingest:decode", False), ("c", "ingest:decode", True)]
    assert query(store, "SELECT count(*) AS n FROM failures WHERE resolved_at IS NULL").column("n")[0].as_py() == 2
