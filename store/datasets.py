"""The ``datasets`` table read back: where a dataset's files are, its layout, whether it is synthetic."""

from __future__ import annotations

from store.layout import Store
from store.tables import read_table, table_exists

__all__ = ["dataset_rows", "dataset_row", "synthetic_notice"]


def dataset_rows(store: Store) -> list[dict]:
    """Every row of the ``datasets`` table as a dict ([] before the first ingest)."""
    return read_table(store, "datasets").to_pylist() if table_exists(store, "datasets") else []


def dataset_row(store: Store, dataset: str) -> dict | None:
    """The ``datasets`` row of ``dataset``, or None when it was never ingested."""
    return next((row for row in dataset_rows(store) if row["dataset"] == dataset), None)


def synthetic_notice(store: Store, dataset: str) -> str | None:
    """The announcement to print when ``dataset`` is a generated demo stand-in, else None."""
    row = dataset_row(store, dataset)
    if not row or not row.get("synthetic"):
        return None
    try:
        from store.demo import DEMO_NOTICE

        return DEMO_NOTICE.get(dataset) or _generic(dataset)
    except ImportError:
        return _generic(dataset)


def _generic(dataset: str) -> str:
    return (
        f"NOTE: {dataset!r} is the built-in SYNTHETIC demo stand-in, not real patient data; "
        "results on it say nothing about the paper's data."
    )
