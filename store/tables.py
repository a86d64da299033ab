"""Parquet tables on disk: atomic parts, single-part replacement, reading, listing, keys present.

A table is a directory ``tables/<name>/`` of files ``part-*.parquet``. Every part is written under a
hidden temporary name, fsynced, renamed into place and the directory fsynced, so a reader (or a
rerun after SIGKILL) sees each part either complete or not at all. Writers of one table hold an
exclusive ``flock`` on ``tables/<name>/.lock`` so two processes cannot interleave parts; a part's
rows are never also in another part because writers skip keys already present before writing.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import ConfigMismatchError, DamagedPartError, TableNotFoundError
from store._fs import TMP_PREFIX, exclusive_lock, write_atomically
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
    "damaged_part_error",
    "require_readable",
    "REPAIR_HINT",
]

PART_GLOB = "part-*.parquet"
PARAMS_HASH_KEY = "chronofeat.params_hash"
REPAIR_HINT = (
    "Run 'python cli.py check' (with the same --store) to see every problem, then 'python cli.py check --repair' "
    "to move damaged parts to quarantine/ and learn which command recomputes what they held."
)
_UNREADABLE = (pa.ArrowException, OSError)  # what pyarrow raises for bytes that are not (whole) Parquet
_SOURCE_PREFIX = re.compile(r"^Could not open Parquet input source '.*?':\s*")


@dataclass(frozen=True)
class TableInfo:
    """One table of the store: its name, row count, number of parts and Arrow schema.

    ``rows``, ``parts`` and ``schema`` describe the readable parts; ``damaged`` lists the parts whose
    Parquet footer cannot be read (truncated, junk). ``schema`` is ``None`` when no part is readable.
    """

    name: str
    rows: int
    parts: int
    schema: pa.Schema | None
    damaged: tuple[Path, ...] = ()


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
    split = {
        path for path, dtype, nested in leaves if nested and (pa.types.is_float32(dtype) or pa.types.is_float64(dtype))
    }
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
    return write_atomically(final_path, lambda tmp: pq.write_table(table, tmp, **_write_options(table.schema)))


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


def replace_table(
    store: Store, name: str, table: pa.Table, *, metadata: Mapping[str, str], locked: bool = False
) -> Path:
    """Make ``table`` the whole content of table ``name`` (one part), atomically.

    Used for derived tables rebuilt in full (``pairs``): the single file ``part-0.parquet`` is
    replaced by rename, so readers see the old table or the new one, never both.
    Pass ``locked=True`` when the caller already holds ``table_lock`` (a read-modify-write).
    """
    def _replace(directory: Path) -> Path:
        final = directory / "part-0.parquet"
        others = [p for p in directory.glob(PART_GLOB) if p != final]
        path = _write_atomically(table, final, metadata)
        for other in others:
            other.unlink(missing_ok=True)
        return path

    if locked:
        return _replace(store.table_dir(name))
    with table_lock(store, name) as directory:
        return _replace(directory)


def table_parts(store: Store, name: str) -> list[Path]:
    """The complete parts of table ``name`` in write order (empty list when the table is absent)."""
    directory = store.table_dir(name)
    return sorted(directory.glob(PART_GLOB)) if directory.is_dir() else []


def table_exists(store: Store, name: str) -> bool:
    """True when table ``name`` has at least one complete part."""
    return bool(table_parts(store, name))


def damaged_part_error(part: Path, exc: BaseException | str) -> DamagedPartError:
    """The error for a part that cannot be read: names the part, its table, the reason and the repair."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = _SOURCE_PREFIX.sub("", text)[:200].rstrip(" .")
    return DamagedPartError(
        f"Part {part} of table {part.parent.name!r} is damaged and cannot be read ({reason}). {REPAIR_HINT}"
    )


@contextmanager
def _reading(part: Path) -> Iterator[None]:
    """Turn pyarrow's failure to read ``part`` into ``DamagedPartError`` (a part deleted meanwhile stays
    ``FileNotFoundError``: a writer replaced it, which is no damage)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except _UNREADABLE as exc:
        raise damaged_part_error(part, exc) from None


def _all_damaged(name: str, bad: list[tuple[Path, BaseException]]) -> DamagedPartError:
    """One error for the damaged parts of table ``name``: the first in full, the others by name."""
    error = damaged_part_error(*bad[0])
    if len(bad) > 1:
        error = DamagedPartError(f"{error} Also damaged in {name!r}: {', '.join(p.name for p, _ in bad[1:])}.")
    return error


def require_readable(store: Store, name: str) -> None:
    """Raise ``DamagedPartError`` naming every part of table ``name`` whose Parquet footer cannot be read."""
    bad = []
    for part in table_parts(store, name):
        try:
            pq.ParquetFile(part)
        except _UNREADABLE as exc:
            if isinstance(exc, FileNotFoundError):  # removed meanwhile by a writer: not damage
                raise
            bad.append((part, exc))
    if bad:
        raise _all_damaged(name, bad)


def read_table(store: Store, name: str, *, columns: list[str] | None = None) -> pa.Table:
    """Read every part of table ``name`` into one Arrow table.

    ``TableNotFoundError`` if absent; ``DamagedPartError`` naming the parts that cannot be read (or whose
    schema conflicts with the others) and how to repair the table.
    """
    parts = table_parts(store, name)
    if not parts:
        known = ", ".join(info.name for info in list_tables(store)) or "none yet"
        raise TableNotFoundError(
            f"The store {store.root} has no table {name!r} (tables: {known}). "
            "Run the command that produces it first (ingest / extract / fit)."
        )
    tables, bad = [], []
    for part in parts:
        try:
            tables.append(pq.read_table(part, columns=columns))
        except _UNREADABLE as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            bad.append((part, exc))
    if bad:
        raise _all_damaged(name, bad)
    try:
        combined = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise damaged_part_error(
            _conflicting_part(parts, tables), f"its schema conflicts with the table's: {exc}"
        ) from None
    return combined.replace_schema_metadata(None)


def _conflicting_part(parts: list[Path], tables: list[pa.Table]) -> Path:
    """The first part whose schema cannot be unified with those of the parts before it."""
    schema = tables[0].schema
    for part, table in zip(parts[1:], tables[1:], strict=True):
        try:
            schema = pa.unify_schemas([schema, table.schema], promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return part
    return parts[-1]


def existing_keys(store: Store, name: str, column: str) -> set:
    """The set of values of ``column`` over every part of table ``name`` (empty if absent).

    ``DamagedPartError`` when a part cannot be read or lacks ``column``.
    """
    keys: set = set()
    for part in table_parts(store, name):
        with _reading(part):
            values = pq.read_table(part, columns=[column]).column(0)
        keys.update(values.to_pylist())
    return keys


def part_kv_metadata(path: Path) -> dict[str, str]:
    """The ``chronofeat.*`` key-value metadata of one Parquet part, decoded to strings.

    ``DamagedPartError`` when the part's footer cannot be read.
    """
    with _reading(path):
        raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k.startswith(b"chronofeat.")}


def table_kv_metadata(store: Store, name: str, *, skip_damaged: bool = False) -> dict[str, str]:
    """The ``chronofeat.*`` metadata of the newest part of table ``name`` (``{}`` when absent).

    A damaged newest part raises ``DamagedPartError``; with ``skip_damaged`` the newest readable part is
    used instead (``{}`` when none is readable), for overviews that must not fail.
    """
    for part in reversed(table_parts(store, name)):
        try:
            return part_kv_metadata(part)
        except DamagedPartError:
            if not skip_damaged:
                raise
    return {}


def list_tables(store: Store) -> list[TableInfo]:
    """Every table of the store with its row count (from Parquet footers), part count and schema."""
    infos = []
    if not store.tables_dir.is_dir():
        return infos
    for directory in sorted(p for p in store.tables_dir.iterdir() if p.is_dir()):
        parts = sorted(directory.glob(PART_GLOB))
        if not parts:
            continue
        rows, schema, readable, damaged = 0, None, 0, []
        for part in parts:
            try:
                parquet = pq.ParquetFile(part)
            except _UNREADABLE:
                damaged.append(part)
                continue
            rows += parquet.metadata.num_rows
            readable += 1
            schema = parquet.schema_arrow.remove_metadata()
        infos.append(TableInfo(name=directory.name, rows=rows, parts=readable, schema=schema, damaged=tuple(damaged)))
    return infos
