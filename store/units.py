"""Work units: what a scan, a pair and a multiview specimen of a dataset are, and their source hash.

One definition serves both sides: the extractors read units with every column they need for pixels
(``scan_units``, ``pair_units``, ``specimen_units``) and ``store.featureset.load_units`` reads the same
units with their labels for fitting. Both build their SQL with ``unit_sql`` (the tables, joins and
grouping of each kind; ``SPECIMEN_ID`` is a specimen's key) and get ``source_sha256`` from
``with_source_sha256`` (a scan's pixel hash; for a pair ``combine_hashes`` of its two scans' pixel
hashes; for a specimen ``combine_hashes`` of its scans' pixel hashes, ordered by view then scan_id).
"""

from __future__ import annotations

import pyarrow as pa

from features.errors import DatasetError
from store.layout import Store
from store.provenance import combine_hashes
from store.sql import connect, relation_to_arrow
from store.tables import table_exists

__all__ = [
    "UNIT_KINDS",
    "SPECIMEN_ID",
    "SCAN_SOURCE",
    "MEMBER_HASHES",
    "unit_sql",
    "read_units",
    "with_source_sha256",
    "scan_units",
    "pair_units",
    "specimen_units",
]

UNIT_KINDS = ("scans", "pairs", "specimens", "volumes")
# A specimen is one subject at one time point (all its views): its key is this hash, 32 hex characters.
SPECIMEN_ID = "sha256(subject || chr(0) || coalesce(CAST(time_index AS VARCHAR), ''))[1:32]"
# A scan's source hash is its pixel hash (select item for scans).
SCAN_SOURCE = "pixel_sha256 AS source_sha256"
# A specimen's member pixel hashes, in the order its source hash combines them (select item for specimens).
MEMBER_HASHES = "list(pixel_sha256 ORDER BY view, scan_id) AS pixel_sha256s"
_PAIRS_FROM = (
    "FROM pairs p JOIN scans r ON r.scan_id = p.reference_scan_id "
    "JOIN scans c ON c.scan_id = p.comparison_scan_id"
)


def unit_sql(unit: str, select: str, *, order: str = "", by_mode: bool = False, key: str = "specimen_id") -> str:
    """The SQL of the ``unit`` rows of one dataset (parameter 1), ``select`` columns, ordered by ``order``.

    scans: ``FROM scans``; pairs: ``FROM pairs p`` joined to the reference scan ``r`` and the comparison
    scan ``c``, of one reference mode (parameter 2) with ``by_mode``; specimens: scans grouped by subject
    and time, the select list starting with ``SPECIMEN_ID AS <key>``, ``subject``, ``time_index`` (and
    ordered by subject and time: ``order`` is not used).
    """
    if unit == "scans":
        return f"SELECT {select} FROM scans WHERE dataset = ? ORDER BY {order}"
    if unit == "pairs":
        mode = " AND p.reference_mode = ?" if by_mode else ""
        return f"SELECT {select} {_PAIRS_FROM} WHERE p.dataset = ?{mode} ORDER BY {order}"
    if unit == "volumes":  # one row per 3-D volume (store.volumes), keyed by volume_id
        return f"SELECT {select} FROM volumes WHERE dataset = ? ORDER BY {order}"
    if unit == "specimens":
        return (
            f"SELECT {SPECIMEN_ID} AS {key}, subject, time_index, {select} FROM scans WHERE dataset = ? "
            "GROUP BY subject, time_index ORDER BY subject, time_index NULLS LAST"
        )
    raise DatasetError(f"Unknown unit {unit!r}; use one of {', '.join(UNIT_KINDS)}.")


def read_units(con, sql: str, params: list) -> pa.Table:
    """The rows of ``sql`` (from ``unit_sql``) on DuckDB connection ``con`` as one Arrow table."""
    return relation_to_arrow(con.sql(sql, params=params or None))


def with_source_sha256(units: pa.Table, unit: str) -> pa.Table:
    """``units`` of pairs (``ref_pixel_sha256``, ``cmp_pixel_sha256``) or specimens (``pixel_sha256s``)
    with ``source_sha256`` appended; scans select theirs with ``SCAN_SOURCE``."""
    if unit == "pairs":
        hashes = [
            combine_hashes(a, b)
            for a, b in zip(units.column("ref_pixel_sha256").to_pylist(), units.column("cmp_pixel_sha256").to_pylist(),
                            strict=True)
        ]
    else:
        hashes = [combine_hashes(*h) for h in units.column("pixel_sha256s").to_pylist()]
    return units.append_column("source_sha256", pa.array(hashes, type=pa.string()))


def _require(store: Store, table: str, dataset: str) -> None:
    if not table_exists(store, table):
        raise DatasetError(
            f"The store {store.root} has no {table!r} table yet. Run 'python cli.py ingest --dataset "
            f"{dataset}' first."
        )


def _run(store: Store, sql: str, params: list) -> pa.Table:
    con = connect(store)
    try:
        return read_units(con, sql, params)
    finally:
        con.close()


def scan_units(store: Store, dataset: str) -> pa.Table:
    """Every scan of ``dataset`` (all ``scans`` columns) plus ``source_sha256`` = ``pixel_sha256``.

    Ordered by subject, time, view, slice so batches read files in a stable order.
    """
    _require(store, "scans", dataset)
    units = _run(
        store,
        unit_sql("scans", f"*, {SCAN_SOURCE}",
                 order="subject, time_index NULLS LAST, view, slice, frame, scan_id"),
        [dataset],
    )
    if units.num_rows == 0:
        raise DatasetError(f"Dataset {dataset!r} has no scans in {store.root}; ingest it first.")
    return units


_PAIR_SCAN_COLUMNS = """
       r.path AS ref_path, r.frame AS ref_frame, r.pixel_sha256 AS ref_pixel_sha256,
       r.window_center AS ref_window_center, r.window_width AS ref_window_width,
       r.rows AS ref_rows, r.cols AS ref_cols, r.time_index AS ref_time_index,
       c.path AS cmp_path, c.frame AS cmp_frame, c.pixel_sha256 AS cmp_pixel_sha256,
       c.window_center AS cmp_window_center, c.window_width AS cmp_window_width,
       c.rows AS cmp_rows, c.cols AS cmp_cols, c.view AS view, c.slice AS slice"""


def pair_units(store: Store, dataset: str, reference_mode: str) -> pa.Table:
    """Pairs of ``dataset`` with ``reference_mode`` joined to both scans.

    Columns: every ``pairs`` column, ``ref_*`` / ``cmp_*`` copies of the path, frame, pixel hash,
    window and size of each scan, and ``source_sha256`` combining both pixel hashes.
    """
    _require(store, "pairs", dataset)
    units = _run(
        store,
        unit_sql("pairs", f"p.*, {_PAIR_SCAN_COLUMNS}", by_mode=True,
                 order="p.subject, p.time_index NULLS LAST, c.slice, p.pair_id"),
        [dataset, reference_mode],
    )
    if units.num_rows == 0:
        raise DatasetError(
            f"Dataset {dataset!r} has no {reference_mode!r} pairs in {store.root}. Its layout may not "
            "define pairs of that mode: see 'python cli.py sql \"SELECT reference_mode, count(*) FROM "
            "pairs GROUP BY 1\"'."
        )
    return with_source_sha256(units, "pairs")


def specimen_units(store: Store, dataset: str) -> pa.Table:
    """One unit per specimen and time point (multiview): ``specimen_id``, the member scans by view.

    Columns: ``specimen_id`` (sha of subject and time), ``subject``, ``time_index``, ``scan_ids``,
    ``views``, ``paths``, ``frames`` (lists, ordered by view then scan_id), ``source_sha256``.
    """
    _require(store, "scans", dataset)
    members = (
        "list(scan_id ORDER BY view, scan_id) AS scan_ids, list(view ORDER BY view, scan_id) AS views, "
        "list(path ORDER BY view, scan_id) AS paths, list(frame ORDER BY view, scan_id) AS frames, "
        f"{MEMBER_HASHES}, any_value(label) AS label"
    )
    units = _run(store, unit_sql("specimens", members), [dataset])
    if units.num_rows == 0:
        raise DatasetError(f"Dataset {dataset!r} has no scans in {store.root}; ingest it first.")
    return with_source_sha256(units, "specimens")
