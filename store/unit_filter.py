"""A user's ``--where`` predicate over a dataset's units, run through the guarded DuckDB of ``cli.py sql``.

The predicate is one SQL boolean expression over the columns of the unit's table: ``scans`` for scans,
``pairs`` for pairs, and for specimens (one subject at one time point, all its views) the columns
``specimen_id, subject, time_index, label, views, n_scans``. It is checked on DuckDB's own tokens
(``check_predicate``: no ``;``, no comment, parentheses balanced and never closed below the predicate's
own level, so it cannot end the surrounding query) and then placed in ``... WHERE dataset = '<name>'
AND (<predicate>)``, which ``store.sql.query`` checks again against the read-only allow-list and runs
in its locked sandbox. A predicate can therefore only choose rows: it reads, it never writes.
"""

from __future__ import annotations

import duckdb

from features.errors import InputError, ReadOnlyQueryError
from store.layout import Store
from store.sql import query
from store.units import SPECIMEN_ID

__all__ = ["UNIT_COLUMNS_HINT", "check_predicate", "filtered_keys", "reference_modes"]

UNIT_COLUMNS_HINT = {
    "scans": "the scans columns (scan_id, subject, time_index, view, slice, label, rows, cols, modality, ...)",
    "pairs": "the pairs columns (pair_id, subject, reference_scan_id, comparison_scan_id, reference_mode, "
             "interval_days, time_index, label)",
    "specimens": "the specimen columns (specimen_id, subject, time_index, label, views, n_scans)",
}
_KEYS = {"scans": "scan_id", "pairs": "pair_id", "specimens": "specimen_id"}


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def check_predicate(where: str) -> str:
    """``where`` stripped, after checking it is one expression that cannot end the query it is placed in.

    Raises ``InputError`` naming the problem: empty, a ``;``, a comment, or unbalanced parentheses.
    """
    text = (where or "").strip()
    if not text:
        raise InputError("The --where predicate is empty; give a condition such as \"label = 'pth'\" or drop --where.")
    try:
        tokens = duckdb.tokenize(text)
    except (duckdb.Error, RuntimeError, ValueError) as exc:
        raise InputError(f"The --where predicate {text!r} could not be read as SQL: {exc}") from None
    depth = 0
    for i, (start, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(text)
        token = text[start:end].strip()
        if kind.name == "comment":
            raise InputError(f"The --where predicate {text!r} holds a comment ({token!r}); remove it.")
        if kind.name in ("string_const", "identifier"):  # quoted text: its parentheses are not SQL's
            continue
        depth += token.count("(") - token.count(")")
        if ";" in token or depth < 0:
            raise InputError(
                f"The --where predicate {text!r} is not one condition: it "
                f"{'holds a ;' if ';' in token else 'closes a parenthesis it did not open'}. Give a single "
                "boolean expression, e.g. \"label = 'pth' AND time_index >= 2\"."
            )
    if depth:
        raise InputError(f"The --where predicate {text!r} leaves {depth} parenthesis(es) open; close them.")
    return text


def _unit_sql(unit: str, dataset: str, predicate: str) -> str:
    if unit == "specimens":
        return (
            f"WITH specimens AS (SELECT {SPECIMEN_ID} AS specimen_id, subject, time_index, any_value(label) AS label, "
            "list(view ORDER BY view) AS views, count(*) AS n_scans FROM scans "
            f"WHERE dataset = {_literal(dataset)} GROUP BY subject, time_index) "
            f"SELECT specimen_id FROM specimens WHERE ({predicate})"
        )
    if unit not in _KEYS:
        raise InputError(f"Unknown unit {unit!r}; use one of {', '.join(_KEYS)}.")
    return f"SELECT {_KEYS[unit]} FROM {unit} WHERE dataset = {_literal(dataset)} AND ({predicate})"


def filtered_keys(store: Store, unit: str, dataset: str, where: str | None) -> set[str] | None:
    """The keys (``scan_id``, ``pair_id`` or ``specimen_id``) of the ``unit`` rows of ``dataset`` that
    ``where`` keeps; None when ``where`` is None (every row).

    ``InputError`` when the predicate is not one condition (``check_predicate``) or does not run on the
    unit's columns (the message lists them); ``ReadOnlyQueryError`` when it would do more than read.
    """
    if where is None:
        return None
    predicate = check_predicate(where)
    try:
        result = query(store, _unit_sql(unit, dataset, predicate))
    except ReadOnlyQueryError as exc:
        raise ReadOnlyQueryError(f"The --where predicate {predicate!r} was refused: {exc}") from None
    except InputError as exc:
        raise InputError(
            f"The --where predicate {predicate!r} could not be applied to {UNIT_COLUMNS_HINT[unit]}: {exc}"
        ) from None
    return {str(v) for v in result.column(0).to_pylist()}


def reference_modes(store: Store, dataset: str) -> list[str]:
    """The pair reference modes (absolute, relative, given) that ``dataset`` has, sorted."""
    result = query(store, f"SELECT DISTINCT reference_mode FROM pairs WHERE dataset = {_literal(dataset)} ORDER BY 1")
    return [str(v) for v in result.column(0).to_pylist()]
