"""The ``failures`` table: every input that could not be processed, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa

from store.layout import Store
from store.provenance import part_metadata
from store.schema import FAILURES
from store.tables import write_part

__all__ = ["Failure", "record_failures"]


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
    def from_exception(cls, exc: BaseException, *, key: str, dataset: str, path: str, stage: str) -> "Failure":
        """A failure record for ``exc`` raised while processing ``path`` at ``stage``."""
        return cls(key=key, dataset=dataset, path=path, stage=stage, error_class=type(exc).__name__, message=str(exc))


def record_failures(store: Store, failures: Iterable[Failure], *, producer: str) -> int:
    """Append ``failures`` to the ``failures`` table as one part; return how many were written."""
    rows = list(failures)
    if not rows:
        return 0
    table = pa.Table.from_pylist([row.__dict__ for row in rows], schema=FAILURES)
    write_part(store, "failures", table, metadata=part_metadata(producer=producer))
    return len(rows)
