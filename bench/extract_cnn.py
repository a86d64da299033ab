"""Benchmark: CNN embedding throughput from DICOM on disk to Parquet, against a bare forward pass.

For each model, on the chosen device (``auto``: CUDA when present, else CPU):

* end to end — ``run_extraction`` over N and 10*N demo DICOM scans (decode in DataLoader workers,
  intensity policy, resize/pad, pinned transfer, forward, Parquet part), each in a fresh process;
  images/s is counted from the end of ``prepare`` (network built) to the last part written, and the
  total including start-up is shown too;
* bare forward — the same network, batch size, precision and memory format on tensors already in
  memory (``CNNEmbedding.embed``), the ceiling the pipeline is judged against (target ratio >= 0.85);
* peak RSS of the extracting process at N and 10*N images (target: 10*N within 1.2x of N).

Weights are ``random`` (speed does not depend on their values; the bench needs no network).
Usage: ``python bench/extract_cnn.py [--n 30] [--models inception_v3,efficientnet_b0,convnext_tiny]
[--device auto|cpu|cuda] [--batch-size 32] [--workers N] [--precision auto] [--root bench/out]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATASET = "crmo"


def _demo_store(root: Path):
    from store.ingest import ingest_dataset
    from store.layout import open_store
    from store.tables import table_exists

    store = open_store(root / "store")
    if not table_exists(store, "scans"):
        ingest_dataset(store, DATASET, progress=False)
    return store


def _copy_core(store, dest: Path):
    import shutil

    from store.layout import open_store

    copy = open_store(dest)
    for table in ("scans", "pairs", "datasets"):
        if (store.tables_dir / table).is_dir():
            shutil.copytree(store.tables_dir / table, copy.tables_dir / table, ignore=shutil.ignore_patterns(".lock"))
    shutil.copy2(store.secret_path, copy.secret_path)
    return copy


def _extractor(args):
    from extractors import create_extractor

    return create_extractor(
        "cnn", model=args.model, weights="random", device=args.device, batch_size=args.batch_size,
        workers=args.workers, precision=args.precision,
    )


def child(args) -> None:
    """One end-to-end run of ``args.limit`` scans in this (fresh) process; prints a JSON line."""
    from extractors.runner import run_extraction
    from store.layout import open_store

    store = open_store(args.store, create=False)
    with tempfile.TemporaryDirectory() as tmp:
        work = _copy_core(store, Path(tmp) / "store")
        extractor = _extractor(args)
        timing = {}
        original = extractor.prepare

        def timed_prepare(*a, **k):
            original(*a, **k)
            if args.bare:  # before the run; again after it: both figures see the same machine conditions
                began = time.perf_counter()
                timing["bare_before"] = bare_forward(extractor, args.batch_size, args.limit // 2)
                timing["bare_s"] = time.perf_counter() - began
            timing["prepared"] = time.perf_counter()
            timing["cpu"] = _cpu_seconds()

        extractor.prepare = timed_prepare
        started = time.perf_counter()
        summary = run_extraction(extractor, work, dataset=DATASET, limit=args.limit, progress=False)
        ended = time.perf_counter()
        cpu = _cpu_seconds() - timing["cpu"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "images": summary.written, "failed": summary.failed, "total_s": ended - started - timing.get("bare_s", 0.0),
        "steady_s": ended - timing["prepared"], "steady_cpu_s": cpu, "rss_mib": usage.ru_maxrss / 1024,
        "worker_rss_mib": children.ru_maxrss / 1024, "device": extractor.device_, "precision": extractor.precision_,
        "workers": extractor.workers_, "threads": extractor.run_info_["torch_threads"],
    }
    if args.bare:
        after = bare_forward(extractor, args.batch_size, args.limit // 2)
        before = timing["bare_before"]
        result["bare_rate"] = (before[0] + after[0]) / 2
        result["bare_cpu_per_image"] = (before[1] + after[1]) / 2
    print(json.dumps(result))


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bare_forward(extractor, batch_size: int, images: int) -> tuple[float, float]:
    """(images/s, CPU s per image) of ``embed`` on in-memory batches: the prepared network, batch size,
    precision and memory format, without reading or preparing any image."""
    import torch

    size = extractor._preprocess().size
    batch = torch.rand(batch_size, 3, *size)
    if extractor.device_.startswith("cuda"):
        batch = batch.pin_memory()
    extractor.embed(batch)  # warm-up: oneDNN / cuDNN pick their kernels
    batches = max(2, -(-images // batch_size))
    if extractor.device_.startswith("cuda"):
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        extractor.embed(batch)  # returns numpy: includes the device-to-host copy, as extraction does
    done = batches * batch_size
    return done / (time.perf_counter() - started), (_cpu_seconds() - cpu) / done


def run_child(args, limit: int, *, bare: bool = False) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--store", str(args.store), "--model", args.model,
        "--device", args.device, "--batch-size", str(args.batch_size), "--precision", args.precision,
        "--limit", str(limit),
    ] + (["--bare"] if bare else []) + (["--workers", str(args.workers)] if args.workers is not None else [])
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="inception_v3,efficientnet_b0,convnext_tiny")
    parser.add_argument("--n", type=int, default=36, help="N: the small run (>= the batch size, so both runs use full "
                        "batches); the large run is 10*N (<= 360 demo scans)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--root", default=str(REPO / "bench" / "out" / "extract_cnn"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    store = _demo_store(Path(args.root))
    args.store = str(store.root)
    load = os.getloadavg()
    print(f"chronofeat CNN extraction benchmark — {os.cpu_count()} CPU(s), load average {load[0]:.1f} at start; "
          f"dataset {DATASET} (DICOM), N={args.n}, batch {args.batch_size}")
    header = (
        f"{'model':<16}{'device':<7}{'prec':<6}{'wk':>3}{'e2e img/s':>11}{'(incl. start)':>14}"
        f"{'bare img/s':>12}{'ratio':>7}"
        f"{'CPU ratio':>10}{'RSS N':>9}{'RSS 10N':>9}{'10N/N':>7}"
    )
    print(header)
    for model in args.models.split(","):
        args.model = model
        small = run_child(args, args.n)
        large = run_child(args, 10 * args.n, bare=True)
        rate = large["images"] / large["steady_s"]
        bare = large["bare_rate"]
        print(
            f"{model:<16}{large['device']:<7}{large['precision']:<6}{large['workers']:>3}{rate:>11.1f}"
            f"{large['images'] / large['total_s']:>14.1f}{bare:>12.1f}{rate / bare:>7.2f}"
            f"{large['bare_cpu_per_image'] * large['images'] / large['steady_cpu_s']:>10.2f}"
            f"{small['rss_mib']:>8.0f}M{large['rss_mib']:>8.0f}M{large['rss_mib'] / small['rss_mib']:>7.2f}",
            flush=True,
        )
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} at end. ratio = e2e / bare images per second (wall clock); CPU ratio = "
          "bare / e2e CPU seconds per image (this process + its loader workers), which other processes on a "
          "shared machine disturb less.")


if __name__ == "__main__":
    main()
