"""Show Arrow results to a person (aligned text, truncated) or write them out (CSV, JSON, Parquet)."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.errors import InputError, ParameterError, UnsafeLocationError
from store._fs import write_atomically
from store.layout import Store

__all__ = [
    "format_table",
    "write_result",
    "emit_result",
    "check_result_options",
    "check_output_location",
    "Rendered",
    "Format",
    "FORMATS",
]

Format = Literal["table", "csv", "json", "parquet"]
FORMATS = ("table", "csv", "json", "parquet")
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
RESULT_HINT = "add --max-rows 0 to print them all, or --output FILE (.csv, .json or .parquet) to write everything."


def _cell(value, width: int) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:4])
        text = f"[{head}{', …' if len(value) > 4 else ''}] ({len(value)})" if len(value) > 4 else f"[{head}]"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(table: pa.Table, *, max_rows: int = 50, max_width: int = 40, hint: str | None = None) -> str:
    """Render ``table`` as aligned text: at most ``max_rows`` rows, long cells cut, a note when truncated.

    ``hint`` ends the truncation note (how to see the rest with the command at hand).
    """
    shown = table.slice(0, max_rows)
    names = table.column_names
    rows = [[_cell(v, max_width) for v in row.values()] for row in shown.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if table.num_rows > max_rows:
        lines.append(
            f"… {table.num_rows - max_rows} more rows not shown ({table.num_rows} in all); "
            + (hint or "use --limit/--max-rows, or --format csv|json|parquet --output FILE for everything.")
        )
    else:
        lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(lines)


def _plain(value, dtype: pa.DataType):
    """A cell as JSON-ready Python: maps become objects (Arrow gives them as lists of pairs)."""
    if value is None:
        return None
    if pa.types.is_map(dtype):
        return {k: _plain(v, dtype.item_type) for k, v in value}
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return [_plain(v, dtype.value_type) for v in value]
    if pa.types.is_struct(dtype):
        return {f.name: _plain(value.get(f.name), f.type) for f in dtype}
    return value


def _to_text(table: pa.Table, fmt: str) -> str:
    if fmt == "csv":
        # CSV cannot hold lists, maps or structs: write them as JSON text
        columns = []
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_nested(column.type):
                column = pa.array([None if v is None else json.dumps(_plain(v, column.type), default=str)
                                   for v in column.to_pylist()], pa.string())
            columns.append(column)
        buffer = io.BytesIO()
        pacsv.write_csv(pa.table(columns, names=table.column_names), buffer)
        return buffer.getvalue().decode()
    types = {f.name: f.type for f in table.schema}
    rows = ({k: _plain(v, types[k]) for k, v in row.items()} for row in table.to_pylist())
    return "".join(json.dumps(row, default=str) + "\n" for row in rows)


def check_output_location(store: Store | None, path: str | os.PathLike, *, export: bool = False) -> Path:
    """The resolved ``path`` (symlinks followed) of a file a command will write; refuse one in the store.

    ``UnsafeLocationError`` when the file is the store root or lies anywhere inside it: the store's
    files are written only by its own writers (a file in ``tables/`` would replace or add a part).
    ``export`` (a DuckDB ``COPY`` target, which may become a folder of files and which DuckDB may write
    in place) also refuses a folder that holds the store or a symlink into it, and an existing file
    with other hard links. ``store=None`` checks nothing but resolves.
    """
    target = Path(path).expanduser()
    resolved = target.resolve()
    if store is None:
        return resolved
    root = store.root.resolve()

    def refuse(why: str) -> UnsafeLocationError:
        return UnsafeLocationError(
            f"Refused to write {str(path)!r}: {why}. The store's files are written only by chronofeat's own "
            f"writers, so a result or export must go outside the store {root}: choose another path, e.g. "
            "./result.parquet. Nothing was written."
        )

    if resolved == root or root in resolved.parents:
        where = "it is the store itself" if resolved == root else f"it resolves to {resolved}, inside the store"
        raise refuse(where)
    if export:
        if resolved in root.parents:
            raise refuse(f"it is the folder {resolved}, which holds the store")
        if resolved.is_file() and resolved.stat().st_nlink > 1:
            raise refuse(f"{resolved} has other hard links (one may be a part of the store); remove it first")
        if resolved.is_dir():
            for folder, names, files in os.walk(resolved):
                for name in names + files:
                    entry = Path(folder, name)
                    if entry.is_symlink() and (entry.resolve() == root or root in entry.resolve().parents):
                        raise refuse(f"the folder holds {entry}, a link into the store")
    return resolved


def _atomic_write(path: Path, write) -> None:
    """``write_atomically`` to an output file, after checking that ``path`` can be a file."""
    if path.is_dir():
        raise InputError(f"The output {path} is a folder; give a file name, e.g. {path / 'result.csv'}.")
    if not path.parent.is_dir():
        raise InputError(f"The folder of the output file {path} does not exist; create {path.parent} first.")
    write_atomically(path, write)


def _choose_format(fmt: str | None, output) -> str:
    if fmt is None:
        return _SUFFIX_FORMATS.get(Path(output).suffix.lower(), "table") if output is not None else "table"
    if fmt not in FORMATS:
        raise ParameterError(f"The 'format' parameter must be one of table, csv, json, parquet. Got {fmt!r} instead.")
    return fmt


def write_result(
    table: pa.Table, *, fmt: Format | None, output: str | Path | None, store: Store | None = None
) -> str | None:
    """Write ``table`` as ``fmt`` to ``output`` (returns None) or return the text for stdout.

    The file is written whole or not at all (temporary sibling, then rename); ``store`` refuses an
    ``output`` inside that store (``UnsafeLocationError``). ``fmt=None`` follows the file's suffix
    (.csv, .json/.jsonl, .parquet; else the aligned text table). ``parquet`` needs an ``output`` file;
    the ``table`` format written to a file holds every row.
    """
    fmt = _choose_format(fmt, output)
    if fmt == "parquet" and output is None:
        raise ParameterError("--format parquet writes a file: add --output FILE.parquet.")
    if output is None:
        return format_table(table) if fmt == "table" else _to_text(table, fmt)
    path = check_output_location(store, output)
    if fmt == "parquet":
        _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    else:
        text = format_table(table, max_rows=max(table.num_rows, 1)) + "\n" if fmt == "table" else _to_text(table, fmt)
        _atomic_write(path, lambda tmp: tmp.write_text(text))
    return None


def check_result_options(*, fmt: Format | None, output: str | Path | None, max_rows: int = 0,
                         store: Store | None = None) -> None:
    """Check ``--format/--output/--max-rows`` before any work: raise ``ParameterError`` or ``UnsafeLocationError``.

    The same checks run again when the result is written; calling this first means a refused output
    costs no query, scoring or appended rows.
    """
    fmt = _choose_format(fmt, output)
    if fmt == "parquet" and output is None:
        raise ParameterError("--format parquet writes a file: add --output FILE.parquet.")
    if max_rows < 0:
        raise ParameterError(f"--max-rows must be 0 (all rows) or more. Got {max_rows} instead.")
    if output is not None:
        check_output_location(store, output)


@dataclass(frozen=True)
class Rendered:
    """What a command prints: ``text`` for stdout (ends with a newline) and an optional ``note`` for stderr."""

    text: str
    note: str | None = None


def emit_result(table: pa.Table, *, fmt: Format | None = None, output: str | Path | None = None, max_rows: int = 50,
                store: Store | None = None, display: pa.Table | None = None, max_width: int = 40) -> Rendered:
    """Print or write a command's result (``sql``, ``predict``): the one place for ``--format/--output/--max-rows``.

    With ``output`` the whole ``table`` is written there (``write_result``; refused inside ``store``) and
    the text says how many rows went where. Otherwise at most ``max_rows`` rows (0 = all) are rendered
    as ``fmt``: csv/json rows of ``table``, or (the default) aligned text of ``display`` (a shorter view
    of ``table`` for people, when given) else of ``table``; a note says how to get the rest.
    """
    check_result_options(fmt=fmt, output=output, max_rows=max_rows, store=store)
    if output is not None:
        write_result(table, fmt=fmt, output=output, store=store)
        return Rendered(f"wrote {table.num_rows} row{'s' if table.num_rows != 1 else ''} to {output}\n")
    fmt = _choose_format(fmt, None)
    limit = max_rows or table.num_rows
    if fmt == "table":
        shown = display if display is not None else table
        return Rendered(format_table(shown, max_rows=limit, max_width=max_width, hint=RESULT_HINT) + "\n")
    text = write_result(table.slice(0, limit), fmt=fmt, output=None)
    note = None
    if table.num_rows > limit:
        note = f"showing {limit} of {table.num_rows} rows; {RESULT_HINT}"
    return Rendered(text if text.endswith("\n") or not text else text + "\n", note)
