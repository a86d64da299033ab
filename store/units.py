"""Work units read from the core tables: scans, pairs (with both scans) and multiview specimens."""

from __future__ import annotations

import pyarrow as pa

from features.errors import DatasetError
from store.layout import Store
from store.provenance import combine_hashes
from store.sql import connect, relation_to_arrow
from store.tables import table_exists

__all__ = ["scan_units", "pair_units", "specimen_units"]


def _require(store: Store, table: str, dataset: str) -> None:
    if not table_exists(store, table):
        raise DatasetError(
            f"The store {store.root} has no {table!r} table yet. Run 'python cli.py ingest --dataset "
            f"{dataset}' first."
        )


def _run(store: Store, sql: str, params: list) -> pa.Table:
    con = connect(store)
    try:
        return relation_to_arrow(con.sql(sql, params=params))
    finally:
        con.close()


def scan_units(store: Store, dataset: str) -> pa.Table:
    """Every scan of ``dataset`` (all ``scans`` columns) plus ``source_sha256`` = ``pixel_sha256``.

    Ordered by subject, time, view, slice so batches read files in a stable order.
    """
    _require(store, "scans", dataset)
    units = _run(
        store,
        "SELECT *, pixel_sha256 AS source_sha256 FROM scans WHERE dataset = ? "
        "ORDER BY subject, time_index NULLS LAST, view, slice, frame, scan_id",
        [dataset],
    )
    if units.num_rows == 0:
        raise DatasetError(f"Dataset {dataset!r} has no scans in {store.root}; ingest it first.")
    return units


def pair_units(store: Store, dataset: str, reference_mode: str) -> pa.Table:
    """Pairs of ``dataset`` with ``reference_mode`` joined to both scans.

    Columns: every ``pairs`` column, ``ref_*`` / ``cmp_*`` copies of the path, frame, pixel hash,
    window and size of each scan, and ``source_sha256`` combining both pixel hashes.
    """
    _require(store, "pairs", dataset)
    units = _run(
        store,
        """
        SELECT p.*,
               r.path AS ref_path, r.frame AS ref_frame, r.pixel_sha256 AS ref_pixel_sha256,
               r.window_center AS ref_window_center, r.window_width AS ref_window_width,
               r.rows AS ref_rows, r.cols AS ref_cols, r.time_index AS ref_time_index,
               c.path AS cmp_path, c.frame AS cmp_frame, c.pixel_sha256 AS cmp_pixel_sha256,
               c.window_center AS cmp_window_center, c.window_width AS cmp_window_width,
               c.rows AS cmp_rows, c.cols AS cmp_cols, c.view AS view, c.slice AS slice
        FROM pairs p
        JOIN scans r ON r.scan_id = p.reference_scan_id
        JOIN scans c ON c.scan_id = p.comparison_scan_id
        WHERE p.dataset = ? AND p.reference_mode = ?
        ORDER BY p.subject, p.time_index NULLS LAST, c.slice, p.pair_id
        """,
        [dataset, reference_mode],
    )
    if units.num_rows == 0:
        raise DatasetError(
            f"Dataset {dataset!r} has no {reference_mode!r} pairs in {store.root}. Its layout may not "
            "define pairs of that mode: see 'python cli.py sql \"SELECT reference_mode, count(*) FROM "
            "pairs GROUP BY 1\"'."
        )
    hashes = [
        combine_hashes(a, b)
        for a, b in zip(units.column("ref_pixel_sha256").to_pylist(), units.column("cmp_pixel_sha256").to_pylist())
    ]
    return units.append_column("source_sha256", pa.array(hashes, type=pa.string()))


def specimen_units(store: Store, dataset: str) -> pa.Table:
    """One unit per specimen and time point (multiview): ``specimen_id``, the member scans by view.

    Columns: ``specimen_id`` (sha of subject and time), ``subject``, ``time_index``, ``scan_ids``,
    ``views``, ``paths``, ``frames`` (lists, ordered by view then scan_id), ``source_sha256``.
    """
    _require(store, "scans", dataset)
    units = _run(
        store,
        """
        SELECT sha256(subject || chr(0) || coalesce(CAST(time_index AS VARCHAR), '')) [1:32] AS specimen_id,
               subject, time_index,
               list(scan_id ORDER BY view, scan_id) AS scan_ids,
               list(view ORDER BY view, scan_id) AS views,
               list(path ORDER BY view, scan_id) AS paths,
               list(frame ORDER BY view, scan_id) AS frames,
               list(pixel_sha256 ORDER BY view, scan_id) AS pixel_sha256s,
               any_value(label) AS label
        FROM scans WHERE dataset = ?
        GROUP BY subject, time_index
        ORDER BY subject, time_index NULLS LAST
        """,
        [dataset],
    )
    if units.num_rows == 0:
        raise DatasetError(f"Dataset {dataset!r} has no scans in {store.root}; ingest it first.")
    hashes = [combine_hashes(*h) for h in units.column("pixel_sha256s").to_pylist()]
    return units.append_column("source_sha256", pa.array(hashes, type=pa.string()))
