"""Run an extractor over a dataset: skip finished rows, stream parts to the store, record failures.

Both engines (this one and ``extractors.ray_engine``) share the rules written here:

* one writer per table: ``writer_lock`` is taken *before* the pending units are computed, so a
  second run of the same table waits (and says so on stderr), then finds only what is still missing
  — two runs never write one key twice;
* progress survives: ``PartWriter`` writes a part every ``rows_per_part`` rows and at least every
  ``flush_seconds`` of work (default 30 s, or ``$CHRONOFEAT_FLUSH_SECONDS``), so a kill loses at
  most that much, and a rerun computes only the units whose rows are not stored;
* failures: one current row per unit in ``failures`` (stage ``extract:<table>``); a unit that
  succeeds later has its failure marked resolved.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from extractors.base import ExtractedBatch, Extractor
from features.errors import ParameterError, StoreError
from store.command_options import recorded_options
from store.failures import Failure, open_failures, record_failures, resolve_failures
from store.layout import Store
from store.provenance import part_metadata
from store.tables import read_table, table_lock, table_parts, write_part

__all__ = [
    "ExtractionSummary",
    "PendingWork",
    "PartWriter",
    "run_extraction",
    "pending_units",
    "find_pending",
    "write_batches",
    "extraction_metadata",
    "writer_lock",
    "flush_interval",
    "FLUSH_SECONDS",
    "FLUSH_SECONDS_ENV",
]

FLUSH_SECONDS = 30.0
FLUSH_SECONDS_ENV = "CHRONOFEAT_FLUSH_SECONDS"


@dataclass(frozen=True)
class ExtractionSummary:
    """What one extraction run did."""

    table: str
    key: str
    units: int  # work units of the dataset
    skipped: int  # already in the table with the same source pixels
    written: int  # rows written by this run
    failed: int  # units recorded in ``failures``
    seconds: float

    @property
    def rate(self) -> float:
        return (self.written + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        """What ``extract`` prints about this run."""
        if self.written == 0 and self.failed == 0:
            return [f"{self.table}: nothing to do — all {self.units} {self.key}s already extracted"]
        return [
            f"{self.table}: wrote {self.written} rows, skipped {self.skipped} already present, "
            f"{self.failed} failed, in {self.seconds:.1f} s ({self.rate:.1f} items/s)"
        ]


@dataclass(frozen=True)
class PendingWork:
    """The work units of a dataset that an extraction still has to compute."""

    units: int  # work units of the dataset
    skipped: int  # already in the table with the same source pixels
    pending: pa.Table  # the units to compute in this run (cut to its limit)

    def summary(self, table: str, key: str, started: float, *, written: int = 0, failed: int = 0) -> ExtractionSummary:
        """The ``ExtractionSummary`` of a run that began at ``started`` (``time.perf_counter()``)."""
        return ExtractionSummary(table, key, self.units, self.skipped, written, failed, time.perf_counter() - started)


def flush_interval(flush_seconds: float | None) -> float:
    """Seconds of work between parts: ``flush_seconds``, else ``$CHRONOFEAT_FLUSH_SECONDS``, else 30.

    ``ParameterError`` for a value that is not a positive number.
    """
    source = "flush_seconds"
    value: object = flush_seconds
    if value is None:
        value, source = os.environ.get(FLUSH_SECONDS_ENV, FLUSH_SECONDS), FLUSH_SECONDS_ENV
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise ParameterError(f"{source} must be a positive number of seconds (e.g. 30); got {value!r}.")
    return seconds


@contextmanager
def writer_lock(store: Store, table: str, *, wait_s: float = math.inf) -> Iterator[Path]:
    """Hold the writer lock of ``table`` (``store.tables.table_lock``); yield its directory.

    When another process holds it, one line on stderr says this run waits, then it waits up to
    ``wait_s`` seconds (default: until the other run ends; ``StoreError`` after ``wait_s``).
    """
    with ExitStack() as stack:
        try:
            directory = stack.enter_context(table_lock(store, table, timeout_s=0.0))
        except StoreError:
            print(
                f"chronofeat: table {table!r} is being written by another run; waiting for it to finish, then "
                "this run computes only what is still missing (Ctrl-C stops waiting).",
                file=sys.stderr, flush=True,
            )
            directory = stack.enter_context(table_lock(store, table, timeout_s=wait_s))
        yield directory


def _present(store: Store, table: str, key: str) -> set[tuple[str, str]]:
    """(key, source_sha256) pairs already stored in ``table`` (``DamagedPartError`` names a damaged part)."""
    if not table_parts(store, table):
        return set()
    cols = read_table(store, table, columns=[key, "source_sha256"])
    return set(zip(cols.column(0).to_pylist(), cols.column(1).to_pylist(), strict=True))


def pending_units(extractor: Extractor, store: Store, units: pa.Table) -> pa.Table:
    """The rows of ``units`` whose (key, source_sha256) is not yet in the extractor's table.

    Call it while holding ``writer_lock`` of that table, or another run may store them meanwhile.
    """
    key = extractor.key_column()
    present = _present(store, extractor.table_name(), key)
    if not present:
        return units
    keep = [
        (k, s) not in present
        for k, s in zip(units.column(key).to_pylist(), units.column("source_sha256").to_pylist(), strict=True)
    ]
    return units.filter(pa.array(keep, type=pa.bool_()))


def find_pending(extractor: Extractor, store: Store, dataset: str, *, limit: int | None = None) -> PendingWork:
    """``extractor``'s work units of ``dataset`` minus those already stored (``pending_units``), cut to ``limit``.

    Call it while holding ``writer_lock`` of the extractor's table.
    """
    units = extractor.units(store, dataset)
    pending = pending_units(extractor, store, units)
    skipped = units.num_rows - pending.num_rows
    if limit is not None:
        pending = pending.slice(0, limit)
    return PendingWork(units.num_rows, skipped, pending)


def extraction_metadata(extractor: Extractor, dataset: str, *, provenance: dict | None = None) -> dict[str, str]:
    """Key-value metadata of every part an extraction of ``dataset`` writes (both engines use it).

    ``provenance`` replaces ``extractor.provenance()`` (call it after ``prepare``) when given. Under
    ``cli.py extract`` the command's effective options go in ``chronofeat.cli`` (``cli.py config --table``).
    """
    recorded = recorded_options()
    return part_metadata(
        producer=f"extractor:{extractor.name}",
        params=extractor.config(),
        extra={
            "table": extractor.table_name(),
            "key": extractor.key_column(),
            "dataset": dataset,
            **(extractor.provenance() if provenance is None else provenance),
            **({"cli": recorded} if recorded is not None else {}),
        },
    )


class PartWriter:
    """The buffered writer of one feature table, shared by both engines (the caller holds ``writer_lock``).

    ``add(rows, failures)`` buffers computed rows (any mix of Arrow tables and record batches with
    ``schema``'s columns) and failures; a part is written when ``rows_per_part`` rows are buffered
    or ``flush_seconds`` have passed since the last part, and on leaving ``with writer:`` (also when
    an error or Ctrl-C ends the work, so what was computed is kept). With each
    part the buffered failures are recorded (stage ``extract:<table>``, one current row per unit)
    and the open failures of the keys just written are marked resolved. ``written`` / ``failed``
    count rows written and failures recorded so far.
    """

    def __init__(
        self,
        store: Store,
        table: str,
        *,
        key: str,
        schema: pa.Schema,
        metadata: dict[str, str],
        dataset: str,
        producer: str,
        rows_per_part: int = 4096,
        flush_seconds: float | None = None,
    ) -> None:
        self.store, self.table, self.key, self.schema, self.metadata = store, table, key, schema, metadata
        self.dataset, self.producer = dataset, producer
        self.stage = f"extract:{table}"
        self.rows_per_part = int(rows_per_part)
        self.flush_seconds = flush_interval(flush_seconds)
        self.written = self.failed = 0
        self._rows: list[pa.Table] = []
        self._failures: list[Failure] = []
        self._buffered = 0
        self._last = time.monotonic()
        # failures to resolve when their key is written; under the table lock no one else adds any
        self._open = set(open_failures(store, dataset=dataset, stage=self.stage).column("key").to_pylist())

    def add(self, rows: pa.Table | pa.RecordBatch | None, failures: Iterable[Failure] = ()) -> None:
        """Buffer ``rows`` and ``failures``; write a part when the batch size or the interval is reached."""
        if rows is not None and rows.num_rows:
            table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
            self._rows.append(table if table.schema.equals(self.schema) else table.cast(self.schema))
            self._buffered += table.num_rows
        self._failures.extend(replace(f, stage=self.stage) for f in failures)
        if self._buffered >= self.rows_per_part or time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part, then record the buffered failures and resolve fixed ones."""
        if self._buffered:
            rows = pa.concat_tables(self._rows)
            write_part(self.store, self.table, rows, metadata=self.metadata, locked=True)
            self.written += rows.num_rows
            fixed = self._open.intersection(rows.column(self.key).to_pylist())
            if fixed:
                resolve_failures(self.store, dataset=self.dataset, keys=fixed, producer=self.producer,
                                 stage=self.stage)
                self._open -= fixed
        if self._failures:
            self.failed += record_failures(self.store, self._failures, producer=self.producer)
        self._rows, self._failures, self._buffered = [], [], 0
        self._last = time.monotonic()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Flush at the end; when an error (or Ctrl-C) ends the work, keep what was computed and let
        that error propagate, never one of the last flush."""
        if exc_type is None:
            self.flush()
        else:
            with suppress(Exception):
                self.flush()
        return False


def run_extraction(
    extractor: Extractor,
    store: Store,
    *,
    dataset: str,
    limit: int | None = None,
    rows_per_part: int = 4096,
    flush_seconds: float | None = None,
    progress: bool = True,
) -> ExtractionSummary:
    """Compute ``extractor``'s features for every unit of ``dataset`` not yet stored.

    Rows are written as parts of at most ``rows_per_part`` rows, and at least every
    ``flush_seconds`` seconds of work (None: ``$CHRONOFEAT_FLUSH_SECONDS``, else 30), so memory does
    not grow with the dataset and an interrupted run (even by SIGKILL) loses at most the unwritten
    rows; a rerun recomputes only those. ``limit`` caps the number of units computed in this run.
    A concurrent run of the same table waits for this one (``writer_lock``), then computes only
    what is still missing.
    """
    started = time.perf_counter()
    extractor = extractor.for_dataset(store, dataset)
    table = extractor.table_name()
    key = extractor.key_column()
    flush_every = flush_interval(flush_seconds)
    with writer_lock(store, table):
        work = find_pending(extractor, store, dataset, limit=limit)
        if work.pending.num_rows == 0:
            return work.summary(table, key, started)
        extractor.prepare(store, work.pending)
        writer = PartWriter(
            store, table, key=key, schema=extractor.output_schema(), metadata=extraction_metadata(extractor, dataset),
            dataset=dataset, producer=f"extractor:{extractor.name}", rows_per_part=rows_per_part,
            flush_seconds=flush_every,
        )
        write_batches(writer, extractor.transform(store, work.pending), total=work.pending.num_rows, progress=progress)
    return work.summary(table, key, started, written=writer.written, failed=writer.failed)


def write_batches(writer: PartWriter, batches: Iterable[ExtractedBatch], *, total: int, progress: bool) -> None:
    """Write every one of ``batches`` through ``writer`` (flushed at the end, also on an error), with a
    progress bar of ``total`` work units on stderr when ``progress``."""
    bar = tqdm(total=total, unit="item", desc=writer.table, disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    with bar, writer:
        for batch in batches:
            writer.add(batch.rows, batch.failures)
            bar.update(batch.done)
