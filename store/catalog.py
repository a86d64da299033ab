"""What the store holds, for people: table overview and one table's description."""

from __future__ import annotations

import json

import pyarrow as pa

from store.layout import Store
from store.render import format_table
from store.tables import list_tables, read_table, table_kv_metadata

__all__ = ["tables_overview", "describe_table"]


def _type_text(dtype: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(dtype):
        return f"{dtype.value_type}[{dtype.list_size}]"
    return str(dtype)


def tables_overview(store: Store) -> pa.Table:
    """One row per table: name, rows, parts, producer and columns (``name type`` joined).

    Counts, producer and columns come from the readable parts. When some table has parts that cannot be
    read, a ``note`` column names how many for that table and says to run ``check``.
    """
    infos = list_tables(store)
    overview = pa.table(
        {
            "table": [i.name for i in infos],
            "rows": pa.array([i.rows for i in infos], pa.int64()),
            "parts": pa.array([i.parts for i in infos], pa.int64()),
            "producer": [
                table_kv_metadata(store, i.name, skip_damaged=True).get("chronofeat.producer", "") for i in infos
            ],
            "columns": [", ".join(f"{f.name} {_type_text(f.type)}" for f in (i.schema or [])) for i in infos],
        }
    )
    if any(i.damaged for i in infos):
        notes = [
            f"DAMAGED: {len(i.damaged)} part(s) unreadable; run 'python cli.py check'" if i.damaged else ""
            for i in infos
        ]
        overview = overview.append_column("note", pa.array(notes, pa.string()))
    return overview


def describe_table(store: Store, name: str, *, rows: int = 10) -> str:
    """Text describing table ``name``: row/part counts, schema, provenance of its newest part, first rows."""
    table = read_table(store, name)  # TableNotFoundError naming the tables there are; DamagedPartError
    info = next(i for i in list_tables(store) if i.name == name)
    meta = table_kv_metadata(store, name)
    lines = [f"table {name}: {info.rows} rows in {info.parts} part(s)", "", "columns:"]
    lines += [f"  {f.name:<28} {_type_text(f.type)}" for f in info.schema]
    if meta:
        lines += ["", "provenance (newest part):"]
        for key, value in sorted(meta.items()):
            if key.endswith(".params") or key.endswith(".packages"):
                value = json.dumps(json.loads(value), indent=None)[:300]
            lines.append(f"  {key.removeprefix('chronofeat.'):<16} {value}")
    lines += ["", format_table(table, max_rows=rows)]
    return "\n".join(lines)
