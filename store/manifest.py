"""CSV manifests of a dataset folder: ``manifest.csv`` (one row per file) and ``pairs.csv`` (given pairs).

``manifest.csv`` columns: ``path`` (relative to the dataset root, required) and any of ``subject``,
``time`` (integer time index), ``date`` (``YYYY-MM-DD``), ``view``, ``slice`` (integer), ``label``,
``labels`` (``;``-separated), plus any other label columns (strings, or ``;``-separated lists for the
layout's list columns). Blank cells are missing values. Values from the manifest override what a
DICOM header says. ``pairs.csv`` columns: ``reference_path``, ``comparison_path``, ``label``.

Error messages name the manifest file, its line and column, never a subject value.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from features.dataset_layouts import GivenPair
from features.errors import DatasetError
from store.schema import SCANS_CORE

__all__ = [
    "MANIFEST_NAME",
    "PAIRS_NAME",
    "KNOWN_COLUMNS",
    "ManifestRow",
    "Manifest",
    "GivenPair",
    "normalise_path",
    "read_manifest",
    "read_pairs_csv",
    "split_list",
]

MANIFEST_NAME = "manifest.csv"
PAIRS_NAME = "pairs.csv"
KNOWN_COLUMNS = ("path", "subject", "time", "date", "view", "slice", "label", "labels")
_COLUMN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_FORBIDDEN = frozenset(SCANS_CORE.names) - set(KNOWN_COLUMNS)


@dataclass(frozen=True)
class ManifestRow:
    """One manifest line. ``subject`` is the raw identifier: it is only ever hashed, never stored."""

    line: int
    path: str
    subject: str | None = field(default=None, repr=False)
    time: int | None = None
    date: dt.date | None = field(default=None, repr=False)
    view: str | None = None
    slice: int | None = None
    label: str | None = None
    labels: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.csv``: rows by normalised path and its extra label columns in file order."""

    file: Path
    rows: dict[str, ManifestRow]
    extra_columns: tuple[str, ...]
    list_columns: tuple[str, ...]
    columns: tuple[str, ...]


def normalise_path(value: str, *, where: str) -> str:
    """``value`` as a clean POSIX path relative to the dataset root (``DatasetError`` if it escapes it)."""
    text = value.strip().replace("\\", "/")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", text):
        raise DatasetError(
            f"{where}: path {value!r} must be relative to the dataset root and stay inside it "
            "(no leading '/', drive letter or '..')."
        )
    return "/".join(parts)


def split_list(value: str | None) -> tuple[str, ...]:
    """A ``;``-separated cell as a tuple of its non-blank items (``()`` for a blank cell)."""
    if value is None:
        return ()
    return tuple(item.strip() for item in value.split(";") if item.strip())


def _read_csv(file: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise DatasetError(f"{file}: the file is empty; it needs a header line.") from None
            columns = [c.strip().lower() for c in header]
            rows = []
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) > len(columns):
                    raise DatasetError(
                        f"{file} line {reader.line_num}: {len(values)} values for {len(columns)} columns; "
                        "quote values that contain commas."
                    )
                cells = {c: (values[i].strip() if i < len(values) else "") for i, c in enumerate(columns)}
                rows.append((reader.line_num, cells))
    except UnicodeDecodeError:
        raise DatasetError(f"{file}: not UTF-8 text; save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise DatasetError(f"{file}: not a valid CSV file ({exc}).") from None
    seen = set()
    for column in columns:
        if not _COLUMN_NAME.match(column):
            raise DatasetError(
                f"{file}: column name {column!r} is not usable; use lower-case letters, digits and '_', "
                "starting with a letter."
            )
        if column in seen:
            raise DatasetError(f"{file}: column {column!r} appears twice.")
        seen.add(column)
    return columns, rows


def _int_cell(file: Path, line: int, column: str, value: str) -> int | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise DatasetError(f"{file} line {line}: column {column!r} must be an integer, got {value!r}.")
    return int(number)


def _date_cell(file: Path, line: int, value: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise DatasetError(f"{file} line {line}: column 'date' must be a date written YYYY-MM-DD.") from None


def read_manifest(file: str | Path, *, list_columns: tuple[str, ...] = ("labels",)) -> Manifest:
    """Parse ``manifest.csv`` at ``file``; ``list_columns`` are read as ``;``-separated lists.

    Raises ``DatasetError`` for a missing ``path`` column, a duplicate path, a non-integer ``time``
    or ``slice``, a bad ``date``, or a column that would shadow a core ``scans`` column.
    """
    file = Path(file)
    columns, raw_rows = _read_csv(file)
    if "path" not in columns:
        raise DatasetError(f"{file}: needs a 'path' column (file paths relative to the dataset root).")
    forbidden = sorted(set(columns) & _FORBIDDEN)
    if forbidden:
        raise DatasetError(
            f"{file}: column(s) {forbidden} would shadow computed scans columns; rename them "
            "(e.g. 'label_' prefix)."
        )
    lists = tuple(dict.fromkeys(("labels",) + tuple(list_columns)))
    extra_columns = tuple(c for c in columns if c not in KNOWN_COLUMNS)
    rows: dict[str, ManifestRow] = {}
    for line, cells in raw_rows:
        where = f"{file} line {line}"
        if not cells.get("path"):
            raise DatasetError(f"{where}: the 'path' cell is blank.")
        path = normalise_path(cells["path"], where=where)
        if path in rows:
            raise DatasetError(f"{where}: path {path!r} is listed twice (also line {rows[path].line}).")
        extra = {
            column: (split_list(cells[column]) if column in lists else (cells[column] or None))
            for column in extra_columns
        }
        rows[path] = ManifestRow(
            line=line,
            path=path,
            subject=cells.get("subject") or None,
            time=_int_cell(file, line, "time", cells.get("time", "")),
            date=_date_cell(file, line, cells.get("date", "")),
            view=cells.get("view") or None,
            slice=_int_cell(file, line, "slice", cells.get("slice", "")),
            label=cells.get("label") or None,
            labels=split_list(cells.get("labels")),
            extra=extra,
        )
    return Manifest(
        file=file,
        rows=rows,
        extra_columns=extra_columns,
        list_columns=tuple(c for c in lists if c in columns or c == "labels"),
        columns=tuple(columns),
    )


def read_pairs_csv(file: str | Path) -> list[GivenPair]:
    """Parse ``pairs.csv`` (``reference_path``, ``comparison_path``, ``label``) into ``GivenPair`` rows.

    Raises ``DatasetError`` for missing columns, blank paths or a pair listed twice.
    """
    file = Path(file)
    columns, raw_rows = _read_csv(file)
    missing = [c for c in ("reference_path", "comparison_path") if c not in columns]
    if missing:
        raise DatasetError(f"{file}: needs columns reference_path, comparison_path and label; missing {missing}.")
    pairs, seen = [], {}
    for line, cells in raw_rows:
        where = f"{file} line {line}"
        if not cells.get("reference_path") or not cells.get("comparison_path"):
            raise DatasetError(f"{where}: reference_path and comparison_path must both be filled.")
        reference = normalise_path(cells["reference_path"], where=where)
        comparison = normalise_path(cells["comparison_path"], where=where)
        if (reference, comparison) in seen:
            raise DatasetError(
                f"{where}: the pair {reference} -> {comparison} is listed twice (also line "
                f"{seen[(reference, comparison)]})."
            )
        seen[(reference, comparison)] = line
        pairs.append(
            GivenPair(line=line, reference_path=reference, comparison_path=comparison, label=cells.get("label") or None)
        )
    return pairs
