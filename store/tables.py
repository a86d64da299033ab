"""Parquet tables on disk: atomic parts, single-part replacement, reading, listing, keys present.

A table is a directory ``tables/<name>/`` of files ``part-*.parquet``. Every part is written under a
hidden temporary name, fsynced, renamed into place and the directory fsynced, so a reader (or a
rerun after SIGKILL) sees each part either complete or not at all. Writers of one table hold an
exclusive ``flock`` on ``tables/<name>/.lock`` so two processes cannot interleave parts; a part's
rows are never also in another part because writers skip keys already present before writing.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from store._fs import exclusive_lock, fsync_dir
from store.errors import ConfigMismatchError, TableNotFoundError
from store.layout import Store

__all__ = [
    "TableInfo",
    "table_lock",
    "write_part",
    "replace_table",
    "read_table",
    "table_parts",
    "table_exists",
    "existing_keys",
    "list_tables",
    "part_kv_metadata",
    "table_kv_metadata",
]

PART_GLOB = "part-*.parquet"
TMP_PREFIX = ".tmp-"
PARAMS_HASH_KEY = "chronofeat.params_hash"


@dataclass(frozen=True)
class TableInfo:
    """One table of the store: its name, row count, number of parts and Arrow schema."""

    name: str
    rows: int
    parts: int
    schema: pa.Schema


@contextmanager
def table_lock(store: Store, name: str, *, timeout_s: float = 600.0) -> Iterator[Path]:
    """Hold the exclusive writer lock of table ``name``; yield its directory (created).

    Stale temporary files left by a killed writer are removed once the lock is held.
    """
    directory = store.table_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / ".lock"
    busy = (
        f"Table {name!r} is being written by another process (lock {lock_path}); wait for it to finish, "
        "or stop it, then run again."
    )
    with exclusive_lock(lock_path, busy_message=busy, timeout_s=timeout_s):
        for stale in directory.glob(TMP_PREFIX + "*"):
            stale.unlink(missing_ok=True)
        yield directory


def _leaf_columns(name: str, dtype: pa.DataType, nested: bool = False) -> Iterator[tuple[str, pa.DataType, bool]]:
    """``(Parquet column path, leaf type, inside a list)`` of every leaf column of field ``name``."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        yield from _leaf_columns(f"{name}.list.element", dtype.value_type, True)
    elif pa.types.is_struct(dtype):
        for child in dtype:
            yield from _leaf_columns(f"{name}.{child.name}", child.type, nested)
    elif pa.types.is_map(dtype):
        yield from _leaf_columns(f"{name}.key_value.key", dtype.key_type, True)
        yield from _leaf_columns(f"{name}.key_value.value", dtype.item_type, True)
    else:
        yield name, dtype, nested


def _write_options(schema: pa.Schema) -> dict:
    """Parquet writer options: zstd everywhere; float vectors (embeddings, descriptors, histograms)
    byte-stream-split instead of dictionary-encoded.

    A dictionary rarely pays for vectors of distinct floats: the writer builds one, then falls back.
    Byte stream split groups the floats' bytes so zstd finds their common exponents: on CNN embeddings
    and KAZE descriptors, writes take a third to a half less time and parts are 17-19% smaller.
    DuckDB reads it for FLOAT/DOUBLE (integer columns keep the dictionary: older DuckDBs cannot read
    them byte-stream-split).
    """
    leaves = [leaf for field in schema for leaf in _leaf_columns(field.name, field.type)]
    split = {path for path, dtype, nested in leaves if nested and (pa.types.is_float32(dtype) or pa.types.is_float64(dtype))}
    if not split:
        return {"compression": "zstd"}
    return {
        "compression": "zstd",
        "use_dictionary": [path for path, _, _ in leaves if path not in split],
        "column_encoding": {path: "BYTE_STREAM_SPLIT" for path in split},
    }


def _write_atomically(table: pa.Table, final_path: Path, metadata: Mapping[str, str]) -> Path:
    existing = dict(table.schema.metadata or {})
    merged = {**existing, **{k.encode(): v.encode() for k, v in metadata.items()}}
    table = table.replace_schema_metadata(merged)
    tmp_path = final_path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet")
    try:
        pq.write_table(table, tmp_path, **_write_options(table.schema))
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, final_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(final_path.parent)
    return final_path


def _check_config(directory: Path, name: str, metadata: Mapping[str, str]) -> None:
    wanted = metadata.get(PARAMS_HASH_KEY)
    if wanted is None:
        return
    for part in sorted(directory.glob(PART_GLOB))[:1]:
        found = part_kv_metadata(part).get(PARAMS_HASH_KEY)
        if found is not None and found != wanted:
            raise ConfigMismatchError(
                f"Table {name!r} holds rows of configuration {found}, not {wanted}; rows of two "
                "configurations are never mixed. Write to a new table name (the extractor does this "
                "when a parameter changes)."
            )


def write_part(store: Store, name: str, table: pa.Table, *, metadata: Mapping[str, str], locked: bool = False) -> Path:
    """Append ``table`` as one new part of table ``name``, atomically; return the part's path.

    ``metadata`` (string keys and values) goes into the part's key-value metadata; when it carries
    ``chronofeat.params_hash`` it must equal that of the parts already there (``ConfigMismatchError``).
    Pass ``locked=True`` when the caller already holds ``table_lock``.
    """
    def _write(directory: Path) -> Path:
        _check_config(directory, name, metadata)
        part = directory / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        return _write_atomically(table, part, metadata)

    if locked:
        return _write(store.table_dir(name))
    with table_lock(store, name) as directory:
        return _write(directory)


def replace_table(store: Store, name: str, table: pa.Table, *, metadata: Mapping[str, str]) -> Path:
    """Make ``table`` the whole content of table ``name`` (one part), atomically.

    Used for derived tables rebuilt in full (``pairs``): the single file ``part-0.parquet`` is
    replaced by rename, so readers see the old table or the new one, never both.
    """
    with table_lock(store, name) as directory:
        final = directory / "part-0.parquet"
        others = [p for p in directory.glob(PART_GLOB) if p != final]
        path = _write_atomically(table, final, metadata)
        for other in others:
            other.unlink(missing_ok=True)
        return path


def table_parts(store: Store, name: str) -> list[Path]:
    """The complete parts of table ``name`` in write order (empty list when the table is absent)."""
    directory = store.table_dir(name)
    return sorted(directory.glob(PART_GLOB)) if directory.is_dir() else []


def table_exists(store: Store, name: str) -> bool:
    """True when table ``name`` has at least one complete part."""
    return bool(table_parts(store, name))


def read_table(store: Store, name: str, *, columns: list[str] | None = None) -> pa.Table:
    """Read every part of table ``name`` into one Arrow table (``TableNotFoundError`` if absent)."""
    parts = table_parts(store, name)
    if not parts:
        known = ", ".join(info.name for info in list_tables(store)) or "none yet"
        raise TableNotFoundError(
            f"The store {store.root} has no table {name!r} (tables: {known}). "
            "Run the command that produces it first (ingest / extract / fit)."
        )
    tables = [pq.read_table(p, columns=columns) for p in parts]
    return pa.concat_tables(tables, promote_options="default").replace_schema_metadata(None)


def existing_keys(store: Store, name: str, column: str) -> set:
    """The set of values of ``column`` over every part of table ``name`` (empty if absent)."""
    keys: set = set()
    for part in table_parts(store, name):
        keys.update(pq.read_table(part, columns=[column]).column(0).to_pylist())
    return keys


def part_kv_metadata(path: Path) -> dict[str, str]:
    """The ``chronofeat.*`` key-value metadata of one Parquet part, decoded to strings."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"chronofeat.")}


def table_kv_metadata(store: Store, name: str) -> dict[str, str]:
    """The ``chronofeat.*`` metadata of the newest part of table ``name`` (``{}`` when absent)."""
    parts = table_parts(store, name)
    return part_kv_metadata(parts[-1]) if parts else {}


def list_tables(store: Store) -> list[TableInfo]:
    """Every table of the store with its row count (from Parquet footers), part count and schema."""
    infos = []
    if not store.tables_dir.is_dir():
        return infos
    for directory in sorted(p for p in store.tables_dir.iterdir() if p.is_dir()):
        parts = sorted(directory.glob(PART_GLOB))
        if not parts:
            continue
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        schema = pq.read_schema(parts[-1]).remove_metadata()
        infos.append(TableInfo(name=directory.name, rows=rows, parts=len(parts), schema=schema))
    return infos
