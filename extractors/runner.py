"""Run an extractor over a dataset: skip finished rows, stream parts to the store, record failures."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from extractors.base import Extractor
from store.failures import record_failures
from store.layout import Store
from store.provenance import part_metadata
from store.tables import table_lock, table_parts, write_part

__all__ = ["ExtractionSummary", "run_extraction", "pending_units", "extraction_metadata"]


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


def _present(store: Store, table: str, key: str) -> set[tuple[str, str]]:
    """(key, source_sha256) pairs already stored in ``table``."""
    present: set[tuple[str, str]] = set()
    for part in table_parts(store, table):
        cols = pq.read_table(part, columns=[key, "source_sha256"])
        present.update(zip(cols.column(0).to_pylist(), cols.column(1).to_pylist()))
    return present


def pending_units(extractor: Extractor, store: Store, units: pa.Table) -> pa.Table:
    """The rows of ``units`` whose (key, source_sha256) is not yet in the extractor's table."""
    key = extractor.key_column()
    present = _present(store, extractor.table_name(), key)
    if not present:
        return units
    keep = [
        (k, s) not in present
        for k, s in zip(units.column(key).to_pylist(), units.column("source_sha256").to_pylist())
    ]
    return units.filter(pa.array(keep, type=pa.bool_()))


def extraction_metadata(extractor: Extractor, dataset: str, *, provenance: dict | None = None) -> dict[str, str]:
    """Key-value metadata of every part an extraction of ``dataset`` writes (both engines use it).

    ``provenance`` replaces ``extractor.provenance()`` (call it after ``prepare``) when given.
    """
    return part_metadata(
        producer=f"extractor:{extractor.name}",
        params=extractor.config(),
        extra={
            "table": extractor.table_name(),
            "key": extractor.key_column(),
            "dataset": dataset,
            **(extractor.provenance() if provenance is None else provenance),
        },
    )


def run_extraction(
    extractor: Extractor,
    store: Store,
    *,
    dataset: str,
    limit: int | None = None,
    rows_per_part: int = 4096,
    progress: bool = True,
) -> ExtractionSummary:
    """Compute ``extractor``'s features for every unit of ``dataset`` not yet stored.

    Rows are written as parts of ``rows_per_part`` rows (memory does not grow with the dataset);
    an interrupted run loses at most the unwritten batch and a rerun recomputes only that.
    ``limit`` caps the number of units computed in this run.
    """
    started = time.perf_counter()
    table = extractor.table_name()
    key = extractor.key_column()
    units = extractor.units(store, dataset)
    pending = pending_units(extractor, store, units)
    skipped = units.num_rows - pending.num_rows
    if limit is not None:
        pending = pending.slice(0, limit)
    if pending.num_rows == 0:
        return ExtractionSummary(table, key, units.num_rows, skipped, 0, 0, time.perf_counter() - started)

    extractor.prepare(store, pending)
    metadata = extraction_metadata(extractor, dataset)
    schema = extractor.output_schema()
    written = failed = 0
    buffer: list[pa.RecordBatch | pa.Table] = []
    buffered = 0
    bar = tqdm(total=pending.num_rows, unit="item", desc=table, disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)

    def flush() -> None:
        nonlocal buffer, buffered, written
        if not buffered:
            return
        rows = pa.Table.from_batches([b for b in _as_batches(buffer)], schema=schema)
        write_part(store, table, rows, metadata=metadata, locked=True)
        written += rows.num_rows
        buffer, buffered = [], 0

    with table_lock(store, table):
        try:
            for batch in extractor.transform(store, pending):
                if batch.failures:
                    failed += record_failures(store, batch.failures, producer=f"extractor:{extractor.name}")
                n = batch.rows.num_rows
                if n:
                    buffer.append(batch.rows)
                    buffered += n
                bar.update(n + len(batch.failures))
                if buffered >= rows_per_part:
                    flush()
            flush()
        finally:
            bar.close()
    return ExtractionSummary(table, key, units.num_rows, skipped, written, failed, time.perf_counter() - started)


def _as_batches(items: list[pa.RecordBatch | pa.Table]):
    for item in items:
        if isinstance(item, pa.Table):
            yield from item.to_batches()
        else:
            yield item

