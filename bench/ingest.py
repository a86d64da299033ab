"""Ingestion speed: files/s of ``ingest_dataset`` against a bare ``pydicom.dcmread(f).pixel_array`` loop.

Generates N uncompressed 512x512 16-bit CT-like DICOM slices (RescaleSlope/Intercept, 12 bits stored,
20 patients, several study dates) in a temporary folder, times the bare loop over them (best of
``--repeats``, after one warm-up pass so both read from the page cache), then ingests the same folder
into a fresh temporary store with each ``--workers`` value (best of ``--repeats``; the
configurations alternate within each repeat) and prints files/s, the ratio ours / bare and the cores
the run kept busy. With one worker and a spare core the hashing is shared with a helper process
(``store._frame_hasher``); the row "workers=1, one core" keeps it in the decoding process, as on a
one-core machine, so the share of each is visible. The ingest time covers everything: listing,
decoding, hashing, index parts, failures, and the derived scans/pairs/datasets tables.

    .venv/bin/python bench/ingest.py                 # 2,000 files, workers 1 and 2
    .venv/bin/python bench/ingest.py --files 300 --workers 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_ct_slice  # noqa: E402
from store.ingest import ingest_dataset  # noqa: E402
from store.layout import open_store  # noqa: E402


def generate(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """Write ``count`` uncompressed ``size`` x ``size`` DICOM slices into ``folder``; return their paths."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    paths = []
    for i in range(count):
        patient, visit = i % 20, (i // 20) % 5
        path = folder / f"p{patient:03d}" / f"v{visit}" / f"slice{i:05d}.dcm"
        write_ct_slice(path, np.roll(base, i, axis=0), patient=f"BENCH{patient:03d}",
                       patient_name=f"Bench^Patient{patient}",
                       study_date=(dt.date(2020, 1, 6) + dt.timedelta(weeks=visit)).strftime("%Y%m%d"),
                       instance=i // 100 + 1, window=(40, 400))
        paths.append(path)
    return paths


def bare_loop(paths: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds for ``pydicom.dcmread(f).pixel_array`` over ``paths``."""
    import pydicom

    started, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        _ = pydicom.dcmread(path).pixel_array  # decoding is what is timed
    return time.perf_counter() - started, time.process_time() - cpu


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``; 0 where there is none). Worker
    processes are children of multiprocessing's fork server, not of this process, so this counts them
    where ``getrusage`` would not; on a quiet machine it is the run's own CPU time."""
    try:
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ours(folder: Path, workers: int, scratch: Path, *, helper: bool = True) -> tuple[float, float, float]:
    """Wall seconds for ``ingest_dataset`` of ``folder`` into a fresh store with ``workers`` processes,
    CPU seconds of this process (all threads) and busy CPU seconds of the machine meanwhile. ``helper``
    False keeps one worker's hashing in its own process (one core), as on a one-core machine."""
    import store.ingest

    store_root = Path(tempfile.mkdtemp(prefix="store-", dir=scratch))
    spare_core = store.ingest._spare_core
    try:
        if not helper:
            store.ingest._spare_core = lambda workers: False
        store_ = open_store(store_root)
        started, cpu, tree = time.perf_counter(), time.process_time(), _machine_busy_seconds()
        summary = ingest_dataset(store_, "bench", root=folder, layout="generic", workers=workers, progress=False)
        seconds, cpu, tree = time.perf_counter() - started, time.process_time() - cpu, _machine_busy_seconds() - tree
        if summary.failed or summary.ingested != summary.files:
            raise SystemExit(f"bench ingest failed: {summary.summary_line()}")
        return seconds, cpu, tree
    finally:
        store.ingest._spare_core = spare_core
        shutil.rmtree(store_root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="number of DICOM slices (default 2000)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice (default 512)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per configuration, best kept (default 2)")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="chronofeat-bench-"))
    try:
        folder = scratch / "dicom"
        started = time.perf_counter()
        paths = generate(folder, args.files, args.size)
        print(
            f"generated {len(paths)} {args.size}x{args.size} "
            f"uncompressed slices in {time.perf_counter() - started:.1f}s"
        )
        bare_loop(paths)  # warm the page cache
        # Alternate the configurations within each repeat so a change in machine load hits all alike.
        from store.ingest import _spare_core

        configs = [(f"ingest_dataset workers={w}", w, True) for w in args.workers]
        if 1 in args.workers and _spare_core(1):
            configs.insert(1, ("ingest_dataset workers=1, one core", 1, False))
        timings: dict[str, list[tuple[float, ...]]] = {"bare": []}
        for _ in range(args.repeats):
            timings["bare"].append(bare_loop(paths))
            for label, workers, helper in configs:
                timings.setdefault(label, []).append(ours(folder, workers, scratch, helper=helper))
        n = len(paths)
        bare_wall, bare_cpu = min(t[0] for t in timings["bare"]), min(t[1] for t in timings["bare"])
        bare_rate = n / bare_wall
        print(f"{'':36s} {'files/s':>8s}  {'ratio':>5s}  {'cores':>5s}  CPU ms/file (this process / all)")
        print(f"{'bare dcmread().pixel_array':36s} {bare_rate:8.0f}  {1:5.2f}  {bare_cpu / bare_wall:5.2f}  "
              f"{bare_cpu / n * 1e3:.3f}")
        for label, _, _ in configs:
            wall, cpu, tree = min(timings[label], key=lambda t: t[0])
            rate = n / wall
            print(f"{label:36s} {rate:8.0f}  {rate / bare_rate:5.2f}  {tree / wall:5.2f}  "
                  f"{cpu / n * 1e3:.3f} / {tree / n * 1e3:.3f}")
        print("cores = busy CPU seconds of the machine during the run / wall seconds (other load counts too). "
              "'one core': the hashing stays in the decoding process, as on a one-core machine.")

        print(
            f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} (other processes skew figures); "
            f"workers=1 shares the hashing with a helper process: {'yes' if _spare_core(1) else 'no (one core)'}"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
