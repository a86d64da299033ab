"""The CPU extractors' process settings and ordered map (extractors._workers)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extractors._workers import ordered_map

REPO = Path(__file__).resolve().parent.parent

# Ten 4 MiB blocks allocated and freed together, twenty times: the pattern of a detector's scale space.
_CHURN = """
import resource, sys
import numpy as np
sys.path.insert(0, {repo!r})
from extractors._workers import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    blocks = [np.ones(1 << 19) for _ in range(10)]
    del blocks
before = faults()
for _ in range(20):
    blocks = [np.ones(1 << 19) for _ in range(10)]
    del blocks
print(kept, faults() - before)
"""


def _page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _CHURN.format(repo=str(REPO)), mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again():
    _, default = _page_faults("default")
    kept, tuned = _page_faults("keep")
    assert kept == "True"
    # 20 rounds x 40 MiB = 200k pages re-faulted by default; with the memory kept, next to none
    assert default > 50_000
    assert tuned < default / 100


def _square(x):
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_keeps_task_order(workers):
    tasks = list(np.random.default_rng(0).integers(0, 1000, 40))
    assert list(ordered_map(_square, tasks, workers)) == [t * t for t in tasks]


def test_one_worker_restores_opencv_threads_afterwards():
    import cv2

    before = cv2.getNumThreads()
    seen = list(ordered_map(lambda _: cv2.getNumThreads(), range(3), 1))
    assert seen == [1, 1, 1]
    assert cv2.getNumThreads() == before
