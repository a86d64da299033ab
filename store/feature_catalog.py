"""Logical feature names: which stored tables are variants of one feature, and which one a name means.

A feature table's name spells its whole configuration (``inception_v3_random_bf16``), so a name written
once (a profile default, a README line) stops matching when the precision, the weights or a parameter
changes. Every feature table therefore belongs to a *logical feature* and is one *variant* of it:

- the logical name is the table name without the parts that spell the variant, read from the stored
  part metadata (so tables written before this module existed get one too): for CNN embeddings
  (producer ``extractor:cnn``) ``_random``, ``_bf16`` / ``_fp16`` and the weights / intensity hash go,
  so ``inception_v3_bf16``, ``inception_v3_random`` and ``inception_v3_1a2b3c4d`` (imported weights)
  are variants of ``inception_v3`` — model, input (``_diff_given``, ``_multiview``, ``_specimen_dv``),
  views and layer stay in the name; for handcrafted tables (``sift_bovw50``, ``diffstats_given``,
  ``orb_descriptors``) the configuration hash ``_<8 hex>`` goes (``sift_bovw50_1a2b3c4d`` is a
  tf-idf variant of ``sift_bovw50``); trained networks (``siamese_<artifact>``, ``cae_<artifact>``)
  are variants of ``siamese`` / ``cae`` (``cae_multiview``) told apart by their trained weights;
  a table without extractor metadata is its own logical feature;
- the variant is the weights identity (``pretrained``, ``imported:<id>``, ``file:<sha>``,
  ``trained:<artifact>``, ``random``, ``none`` for handcrafted features, ``unknown``), the precision and
  the configuration hash.

``FeatureCatalog.resolve(name)`` turns a feature-set token into one table. A name that is no logical
feature is an exact table name and is used as it is (random weights included: naming the table is
naming them). A logical name resolves to one of its variants with non-random weights, any precision:
the one whose rows cover the most current units of the dataset; on a tie the table named exactly like
the feature wins (``inception_v3`` over ``inception_v3_bf16``), otherwise the name is ambiguous and
``AmbiguousNameError`` lists the tables to choose from. Random-weights variants are never chosen for a
logical name. Each resolution carries the sentence that says which table was chosen and why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import AmbiguousNameError, TableNotFoundError
from features.sets import UNIT_OF_KEY, FeatureSet, FeatureTerm
from store.featureset import FeatureTableInfo, feature_tables, load_units, unit_key
from store.layout import Store
from store.tables import part_kv_metadata, require_readable, table_kv_metadata, table_parts

__all__ = [
    "Variant",
    "Resolution",
    "FeatureCatalog",
    "logical_name_of",
    "variant_of",
    "features_overview",
]

_HASH_SUFFIX = re.compile(r"_[0-9a-f]{8}$")
_TRAINED = ("siamese", "cae")
_HANDCRAFTED = ("bovw", "diffstats", "descriptors")


@dataclass(frozen=True)
class Variant:
    """One stored feature table seen as a variant of a logical feature (see the module docstring)."""

    table: str
    logical: str
    family: str  # producer without 'extractor:' (cnn, bovw, diffstats, siamese, cae, ...), '' when unknown
    weights: str  # pretrained | imported:<id> | file:<sha> | trained:<artifact> | random | none | unknown
    precision: str  # fp32 | bf16 | fp16 for networks, '' otherwise
    params_hash: str | None
    key: str
    rows: int
    rows_by_dataset: dict = field(default_factory=dict, compare=False, hash=False)
    producer: str = ""
    code_version: str = ""
    weights_source: str = ""  # where the tensors came from (``imported 87c8dc2cd0fe``, ``hub ...``), when recorded

    @property
    def random(self) -> bool:
        """True for random (untrained) weights: such a variant is used only when its table is named."""
        return self.weights == "random"

    def describe(self) -> str:
        """Weights and precision in words: ``pretrained, bf16``; ``handcrafted``; ``random weights, fp32``."""
        weights = {"none": "handcrafted", "random": "random weights", "unknown": "weights unknown"}.get(
            self.weights, self.weights)
        return ", ".join(p for p in (weights, self.precision) if p)


def _params(meta: dict) -> dict:
    try:
        value = json.loads(meta.get("chronofeat.params", "{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) and len(name) > len(suffix) else name


def _cnn_logical(table: str, params: dict) -> str:
    """``table`` without the parts ``extractors.cnn`` adds for weights, precision and unnamed settings."""
    name = table
    if _HASH_SUFFIX.search(name) and (
        params.get("weights") not in ("pretrained", "random")
        or params.get("intensity") not in ("auto", "composite")
        or len(name) >= 60
    ):
        name = name[:-9]
    name = _strip(name, f"_{params.get('precision')}") if params.get("precision") in ("bf16", "fp16") else name
    return _strip(name, "_random") if params.get("weights") == "random" else name


def logical_name_of(table: str, meta: dict, *, key: str = "scan_id") -> str:
    """The logical feature of table ``table`` whose newest part carries ``meta`` (``chronofeat.*`` keys).

    ``key`` (the table's key column) separates trained networks on specimens (``cae_multiview``).
    """
    family = meta.get("chronofeat.producer", "").removeprefix("extractor:")
    params = _params(meta)
    if family == "cnn":
        return _cnn_logical(table, params)
    if family in _TRAINED:
        return family + ("_multiview" if key == "specimen_id" else "")
    recorded = meta.get("chronofeat.params_hash") or ""
    if family and recorded and table.endswith(f"_{recorded[:8]}"):
        return _strip(table, f"_{recorded[:8]}")
    return table


def _weights_of(family: str, params: dict, meta: dict) -> str:
    if family == "cnn":
        weights = str(params.get("weights", "unknown"))
        if weights.startswith("artifact:"):
            return "imported:" + weights.split(":", 1)[1][:12]
        if weights.startswith("file:"):
            return "file:" + weights.split(":", 1)[1][:12]
        return weights
    if family in _TRAINED:
        artifact = (params.get("params") or {}).get("artifact") if isinstance(params.get("params"), dict) else None
        return f"trained:{artifact}" if artifact else "trained"
    return "none" if family in _HANDCRAFTED else "unknown"


def _weights_source(meta: dict) -> str:
    try:
        recorded = json.loads(meta.get("chronofeat.weights", "{}"))
    except ValueError:
        return ""
    if not isinstance(recorded, dict) or not recorded.get("source"):
        return ""
    origin = recorded.get("artifact") or recorded.get("hub") or recorded.get("file") or ""
    tensors = recorded.get("tensor_sha256") or ""
    return " ".join(p for p in (str(recorded["source"]), str(origin)[:12], f"tensors {tensors[:12]}" if tensors else "")
                    if p)


def variant_of(info: FeatureTableInfo, meta: dict, rows_by_dataset: dict | None = None) -> Variant:
    """The ``Variant`` of feature table ``info`` from its newest part's metadata ``meta``."""
    family = meta.get("chronofeat.producer", "").removeprefix("extractor:")
    params = _params(meta)
    precision = str(params.get("precision", "")) if family == "cnn" else ""
    return Variant(
        table=info.name, logical=logical_name_of(info.name, meta, key=info.key), family=family,
        weights=_weights_of(family, params, meta), precision=precision, params_hash=info.params_hash, key=info.key,
        rows=info.rows, rows_by_dataset=dict(rows_by_dataset or {}), producer=meta.get("chronofeat.producer", ""),
        code_version=meta.get("chronofeat.code_version", ""), weights_source=_weights_source(meta),
    )


def _rows_by_dataset(store: Store, table: str) -> dict:
    """Rows per ``chronofeat.dataset`` of the readable parts of ``table`` ('' for parts without one)."""
    out: dict = {}
    for part in table_parts(store, table):
        try:
            rows = pq.ParquetFile(part).metadata.num_rows
        except Exception:  # noqa: BLE001 - a damaged part is named when the table is loaded
            continue
        dataset = part_kv_metadata(part).get("chronofeat.dataset", "")
        out[dataset] = out.get(dataset, 0) + rows
    return out


@dataclass(frozen=True)
class Resolution:
    """What a feature-set name resolved to: the table, its variant, coverage, and why it was chosen."""

    name: str
    table: str
    variant: Variant
    covered: int
    total: int
    unit: str
    how: str  # 'exact' | 'logical'
    others: tuple = ()  # (Variant, covered) of the variants not chosen, random ones included

    def sentence(self, mode: str | None = None) -> str:
        """``inception_v3:diff -> table inception_v3_bf16 (pretrained, bf16, covers 360/360 scans)``."""
        term = self.name + (f":{mode}" if mode else "")
        what = self.variant.describe()
        if self.how == "exact" and self.variant.logical != self.table:
            what = f"exact table name; {what}"
        text = f"{term} -> table {self.table} ({what}, covers {self.covered}/{self.total} {self.unit})"
        passed = [f"{v.table} ({'random weights, named only' if v.random else f'covers {c}/{self.total}'})"
                  for v, c in self.others]
        return text + (f"; not chosen: {', '.join(passed)}" if passed and self.how == "logical" else "")


class FeatureCatalog:
    """The store's feature tables grouped by logical feature, resolving names for one ``dataset``.

    ``tables`` (``store.featureset.feature_tables``) is read when not given. Coverage (rows whose key and
    source hash match a current unit of ``dataset``) is computed only for the tables a resolution compares.
    """

    def __init__(self, store: Store, dataset: str | None = None, tables: dict | None = None) -> None:
        self.store, self.dataset = store, dataset
        self.tables = feature_tables(store) if tables is None else tables
        self.variants = {
            name: variant_of(info, table_kv_metadata(store, name, skip_damaged=True), _rows_by_dataset(store, name))
            for name, info in sorted(self.tables.items())
        }
        self._units: dict = {}
        self._coverage: dict = {}

    def logical(self) -> dict[str, list[Variant]]:
        """Logical feature -> its variants (sorted by table name), every dataset."""
        out: dict[str, list[Variant]] = {}
        for variant in self.variants.values():
            out.setdefault(variant.logical, []).append(variant)
        return dict(sorted(out.items()))

    def _ours(self, variant: Variant) -> bool:
        named = self.tables[variant.table].datasets
        return self.dataset is None or not named or self.dataset in named

    def variants_of(self, logical: str, *, key: str | None = None) -> list[Variant]:
        """The variants of ``logical`` with rows for this catalog's dataset (keyed by ``key`` when given)."""
        return [v for v in self.logical().get(logical, []) if self._ours(v) and (key is None or v.key == key)]

    def unit_total(self, key: str) -> int:
        """How many units of the dataset a table keyed by ``key`` can cover (0 without a dataset)."""
        return self._unit_keys(key).num_rows

    def _unit_keys(self, key: str) -> pa.Table:
        if key not in self._units:
            if self.dataset is None:
                self._units[key] = pa.table({"k": pa.array([], pa.string()), "h": pa.array([], pa.string())})
            else:
                units = load_units(self.store, self.dataset, UNIT_OF_KEY[key])
                self._units[key] = pa.table({"k": units.column("key"), "h": units.column("source_sha256")})
        return self._units[key]

    def coverage(self, table: str) -> int:
        """Units of the dataset with a current row (key and source hash) in ``table``."""
        if table not in self._coverage:
            import duckdb

            require_readable(self.store, table)  # DamagedPartError naming the part, as loading would
            key = self.tables[table].key
            wanted = self._unit_keys(key)
            parts = [str(p) for p in table_parts(self.store, table)]
            con = duckdb.connect(":memory:")
            try:
                con.register("wanted", wanted)
                found = con.execute(
                    f'SELECT count(DISTINCT f."{key}") FROM read_parquet(?, union_by_name = true) f '
                    f'JOIN wanted w ON f."{key}" = w.k AND f.source_sha256 = w.h', [parts]
                ).fetchone()[0]
            finally:
                con.close()
            self._coverage[table] = int(found)
        return self._coverage[table]

    def _resolution(self, name: str, variant: Variant, how: str, others=()) -> Resolution:
        unit = UNIT_OF_KEY[variant.key]
        return Resolution(name, variant.table, variant, self.coverage(variant.table), self.unit_total(variant.key),
                          unit, how, tuple(others))

    def resolve(self, name: str, *, key: str | None = None) -> Resolution:
        """The table feature-set name ``name`` means (see the module docstring), keyed by ``key`` when given.

        Raises ``TableNotFoundError`` (nothing by that name, or only random-weights variants) and
        ``AmbiguousNameError`` (several variants cover equally many units), each listing the choices.
        """
        variants = self.variants_of(name, key=key)
        usable = [v for v in variants if not v.random]
        if not usable:
            return self._exact(name, variants)
        ranked = sorted(usable, key=lambda v: (-self.coverage(v.table), v.table != name, v.table))
        best = self.coverage(ranked[0].table)
        tied = [v for v in ranked if self.coverage(v.table) == best]
        if len(tied) > 1 and tied[0].table != name:
            raise AmbiguousNameError(self._ambiguous_text(name, tied))
        if best == 0 and self.dataset is not None and name not in self.variants:
            raise TableNotFoundError(
                f"Feature {name!r} has no current rows for dataset {self.dataset!r} in any of its tables "
                f"({', '.join(v.table for v in usable)}). Run the extraction for this dataset first."
            )
        chosen = ranked[0]
        others = [(v, self.coverage(v.table)) for v in ranked[1:]] + [(v, 0) for v in variants if v.random]
        return self._resolution(name, chosen, "logical" if chosen.table != name or len(variants) > 1 else "exact",
                                others)

    def _exact(self, name: str, variants: list[Variant]) -> Resolution:
        """``name`` as an exact table when no non-random variant of a logical ``name`` exists (else the error).

        An exact table is returned whatever its key: loading it says why a key does not fit the unit.
        """
        if name in self.variants:
            return self._resolution(name, self.variants[name], "exact")
        if not variants:
            raise TableNotFoundError(self._missing_text(name))
        tables = ", ".join(v.table for v in variants)
        raise TableNotFoundError(
            f"Feature {name!r} has only random-weights tables ({tables}): random weights are used only when "
            f"their table is named. Name one of them, or extract {name} with pretrained or imported weights."
        )

    def _ambiguous_text(self, name: str, tied: list[Variant]) -> str:
        total = self.unit_total(tied[0].key)
        listed = "; ".join(f"{v.table} ({v.describe()}, params {(v.params_hash or '-')[:8]}, covers "
                           f"{self.coverage(v.table)}/{total})" for v in tied)
        return (f"Feature name {name!r} is ambiguous for dataset {self.dataset!r}: {len(tied)} tables cover equally "
                f"many units: {listed}. Name the table you mean instead (e.g. '{tied[0].table}'), or remove the "
                "tables you do not want.")

    def _missing_text(self, name: str) -> str:
        known = ", ".join(sorted(self.tables)) or "none yet"
        logical = ", ".join(n for n in self.logical() if n not in self.tables) or "none beyond the tables"
        return (f"Feature table {name!r} does not exist in {self.store.root} (feature tables: {known}; other "
                f"logical feature names: {logical}). Run 'python cli.py extract --extractor ... --dataset ...' to "
                "compute it, or name an existing table or feature ('python cli.py features' lists them).")

    def resolve_set(self, feature_set: FeatureSet, *, unit: str | None = None) -> tuple[FeatureSet, list[Resolution]]:
        """``feature_set`` with every term's name resolved to a table, and the resolutions in term order.

        A term with a pair mode resolves among per-image (``scan_id``) tables; without one among tables
        keyed like ``unit`` when given (any key otherwise).
        """
        terms, resolutions = [], []
        for term in feature_set.terms:
            key = "scan_id" if term.mode is not None else (unit_key(unit) if unit else None)
            found = self.resolve(term.table, key=key)
            terms.append(FeatureTerm(found.table, term.mode))
            resolutions.append(found)
        return FeatureSet(tuple(dict.fromkeys(terms)), feature_set.time), resolutions


def _default_table(catalog: FeatureCatalog, logical: str) -> str | None:
    """The table ``logical`` resolves to in ``catalog``; 'ambiguous'; None when it resolves to none."""
    try:
        return catalog.resolve(logical).table
    except AmbiguousNameError:
        return "ambiguous"
    except TableNotFoundError:
        return None


def _overview_row(v: Variant, chosen: str | None) -> dict:
    counts = " ".join(f"{d or '?'}={n}" for d, n in sorted(v.rows_by_dataset.items())) or str(v.rows)
    default = "never (random)" if v.random else ("yes" if chosen == v.table else
                                                  ("ambiguous" if chosen == "ambiguous" else ""))
    provenance = (v.producer, v.weights_source and f"weights {v.weights_source}",
                  v.code_version and f"code {v.code_version}")
    return {
        "feature": v.logical, "table": v.table, "unit": UNIT_OF_KEY[v.key], "weights": v.weights,
        "precision": v.precision or "-", "params_hash": (v.params_hash or "-")[:12], "rows": counts,
        "default": default, "provenance": "; ".join(p for p in provenance if p) or "-",
    }


def features_overview(store: Store, *, dataset: str | None = None) -> pa.Table:
    """One row per feature table, grouped by logical feature: ``feature``, ``table``, ``unit``, ``weights``,
    ``precision``, ``params_hash``, ``rows`` (per dataset, ``crmo=360 spine=120``), ``default`` (with
    ``dataset``: ``yes`` on the variant the logical name resolves to, ``ambiguous`` when it does not resolve;
    ``never (random)`` on random weights), and ``provenance`` (producer, where the weights came from, code
    version). With ``dataset``, only tables with rows for it.
    """
    catalog = FeatureCatalog(store, dataset)
    rows = []
    for logical, variants in catalog.logical().items():
        chosen = _default_table(catalog, logical) if dataset is not None else None
        rows += [_overview_row(v, chosen) for v in variants if dataset is None or v in catalog.variants_of(logical)]
    names = ["feature", "table", "unit", "weights", "precision", "params_hash", "rows", "default", "provenance"]
    return pa.table({n: pa.array([r[n] for r in rows], pa.string()) for n in names})
