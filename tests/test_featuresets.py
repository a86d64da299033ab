"""Feature sets: parsing, pair modes, Arrow -> numpy, and the DuckDB join on current pixels.

The ``build_*`` helpers write synthetic stores shaped like the real ones (``scans`` / ``pairs`` in the
core schema, feature tables with a ``FLOAT[d]`` column and the runner's part metadata); the fit and
report tests use them too.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import EvaluationError, ParameterError, TableNotFoundError
from features.sets import (
    Block,
    FeatureSet,
    FeatureTerm,
    assemble,
    column_to_matrix,
    combine_pair,
    extend_feature_set,
    feature_columns,
    parse_feature_set,
)
from store.featureset import (
    datasets_with_features,
    feature_tables,
    load_feature_set,
    load_matrix,
    load_units,
)
from store.provenance import combine_hashes, part_metadata
from store.schema import PAIRS_CORE, SCANS_CORE
from store.tables import table_parts, write_part

CRMO_CLASSES = ("improved", "persisted", "regressed")


# --- synthetic stores ---------------------------------------------------------------------------
def _hex(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def write_scans(store, rows: list[dict], extra=()) -> None:
    """Append ``rows`` to ``scans`` (core schema plus ``extra`` (name, type) columns)."""
    schema = SCANS_CORE
    for name, kind in extra:
        schema = schema.append(pa.field(name, kind))
    full = [{**{f.name: None for f in schema}, "labels": [], **r} for r in rows]
    write_part(store, "scans", pa.Table.from_pylist(full, schema=schema), metadata=part_metadata(producer="test:scans"))


def write_pairs(store, rows: list[dict]) -> None:
    """Append ``rows`` to ``pairs`` (core schema)."""
    full = [{**{f.name: None for f in PAIRS_CORE}, **r} for r in rows]
    write_part(
        store, "pairs", pa.Table.from_pylist(full, schema=PAIRS_CORE), metadata=part_metadata(producer="test:pairs")
    )


def write_features(store, table: str, key: str, keys, hashes, column: str, matrix, *, dataset: str,
                   params: dict | None = None, scalars: dict | None = None) -> None:
    """One part of feature ``table`` as the extraction runner writes it: key, source_sha256, FLOAT[d]."""
    matrix = np.asarray(matrix, dtype=np.float32)
    columns = {key: pa.array(list(keys), pa.string()), "source_sha256": pa.array(list(hashes), pa.string())}
    if column:
        columns[column] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    for name, values in (scalars or {}).items():
        columns[name] = pa.array(np.asarray(values, dtype=np.float32))
    meta = part_metadata(producer=f"extractor:{table}", params=params or {"extractor": table},
                         extra={"dataset": dataset, "table": table})
    write_part(store, table, pa.table(columns), metadata=meta)


def build_crmo_like(
    store,
    *,
    n_subjects: int = 30,
    dim: int = 2048,
    vocab: int = 500,
    seed: int = 0,
    dataset: str = "crmo",
    cnn_table: str | None = "inception_v3",
    bovw_table: str | None = "sift_bovw500",
    split_column: bool = False,
    signal: float = 1.0,
    one_class: bool = False,
) -> dict:
    """A CRMO-shaped store: subjects with 2-3 studies (one slice each), 'given' before/after pairs labelled
    improved / persisted / regressed, a ``cnn_table`` (2048-d embedding per scan) whose pair difference
    carries the label, and a ``bovw_table`` histogram per scan whose lesion words grow or shrink with it.
    With ``split_column`` scans carry a subject-level ``split`` (train / val / test)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(8, dim)) / np.sqrt(8)
    delta = {c: rng.normal(size=8) * 1.5 * signal for c in CRMO_CLASSES}
    factor = {"improved": 0.45, "persisted": 1.0, "regressed": 2.2}
    base = rng.dirichlet(np.ones(vocab))
    lesion = rng.dirichlet(np.ones(vocab) * 0.2)
    scans, pairs, emb, hist = [], [], [], []
    for s in range(n_subjects):
        subject = _hex("subject", dataset, s)[:32]
        n_studies = 3 if s % 3 else 2
        state = rng.normal(size=8)
        radius = rng.uniform(0.5, 1.5)
        labels = ["improved" if one_class else CRMO_CLASSES[(s + j * (s % 2)) % 3] for j in range(n_studies - 1)]
        ids = []
        for t in range(n_studies):
            scan_id, pixel = _hex("scan", dataset, s, t)[:32], _hex("pixel", dataset, s, t)
            scans.append({"scan_id": scan_id, "pixel_sha256": pixel, "dataset": dataset, "subject": subject,
                          "time_index": t * 6, "days_from_baseline": t * 180, "view": "", "slice": 1, "frame": 0,
                          "path": f"P{s:03d}/study_{t}/slice_1.dcm", "modality": "MR", "rows": 224, "cols": 224,
                          "channels": 1})
            emb.append(state @ W + rng.normal(scale=0.6, size=dim))
            weight = radius / (1.0 + radius)
            counts = rng.multinomial(400, (1 - weight) * base + weight * lesion)
            hist.append(counts / counts.sum())
            ids.append(scan_id)
            if t < n_studies - 1:
                state = state + delta[labels[t]] + rng.normal(scale=0.6, size=8)
                radius *= factor[labels[t]] * rng.uniform(0.9, 1.1)
        for t in range(n_studies - 1):
            pairs.append({"pair_id": _hex("pair", ids[t], ids[t + 1])[:32], "dataset": dataset, "subject": subject,
                          "reference_scan_id": ids[t], "comparison_scan_id": ids[t + 1], "reference_mode": "given",
                          "interval_days": 180, "time_index": (t + 1) * 6, "label": labels[t]})
    extra = []
    if split_column:
        extra = [("split", pa.string())]
        subjects = sorted({r["subject"] for r in scans})
        side = {sub: ("test" if i % 5 == 0 else "val" if i % 5 == 1 else "train") for i, sub in enumerate(subjects)}
        for r in scans:
            r["split"] = side[r["subject"]]
    write_scans(store, scans, extra)
    write_pairs(store, pairs)
    keys, hashes = [r["scan_id"] for r in scans], [r["pixel_sha256"] for r in scans]
    if cnn_table:
        write_features(store, cnn_table, "scan_id", keys, hashes, "embedding", np.array(emb), dataset=dataset,
                       params={"extractor": "cnn", "architecture": cnn_table})
    if bovw_table:
        write_features(store, bovw_table, "scan_id", keys, hashes, "histogram", np.array(hist), dataset=dataset,
                       params={"extractor": "sift_bovw", "vocab_size": vocab})
    return {"scans": scans, "pairs": pairs, "embeddings": np.array(emb, dtype=np.float32),
            "histograms": np.array(hist, dtype=np.float32)}


def build_scans_like(store, *, dataset: str = "chronomid", n_per_class: int = 5, weeks=(0, 1, 3, 4), dim: int = 32,
                     seed: int = 0, table: str = "efficientnet_b0") -> dict:
    """A ChronoMID-shaped store: mice of two classes scanned weekly; embeddings drift with the week for 'pth'."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    scans, emb = [], []
    for c, label in enumerate(("wild_type", "pth")):
        for m in range(n_per_class):
            subject = _hex("mouse", dataset, label, m)[:32]
            for week in weeks:
                scan_id, pixel = _hex("scan", dataset, label, m, week)[:32], _hex("pix", dataset, label, m, week)
                scans.append({"scan_id": scan_id, "pixel_sha256": pixel, "dataset": dataset, "subject": subject,
                              "time_index": week, "view": "", "slice": 1, "frame": 0, "path": f"{subject}/{week}.dcm",
                              "label": label})
                emb.append(rng.normal(size=dim) + direction * (c * 0.4 * week))
    write_scans(store, scans)
    write_features(store, table, "scan_id", [r["scan_id"] for r in scans], [r["pixel_sha256"] for r in scans],
                   "embedding", np.array(emb), dataset=dataset)
    return {"scans": scans}


def build_specimens_like(store, *, dataset: str = "impc", n_subjects: int = 60, dim: int = 24, seed: int = 0,
                         table: str = "efficientnet_mv") -> dict:
    """An IMPC-shaped store: specimens with a DV and a LAT scan, level1 normal/abnormal and multi-label level2,
    and a specimen-keyed embedding table whose rows carry the labels."""
    from store.featureset import load_units

    rng = np.random.default_rng(seed)
    regions = ("Ribcage", "Spine", "Whole-body")
    scans, truth = [], {}
    for s in range(n_subjects):
        subject = _hex("specimen", dataset, s)[:32]
        abnormal = s % 2 == 0
        level2 = sorted({regions[s % 3], regions[(s // 2) % 3]}) if abnormal else []
        truth[subject] = (abnormal, level2)
        for view in ("DV", "LAT"):
            scans.append({"scan_id": _hex("scan", dataset, s, view)[:32], "pixel_sha256": _hex("pix", dataset, s, view),
                          "dataset": dataset, "subject": subject, "time_index": 0, "view": view, "slice": 1, "frame": 0,
                          "path": f"S{s:04d}/{view}_1.dcm", "label": "abnormal" if abnormal else "normal",
                          "labels": level2, "level1": "abnormal" if abnormal else "normal", "level2": level2})
    write_scans(store, scans, extra=[("level1", pa.string()), ("level2", pa.list_(pa.string()))])
    units = load_units(store, dataset, "specimens")
    codes = {r: j for j, r in enumerate(regions)}
    emb = []
    for subject in units.column("subject").to_pylist():
        abnormal, level2 = truth[subject]
        vector = rng.normal(size=dim)
        vector[0] += 2.0 * abnormal
        for region in level2:
            vector[1 + codes[region]] += 2.5
        emb.append(vector)
    write_features(
        store,
        table,
        "specimen_id",
        units.column("key").to_pylist(),
        units.column("source_sha256").to_pylist(),
        "embedding",
        np.array(emb),
        dataset=dataset,
    )
    return {"units": units}


# --- parsing ------------------------------------------------------------------------------------
def test_parse_feature_set_forms_and_round_trip():
    fs = parse_feature_set("inception_v3:diff+sift_bovw500:concat+time")
    assert fs.terms == (FeatureTerm("inception_v3", "diff"), FeatureTerm("sift_bovw500", "concat"))
    assert fs.time and fs.pair_modes and fs.tables == ("inception_v3", "sift_bovw500")
    assert str(fs) == "inception_v3:diff+sift_bovw500:concat+time"
    assert parse_feature_set(str(fs)) == fs
    plain = parse_feature_set("diffstats_absolute")
    assert plain.terms == (FeatureTerm("diffstats_absolute", None),) and not plain.time and not plain.pair_modes


@pytest.mark.parametrize("text, fragment", [
    ("inception_v3:sum", "unknown pair mode 'sum'"),
    ("Inception", "not a table name"),
    ("time", "names no table"),
    ("a:diff+a:diff", "twice"),
    ("", "non-empty"),
])
def test_parse_feature_set_rejects_bad_text_with_the_syntax(text, fragment):
    with pytest.raises(ParameterError) as info:
        parse_feature_set(text)
    assert fragment in str(info.value)
    assert "TERM+TERM" in str(info.value)


def test_extend_feature_set_adds_time_to_a_default():
    base = parse_feature_set("efficientnet_b0")
    assert extend_feature_set(base, "+time") == FeatureSet((FeatureTerm("efficientnet_b0"),), True)
    assert extend_feature_set(base, "other:diff") == parse_feature_set("other:diff")


# --- pure array work --------------------------------------------------------------------------------
def test_combine_pair_modes():
    ref = np.array([[1.0, 5.0]], np.float32)
    cmp = np.array([[4.0, 2.0]], np.float32)
    assert combine_pair(ref, cmp, "diff").tolist() == [[3.0, -3.0]]
    assert combine_pair(ref, cmp, "absdiff").tolist() == [[3.0, 3.0]]
    assert combine_pair(ref, cmp, "concat").tolist() == [[1.0, 5.0, 4.0, 2.0]]
    assert combine_pair(ref, cmp, "reference").tolist() == ref.tolist()
    assert combine_pair(ref, cmp, "comparison").tolist() == cmp.tolist()


def test_block_swapped_reverses_the_pair_and_assemble_appends_time():
    matrix = np.array([[0.0, 0.0], [1.0, 2.0], [5.0, 5.0]], np.float32)
    block = Block("t:diff", matrix, index=np.array([1, 2]), ref_index=np.array([0, 1]), mode="diff")
    assert block.build().tolist() == [[1.0, 2.0], [4.0, 3.0]]
    assert block.build(swapped=True).tolist() == [[-1.0, -2.0], [-4.0, -3.0]]
    X = assemble([block], np.array([3, 7]), rows=np.array([1]))
    assert X.dtype == np.float32 and X.tolist() == [[4.0, 3.0, 7.0]]


def test_column_to_matrix_zero_copy_for_float32_fixed_size_lists():
    values = np.arange(12, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values), 4)
    matrix = column_to_matrix(column)
    assert matrix.shape == (3, 4) and matrix.dtype == np.float32
    assert np.shares_memory(matrix, np.frombuffer(column.values.buffers()[1], dtype=np.float32))
    chunked = pa.chunked_array([column, column.slice(1, 2)])
    assert column_to_matrix(chunked).tolist() == matrix.tolist() + matrix[1:].tolist()
    lists = pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32()))
    assert column_to_matrix(lists).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert column_to_matrix(pa.array([1.5, 2.5], pa.float64())).tolist() == [[1.5], [2.5]]


def test_column_to_matrix_refuses_ragged_lists_and_nulls():
    with pytest.raises(ValueError, match="different lengths"):
        column_to_matrix(pa.array([[1.0], [1.0, 2.0]], pa.list_(pa.float32())), name="emb")
    with pytest.raises(ValueError, match="null"):
        column_to_matrix(pa.array([1.0, None], pa.float32()), name="x")


def test_feature_columns_take_float_scalars_and_arrays_only():
    schema = pa.schema([("pair_id", pa.string()), ("source_sha256", pa.string()), ("diff_mean", pa.float64()),
                        ("note", pa.string()), ("diff_histogram", pa.list_(pa.float32(), 8)), ("flag", pa.bool_()),
                        ("n_keypoints", pa.int32())])
    assert feature_columns(schema) == ["diff_mean", "diff_histogram"]


# --- loading from a store ----------------------------------------------------------------------------
def test_pair_units_carry_the_pair_source_hash_and_labels(tmp_store):
    data = build_crmo_like(tmp_store, n_subjects=6, dim=8, vocab=10)
    units = load_units(tmp_store, "crmo", "pairs", reference_mode="given")
    assert units.num_rows == len(data["pairs"])
    pixel = {r["scan_id"]: r["pixel_sha256"] for r in data["scans"]}
    for row in units.to_pylist():
        assert row["source_sha256"] == combine_hashes(pixel[row["reference_scan_id"]], pixel[row["comparison_scan_id"]])
        assert row["label"] in CRMO_CLASSES and row["key"] == row["pair_id"]


def test_pair_diff_and_concat_match_the_stored_rows(tmp_store):
    data = build_crmo_like(tmp_store, n_subjects=6, dim=8, vocab=10)
    units = load_units(tmp_store, "crmo", "pairs")
    position = {r["scan_id"]: i for i, r in enumerate(data["scans"])}
    emb, hist = data["embeddings"], data["histograms"]
    loaded = load_feature_set(
        tmp_store, parse_feature_set("inception_v3:diff+sift_bovw500:concat+time"), units, "pairs"
    )
    assert loaded.present.all() and loaded.width == 8 + 20 + 1
    X = assemble(loaded.blocks, loaded.time)
    for i, row in enumerate(units.to_pylist()):
        r, c = position[row["reference_scan_id"]], position[row["comparison_scan_id"]]
        np.testing.assert_allclose(X[i, :8], emb[c] - emb[r], rtol=1e-6)
        np.testing.assert_allclose(X[i, 8:28], np.concatenate([hist[r], hist[c]]), rtol=1e-6)
        assert X[i, 28] == row["time_index"]
    assert loaded.table_hashes["inception_v3"] is not None


def test_rows_from_older_pixels_never_enter(tmp_store):
    data = build_crmo_like(tmp_store, n_subjects=6, dim=4, vocab=5, bovw_table=None, cnn_table=None)
    scans = data["scans"]
    keys = [r["scan_id"] for r in scans]
    hashes = [r["pixel_sha256"] for r in scans]
    hashes[0] = "0" * 64  # this scan's pixels changed after its features were computed
    write_features(tmp_store, "emb", "scan_id", keys, hashes, "embedding", np.ones((len(keys), 4)), dataset="crmo")
    units = load_units(tmp_store, "crmo", "scans")
    loaded = load_feature_set(tmp_store, parse_feature_set("emb"), units, "scans")
    stale_key = keys[0]
    assert not loaded.present[units.column("key").to_pylist().index(stale_key)]
    assert loaded.present.sum() == len(keys) - 1 and loaded.stale["emb"] == 1


def test_duplicate_feature_rows_are_read_once(tmp_store):
    data = build_crmo_like(tmp_store, n_subjects=4, dim=4, vocab=5)
    scans = data["scans"][:3]
    write_features(
        tmp_store,
        "inception_v3",
        "scan_id",
        [r["scan_id"] for r in scans],
        [r["pixel_sha256"] for r in scans],
        "embedding",
        np.zeros((3, 4)),
        dataset="crmo",
        params={"extractor": "cnn", "architecture": "inception_v3"},
    )
    keys, matrix, duplicates = load_matrix(tmp_store, "inception_v3", "scan_id", ["embedding"])
    assert duplicates == 3 and len(keys) == len(data["scans"]) == len(set(keys.tolist()))


def test_missing_table_and_wrong_mode_errors_name_the_fix(tmp_store):
    build_crmo_like(tmp_store, n_subjects=4, dim=4, vocab=5)
    units = load_units(tmp_store, "crmo", "pairs")
    with pytest.raises(TableNotFoundError) as info:
        load_feature_set(tmp_store, parse_feature_set("resnet50:diff"), units, "pairs")
    assert "resnet50" in str(info.value) and "inception_v3" in str(info.value) and "extract" in str(info.value)
    with pytest.raises(EvaluationError, match="inception_v3:diff"):
        load_feature_set(tmp_store, parse_feature_set("inception_v3"), units, "pairs")
    scans = load_units(tmp_store, "crmo", "scans")
    with pytest.raises(EvaluationError, match="pair mode"):
        load_feature_set(tmp_store, parse_feature_set("inception_v3:diff"), scans, "scans")


def test_specimen_keys_and_hashes_match_the_extractors_units(tmp_store):
    from store.units import specimen_units

    build_specimens_like(tmp_store, n_subjects=6)
    mine = load_units(tmp_store, "impc", "specimens")
    theirs = specimen_units(tmp_store, "impc")
    assert sorted(zip(mine.column("key").to_pylist(), mine.column("source_sha256").to_pylist(), strict=True)) == \
        sorted(zip(theirs.column("specimen_id").to_pylist(), theirs.column("source_sha256").to_pylist(), strict=True))
    assert "level2" in mine.column_names


def test_datasets_with_features_and_feature_table_info(tmp_store):
    build_crmo_like(tmp_store, n_subjects=4, dim=4, vocab=5)
    build_scans_like(tmp_store, n_per_class=2, weeks=(0, 1))
    assert datasets_with_features(tmp_store) == {
        "chronomid": ["efficientnet_b0"],
        "crmo": ["inception_v3", "sift_bovw500"],
    }
    info = feature_tables(tmp_store)["sift_bovw500"]
    assert info.key == "scan_id" and info.columns == ("histogram",) and info.unit == "scans" and info.params_hash


def test_duckdb_load_equals_pyarrow_read(tmp_store):
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(300, 16)).astype(np.float32)
    keys = [f"k{i:04d}" for i in range(300)]
    for part in range(3):
        rows = slice(part * 100, part * 100 + 100)
        write_features(tmp_store, "emb", "scan_id", keys[rows], ["h"] * 100, "embedding", matrix[rows], dataset="d")
    got_keys, got, _ = load_matrix(tmp_store, "emb", "scan_id", ["embedding"])
    order = np.argsort(got_keys.astype(str))
    np.testing.assert_array_equal(got[order], matrix)
    direct = pa.concat_tables([pq.read_table(p) for p in table_parts(tmp_store, "emb")])
    np.testing.assert_array_equal(column_to_matrix(direct.column("embedding")), matrix)


def test_pair_keyed_statistics_table_with_a_nan_row(tmp_store):
    data = build_crmo_like(tmp_store, n_subjects=6, dim=4, vocab=5)
    units = load_units(tmp_store, "crmo", "pairs")
    n = units.num_rows
    rng = np.random.default_rng(0)
    means, shifts = rng.normal(size=n), rng.normal(size=n)
    means[2] = np.nan  # e.g. a statistic undefined for this pair
    hist = rng.random((n, 4)).astype(np.float32)
    write_features(tmp_store, "diffstats_given", "pair_id", units.column("key").to_pylist(),
                   units.column("source_sha256").to_pylist(), "diff_histogram", hist, dataset="crmo",
                   scalars={"diff_mean": means, "shift_dy": shifts})
    loaded = load_feature_set(tmp_store, parse_feature_set("diffstats_given+inception_v3:absdiff"), units, "pairs")
    assert loaded.present.tolist() == [i != 2 for i in range(n)] and loaded.nonfinite["diffstats_given"] == 1
    X = assemble(loaded.blocks, None)
    # stored column order: the FLOAT[n] histogram, then the named float columns
    np.testing.assert_allclose(X[0, :6], np.concatenate([hist[0], [means[0], shifts[0]]]), rtol=1e-6)
    assert X.shape == (n, 6 + 4) and (X[:, 6:] >= 0).all()
    assert len(data["pairs"]) == n
