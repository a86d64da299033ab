"""Per-image CPU work in worker processes, in order, with the process settings that make it fast.

``ordered_map`` is the one parallel map of the CPU extractors (keypoint descriptors, difference
statistics): in this process for one worker, else in a reused joblib/loky pool. Every process doing
such work runs OpenCV and BLAS on one thread (parallelism comes from processes; per-image arrays are
too small for threads to gain, and threads waiting for a busy core made registration 6-30x slower)
and keeps the memory it frees (``keep_freed_memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Iterable, Iterator

__all__ = ["ordered_map", "keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# glibc mallopt parameters (malloc.h) and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap (glibc's own ceiling for its dynamic threshold)
TRIM_THRESHOLD = 256 << 20  # free heap above this much is given back to the kernel

_state = {"allocator": None, "worker": False}


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks up to 32 MiB in the heap (and up to 256 MiB of free heap),
    for the rest of this process. True when set; False where the C library is not glibc.

    Why: OpenCV's detectors allocate and free scale-space buffers of a few MiB per image. A fresh
    process returns every block above 128 KiB to the kernel when it is freed, so the next image
    faults the same memory in again page by page: for KAZE on 512x512 images that was 63,000 page
    faults and 40% of the time in the kernel, per image. A process that had once freed a large block
    raises glibc's threshold by itself, so a long-lived parent ran 1.7x faster than the fresh worker
    processes doing the same work, which is why two workers scaled only 1.2x (bench/bovw.py).
    Cost: a worker's resident memory stays at its peak working set (under 300 MiB for these images).
    """
    if _state["allocator"] is None:
        ok = False
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            mallopt = getattr(libc, "mallopt", None)
            if mallopt is not None:
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
        except OSError:
            ok = False
        _state["allocator"] = ok
    return bool(_state["allocator"])


@contextlib.contextmanager
def _one_thread_here():
    """OpenCV and BLAS/OpenMP on one thread inside the block, as they were afterwards (this process
    goes on to other work, e.g. a CNN, that wants its threads back)."""
    import cv2
    from threadpoolctl import threadpool_limits

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(before)


def _in_worker(function: Callable, task):
    """``function(task)`` in a pool process, which is set up once: one OpenCV and BLAS thread, allocator kept."""
    if not _state["worker"]:
        import cv2
        from threadpoolctl import threadpool_limits

        cv2.setNumThreads(1)
        threadpool_limits(limits=1)
        keep_freed_memory()
        _state["worker"] = True
    return function(task)


def ordered_map(function: Callable, tasks: Iterable, workers: int, *, batch_size: int | str = 1) -> Iterator:
    """``function(task)`` for every task, the results in task order.

    ``workers`` <= 1 runs here (OpenCV and BLAS on one thread meanwhile); more uses that many
    processes (joblib/loky, started once and reused, at most ``4 * workers`` tasks dispatched ahead).
    ``function`` and the tasks must be picklable for more than one worker.
    """
    keep_freed_memory()
    if workers <= 1:
        with _one_thread_here():
            for task in tasks:
                yield function(task)
        return
    from joblib import Parallel, delayed

    yield from Parallel(n_jobs=workers, return_as="generator", batch_size=batch_size, pre_dispatch="4*n_jobs")(
        delayed(_in_worker)(function, task) for task in tasks
    )
