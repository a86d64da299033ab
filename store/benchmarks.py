"""The ``benchmarks`` table: speed figures of ``bench/run.py``, one row per stage and variant and run.

Rows from every machine and run accumulate (one part per run), each carrying the machine it was
measured on, so figures compare with SQL, e.g.::

    SELECT cpu_model, gpu, stage, variant, round(items_per_s, 1) AS rate, round(ratio, 2) AS ratio
    FROM benchmarks WHERE status = 'ok' ORDER BY stage, variant, recorded_at
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

import pyarrow as pa

from features.errors import InputError
from store.layout import Store
from store.provenance import part_metadata
from store.tables import read_table, table_exists, write_part

__all__ = ["BENCHMARKS", "append_benchmarks", "read_benchmarks", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
TABLE = "benchmarks"

_RESULT_FIELDS = [
    ("stage", pa.string()),  # ingest, cnn, bovw, diffstats, store_load, fit, cnn_gpu
    ("variant", pa.string()),  # what exactly ran (model, workers, batch size...)
    ("size", pa.string()),  # the generated data, in words ("48 DICOM 512x512")
    ("items", pa.int64()),
    ("unit", pa.string()),  # files, images, pairs, rows
    ("seconds", pa.float64()),
    ("items_per_s", pa.float64()),
    ("baseline", pa.string()),  # the bare-library loop it is compared with
    ("baseline_items_per_s", pa.float64()),
    ("ratio", pa.float64()),  # items_per_s / baseline_items_per_s
    ("peak_rss_mb", pa.float64()),  # this process
    ("peak_tree_rss_mb", pa.float64()),  # with worker processes (sampled)
    ("bound", pa.string()),  # GPU sweep: the stage that limits throughput
    ("status", pa.string()),  # ok | unavailable: reason
    ("notes", pa.string()),
]
_MACHINE_FIELDS = [
    ("host", pa.string()),
    ("cpu_model", pa.string()),
    ("cpu_cores", pa.int32()),
    ("cpu_usable", pa.int32()),
    ("memory_gb", pa.float64()),
    ("gpu", pa.string()),
    ("gpu_count", pa.int32()),
    ("cuda", pa.string()),
    ("python", pa.string()),
    ("platform", pa.string()),
    ("packages", pa.string()),  # JSON {library: version}
    ("code_version", pa.string()),
    ("load_average", pa.float64()),
]
BENCHMARKS = pa.schema(
    [("run_id", pa.string()), ("recorded_at", pa.timestamp("us", tz="UTC")), ("quick", pa.bool_())]
    + _RESULT_FIELDS
    + _MACHINE_FIELDS
)


def append_benchmarks(
    store: Store, rows: Iterable[Mapping], *, machine: Mapping, quick: bool, run_id: str | None = None
) -> str:
    """Append result ``rows`` (the ``_RESULT_FIELDS`` keys) measured on ``machine`` as one part; return the run id.

    ``machine``: the ``_MACHINE_FIELDS`` keys (``packages`` a dict or JSON text); missing keys are null.
    ``InputError`` when there is no row or a row lacks ``stage``.
    """
    rows = list(rows)
    if not rows:
        raise InputError("No benchmark rows to record; run at least one stage.")
    run_id = run_id or uuid.uuid4().hex[:12]
    now = datetime.now(timezone.utc)
    packages = machine.get("packages")
    fixed = {name: machine.get(name) for name, _ in _MACHINE_FIELDS}
    fixed["packages"] = (
        packages if isinstance(packages, str) or packages is None else json.dumps(packages, sort_keys=True)
    )
    records = []
    for row in rows:
        if not row.get("stage"):
            raise InputError(f"A benchmark row has no 'stage': {dict(row)!r}.")
        record = {"run_id": run_id, "recorded_at": now, "quick": bool(quick)}
        record.update({name: row.get(name) for name, _ in _RESULT_FIELDS})
        record.update(fixed)
        records.append(record)
    table = pa.Table.from_pylist(records, schema=BENCHMARKS)
    write_part(
        store, TABLE, table, metadata=part_metadata(producer="bench/run.py", params={"schema_version": SCHEMA_VERSION})
    )
    return run_id


def read_benchmarks(store: Store) -> pa.Table:
    """Every recorded benchmark row (an empty table with the schema when none was recorded yet)."""
    if not table_exists(store, TABLE):
        return BENCHMARKS.empty_table()
    return read_table(store, TABLE)
