"""Loading side of feature sets: units (scans, pairs, specimens) and their feature rows from the store.

``load_units`` reads the rows a model is fitted on — one per scan, pair or specimen of a dataset, with
the subject (for grouping), the time index and every label column. ``load_feature_set`` joins stored
feature tables to those units through DuckDB on the key AND ``source_sha256`` = the units' current
pixel hash (for pairs ``combine_hashes(ref_pixel_sha256, cmp_pixel_sha256)``, for specimens the hash of
their scans' pixel hashes), so rows computed from older pixels never enter; embeddings arrive as Arrow
lists and become one float32 matrix through the values buffer (``features.sets.column_to_matrix``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import DatasetError, EvaluationError, TableNotFoundError
from features.sets import (
    KEY_COLUMNS,
    UNIT_OF_KEY,
    Block,
    FeatureSet,
    column_to_matrix,
    feature_columns,
)
from store.layout import TABLE_NAME_PATTERN, Store
from store.sql import connect, relation_to_arrow
from store.tables import (
    PARAMS_HASH_KEY,
    PART_GLOB,
    list_tables,
    part_kv_metadata,
    require_readable,
    table_exists,
    table_kv_metadata,
    table_parts,
)
from store.units import (
    MEMBER_HASHES,
    SCAN_SOURCE,
    SPECIMEN_ID,
    UNIT_KINDS,
    read_units,
    unit_sql,
    with_source_sha256,
)
from store.volumes import volume_pair_label_units

__all__ = [
    "RESERVED_TABLES",
    "UNITS",
    "FeatureTableInfo",
    "LoadedFeatureSet",
    "feature_tables",
    "datasets_with_features",
    "load_units",
    "load_feature_set",
    "load_matrix",
    "unit_key",
]

RESERVED_TABLES = frozenset({"scans", "pairs", "failures", "datasets", "runs", "metrics", "predictions", "volumes",
                             "volume_pairs"})
UNITS = UNIT_KINDS
_KEY_OF_UNIT = {unit: key for key, unit in UNIT_OF_KEY.items()}


def unit_key(unit: str) -> str:
    """The key column of a unit: scans -> scan_id, pairs -> pair_id, specimens -> specimen_id."""
    return _KEY_OF_UNIT[unit]


@dataclass(frozen=True)
class FeatureTableInfo:
    """A feature table: name, key column, feature columns, configuration hash, row count, datasets."""

    name: str
    key: str
    columns: tuple[str, ...]
    params_hash: str | None
    rows: int
    datasets: frozenset = field(default_factory=frozenset)

    @property
    def unit(self) -> str:
        """The unit a row of this table describes: scans, pairs or specimens."""
        return UNIT_OF_KEY[self.key]


def feature_tables(store: Store) -> dict[str, FeatureTableInfo]:
    """Every feature table of the store (a key column, ``source_sha256`` and numeric feature columns).

    ``datasets`` comes from the parts' ``chronofeat.dataset`` metadata written by the extraction runner.
    Only readable parts are looked at here (a damaged part is named when its table is loaded).
    """
    found = {}
    for info in list_tables(store):
        if info.name in RESERVED_TABLES or info.schema is None:
            continue
        names = info.schema.names
        key = next((k for k in KEY_COLUMNS if k in names), None)
        columns = feature_columns(info.schema)
        if key is None or "source_sha256" not in names or not columns:
            continue
        datasets = set()
        for part in table_parts(store, info.name):
            if part in info.damaged:
                continue
            value = part_kv_metadata(part).get("chronofeat.dataset")
            if value:
                datasets.add(value)
        found[info.name] = FeatureTableInfo(
            info.name, key, tuple(columns), table_kv_metadata(store, info.name, skip_damaged=True).get(PARAMS_HASH_KEY),
            info.rows, frozenset(datasets),
        )
    return found


def datasets_with_features(store: Store) -> dict[str, list[str]]:
    """Datasets of ``scans`` that have at least one feature table, mapped to those tables' names."""
    if not table_exists(store, "scans"):
        return {}
    tables = feature_tables(store)
    con = connect(store)
    try:
        datasets = [r[0] for r in con.execute("SELECT DISTINCT dataset FROM scans ORDER BY 1").fetchall()]
        out: dict[str, list[str]] = {d: [] for d in datasets}
        for name, info in sorted(tables.items()):
            named = set(info.datasets)
            if not named:  # parts without dataset metadata: ask the data
                if info.key == "scan_id":
                    sql = f'SELECT DISTINCT s.dataset FROM scans s JOIN "{name}" f ON f.scan_id = s.scan_id'
                elif info.key == "pair_id" and table_exists(store, "pairs"):
                    sql = f'SELECT DISTINCT p.dataset FROM pairs p JOIN "{name}" f ON f.pair_id = p.pair_id'
                else:
                    sql = (
                        f"SELECT DISTINCT s.dataset FROM (SELECT dataset, {SPECIMEN_ID} AS specimen_id FROM scans) s "
                        f'JOIN "{name}" f ON f.specimen_id = s.specimen_id'
                    )
                named = {r[0] for r in con.execute(sql).fetchall()}
            for dataset in named & set(out):
                out[dataset].append(name)
    finally:
        con.close()
    return {d: t for d, t in out.items() if t}


def _columns_of(store: Store, table: str) -> list[str]:
    for info in list_tables(store):
        if info.name == table and info.schema is not None:
            return info.schema.names
    return []


# Scan columns that are no labels: pairs take the rest from their comparison scan, specimens any member's.
_SCAN_CORE = frozenset({"scan_id", "pixel_sha256", "dataset", "subject", "time_index", "days_from_baseline", "path",
                        "frame", "rows", "cols", "channels", "window_center", "window_width", "modality"})


def _require_tables(store: Store, dataset: str, unit: str) -> None:
    needed = {"pairs": "pairs", "volumes": "volumes"}.get(unit, "scans")
    for table in ("scans", needed):
        if not table_exists(store, table):
            raise DatasetError(
                f"The store {store.root} has no {table!r} table; run 'python cli.py ingest --dataset {dataset}' first."
            )
        require_readable(store, table)


def _scan_label_units(con, store: Store, dataset: str, reference_mode: str | None) -> pa.Table:
    sql = unit_sql("scans", f"scan_id AS key, {SCAN_SOURCE}, *", order="subject, time_index NULLS LAST, scan_id")
    return read_units(con, sql, [dataset])


def _pair_label_units(con, store: Store, dataset: str, reference_mode: str | None) -> pa.Table:
    scan_cols = _columns_of(store, "scans")
    pair_cols = _columns_of(store, "pairs")
    extra = [c for c in scan_cols if c not in pair_cols and c not in _SCAN_CORE]
    shared_labels = [c for c in ("label", "split") if c in pair_cols and c in scan_cols]
    select_extra = "".join(f', c."{c}"' for c in extra)
    select_shared = "".join(f', coalesce(p."{c}", c."{c}") AS "{c}"' for c in shared_labels)
    exclude = f"EXCLUDE ({', '.join(shared_labels)})" if shared_labels else ""
    select = (f"p.pair_id AS key, p.* {exclude} {select_shared}, "
              f"r.pixel_sha256 AS ref_pixel_sha256, c.pixel_sha256 AS cmp_pixel_sha256 {select_extra}")
    sql = unit_sql("pairs", select, by_mode=bool(reference_mode), order="p.subject, p.time_index NULLS LAST, p.pair_id")
    units = with_source_sha256(read_units(con, sql, [dataset] + ([reference_mode] if reference_mode else [])), "pairs")
    volume_pairs = volume_pair_label_units(store, dataset, reference_mode)  # 3-D pairs (store.volumes) too
    return pa.concat_tables([units, volume_pairs], promote_options="default") if volume_pairs.num_rows else units


def _specimen_label_units(con, store: Store, dataset: str, reference_mode: str | None) -> pa.Table:
    skip = _SCAN_CORE | {"slice", "view"}
    labels = "".join(f', any_value("{c}") AS "{c}"' for c in _columns_of(store, "scans") if c not in skip)
    units = read_units(con, unit_sql("specimens", MEMBER_HASHES + labels, key="key"), [dataset])
    return with_source_sha256(units, "specimens")


def _volume_label_units(con, store: Store, dataset: str, reference_mode: str | None) -> pa.Table:
    sql = unit_sql("volumes", "volume_id AS key, pixel_sha256 AS source_sha256, *",
                   order="subject, time_index NULLS LAST, volume_id")
    return read_units(con, sql, [dataset])


_LABEL_UNITS = {"scans": _scan_label_units, "pairs": _pair_label_units, "specimens": _specimen_label_units,
                "volumes": _volume_label_units}


def load_units(store: Store, dataset: str, unit: str, *, reference_mode: str | None = None) -> pa.Table:
    """The units of ``dataset``: one row per scan, pair (of ``reference_mode``, all when None) or specimen.

    Columns: ``key`` (scan_id / pair_id / specimen_id), ``subject``, ``time_index``, ``source_sha256``,
    every label column (``label``, ``labels``, dataset-specific ones, ``split`` if present); pairs add
    ``reference_scan_id``, ``comparison_scan_id``, ``ref_pixel_sha256``, ``cmp_pixel_sha256`` and take
    label columns the pairs table lacks from the comparison scan (``label`` falls back to it when null).
    Ordered by subject, time and key, so results do not depend on the order of parts on disk. The units
    and their ``source_sha256`` are those of ``store.units`` (the extractors' units).
    """
    if unit not in UNITS:
        raise DatasetError(f"Unknown unit {unit!r}; use one of {', '.join(UNITS)}.")
    _require_tables(store, dataset, unit)
    con = connect(store)
    try:
        units = _LABEL_UNITS[unit](con, store, dataset, reference_mode)
    finally:
        con.close()
    if units.num_rows == 0:
        what = f"{reference_mode!r} pairs" if unit == "pairs" and reference_mode else unit
        raise DatasetError(f"Dataset {dataset!r} has no {what} in {store.root}. Ingest it first, or check the name "
                           "('python cli.py sql \"SELECT dataset, count(*) FROM scans GROUP BY 1\"').")
    return units


def _connect_table(store: Store, table: str, threads: int | None):
    """A DuckDB connection with a view of ``table`` only (``store.sql.connect`` opens every table's footers).

    ``DamagedPartError`` first when a part of ``table`` cannot be read.
    """
    import duckdb

    require_readable(store, table)
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    pattern = str(store.table_dir(table) / PART_GLOB).replace("'", "''")
    con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM read_parquet(\'{pattern}\', union_by_name = true)')
    return con


def load_matrix(store: Store, table: str, key: str, columns: list[str], wanted: pa.Table | None = None,
                *, threads: int | None = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows of feature ``table`` as (keys, float32 matrix, rows dropped as duplicates).

    With ``wanted`` (Arrow table ``k``, ``h``), only rows whose key and ``source_sha256`` match one
    of its rows are read (DuckDB join). The matrix is the feature ``columns`` side by side. With one
    DuckDB thread (the default) the result is a single Arrow chunk, so an embedding column becomes
    the matrix by reshaping its values buffer, with no copy at all; more threads decode Parquet in
    parallel but return several chunks that must be joined (one copy) — see bench/fit.py.
    """
    con = _connect_table(store, table, threads)
    try:
        cols = ", ".join(f'f."{c}"' for c in columns)
        if wanted is None:
            result = relation_to_arrow(con.sql(f'SELECT f."{key}" AS k, {cols} FROM "{table}" f'))
        else:
            con.register("wanted", wanted)
            result = relation_to_arrow(
                con.sql(
                    f'SELECT f."{key}" AS k, {cols} FROM "{table}" f '
                    f'JOIN wanted w ON f."{key}" = w.k AND f.source_sha256 = w.h'
                )
            )
    finally:
        con.close()
    blocks = []
    for name in columns:
        try:
            blocks.append(column_to_matrix(result.column(name), name=f"{table}.{name}"))
        except ValueError as exc:
            raise EvaluationError(
                f"Feature table {table!r} cannot be used: {exc} Re-run its extraction (delete the table first) "
                "or leave it out of --features."
            ) from None
    matrix = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
    if len(blocks) and matrix.shape[0] == 0:
        matrix = np.zeros((0, sum(b.shape[1] for b in blocks)), dtype=np.float32)
    key_column = result.column("k")
    keys = np.asarray(key_column.to_numpy(zero_copy_only=False), dtype=object)
    duplicates = len(keys) - (pc.count_distinct(key_column).as_py() if len(keys) else 0)
    if duplicates:  # an interrupted-and-rerun extraction can leave a row twice: keep the first
        first = pa.table({"k": key_column, "i": pa.array(np.arange(len(keys)))}).group_by("k", use_threads=False) \
            .aggregate([("i", "min")]).column("i_min").to_numpy()
        first = np.sort(first)
        keys, matrix = keys[first], matrix[first]
    return keys, matrix, duplicates


@dataclass
class LoadedFeatureSet:
    """A feature set loaded for some units: blocks (per term), time index, which units have every feature."""

    feature_set: FeatureSet
    blocks: list[Block]
    time: np.ndarray | None
    present: np.ndarray  # bool per unit
    table_hashes: dict[str, str | None]
    stale: dict[str, int]  # per table: units whose key is stored but from other pixels
    width: int
    nonfinite: dict[str, int] = field(default_factory=dict)  # per table: stored rows with NaN / inf features


def _wanted(keys, hashes) -> pa.Table:
    table = pa.table({"k": pa.array(keys, pa.string()), "h": pa.array(hashes, pa.string())})
    return table.group_by(["k", "h"]).aggregate([])


def load_feature_set(store: Store, feature_set: FeatureSet, units: pa.Table, unit: str,
                     *, tables: dict[str, FeatureTableInfo] | None = None) -> LoadedFeatureSet:
    """Load ``feature_set`` for ``units`` (from ``load_units``): one ``Block`` per term.

    A term's table must exist (``TableNotFoundError`` listing the feature tables otherwise) and fit the
    unit: a per-image (scan_id) table needs a pair mode for pairs; a table keyed like the unit is used
    as stored. Units without a current feature row are marked absent in ``present``.
    """
    tables = feature_tables(store) if tables is None else tables
    n = units.num_rows
    present = np.ones(n, dtype=bool)
    blocks, hashes, stale, nonfinite = [], {}, {}, {}
    unit_key_column = unit_key(unit)
    for term in feature_set.terms:
        info = tables.get(term.table)
        if info is None:
            if TABLE_NAME_PATTERN.match(term.table):
                require_readable(store, term.table)  # a table whose every part is damaged is named as such
            known = ", ".join(sorted(tables)) or "none yet"
            raise TableNotFoundError(
                f"Feature table {term.table!r} does not exist in {store.root} (feature tables: {known}). "
                "Run 'python cli.py extract --extractor ... --dataset ...' "
                "to compute it, or choose another --features."
            )
        hashes[term.table] = info.params_hash
        if term.mode is not None:
            if info.key != "scan_id" or unit != "pairs":
                raise EvaluationError(
                    f"Feature term {term}: a pair mode ({term.mode}) turns a per-image table into pair rows, but "
                    f"{term.table!r} is keyed by {info.key} and the target unit is {unit}. Use {term.table!r} "
                    "without ':MODE'" + (" (it is keyed like the unit)" if info.key == unit_key_column else "") + "."
                )
            ref_ids = units.column("reference_scan_id").to_numpy(zero_copy_only=False)
            cmp_ids = units.column("comparison_scan_id").to_numpy(zero_copy_only=False)
            ref_h = units.column("ref_pixel_sha256").to_numpy(zero_copy_only=False)
            cmp_h = units.column("cmp_pixel_sha256").to_numpy(zero_copy_only=False)
            wanted = _wanted(np.concatenate([ref_ids, cmp_ids]), np.concatenate([ref_h, cmp_h]))
            keys, matrix, _ = load_matrix(store, term.table, "scan_id", list(info.columns), wanted)
            position = _finite_positions(keys, matrix, term.table, nonfinite)
            ref_index = np.array([position.get(k, -1) for k in ref_ids], dtype=np.int64)
            cmp_index = np.array([position.get(k, -1) for k in cmp_ids], dtype=np.int64)
            ok = (ref_index >= 0) & (cmp_index >= 0)
            all_keys = np.concatenate([ref_ids, cmp_ids])
            stale[term.table] = _count_stale(
                store, term.table, "scan_id", all_keys, set(keys.tolist()), pair_rows=(ref_ids, cmp_ids)
            )
            blocks.append(Block(str(term), matrix, np.where(ok, cmp_index, 0), np.where(ok, ref_index, 0), term.mode))
        else:
            if info.key != unit_key_column:
                hint = (
                    f"Add a pair mode, e.g. '{term.table}:diff' or '{term.table}:concat'."
                    if info.key == "scan_id" and unit == "pairs"
                    else "Choose a feature table keyed like the target unit, or another --target/--features."
                )
                raise EvaluationError(
                    f"Feature table {term.table!r} is keyed by {info.key} "
                    f"but the target unit is {unit} ({unit_key_column}). {hint}"
                )
            keys_u = units.column("key").to_numpy(zero_copy_only=False)
            wanted = _wanted(keys_u, units.column("source_sha256").to_numpy(zero_copy_only=False))
            keys, matrix, _ = load_matrix(store, term.table, info.key, list(info.columns), wanted)
            position = _finite_positions(keys, matrix, term.table, nonfinite)
            index = np.array([position.get(k, -1) for k in keys_u], dtype=np.int64)
            ok = index >= 0
            stale[term.table] = _count_stale(store, term.table, info.key, keys_u, set(keys.tolist()))
            blocks.append(Block(str(term), matrix, np.where(ok, index, 0)))
        present &= ok
    time = None
    if feature_set.time:
        column = units.column("time_index")
        if column.null_count:
            raise EvaluationError(
                f"Feature set {feature_set} uses 'time' but {column.null_count} {unit} have no time index. "
                "Drop '+time' or fix the dataset's dates / weeks."
            )
        time = column.to_numpy(zero_copy_only=False).astype(np.float32)
    width = sum(b.width for b in blocks) + (1 if time is not None else 0)
    return LoadedFeatureSet(feature_set, blocks, time, present, hashes, stale, width, nonfinite)


def _finite_positions(keys: np.ndarray, matrix: np.ndarray, table: str, nonfinite: dict) -> dict:
    """Key -> row of ``matrix``, leaving out rows with a NaN or infinite feature (counted in ``nonfinite``)."""
    finite = np.isfinite(matrix).all(axis=1) if matrix.size else np.ones(len(keys), dtype=bool)
    nonfinite[table] = int((~finite).sum())
    if finite.all():
        return {k: i for i, k in enumerate(keys)}
    return {k: i for i, (k, ok) in enumerate(zip(keys, finite, strict=True)) if ok}


def _count_stale(store: Store, table: str, key: str, wanted_keys, found: set, pair_rows=None) -> int:
    """How many units have a row in ``table`` for their key but computed from other pixels."""
    missing = {k for k in np.asarray(wanted_keys).tolist() if k not in found}
    if not missing:
        return 0
    con = _connect_table(store, table, None)
    try:
        con.register("missing", pa.table({"k": pa.array(sorted(missing), pa.string())}))
        stored = {
            r[0]
            for r in con.execute(
                f'SELECT DISTINCT f."{key}" FROM "{table}" f JOIN missing m ON f."{key}" = m.k'
            ).fetchall()
        }
    finally:
        con.close()
    if pair_rows is None:
        return len(stored)
    ref_ids, cmp_ids = pair_rows
    return int(sum(1 for a, b in zip(ref_ids, cmp_ids, strict=True) if a in stored or b in stored))
