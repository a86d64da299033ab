"""Show Arrow results to a person (aligned text, truncated) or write them out (CSV, JSON, Parquet)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from store.errors import ParameterError

__all__ = ["format_table", "write_result", "Format"]

Format = Literal["table", "csv", "json", "parquet"]


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


def format_table(table: pa.Table, *, max_rows: int = 50, max_width: int = 40) -> str:
    """Render ``table`` as aligned text: at most ``max_rows`` rows, long cells cut, a note when truncated."""
    shown = table.slice(0, max_rows)
    names = table.column_names
    rows = [[_cell(v, max_width) for v in row.values()] for row in shown.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if table.num_rows > max_rows:
        lines.append(
            f"… {table.num_rows - max_rows} more rows not shown ({table.num_rows} in all); "
            "use --limit/--max-rows, or --format csv|json|parquet --output FILE for everything."
        )
    else:
        lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(lines)


def _to_text(table: pa.Table, fmt: str) -> str:
    if fmt == "csv":
        plain = table.select([n for n in table.column_names])
        # CSV cannot hold lists: write them as JSON text
        columns = []
        for name in plain.column_names:
            column = plain.column(name)
            if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
                column = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
            columns.append(column)
        buffer = io.BytesIO()
        pacsv.write_csv(pa.table(columns, names=plain.column_names), buffer)
        return buffer.getvalue().decode()
    return "\n".join(json.dumps(row, default=str) for row in table.to_pylist()) + ("\n" if table.num_rows else "")


def write_result(table: pa.Table, *, fmt: Format, output: str | Path | None) -> str | None:
    """Write ``table`` as ``fmt`` to ``output`` (returns None) or return the text for stdout.

    ``parquet`` needs an ``output`` file; ``table`` format is for the terminal only.
    """
    if fmt not in ("table", "csv", "json", "parquet"):
        raise ParameterError(f"The 'format' parameter must be one of table, csv, json, parquet. Got {fmt!r} instead.")
    if fmt == "parquet":
        if output is None:
            raise ParameterError("--format parquet writes a file: add --output FILE.parquet.")
        pq.write_table(table, output)
        return None
    text = format_table(table) if fmt == "table" else _to_text(table, fmt)
    if output is None:
        return text
    Path(output).write_text(text if fmt != "table" else text + "\n")
    return None
