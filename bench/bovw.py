"""Benchmark of the bag-of-visual-words extractor's two costly steps (prints figures; not a test).

1. Descriptor extraction throughput (images/s) per descriptor with 1 and 2 worker processes on
   512x512 images: the extractor itself (``KeypointDescriptors`` through ``run_extraction``: workers
   read the pixels from the store, describe them, the parent writes the Parquet table), on a
   throw-away store. The worker pool is started and warmed (pixel reader, detector) before timing, as
   it is once per session. Printed per descriptor: images/s at each worker count, their ratio (the
   target), the bare OpenCV ``detectAndCompute`` loop (1 thread, images in memory) in one process and
   in as many pool processes as workers (its own ratio is the speedup the machine gives at all), and
   the cores the run actually got (CPU seconds / wall seconds of the process tree). Worker counts and
   bare loops alternate within each repeat, and the best of each is kept.
2. Vocabulary fit time: MiniBatchKMeans (``fit_centers``, the extractor's settings) on 1M x 128
   SIFT-like descriptors at k = 500, with the default batch size and, with ``--batch-sizes``, others.

Run: ``python bench/bovw.py`` (``--help`` for the options). The target is 2 workers >= 1.7x one
worker; on a machine with other load the ratio says more about that load than about the code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extractors.bovw import fit_centers, nearest_words  # noqa: E402
from extractors.keypoints import DESCRIPTORS  # noqa: E402
from features.errors import BackendUnavailableError  # noqa: E402


def test_images(n: int, size: int = 512, seed: int = 0) -> list[np.ndarray]:
    """``n`` greyscale float32 ``size`` x ``size`` images: crops, rotations and rescalings of
    scikit-image's sample photographs, with noise (realistic keypoint counts, not flat noise)."""
    from skimage import data, transform

    sources = [
        data.camera(), data.coins(), data.moon(), data.page(), data.text(), data.brick(), data.grass(),
        data.gravel(), data.rocket()[..., 0], data.astronaut()[..., 1], data.coffee()[..., 0],
        data.chelsea()[..., 2],
    ]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        source = sources[i % len(sources)].astype(np.float32)
        scale = size / min(source.shape) * rng.uniform(1.0, 1.4)
        scaled = transform.rescale(source, scale, order=1, preserve_range=True, anti_aliasing=True)
        angle = rng.uniform(-20, 20)
        rotated = transform.rotate(scaled, angle, order=1, mode="reflect", preserve_range=True)
        top = rng.integers(0, rotated.shape[0] - size + 1)
        left = rng.integers(0, rotated.shape[1] - size + 1)
        crop = rotated[top : top + size, left : left + size]
        images.append((crop + rng.normal(0, 3, crop.shape)).astype(np.float32))
    return images


def sift_like(rows: int, dim: int = 128, clusters: int = 2000, seed: int = 0) -> np.ndarray:
    """``rows`` x ``dim`` float32 vectors shaped like SIFT descriptors: non-negative, clustered,
    L2 norm 512 with components clipped at 0.2 of it (as OpenCV's SIFT), in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    centers = rng.gamma(0.6, 1.0, size=(clusters, dim)).astype(np.float32)
    out = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 100_000):
        stop = min(rows, start + 100_000)
        picks = rng.integers(0, clusters, stop - start)
        block = centers[picks] + rng.gamma(0.5, 0.5, size=(stop - start, dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block = np.minimum(block, 0.2)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block * 512.0
    return out


def _bench_store(images: list[np.ndarray], workdir: Path, files: int | None = None):
    """A throw-away store with ``files`` (default: one per image) NPY files ingested as dataset ``bench``
    (generic layout); beyond ``len(images)`` the files repeat the images in turn."""
    import csv

    from store.ingest import ingest_dataset
    from store.layout import open_store

    root = workdir / "images"
    root.mkdir(parents=True)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "time"])
        for i in range(max(len(images), files or 0)):
            np.save(root / f"img{i:04d}.npy", images[i % len(images)])
            writer.writerow([f"img{i:04d}.npy", f"s{i % 8}", i // 8])
    store = open_store(workdir / "store")
    ingest_dataset(store, "bench", root=root, progress=False)
    return store


def _tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds so far of process ``root`` (default: this one) and all its descendants
    (the worker pool's processes live on between runs, so differences over a run are that run's CPU)."""
    from bench._common import _children

    tick = os.sysconf("SC_CLK_TCK")
    total, stack, seen = 0.0, [root or os.getpid()], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
        stack.extend(_children(pid))
    return total


def _bare_seconds(greys: list[np.ndarray], name: str, max_keypoints: int) -> float:
    """Wall seconds of the bare loop over ``greys`` here: ``detectAndCompute``, one OpenCV thread, after one
    untimed call (the detector's first call allocates)."""
    import cv2

    from extractors.keypoints import create_detector

    detector = create_detector(name, max_keypoints=max_keypoints)
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        detector.detectAndCompute(greys[0], None)
        started = time.perf_counter()
        for grey in greys:
            detector.detectAndCompute(grey, None)
        return time.perf_counter() - started
    finally:
        cv2.setNumThreads(before)


def _bare_rate(greys: list[np.ndarray], name: str, workers: int = 1, max_keypoints: int = 1000) -> float:
    """images/s of the bare OpenCV loop on images already windowed to uint8 (no reading, no strongest-N
    selection for detectors without nfeatures): in this process for one worker, else each of ``workers``
    pool processes (the extractor's own, warm, so on equal terms with it) loops over its share and the
    rate is all images over the slowest share's seconds."""
    if workers <= 1:
        return len(greys) / _bare_seconds(greys, name, max_keypoints)
    from joblib import Parallel, delayed

    shares = [greys[i::workers] for i in range(workers)]
    seconds = Parallel(n_jobs=workers)(delayed(_bare_seconds)(share, name, max_keypoints) for share in shares)
    return len(greys) / max(seconds)


def _warm_workers(store, name: str, workers: int, max_keypoints: int = 1000) -> None:
    """Start the pool and let its workers do once what a session does once: import the pixel reader,
    open this store, build the detector (tasks carry paths, as in production: workers read pixels)."""
    from extractors._workers import ordered_map
    from extractors.keypoints import _describe_task
    from store.units import scan_units

    units = scan_units(store, "bench").slice(0, max(2, 2 * workers))
    tasks = [
        (scan_id, (str(store.root), "bench", path, int(frame or 0)), name, max_keypoints)
        for scan_id, path, frame in zip(units.column("scan_id").to_pylist(), units.column("path").to_pylist(),
                                        units.column("frame").to_pylist(), strict=True)
    ]
    for result in ordered_map(_describe_task, tasks, workers):
        if result[0] == "fail":
            raise RuntimeError(f"warm-up of {name} failed: {result[3]}")


def bench_descriptors(images: list[np.ndarray], descriptors: list[str], workers_list: list[int], repeats: int,
                      *, min_seconds: float = 2.0, max_images: int = 240) -> None:
    """images/s of the descriptor extractor (read pixels, describe, write the Parquet table) per setting,
    the ratio of the last worker count to the first, and the bare OpenCV loop for scale.

    Each run describes at least ``len(images)`` images, more (up to ``max_images``, the images repeated)
    for a fast descriptor, so that a 1-worker run lasts about ``min_seconds``: a run's fixed cost (finding
    pending units, opening and writing the table: some 30-60 ms) then weighs little in its images/s."""
    import tempfile

    first, last = workers_list[0], workers_list[-1]
    max_images = max(max_images, len(images))
    print(f"descriptor extraction (KeypointDescriptors via run_extraction: read + describe + write), {len(images)} "
          f"distinct images of {images[0].shape[0]}x{images[0].shape[1]} (repeated up to {max_images} for runs of "
          f"~{min_seconds:g} s at 1 worker), max_keypoints=1000, best of {repeats}, alternating; "
          f"cpu_count={os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
    print(
        "  bare = cv2 detectAndCompute loop on uint8 images in memory, 1 OpenCV thread, "
        "in this process (1w) or in each "
        "of w pool processes over its share (the speedup the machine itself gives); ours at 1 worker = 1 process "
        "with 1 OpenCV thread, at w workers = w processes with 1 OpenCV thread each (pool warm)"
    )
    print("  cores used = CPU seconds of this process and its workers / wall seconds: below the worker count "
          "(+ a little for the parent) means the machine's other load took the rest")
    print("  img/s, bare and ours, at each worker count; NwMw = the speedup from M to N workers; ours/bare at each")
    print(f"{'descriptor':<10} " + " ".join(f"{f'bare {w}w':>9}" for w in workers_list) + f" {f'{last}w/{first}w':>7} "
          + " ".join(f"{f'ours {w}w':>9}" for w in workers_list) + f" {f'{last}w/{first}w':>7} "
          + f"{f'o/b {first}w':>6} {f'o/b {last}w':>6} {'images':>6} {'kp/img':>7}  cores used")
    from extractors.keypoints import to_uint8
    from store.sql import query

    def images_per_run(bare_rate: float) -> int:  # a 1-worker run of about min_seconds
        return int(min(max_images, max(len(images), np.ceil(min_seconds * bare_rate))))

    greys = [to_uint8(image) for image in images]
    with tempfile.TemporaryDirectory() as tmp:
        store = _bench_store(images, Path(tmp), max_images)
        for name in descriptors:
            try:
                rates = _measure_descriptor(store, greys, name, workers_list, repeats, count_for=images_per_run)
            except BackendUnavailableError as exc:
                print(f"{name:<10} skipped: {str(exc).split(' (OpenCV says')[0]}")
                continue
            keypoints = query(store, f"SELECT avg(n_keypoints) AS k FROM {rates.table}").to_pylist()[0]["k"]
            print(_descriptor_line(name, rates, workers_list, keypoints), flush=True)


@dataclass
class _DescriptorRates:
    """What ``bench_descriptors`` measured for one descriptor, per worker count."""

    bare: dict[int, float]  # images/s of the bare OpenCV loop
    ours: dict[int, float]  # images/s of run_extraction (best run)
    parent_cpu: dict[int, float]  # CPU seconds of this process per image (lowest)
    cores: dict[int, float]  # cores the best run kept busy
    count: int  # images per run
    table: str


def _measure_descriptor(store, greys: list[np.ndarray], name: str, workers_list: list[int], repeats: int, *,
                        count_for) -> _DescriptorRates:
    """Time the bare loop and ``run_extraction`` of ``name`` at each worker count, ``repeats`` rounds;
    each run describes ``count_for(bare images/s at the first worker count)`` images."""
    import shutil

    from extractors.keypoints import KeypointDescriptors
    from extractors.runner import run_extraction

    bare = {w: _bare_rate(greys, name, w) for w in workers_list}
    count = count_for(bare[workers_list[0]])
    for workers in workers_list:
        _warm_workers(store, name, workers)
    best = {w: 0.0 for w in workers_list}
    cpu = {w: float("inf") for w in workers_list}
    used = {w: 0.0 for w in workers_list}
    table = ""
    # The worker counts alternate within each repeat, so a drift in the machine's speed (a
    # shared VM's varies by tens of percent within minutes) hits every count alike.
    for _ in range(repeats):
        for workers in workers_list:
            bare[workers] = max(bare[workers], _bare_rate(greys, name, workers))
            extractor = KeypointDescriptors(descriptor=name, workers=workers, progress=False)
            table = extractor.table_name()
            shutil.rmtree(store.table_dir(table), ignore_errors=True)
            started, started_cpu, tree_cpu = time.perf_counter(), time.process_time(), _tree_cpu_seconds()
            summary = run_extraction(extractor, store, dataset="bench", limit=count, progress=False)
            wall = time.perf_counter() - started
            if summary.written / wall > best[workers]:
                best[workers] = summary.written / wall
                used[workers] = (_tree_cpu_seconds() - tree_cpu) / wall
            cpu[workers] = min(cpu[workers], (time.process_time() - started_cpu) / summary.written)
    return _DescriptorRates(bare, best, cpu, used, count, table)


def _descriptor_line(name: str, rates: _DescriptorRates, workers_list: list[int], keypoints: float) -> str:
    """One row of the descriptor table: bare and ours at each worker count, speedups, CPU per image."""
    first, last = workers_list[0], workers_list[-1]
    ours = [rates.ours[w] for w in workers_list]
    speedup = ours[-1] / ours[0]
    # CPU-bound estimate for an idle machine with as many cores as workers: with one worker the
    # parent does everything (c1 s/img); with w workers the parent's own share is p s/img and
    # the rest (c1 - p) is spread over the workers, so throughput is w / (c1 + (w - 1) * p)
    # at best (the parent also needs a core while the workers run).
    c1, pw = rates.parent_cpu[first], rates.parent_cpu[last]
    estimate = last * c1 / (c1 + (last - 1) * pw) if first == 1 else float("nan")
    bare = rates.bare
    return (f"{name:<10} " + " ".join(f"{bare[w]:>9.1f}" for w in workers_list) + f" {bare[last] / bare[first]:>6.2f}x "
            + " ".join(f"{r:>9.1f}" for r in ours)
            + f" {speedup:>6.2f}x {ours[0] / bare[first]:>6.2f} {ours[-1] / bare[last]:>6.2f} {rates.count:>6} "
            f"{keypoints:>7.0f}  " + " / ".join(f"{rates.cores[w]:.2f}" for w in workers_list)
            + f"   cpu/img: {first} worker {1000 * c1:.1f} ms, parent at {last} workers {1000 * pw:.1f} ms "
            f"-> idle-machine estimate {estimate:.2f}x")


def bench_fit(rows: int, k: int, batch_sizes: list[int | None], threads_list: list[int | None]) -> None:
    started = time.perf_counter()
    vectors = sift_like(rows)
    print(f"\nvocabulary fit: MiniBatchKMeans k={k} on {rows:,} x {vectors.shape[1]} SIFT-like descriptors "
          f"(generated in {time.perf_counter() - started:.1f} s)")
    for batch, threads in [(b, t) for t in threads_list for b in batch_sizes]:
        started = time.perf_counter()
        centers = fit_centers(vectors, k, seed=0, batch_size=batch, threads=threads)
        seconds = time.perf_counter() - started
        sample = vectors[:: max(1, rows // 50_000)]
        words = nearest_words(sample, centers)
        inertia = float(((sample - centers[words]) ** 2).sum(axis=1).mean())
        label = "default " + str(min(rows, max(16384, 3 * k))) if batch is None else str(batch)
        print(f"  batch_size={label:<14} threads={threads or 'all':<4} {seconds:7.1f} s   "
              f"mean squared distance to nearest word {inertia:10.1f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="distinct images, the fewest per timing (default 48)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="fast descriptors describe more images (repeated) so a 1-worker run lasts about this long")
    parser.add_argument("--max-images", type=int, default=240, help="the most images per timing (default 240)")
    parser.add_argument("--descriptors", default=",".join(DESCRIPTORS), help="comma-separated (default: all)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per setting, alternating; the best is kept")
    parser.add_argument("--fit-rows", type=int, default=1_000_000, help="descriptors for the fit (default 1M)")
    parser.add_argument("--k", type=int, default=500, help="vocabulary size for the fit (default 500)")
    parser.add_argument("--batch-sizes", default="", help="extra batch sizes to compare, e.g. 1024,4096")
    parser.add_argument(
        "--fit-threads", default="1", help="thread caps to compare, 0 = all (default 1, the extractor's)"
    )
    parser.add_argument("--skip-descriptors", action="store_true")
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_descriptors:
        images = test_images(args.images)
        bench_descriptors(images, [d.strip() for d in args.descriptors.split(",") if d.strip()],
                          [int(w) for w in args.workers.split(",")], args.repeats, min_seconds=args.min_seconds,
                          max_images=args.max_images)
    if not args.skip_fit:
        extra = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        threads = [int(t) or None for t in args.fit_threads.split(",")]
        bench_fit(args.fit_rows, args.k, [None, *extra], threads)


if __name__ == "__main__":
    main()
