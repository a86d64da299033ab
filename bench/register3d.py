"""Benchmark of 3-D longitudinal pair processing: registration time and peak memory per pair (not a test).

For each size N (default 256 and 300) a fresh process generates a smooth N^3 phantom (float32,
``features.phantom3d``) and the same phantom moved by a known rigid motion (3 degrees about z, 1 about
x, shifts of 1.5 / 2.5 / -2 voxels), then does what ``diffstats3d`` does for one pair: rigid registration
(``features.registration3d.register_volume``, the extractor's defaults), difference volume and statistics
per volume and per slab (``features.volume_stats``). Printed per size: registration wall time, statistics
and CPU time, statistics wall time, the recovered motion's error (voxels at the grid centre, degrees),
the process's peak RSS (``resource.getrusage``: its high-water mark over the whole process, the two
input volumes included), the RSS before any volume existed (interpreter and libraries) and the
difference of the two in units of one float32 N^3 volume (how many volumes were held at the peak).
Each size runs in its own process so its peak is its own.

Run: ``python bench/register3d.py`` (``--sizes 128 256 300``, ``--threads 2``). On a loaded machine the
wall times say as much about the load as about the code. ``--threads`` sets the registration metric's
ITK threads (1 by default, as in the extractor); ITK's pyramid smoothing and resampling filters use ITK's
global default (all cores), so CPU time can exceed wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features.phantom3d import smooth_phantom  # noqa: E402
from features.registration3d import difference_volume, grid_centre, motion_error, register_volume, rigid_matrix  # noqa: E402
from features.volume_stats import volume_statistics  # noqa: E402

ROTATION_DEG = (3.0, 0.0, 1.0)  # about z, y, x
SHIFT_VOXELS = (1.5, 2.5, -2.0)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_size(size: int, threads: int, spacing: tuple[float, float, float]) -> dict:
    """Generate, register and summarise one ``size``^3 pair in this process; the figures as a dict."""
    import SimpleITK  # noqa: F401  (loaded before the baseline: its libraries are no volume)

    shape = (size, size, size)
    baseline = _peak_mb()  # the interpreter and its libraries, before any volume exists
    truth = rigid_matrix(ROTATION_DEG, np.asarray(SHIFT_VOXELS) * np.asarray(spacing), grid_centre(shape, spacing))
    started = time.perf_counter()
    fixed = smooth_phantom(shape, spacing, seed=7)
    moving = smooth_phantom(shape, spacing, seed=7, motion=truth)
    generate_s = time.perf_counter() - started
    inputs_peak = _peak_mb()
    started, cpu = time.perf_counter(), _cpu_s()
    found = register_volume(fixed, moving, spacing_fixed=spacing, threads=threads)
    register_s, register_cpu_s = time.perf_counter() - started, _cpu_s() - cpu
    del moving
    started = time.perf_counter()
    diff, mask = difference_volume(found, fixed)
    stats = volume_statistics(diff, fixed, found.resampled, mask=mask, n_slabs=4)
    stats_s = time.perf_counter() - started
    voxels, degrees = motion_error(found.transform.matrix, truth, shape=shape, spacing=spacing)
    volume_mb = size**3 * 4 / 2**20
    peak = _peak_mb()
    return {
        "size": size, "threads": threads, "generate_s": generate_s, "register_s": register_s,
        "register_cpu_s": register_cpu_s, "stats_s": stats_s, "baseline_rss_mb": baseline,
        "iterations": found.iterations, "metric": found.metric, "error_voxels": voxels, "error_deg": degrees,
        "peak_rss_mb": peak, "inputs_rss_mb": inputs_peak, "volume_mb": volume_mb,
        "peak_volumes": (peak - baseline) / volume_mb,
        "n_statistics": len(stats.values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 300])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("Z", "Y", "X"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.threads, tuple(args.spacing))))
        return 0
    print(f"motion: rotation {ROTATION_DEG} deg (z, y, x), shift {SHIFT_VOXELS} voxels; "
          f"spacing {tuple(args.spacing)} mm; ITK threads {args.threads}")
    header = ("size", "register_s", "reg_cpu_s", "stats_s", "iter", "err_vox", "err_deg", "peak_MB", "base_MB",
              "peak/vol")
    print("  ".join(f"{h:>10}" for h in header))
    for size in args.sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--threads", str(args.threads),
             "--spacing", *map(str, args.spacing)], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        cells = (f"{r['size']}^3", f"{r['register_s']:.1f}", f"{r['register_cpu_s']:.1f}", f"{r['stats_s']:.1f}",
                 r["iterations"], f"{r['error_voxels']:.3f}", f"{r['error_deg']:.3f}", f"{r['peak_rss_mb']:.0f}",
                 f"{r['baseline_rss_mb']:.0f}", f"{r['peak_volumes']:.1f}")
        print("  ".join(f"{c:>10}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
