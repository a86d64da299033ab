"""The contract every registered extractor keeps, checked the same way for each of ``list_extractors()``.

1. Its parameters survive ``sklearn.base.clone`` and rebuilding from ``get_params()`` (same
   configuration, same table); ``__init__`` sets no learned (``*_``) state.
2. Its output is deterministic: two runs on fresh copies of a store give equal tables.
3. What it yields and what lands in the store match ``output_schema()``, which starts with the key
   column and ``source_sha256``; keys and source hashes are those of its work units.
4. Bad input raises the project's errors: an out-of-range parameter ``ParameterError`` (scikit-learn
   wording), an unknown dataset a ``ChronofeatError``, and a unit whose file no longer decodes is
   either recorded in ``failures`` (and given no row) or stops the run with a ``ChronofeatError`` —
   never another exception, never a row of NaNs.

Each extractor needs a small fixture below (dataset, cheap parameters, one bad parameter). A newly
registered extractor without one fails here until its author adds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from sklearn.base import clone

from extractors import create_extractor, extractor_class, list_extractors
from extractors.runner import run_extraction
from features.errors import ChronofeatError, ParameterError
from tests._demo_stores import core_copy, demo_store

LIMIT = 4


@dataclass(frozen=True)
class Contract:
    dataset: str
    params: Callable  # (store) -> dict of cheap parameters; may train/fit artifacts into store
    bad: dict  # a parameter value validate_params must refuse


def _bovw(store) -> dict:
    from store.sql import query

    subjects = query(store, "SELECT DISTINCT subject FROM scans WHERE dataset = 'crmo' ORDER BY 1 LIMIT 2")
    return {
        "descriptor": "orb", "vocab_size": 4, "max_keypoints": 200, "sample_per_image": 50,
        "vocab_split": None, "vocab_subjects": tuple(subjects.column(0).to_pylist()), "workers": 1, "progress": False,
    }


def _cae(store) -> dict:
    from extractors.cae import train_cae

    result = train_cae(store, "crmo", epochs=1, image_size=32, base=8, depth=2, latent_channels=2, seed=0,
                       device="cpu", progress=False)
    return {"artifact": result.artifact.short, "batch_size": 8, "device": "cpu"}


def _siamese(store) -> dict:
    from extractors.siamese import train_siamese

    result = train_siamese(store, "crmo", epochs=1, batch_size=32, image_size=32, seed=0, device="cpu",
                           progress=False)
    return {"artifact": result.artifact.short, "batch_size": 8, "device": "cpu"}


def _volumes(store) -> None:
    from store.ingest import ingest_dataset
    from store.tables import read_table, table_exists

    present = read_table(store, "volumes").column("dataset").to_pylist() if table_exists(store, "volumes") else []
    if "tibia3d" not in present:
        ingest_dataset(store, "tibia3d", progress=False)


def _siamese_volume(store) -> dict:
    from extractors.volume_nets import train_siamese_volumes

    _volumes(store)
    result = train_siamese_volumes(store, "tibia3d", epochs=1, embed_dim=8, seed=0, device="cpu", progress=False)
    return {"artifact": result.artifact.short, "batch_size": 4, "device": "cpu"}


def _cae_volume(store) -> dict:
    from extractors.volume_nets import train_cae_volumes

    _volumes(store)
    result = train_cae_volumes(store, "tibia3d", epochs=1, patch_size=16, base=4, depth=2, latent_channels=2, seed=0,
                               device="cpu", progress=False)
    return {"artifact": result.artifact.short, "batch_size": 4, "device": "cpu"}


CONTRACTS = {
    "cnn": Contract(
        "crmo",
        lambda store: {
            "model": "test_efficientnet",
            "weights": "random",
            "batch_size": 2,
            "device": "cpu",
            "workers": 1,
        },
        {"batch_size": 0},
    ),
    "bovw": Contract("crmo", _bovw, {"vocab_size": 1}),
    "descriptors": Contract(
        "crmo",
        lambda store: {"descriptor": "orb", "max_keypoints": 100, "workers": 1, "progress": False},
        {"max_keypoints": 0},
    ),
    "diffstats": Contract(
        "chronomid", lambda store: {"reference": "absolute", "n_bins": 8, "workers": 1}, {"n_bins": 0}
    ),
    "cae": Contract("crmo", _cae, {"batch_size": 0}),
    "siamese": Contract("crmo", _siamese, {"batch_size": 0}),
    "siamese_volume": Contract("tibia3d", _siamese_volume, {"batch_size": 0}),
    "diffstats3d": Contract("tibia3d", lambda store: _volumes(store) or {
        "shrink": (2, 1), "smoothing": (1.0, 0.0), "samples": 2000, "iterations": 20, "n_slabs": 2, "n_bins": 8,
    }, {"registration": "bspline"}),
    "cae_volume": Contract("tibia3d", _cae_volume, {"artifact": "xyz"}),
}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """Demo data plus whatever the fixtures train (artifacts), shared by this module's tests."""
    demos = demo_store(tmp_path_factory, "crmo", "chronomid")
    return core_copy(demos, tmp_path_factory.mktemp("contract-base"), artifacts=True)


@pytest.fixture(scope="module")
def params_of(base_store):
    cache: dict = {}

    def get(name: str) -> dict:
        if name not in CONTRACTS:
            pytest.fail(
                f"Extractor {name!r} ({extractor_class(name).__module__}) has no contract fixture: add one to "
                "CONTRACTS in tests/test_extractor_contract.py (dataset, cheap parameters, one bad parameter)."
            )
        if name not in cache:
            cache[name] = CONTRACTS[name].params(base_store)
        return cache[name]

    return get


def _fresh(base_store, path: Path):
    return core_copy(base_store, path, artifacts=True)


def _key_path(units: pa.Table) -> str:
    row = units.slice(0, 1).to_pylist()[0]
    for column in ("path", "cmp_path"):
        if row.get(column):
            return row[column]
    return row["paths"][0]


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Type equality that ignores the child field name of list types (Parquet renames it 'element')."""
    if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b):
        return a.list_size == b.list_size and _same_type(a.value_type, b.value_type)
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_type(a.value_type, b.value_type)
    return a == b


def _assert_schema(actual: pa.Schema, expected: pa.Schema) -> None:
    assert actual.names == expected.names
    for a, b in zip(actual, expected, strict=True):
        assert _same_type(a.type, b.type), (a.name, a.type, b.type)


def _close(a, b) -> bool:
    """Equal values, floats to 1e-6 relative (threaded reductions may reorder sums), lists element-wise."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
    return a == b


def _assert_tables_equal(a: pa.Table, b: pa.Table, key: str) -> None:
    a, b = a.sort_by(key), b.sort_by(key)
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        assert _close(a.column(name).to_pylist(), b.column(name).to_pylist()), f"column {name!r} differs between runs"


@pytest.mark.parametrize("name", list_extractors())
def test_parameters_survive_clone(name, params_of):
    extractor = create_extractor(name, **params_of(name))
    twin = clone(extractor)
    assert twin is not extractor
    assert twin.get_params(deep=False) == extractor.get_params(deep=False)
    rebuilt = type(extractor)(**extractor.get_params(deep=False))
    assert (
        rebuilt.config() == extractor.config() and rebuilt.table_name() == twin.table_name() == extractor.table_name()
    )
    assert not [k for k in vars(rebuilt) if k.endswith("_") and not k.startswith("_")], (
        "__init__ must not set learned state"
    )
    defaults = type(extractor)()
    assert set(defaults.get_params(deep=False)) == set(extractor.get_params(deep=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_extractors())
def test_output_is_deterministic_and_matches_the_schema(name, params_of, base_store, tmp_path):
    contract = CONTRACTS.get(name)
    params = params_of(name)
    tables = []
    for run in range(2):
        store = _fresh(base_store, tmp_path / f"run{run}")
        extractor = create_extractor(name, **params)
        units = extractor.units(store, contract.dataset)
        key = extractor.key_column()
        summary = run_extraction(extractor, store, dataset=contract.dataset, limit=LIMIT, progress=False)
        assert (summary.table, summary.key) == (extractor.table_name(), key)
        assert summary.written + summary.failed == min(LIMIT, units.num_rows)
        schema = extractor.output_schema()
        assert schema.names[:2] == [key, "source_sha256"]
        from store.tables import read_table

        table = read_table(store, summary.table)
        _assert_schema(table.schema, schema)
        expected_sources = dict(
            zip(units.column(key).to_pylist(), units.column("source_sha256").to_pylist(), strict=True)
        )
        for k, source in zip(table.column(key).to_pylist(), table.column("source_sha256").to_pylist(), strict=True):
            assert expected_sources[k] == source
        numeric = [f.name for f in schema if pa.types.is_floating(f.type)]
        for column in numeric:
            assert all(v is not None and math.isfinite(v) for v in table.column(column).to_pylist()), column
        tables.append(table)
    _assert_tables_equal(tables[0], tables[1], key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_extractors())
def test_bad_input_raises_the_projects_errors(name, params_of, base_store, tmp_path):
    import shutil

    import pyarrow.compute as pc

    from store.provenance import part_metadata
    from store.tables import read_table, replace_table, table_exists

    contract = CONTRACTS.get(name)
    params = params_of(name)
    with pytest.raises(ParameterError):
        create_extractor(name, **{**params, **contract.bad})

    store = _fresh(base_store, tmp_path / "store")
    with pytest.raises(ChronofeatError):
        run_extraction(create_extractor(name, **params), store, dataset="no_such_dataset", progress=False)

    # A copy of the dataset folder whose first unit's file no longer decodes.
    datasets = read_table(store, "datasets")
    root = Path(datasets.filter(pc.equal(datasets.column("dataset"), contract.dataset)).column("root")[0].as_py())
    copied = tmp_path / "copy" / contract.dataset
    shutil.copytree(root, copied)
    roots = [
        str(copied) if d == contract.dataset else r
        for d, r in zip(datasets.column("dataset").to_pylist(), datasets.column("root").to_pylist(), strict=True)
    ]
    replace_table(
        store,
        "datasets",
        datasets.set_column(datasets.schema.get_field_index("root"), "root", pa.array(roots, pa.string())),
        metadata=part_metadata(producer="test"),
    )
    extractor = create_extractor(name, **params)
    units = extractor.units(store, contract.dataset)
    broken_key = units.column(extractor.key_column())[0].as_py()
    from store.paths import PathResolver
    from store.secret import load_secret

    target = PathResolver(copied, lambda: load_secret(store)).resolve(_key_path(units))  # stored paths may be redacted
    target.write_bytes(target.read_bytes()[:200])
    try:
        summary = run_extraction(extractor, store, dataset=contract.dataset, limit=LIMIT, progress=False)
    except ChronofeatError:
        return  # stopped with the project's error: allowed
    assert summary.failed >= 1
    failures = read_table(store, "failures").to_pylist()
    assert any(f["key"] == broken_key and f["stage"].startswith("extract") and f["error_class"] for f in failures)
    if table_exists(store, summary.table):
        assert broken_key not in read_table(store, summary.table).column(extractor.key_column()).to_pylist()
