"""Resumable ingestion: SIGKILL midway then rerun gives exactly the rows of an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from store.ingest import index_location, ingest_dataset
from store.layout import open_store
from store.secret import load_secret
from store.tables import read_table, table_exists, table_parts
from tests._ingest_samples import write_dicom

REPO = Path(__file__).resolve().parent.parent

# Runs the real ingest in a child process; each chunk is slowed down so the test can kill it midway.
CHILD = """
import sys, time
import store.ingest as ingest
from store.layout import open_store

original = ingest._decode_chunk

def slow(*args, **kwargs):
    time.sleep(0.05)
    return original(*args, **kwargs)

ingest._decode_chunk = slow
ingest.ingest_dataset(open_store(sys.argv[1]), "resume", root=sys.argv[2], chunk_size=4, progress=False)
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "dicom"
    rng = np.random.default_rng(3)
    for subject in range(8):
        for visit, date in enumerate(("20220103", "20220117", "20220207")):
            for k in range(10 + (subject + visit) % 3):  # slice counts differ between visits
                write_dicom(
                    root / f"s{subject}" / f"v{visit}" / f"{k:02d}.dcm",
                    rng.integers(0, 999, (6, 6), dtype=np.uint16),
                    patient_id=f"RESUME-{subject}",
                    study_date=date,
                    instance=k + 1,
                )
    (root / "s0" / "notes.txt").write_text("not an image")
    truncated = root / "s1" / "v0" / "zz_truncated.dcm"
    write_dicom(truncated, np.zeros((40, 40), np.uint16), patient_id="RESUME-1")
    truncated.write_bytes(truncated.read_bytes()[:-500])
    return root


def _dataset_rows(store, table):
    data = read_table(store, table)
    return data.filter(pc.equal(data.column("dataset"), "resume"))


def _uninterrupted(tmp_path: Path, secret_from: Path, root: Path, **options):
    store_dir = tmp_path / f"store-{len(list(tmp_path.iterdir()))}"
    store_dir.mkdir()
    shutil.copyfile(secret_from / "secret", store_dir / "secret")  # same pseudonyms as the other store
    store = open_store(store_dir)
    summary = ingest_dataset(store, "resume", root=root, progress=False, **options)
    return store, summary


def test_sigkill_midway_then_rerun_equals_uninterrupted_run(tmp_path, folder):
    store_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store_dir), str(folder)], cwd=REPO, env=env)
    index_store, index_table = index_location(open_store(store_dir), "resume")
    deadline = time.monotonic() + 120
    try:
        while len(table_parts(index_store, index_table)) < 3:
            assert child.poll() is None, "the ingest finished before it could be killed"
            assert time.monotonic() < deadline, "no index part appeared"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    store = open_store(store_dir)
    parts_at_kill = len(table_parts(index_store, index_table))
    assert not table_exists(store, "scans"), "killed too late: the run had already finished"

    resumed = ingest_dataset(store, "resume", root=folder, chunk_size=4, progress=False)
    assert resumed.skipped >= 4 * parts_at_kill - 2 and resumed.ingested > 0
    assert resumed.files == resumed.ingested + resumed.skipped + resumed.failed
    reference, full = _uninterrupted(tmp_path, store_dir, folder, chunk_size=64)
    assert (
        (resumed.scans_rows, resumed.pairs_rows, resumed.failed)
        == (full.scans_rows, full.pairs_rows, full.failed)
        == (full.scans_rows, full.pairs_rows, 2)
    )
    assert resumed.unpaired_slices == full.unpaired_slices > 0

    scans, expected = _dataset_rows(store, "scans"), _dataset_rows(reference, "scans")
    images = sum(1 for _ in folder.rglob("*.dcm")) - 1  # all but the truncated file
    assert scans.num_rows == len(set(scans.column("scan_id").to_pylist())) == images
    assert scans.sort_by("scan_id").equals(expected.sort_by("scan_id"))
    pairs, expected_pairs = _dataset_rows(store, "pairs"), _dataset_rows(reference, "pairs")
    assert pairs.num_rows == len(set(pairs.column("pair_id").to_pylist()))
    assert pairs.sort_by("pair_id").equals(expected_pairs.sort_by("pair_id"))
    failures = Counter(_dataset_rows(store, "failures").column("path").to_pylist())
    assert failures == Counter(_dataset_rows(reference, "failures").column("path").to_pylist())
    assert failures == {"s0/notes.txt": 1, "s1/v0/zz_truncated.dcm": 1}

    again = ingest_dataset(store, "resume", root=folder, progress=False)
    assert (again.ingested, again.skipped, again.failed) == (0, resumed.files - 2, 2)
    assert _dataset_rows(store, "scans").sort_by("scan_id").equals(expected.sort_by("scan_id"))


def test_worker_processes_give_the_same_rows(tmp_path, folder):
    seed = open_store(tmp_path / "seed")
    load_secret(seed)
    first, single = _uninterrupted(tmp_path, seed.root, folder, chunk_size=32)
    second, pooled = _uninterrupted(tmp_path, seed.root, folder, chunk_size=32, workers=2)
    assert (pooled.ingested, pooled.failed) == (single.ingested, single.failed) and single.ingested > 200
    for table, key in (("scans", "scan_id"), ("pairs", "pair_id")):
        assert _dataset_rows(first, table).sort_by(key).equals(_dataset_rows(second, table).sort_by(key))
