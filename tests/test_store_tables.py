"""Parquet parts: atomic, never mixed across configurations, metadata readable by DuckDB."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from features.errors import ConfigMismatchError, ParameterError, TableNotFoundError
from store.provenance import part_metadata
from store.secret import load_secret
from store.tables import (
    existing_keys,
    list_tables,
    read_table,
    replace_table,
    table_kv_metadata,
    table_lock,
    table_parts,
    write_part,
)


def _rows(keys, dim=4):
    return pa.table(
        {
            "scan_id": pa.array(keys, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array([float(i) for k in keys for i in range(dim)], pa.float32()), dim
            ),
        }
    )


def test_parts_append_and_read_back(tmp_store):
    meta = part_metadata(producer="test", params={"a": 1})
    write_part(tmp_store, "emb", _rows(["a", "b"]), metadata=meta)
    write_part(tmp_store, "emb", _rows(["c"]), metadata=meta)
    table = read_table(tmp_store, "emb")
    assert sorted(table.column("scan_id").to_pylist()) == ["a", "b", "c"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert existing_keys(tmp_store, "emb", "scan_id") == {"a", "b", "c"}
    [info] = list_tables(tmp_store)
    assert (info.name, info.rows, info.parts) == ("emb", 3, 2)


def test_metadata_is_readable_with_duckdb_alone(tmp_store):
    write_part(tmp_store, "emb", _rows(["a"]), metadata=part_metadata(producer="extractor:x", params={"k": 5}))
    [part] = table_parts(tmp_store, "emb")
    rows = duckdb.sql(f"SELECT decode(key) AS k, decode(value) AS v FROM parquet_kv_metadata('{part}')").fetchall()
    meta = dict(rows)
    assert meta["chronofeat.producer"] == "extractor:x"
    assert json.loads(meta["chronofeat.params"]) == {"k": 5}
    assert "pyarrow" in json.loads(meta["chronofeat.packages"])
    assert meta["chronofeat.code_version"]
    # plain DuckDB reads the embedding as a list; the store's view gives it back as FLOAT[4]
    assert duckdb.sql(f"SELECT len(embedding) FROM '{part}'").fetchall()[0][0] == 4
    from store.sql import query

    assert query(tmp_store, "SELECT typeof(embedding) AS t FROM emb").to_pylist() == [{"t": "FLOAT[4]"}]


def test_a_different_configuration_is_never_mixed_in(tmp_store):
    write_part(tmp_store, "emb", _rows(["a"]), metadata=part_metadata(producer="x", params={"k": 5}))
    with pytest.raises(ConfigMismatchError, match="never mixed"):
        write_part(tmp_store, "emb", _rows(["b"]), metadata=part_metadata(producer="x", params={"k": 6}))
    assert read_table(tmp_store, "emb").num_rows == 1


def test_leftover_temporary_files_are_invisible_and_cleaned(tmp_store):
    write_part(tmp_store, "emb", _rows(["a"]), metadata=part_metadata(producer="x"))
    directory = tmp_store.table_dir("emb")
    (directory / ".tmp-deadbeef.parquet").write_bytes(b"PAR1 half written")  # a writer killed mid-write
    assert read_table(tmp_store, "emb").num_rows == 1
    assert list_tables(tmp_store)[0].rows == 1
    with table_lock(tmp_store, "emb"):
        pass
    assert not list(directory.glob(".tmp-*"))


def test_failed_write_leaves_nothing(tmp_store, monkeypatch):
    import pyarrow.parquet as pq

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        write_part(tmp_store, "emb", _rows(["a"]), metadata=part_metadata(producer="x"))
    assert table_parts(tmp_store, "emb") == []
    assert not list(tmp_store.table_dir("emb").glob(".tmp-*"))


def test_replace_table_keeps_one_part(tmp_store):
    meta = part_metadata(producer="pairs")
    replace_table(tmp_store, "pairs", _rows(["a", "b"]), metadata=meta)
    replace_table(tmp_store, "pairs", _rows(["c"]), metadata=meta)
    assert len(table_parts(tmp_store, "pairs")) == 1
    assert read_table(tmp_store, "pairs").column("scan_id").to_pylist() == ["c"]
    assert table_kv_metadata(tmp_store, "pairs")["chronofeat.producer"] == "pairs"


def test_missing_table_and_bad_names_are_explained(tmp_store):
    with pytest.raises(TableNotFoundError, match="no table 'nope'"):
        read_table(tmp_store, "nope")
    with pytest.raises(ParameterError, match="not valid"):
        tmp_store.table_dir("../etc")


def test_secret_is_created_once_with_mode_0600(tmp_store):
    key = load_secret(tmp_store)
    assert len(key) == 32 and load_secret(tmp_store) == key
    assert (tmp_store.secret_path.stat().st_mode & 0o777) == 0o600


def test_float_vectors_are_byte_stream_split_and_read_back_exactly_by_duckdb(tmp_store):
    import numpy as np
    import pyarrow.parquet as pq

    from store.sql import connect

    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(50, 16)).astype(np.float32)
    descriptors = rng.normal(size=(120, 8)).astype(np.float32)  # ragged lists of FLOAT[8]
    offsets = np.concatenate([[0], np.cumsum(rng.multinomial(120, [1 / 50] * 50))]).astype(np.int32)
    codes = rng.integers(0, 256, (50, 4), dtype=np.uint8)
    table = pa.table({
        "scan_id": pa.array([f"s{i:02d}" for i in range(50)]),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), 16),
        "descriptors": pa.ListArray.from_arrays(
            pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(descriptors.reshape(-1)), 8)
        ),
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), 4),
        "score": pa.array(rng.normal(size=50)),
    })
    part = write_part(tmp_store, "vectors", table, metadata=part_metadata(producer="test", params={}))
    meta = pq.ParquetFile(part).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["embedding.list.element"]
    assert "BYTE_STREAM_SPLIT" in encodings["descriptors.list.element.list.element"]
    assert "BYTE_STREAM_SPLIT" not in encodings["codes.list.element"] + encodings["score"]  # ints, scalars: as before
    con = connect(tmp_store)
    try:
        back = con.sql("SELECT * FROM vectors ORDER BY scan_id").to_arrow_table()
    finally:
        con.close()
    assert np.array_equal(np.stack(back.column("embedding").to_numpy(zero_copy_only=False)), embedding)
    flat = back.column("descriptors").combine_chunks().values.flatten().to_numpy()
    assert np.array_equal(flat.reshape(-1, 8), descriptors)
    assert np.array_equal(np.stack(back.column("codes").to_numpy(zero_copy_only=False)), codes)


# --- damaged parts, the check, the secret's fingerprint --------------------------------------------


def _feature_meta(params=None):
    return part_metadata(producer="extractor:toy", params=params or {"k": 1},
                         extra={"key": "scan_id", "dataset": "toyset", "table": "emb"})


def _keyed(keys, source="h1"):
    table = _rows(keys)
    return table.append_column("source_sha256", pa.array([source] * len(keys), pa.string()))


def test_every_reader_names_a_damaged_part(tmp_store):
    from features.errors import DamagedPartError
    from store.featureset import load_matrix

    write_part(tmp_store, "emb", _keyed(["a"]), metadata=_feature_meta())
    write_part(tmp_store, "other", _keyed(["z"]), metadata=_feature_meta())
    junk = tmp_store.table_dir("emb") / "part-99999999999999999999-junk.parquet"
    junk.write_bytes(b"not parquet")
    for read in (
        lambda: read_table(tmp_store, "emb"),
        lambda: existing_keys(tmp_store, "emb", "scan_id"),
        lambda: table_kv_metadata(tmp_store, "emb"),
        lambda: load_matrix(tmp_store, "emb", "scan_id", ["embedding"]),
    ):
        with pytest.raises(DamagedPartError, match=r"junk\.parquet.*check --repair"):
            read()
    oldest = junk.rename(junk.with_name("part-00000000000000000000-junk.parquet"))  # the writer checks the oldest part
    with pytest.raises(DamagedPartError, match=oldest.name):
        write_part(tmp_store, "emb", _keyed(["b"]), metadata=_feature_meta())
    [emb, other] = list_tables(tmp_store)
    assert emb.damaged and emb.rows == 1 and not other.damaged
    assert read_table(tmp_store, "other").num_rows == 1  # other tables keep working
    assert table_kv_metadata(tmp_store, "emb", skip_damaged=True)["chronofeat.producer"] == "extractor:toy"


def test_check_finds_each_kind_of_damage_and_repair_moves_only_bad_parts(tmp_store):
    import json

    import pyarrow.parquet as pq

    from store.check import check_store

    meta = _feature_meta()
    write_part(tmp_store, "emb", _keyed(["a", "b"]), metadata=meta)
    second = write_part(tmp_store, "emb", _keyed(["c", "d"]), metadata=meta)
    assert check_store(tmp_store).exit_code == 0
    folder = second.parent
    (folder / "part-99999999999999999999-a-dup.parquet").write_bytes(second.read_bytes())  # wholly duplicated
    write_part(tmp_store, "emb", _keyed(["d", "e"]), metadata=meta)  # partly duplicated: reported only
    pq.write_table(_keyed(["x"]), folder / "part-99999999999999999999-b-foreign.parquet")  # no provenance
    conflicting = pa.table({"scan_id": pa.array([1], pa.int64()), "source_sha256": ["h"]})
    pq.write_table(conflicting.replace_schema_metadata(meta), folder / "part-99999999999999999999-c-schema.parquet")
    pq.write_table(_keyed(["q"]).replace_schema_metadata(_feature_meta({"k": 2})),
                   folder / "part-99999999999999999999-d-config.parquet")
    forged = {**meta, "chronofeat.params_hash": "000000000000"}
    pq.write_table(_keyed(["r"]).replace_schema_metadata(forged), folder / "part-99999999999999999999-e-hash.parquet")
    (folder / ".tmp-0123.parquet").write_bytes(b"half")
    big = write_part(tmp_store, "emb2", _keyed([f"k{i}" for i in range(3000)]), metadata=meta)
    data = bytearray(big.read_bytes())
    data[len(data) // 3: len(data) // 3 + 3000] = bytes(3000)  # a corrupt page: the footer still opens
    big.write_bytes(bytes(data))

    found = {(f.path.name, f.kind) for f in check_store(tmp_store).findings}
    expected = {
        ("part-99999999999999999999-a-dup.parquet", "duplicate part"),
        ("part-99999999999999999999-b-foreign.parquet", "no provenance"),
        ("part-99999999999999999999-c-schema.parquet", "schema conflict"),
        ("part-99999999999999999999-d-config.parquet", "config mixed"),
        ("part-99999999999999999999-e-hash.parquet", "provenance mismatch"),
        (".tmp-0123.parquet", "stray temp file"),
        (big.name, "unreadable data"),
    }
    assert expected <= found
    partial = [name for name, kind in found if kind == "duplicate keys"]
    assert len(partial) == 1 and (partial[0], "duplicate keys") not in expected

    result = check_store(tmp_store, repair=True)
    assert result.exit_code == 1 and len(result.moved) == len(expected)
    assert all(f.moved_to.parent == tmp_store.root / "quarantine" / f.table for f in result.moved)
    assert any("extract --extractor toy --dataset toyset" in c for f in result.moved for c in f.rerun)
    manifest = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    assert len(manifest) == len(expected)
    after = check_store(tmp_store)
    assert [f.kind for f in after.findings] == ["duplicate keys"]  # reported, never moved
    assert sorted(read_table(tmp_store, "emb").column("scan_id").to_pylist()) == ["a", "b", "c", "d", "d", "e"]


def test_secret_is_made_only_for_a_store_without_pseudonyms(tmp_store):
    from features.errors import SecretMismatchError
    from store.secret import SECRET_FINGERPRINT_KEY, secret_fingerprint

    key = load_secret(tmp_store)
    assert tmp_store.secret_fingerprint_path.read_text().strip() == secret_fingerprint(key)
    scans_meta = {**part_metadata(producer="store.ingest"), SECRET_FINGERPRINT_KEY: secret_fingerprint(key)}
    write_part(tmp_store, "scans", _rows(["s1"]), metadata=scans_meta)
    tmp_store.secret_path.unlink()
    with pytest.raises(SecretMismatchError, match="missing.*backup"):
        load_secret(tmp_store)
    assert not tmp_store.secret_path.exists()
    tmp_store.secret_fingerprint_path.unlink()  # even without the file, the parts remember the secret
    tmp_store.secret_path.write_bytes(b"x" * 32)
    with pytest.raises(SecretMismatchError, match="not the one"):
        load_secret(tmp_store)
    tmp_store.secret_path.write_bytes(key)
    assert load_secret(tmp_store) == key
