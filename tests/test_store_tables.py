"""Parquet parts: atomic, never mixed across configurations, metadata readable by DuckDB."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from store.errors import ConfigMismatchError, ParameterError, TableNotFoundError
from store.provenance import part_metadata
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
    key = tmp_store.secret()
    assert len(key) == 32 and tmp_store.secret() == key
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
