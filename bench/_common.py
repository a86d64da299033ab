"""Shared helpers of the benchmark scripts: timing, peak memory from /proc, machine details, tables.

* ``PeakRSS`` — peak resident memory of this process (``VmHWM``, reset through ``/proc/self/clear_refs``
  where the kernel allows) and of its whole process tree (worker pools included), sampled every 50 ms
  from ``/proc`` — no psutil;
* ``best_of(fn, repeats)`` — best wall time of a callable; ``timed(fn)`` one wall time; ``rounds(fns,
  repeats)`` calls several in turn, round after round, so a busy moment of the machine hits all alike;
* ``machine_details()`` — CPU model, cores, memory, GPU (torch.cuda), Python, library versions;
* ``format_table(rows, columns)`` — a plain-text table for the terminal;
* ``bench_row(...)`` — one result row in the shape ``store.benchmarks`` records;
* ``write_ct_slice(path, pixels, ...)`` — one generated CT-like DICOM slice (``store.demo.dicom_writer``).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "PeakRSS",
    "timed",
    "best_of",
    "rounds",
    "machine_details",
    "format_table",
    "bench_row",
    "rss_mb",
    "write_ct_slice",
    "REPO_ROOT",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def _status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of ``/proc/<pid>/status``; None when unreadable (process gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Current resident memory of one process in MB (``VmRSS``), or None."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), from ``/proc/<pid>/task/*/children``."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                out.extend(int(p) for p in handle.read().split())
        except (OSError, ValueError):
            continue
    return out


def _tree_rss_kb(root: int) -> int:
    """Sum of ``VmRSS`` over ``root`` and all its descendants (shared pages are counted once per process)."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _status_kb(pid, "VmRSS") or 0
        stack.extend(_children(pid))
    return total


class PeakRSS:
    """Context manager measuring peak memory while its block runs.

    After the block: ``process_mb`` = this process's peak (``VmHWM``; reset at entry when
    ``/proc/self/clear_refs`` is writable, else the peak since the process started, flagged by
    ``process_since_start``) and ``tree_mb`` = the highest sampled sum of resident memory of this
    process and every descendant (worker processes included; sampled every ``interval`` seconds, so
    a spike shorter than that can be missed; shared pages count once per process).
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.process_mb: float | None = None
        self.tree_mb: float | None = None
        self.process_since_start = False
        self._stop = threading.Event()
        self._peak_kb = 0

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self._peak_kb = max(self._peak_kb, _tree_rss_kb(me))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.process_since_start = True
        self._peak_kb = _tree_rss_kb(os.getpid())
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._peak_kb = max(self._peak_kb, _tree_rss_kb(os.getpid()))
        self._stop.set()
        self._thread.join()
        hwm = _status_kb("self", "VmHWM")
        if hwm is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
            import resource

            usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = usage // 1024 if sys.platform == "darwin" else usage
            self.process_since_start = True
        self.process_mb = hwm / 1024
        self.tree_mb = max(self._peak_kb / 1024, self.process_mb)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of one call of ``fn``."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(best wall seconds, result of that call) over ``repeats`` calls of ``fn`` (>= 1)."""
    best, kept = float("inf"), None
    for _ in range(max(1, int(repeats))):
        seconds, result = timed(fn)
        if seconds < best:
            best, kept = seconds, result
    return best, kept


def rounds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """Call every function of ``fns`` once per round, in order, for ``repeats`` rounds (>= 1).

    Returns name -> the list of its results. Alternating the configurations (rather than timing one
    ``repeats`` times, then the next) keeps their ratio fair on a machine whose load changes.
    """
    out: dict[str, list] = {name: [] for name in fns}
    for _ in range(max(1, int(repeats))):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_details() -> dict:
    """What the figures were measured on: CPU model, cores (all / usable), memory, GPU, Python, versions.

    GPU details come from torch.cuda when torch is importable (``gpu`` = '' when there is none).
    ``packages`` maps library -> version (the provenance list, plus ray and psutil-free extras).
    """
    from importlib import metadata

    from store.cores import usable_cores
    from store.provenance import code_version, package_versions

    usable = usable_cores()
    gpu, gpu_count, cuda = "", 0, ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu_count = torch.cuda.device_count()
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(gpu_count))
        cuda = torch.version.cuda or ""
    except ImportError:
        pass
    packages = dict(package_versions())
    for extra in ("ray", "pillow", "scipy"):
        try:
            packages[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            continue
    return {
        "host": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_cores": int(os.cpu_count() or 1),
        "cpu_usable": int(usable),
        "memory_gb": _memory_gb(),
        "gpu": gpu,
        "gpu_count": int(gpu_count),
        "cuda": cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "code_version": code_version(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _cell(value, spec: str) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return format(value, spec) if spec else f"{value:.3g}"
    return str(value)


def format_table(rows: Iterable[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` = (key, header, format spec); numbers right-aligned, text left."""
    rows = list(rows)
    cells = [[_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    widths = [max([len(header)] + [len(c[i]) for c in cells]) for i, (_, header, _) in enumerate(columns)]
    numeric = [all(isinstance(row.get(key), (int, float)) or row.get(key) in (None, "") for row in rows)
               for key, _, _ in columns]

    def line(values: Sequence[str]) -> str:
        cells = zip(values, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in cells).rstrip()

    out = [line([h for _, h, _ in columns]), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def bench_row(
    stage: str,
    variant: str,
    *,
    items: int,
    unit: str,
    seconds: float | None,
    baseline: str = "",
    baseline_seconds: float | None = None,
    size: str = "",
    peak: PeakRSS | None = None,
    bound: str = "",
    status: str = "ok",
    notes: str = "",
) -> dict:
    """One result: rates are ``items / seconds``; ``ratio`` = ours / baseline (higher is better, 1 = as fast)."""
    rate = items / seconds if seconds and seconds > 0 else None
    base_rate = items / baseline_seconds if baseline_seconds and baseline_seconds > 0 else None
    return {
        "stage": stage,
        "variant": variant,
        "size": size,
        "items": int(items),
        "unit": unit,
        "seconds": seconds,
        "items_per_s": rate,
        "baseline": baseline,
        "baseline_items_per_s": base_rate,
        "ratio": rate / base_rate if rate and base_rate else None,
        "peak_rss_mb": peak.process_mb if peak else None,
        "peak_tree_rss_mb": peak.tree_mb if peak else None,
        "bound": bound,
        "status": status,
        "notes": notes,
    }


def write_ct_slice(path: Path, pixels, *, patient: str, patient_name: str, study_date: str, instance: int,
                   window: tuple[float, float]) -> None:
    """Write one uncompressed 16-bit CT-like slice at ``path``: ``pixels`` are 2-D uint16 stored values
    (12 bits; HU = stored - 1024), ``window`` = (centre, width), ``study_date`` YYYYMMDD; UIDs are fresh."""
    from pydicom.uid import CTImageStorage, generate_uid

    from store.demo.dicom_writer import write_image

    center, width = window
    attributes = {
        "PatientID": patient, "PatientName": patient_name, "StudyDate": study_date,
        "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "Modality": "CT",
        "InstanceNumber": instance, "WindowCenter": center, "WindowWidth": width,
        "RescaleSlope": 1, "RescaleIntercept": -1024,
    }
    write_image(path, pixels, attributes, sop_class_uid=CTImageStorage, sop_instance_uid=generate_uid(), bits_stored=12)
