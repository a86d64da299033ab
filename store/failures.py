"""The ``failures`` table: every input that could not be processed, and why — one current row per input.

An input is identified by ``(dataset, key, step)``: the step is ``ingest`` for every ``ingest:*``
stage (reading and decoding a file are one step: a retry redoes both) and the stage itself otherwise
(``extract:<table>``: the same scan may fail in two feature tables). Recording a failure replaces
the earlier row of the same input, so a retry that fails again leaves one row, with the new reason.
A retry that succeeds marks the row resolved (``resolved_at``, null while the failure is open): the
row stays as history, and every reader that counts open failures ignores resolved rows
(``open_failures``).

Every change rewrites the table as one part under its table lock (``store.tables.replace_table``),
so readers see the old table or the new one. Parts written before ``resolved_at`` existed are read
as open failures, and the first rewrite gives the table the new column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from store.layout import Store
from store.provenance import part_metadata
from store.schema import FAILURES
from store.tables import read_table, replace_table, table_lock, table_parts

__all__ = ["Failure", "record_failures", "resolve_failures", "open_failures", "failure_step"]

TABLE = "failures"
_INGEST_PRODUCER = "store.ingest"


@dataclass(frozen=True)
class Failure:
    """One input that failed at one stage; ``message`` says what to do and never holds PHI."""

    key: str
    dataset: str
    path: str
    stage: str
    error_class: str
    message: str
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def from_exception(cls, exc: BaseException, *, key: str, dataset: str, path: str, stage: str) -> Failure:
        """A failure record for ``exc`` raised while processing ``path`` at ``stage``."""
        return cls(key=key, dataset=dataset, path=path, stage=stage, error_class=type(exc).__name__, message=str(exc))


def failure_step(stage: str) -> str:
    """The step a ``stage`` belongs to: ``'ingest'`` for every ``ingest:*`` stage, else the stage itself."""
    return "ingest" if stage == "ingest" or stage.startswith("ingest:") else stage


def _read_all(store: Store) -> pa.Table:
    """Every row of the failures table in the current ``FAILURES`` schema (old parts: ``resolved_at`` null).

    ``DamagedPartError`` names a part that cannot be read. A part removed while it is read (a writer
    replacing the table) makes the read start again.
    """
    for attempt in range(3):
        if not table_parts(store, TABLE):
            return FAILURES.empty_table()
        try:
            table = read_table(store, TABLE)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    for column in FAILURES:
        if column.name not in table.column_names:
            table = table.append_column(column.name, pa.nulls(table.num_rows, type=column.type))
    return table.select(FAILURES.names).cast(FAILURES)


def _steps(table: pa.Table) -> list[str]:
    return [failure_step(s or "") for s in table.column("stage").to_pylist()]


def open_failures(store: Store, *, dataset: str | None = None, stage: str | None = None) -> pa.Table:
    """The open (unresolved) failure rows, in the ``FAILURES`` schema; empty when there are none.

    ``dataset`` keeps that dataset's rows only; ``stage`` keeps the rows of that stage's step
    (``failure_step``: any ``ingest:*`` stage selects every ingest stage).
    """
    table = _read_all(store)
    if table.num_rows == 0:
        return table
    mask = pc.is_null(table.column("resolved_at"))
    if dataset is not None:
        mask = pc.and_(mask, pc.equal(table.column("dataset"), dataset))
    if stage is not None:
        step = failure_step(stage)
        mask = pc.and_(mask, pa.array([s == step for s in _steps(table)], type=pa.bool_()))
    return table.filter(mask)


def record_failures(store: Store, failures: Iterable[Failure], *, producer: str) -> int:
    """Make ``failures`` the current rows of their inputs; return how many were given.

    An earlier row of the same input (``dataset``, ``key``, step: see the module docstring),
    resolved or not, is replaced; two failures of one input in ``failures`` keep the last.
    ``producer`` names the writer in the rewritten part's metadata.
    """
    rows = list(failures)
    if not rows:
        return 0
    latest = {(f.dataset, f.key, failure_step(f.stage)): f for f in rows}
    new = pa.Table.from_pylist(
        [{**f.__dict__, "resolved_at": None} for f in latest.values()], schema=FAILURES
    )
    with table_lock(store, TABLE):
        old = _read_all(store)
        if old.num_rows:
            ids = zip(old.column("dataset").to_pylist(), old.column("key").to_pylist(), _steps(old), strict=True)
            keep = pa.array([i not in latest for i in ids], type=pa.bool_())
            new = pa.concat_tables([old.filter(keep), new])
        replace_table(store, TABLE, new, metadata=part_metadata(producer=producer), locked=True)
    return len(rows)


def resolve_failures(
    store: Store, *, dataset: str, keys: Iterable[str], producer: str, stage: str | None = None
) -> int:
    """Mark the open failures of ``keys`` in ``dataset`` resolved (now); return how many rows changed.

    Only rows of one step are touched: that of ``stage`` when given (e.g. ``extract:<table>``), else
    that of ``producer`` — ``store.ingest`` resolves ingest failures; any other producer must pass
    ``stage``. Nothing is written when no open row matches (a cheap call after every part).
    """
    if stage is not None:
        step = failure_step(stage)
    elif producer == _INGEST_PRODUCER:
        step = "ingest"
    else:
        raise ValueError(f"resolve_failures(producer={producer!r}) needs stage=, e.g. 'extract:<table>'.")
    wanted = set(keys)
    if not wanted or not table_parts(store, TABLE):
        return 0
    with table_lock(store, TABLE):
        table = _read_all(store)
        hit = [
            d == dataset and k in wanted and s == step and r is None
            for d, k, s, r in zip(
                table.column("dataset").to_pylist(), table.column("key").to_pylist(), _steps(table),
                table.column("resolved_at").to_pylist(), strict=True,
            )
        ]
        count = sum(hit)
        if count:
            now = pa.scalar(datetime.now(timezone.utc), type=FAILURES.field("resolved_at").type)
            resolved = pc.if_else(pa.array(hit, type=pa.bool_()), now, table.column("resolved_at"))
            index = table.schema.get_field_index("resolved_at")
            table = table.set_column(index, FAILURES.field("resolved_at"), resolved)
            replace_table(store, TABLE, table, metadata=part_metadata(producer=producer), locked=True)
    return count
