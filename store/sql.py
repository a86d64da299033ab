"""DuckDB over the store: one in-memory connection on which every table is a view of its parts."""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from store.errors import InputError, ReadOnlyQueryError
from store.layout import Store
from store.tables import PART_GLOB, list_tables

__all__ = ["connect", "query", "check_read_only", "relation_to_arrow", "READ_ONLY_TYPES"]

READ_ONLY_TYPES = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "SET", "VARIABLE_SET"})
_TEMP_CREATE = re.compile(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(TEMP|TEMPORARY)\s", re.IGNORECASE)


def connect(store: Store, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with one view per store table (``SELECT * FROM scans``).

    Views read the Parquet parts directly (``union_by_name``), so they always show what is on disk.
    """
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for info in list_tables(store):
        pattern = str(store.table_dir(info.name) / PART_GLOB).replace("'", "''")
        # Parquet has no fixed-size list: cast embeddings back to the FLOAT[d] arrays they were written as
        casts = [
            f'"{f.name}"::{_duckdb_scalar(f.type.value_type)}[{f.type.list_size}] AS "{f.name}"'
            for f in info.schema
            if pa.types.is_fixed_size_list(f.type) and _duckdb_scalar(f.type.value_type)
        ]
        replace = f" REPLACE ({', '.join(casts)})" if casts else ""
        con.execute(
            f'CREATE VIEW "{info.name}" AS SELECT *{replace} '
            f"FROM read_parquet('{pattern}', union_by_name = true)"
        )
    return con


def _duckdb_scalar(dtype: pa.DataType) -> str | None:
    return {pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.int64(): "BIGINT"}.get(dtype)


def relation_to_arrow(relation) -> pa.Table:
    """Materialise a DuckDB relation as an Arrow table (``None``, from a statement with no result, gives an empty table)."""
    if relation is None:
        return pa.table({})
    to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow  # duckdb >= 1.4 / older
    result = to_arrow()
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ``ReadOnlyQueryError`` if any statement in ``sql`` would change or export data.

    Allowed: SELECT (with DESCRIBE / SHOW / SUMMARIZE), EXPLAIN, PRAGMA, SET and CREATE TEMP ...;
    refused: DROP, DELETE, INSERT, UPDATE, COPY, ATTACH, EXPORT, INSTALL/LOAD, ALTER, other CREATE...
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"The SQL could not be parsed: {exc}") from None
    for statement in statements:
        kind = statement.type.name
        if kind in READ_ONLY_TYPES:
            continue
        if kind == "CREATE" and _TEMP_CREATE.match(statement.query):
            continue
        text = " ".join(statement.query.split())[:80]
        raise ReadOnlyQueryError(
            f"Refused a {kind} statement ({text!r}): 'sql' is read-only so the store cannot be changed "
            "or exported by accident. Add --write if you mean it; nothing was run."
        )


def query(store: Store, sql: str, *, write: bool = False) -> pa.Table:
    """Run ``sql`` against the store's views and return the last statement's result as Arrow.

    Without ``write`` any statement that would change or export data is refused before anything runs.
    """
    con = connect(store)
    try:
        if not write:
            check_read_only(con, sql)
        statements = con.extract_statements(sql)
        for statement in statements[:-1]:
            con.execute(statement)
        return relation_to_arrow(con.sql(statements[-1].query)) if statements else pa.table({})
    except duckdb.Error as exc:
        raise InputError(f"The query failed: {exc}") from None
    finally:
        con.close()
