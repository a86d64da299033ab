"""Attacks on ``sql`` and on every command that writes an output file (issue 13: cases 1, 2, 7, 10).

The promise: ``sql`` is read-only unless ``--write`` is given, and even then no file of the store
(parts, artifacts, secret) is changed and no file is added to it; ``--output`` and ``COPY`` go outside
the store only; a damaged part breaks only the queries of its own table, with a clear error.

One small real store (scans, a feature table with FLOAT[32] embeddings, a fitted run with its runs /
metrics / predictions tables and model artifact, a vocabulary artifact, the secret) is built once per
module; every test works on a fresh copy of it and checks the sha256 of every file in the store.
Most attacks go through ``cli.main`` in this process (same code path as the command line, exit
status included); a handful run the real ``cli.py`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cli
from tests.conftest import run_cli

DATASET = "chronomid"
DUCKDB_1 = int(duckdb.__version__.split(".")[0]) < 2  # pyproject admits 1.4 LTS and 2.x


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden files and lock files included), by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "logs" not in path.relative_to(root).parts
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A real store built once: scans + efficientnet_b0 (FLOAT[32]), a fitted logistic run, a vocabulary, the secret."""
    from classifiers.evaluate import fit_model
    from store.layout import open_store
    from store.secret import load_secret
    from store.vocabulary import save_vocabulary
    from tests.test_featuresets import build_scans_like

    store = open_store(tmp_path_factory.mktemp("pristine") / "store")
    load_secret(store)
    build_scans_like(store, dataset=DATASET)
    run = fit_model(store, "logistic", dataset=DATASET, progress=False, n_boot=50)
    save_vocabulary(store, np.eye(8, 4, dtype=np.float32), np.ones(8, np.float32), meta={"descriptor": "sift"})
    return {"root": store.root, "run": run.run_id, "digest": _digest(store.root)}


class Victim:
    """A fresh copy of the pristine store, with the paths an attacker aims at."""

    def __init__(self, pristine, tmp_path: Path):
        from store.layout import open_store

        root = tmp_path / "store"
        shutil.copytree(pristine["root"], root, symlinks=True)
        self.store = open_store(root)
        self.root = self.store.root
        self.run = pristine["run"]
        self.tables = self.store.tables_dir
        self.part = sorted((self.tables / "scans").glob("part-*.parquet"))[0]
        self.feature_part = sorted((self.tables / "efficientnet_b0").glob("part-*.parquet"))[0]
        self.vocab = sorted((self.root / "artifacts" / "vocabularies").glob("*.json"))[0]
        self.secret = self.store.secret_path
        self.new_part = self.tables / "predictions" / "part-99999999999999999999-evil0000.parquet"
        self.outside = tmp_path / "work"
        self.outside.mkdir()
        self.before = _digest(self.root)
        assert self.before == pristine["digest"]

    def fill(self, sql: str) -> str:
        return sql.format(part=self.part, vocab=self.vocab, secret=self.secret, tables=self.tables,
                          new=self.new_part, store=self.root, outside=self.outside)

    def unchanged(self) -> None:
        after = _digest(self.root)
        changed = sorted(k for k in set(after) | set(self.before) if after.get(k) != self.before.get(k))
        assert not changed, f"store files changed or added: {changed}"

    def scans_rows(self) -> int:
        import duckdb

        return duckdb.sql(f"SELECT count(*) FROM read_parquet('{self.tables}/scans/*.parquet')").fetchall()[0][0]


@pytest.fixture
def victim(pristine, tmp_path, monkeypatch):
    v = Victim(pristine, tmp_path)
    monkeypatch.chdir(v.outside)  # relative paths an attack writes land here, never in the repository
    return v


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``cli.main(args)`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def _refused(victim, capsys, sql: str, *extra: str, expect: str = "") -> str:
    """Run ``cli.py sql SQL``: assert exit 2, an ``error:`` line (containing ``expect``), and no store file changed."""
    status, out, err = _cli(capsys, "sql", victim.fill(sql), "--store", str(victim.root), *extra)
    victim.unchanged()
    assert status == 2, (status, out, err)
    assert err.startswith("error: ") and expect in err, err
    assert victim.scans_rows() == 40
    return err


# --- case 1: the SQL guard ---------------------------------------------------------------------
def test_case1_log_query_path_cannot_overwrite_a_part(victim, capsys):
    err = _refused(victim, capsys, "SET log_query_path='{part}'; SELECT 2", expect="Refused the SET statement")
    assert "log_query_path" in err and "SET VARIABLE" in err  # says what is allowed instead
    status, out, _ = _cli(capsys, "sql", "SELECT count(*) AS n FROM scans", "--store", str(victim.root))
    assert status == 0 and out.splitlines()[2].split() == ["40"]


def test_case1_profiling_output_cannot_overwrite_a_vocabulary(victim, capsys):
    _refused(
        victim, capsys, "SET enable_profiling = 'json'; SET profiling_output = '{vocab}'; SELECT 1", expect="Refused"
    )


def test_case1_import_database_does_not_run_a_folders_sql(victim, capsys):
    folder = victim.outside / "dump"
    folder.mkdir()
    (folder / "schema.sql").write_text(f"COPY (SELECT 1 AS x) TO '{victim.part}' (FORMAT parquet);\n")
    (folder / "load.sql").write_text("")
    if DUCKDB_1:  # 1.x hands over the folder's statements, so the COPY inside is what gets refused
        _refused(victim, capsys, f"IMPORT DATABASE '{folder}'", expect="COPY")
        _refused(victim, capsys, f"IMPORT DATABASE '{folder}'", "--write", expect="inside the store")
        return
    err = _refused(victim, capsys, f"IMPORT DATABASE '{folder}'", expect="IMPORT DATABASE")
    assert "even with --write" in err


@pytest.mark.parametrize(
    "sql",
    [
        "SET threads = 1",
        "RESET threads",
        "PRAGMA threads = 1",
        "PRAGMA enable_profiling",
        "SET enable_object_cache = true",
    ],
)
def test_case1_settings_and_pragmas_are_not_allowed_wholesale(victim, capsys, sql):
    _refused(victim, capsys, sql, expect="Refused")


# --- further bypass attempts: each one ran on the old guard (changed the store or exited 0) ---------
BYPASSES = {
    "case-mixed SET": "sEt LoG_qUeRy_PaTh = '{part}'; SELECT 1",
    "comment hides SET": "/* SELECT */ SET log_query_path = '{secret}'; SELECT 1",
    "line comment and empty statement": "SELECT 1 -- ;\n; SET log_query_path='{part}'; SELECT 3",
    "SET GLOBAL adds a part": "SET GLOBAL log_query_path = '{new}'; SELECT 1",
    "SET ... TO syntax": "SET log_query_path TO '{tables}/scans/part-99999999999999999999-zz.parquet'; SELECT 1",
    "escape-string literal": "SET log_query_path = e'{part}'; SELECT 1",
    "variable feeds a setting": "SET VARIABLE p = '{part}'; SET log_query_path = getvariable('p'); SELECT 1",
    "PRAGMA form of a setting": "PRAGMA log_query_path = '{vocab}'; SELECT 1",
    "many statements": "SELECT 1; SELECT 2; SET log_query_path = '{part}'; SELECT 3",
    "PRAGMA profiling into an artifact": (
        "PRAGMA enable_profiling = 'json'; PRAGMA profiling_output = '{vocab}'; SELECT 1"
    ),
    "table function enable_profiling": (
        "SELECT * FROM enable_profiling(format := 'json', save_location := '{vocab}'); SELECT 1"
    ),
    "table function enable_logging": (
        "SELECT * FROM enable_logging(storage := 'file', storage_path := '{tables}/scans'); SELECT 1"
    ),
    "COPY hidden in a CTE": "WITH x AS (COPY scans TO '{part}' (FORMAT csv)) SELECT 1",
    "COPY in a CTE adds a part": (
        "WITH x AS (COPY (SELECT * FROM predictions) TO '{new}' (FORMAT parquet)) SELECT * FROM x"
    ),
    "MATERIALIZED CTE": "WITH x AS MATERIALIZED (COPY scans TO '{part}') SELECT 1",
    "case-mixed CTE": "wItH x As (cOpY scans tO '{part}') SeLeCt 1",
    "EXPLAIN ANALYZE COPY": "EXPLAIN ANALYZE COPY scans TO '{part}' (FORMAT csv)",
    "EXPLAIN ANALYZE of a CTE COPY": "EXPLAIN ANALYZE WITH x AS (COPY scans TO '{part}') SELECT 1",
    "CREATE TEMP wraps a COPY": "CREATE TEMP TABLE t AS WITH x AS (COPY scans TO '{part}') SELECT 1",
    "temp_directory into tables": "SET temp_directory = '{tables}/scans'; SELECT 1",
    "secret_directory into tables": "SET secret_directory = '{tables}/scans'; SELECT 1",
    "unlock the configuration": "SET lock_configuration = false; SELECT 1",
}


# DuckDB 1.x cannot parse a COPY inside a WITH clause at all (2.x parses it as a SELECT, and ran it on main)
_CTE_COPY = {"COPY hidden in a CTE", "COPY in a CTE adds a part", "MATERIALIZED CTE", "case-mixed CTE",
             "EXPLAIN ANALYZE of a CTE COPY", "CREATE TEMP wraps a COPY"}


@pytest.mark.parametrize("name", list(BYPASSES))
def test_sql_bypass_attempts_change_nothing(victim, capsys, name):
    expect = "could not be parsed" if DUCKDB_1 and name in _CTE_COPY else "efused"
    _refused(victim, capsys, BYPASSES[name], expect=expect)


# Refused already by the old deny-list: kept as guards, so the allow-list never lets them back in.
GUARDS = {
    "ATTACH inside tables": "ATTACH '{tables}/scans/x.db'",
    "EXPORT DATABASE into tables": "EXPORT DATABASE '{tables}/scans'",
    "COPY without --write": "COPY scans TO '{part}'",
    "CALL enable_logging": "CALL enable_logging(storage := 'file', storage_path := '{tables}/scans')",
    "INSTALL": "INSTALL httpfs",
    "LOAD": "LOAD httpfs",
    "CREATE MACRO": "CREATE MACRO m() AS 1",
    "CREATE SECRET": "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "DROP VIEW": "DROP VIEW scans",
    "PREPARE": "PREPARE p AS SELECT 1",
    "recursive CTE COPY": "WITH RECURSIVE x AS (COPY scans TO '{part}') SELECT 1",
    "INSERT in a CTE": "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1",
    "open external access": "SET enable_external_access = true; SELECT 1",
}


@pytest.mark.parametrize("sql", list(GUARDS.values()), ids=list(GUARDS))
def test_statements_refused_before_stay_refused(victim, capsys, sql):
    _refused(victim, capsys, sql)


def test_files_outside_the_store_are_not_read(victim, capsys):
    """The documented decision: the connection opens only the store's parts (no read_csv of other files)."""
    labels = victim.outside / "labels.csv"
    labels.write_text("subject,label\na,b\n")
    err = _refused(victim, capsys, f"SELECT * FROM read_csv('{labels}')", expect="opens only the store's own parts")
    assert "duckdb" in err.lower()


def test_reads_still_work(victim, capsys):
    """Control: what a researcher asks keeps working under the allow-list and the locked sandbox."""
    from store.sql import query

    sql = ("SET VARIABLE w = 3; CREATE TEMP TABLE t AS SELECT * FROM scans WHERE time_index >= getvariable('w'); "
           "SELECT count(*) AS n, max(len(e.embedding)) AS d FROM t JOIN efficientnet_b0 e USING (scan_id)")
    assert query(victim.store, sql).to_pylist() == [{"n": 20, "d": 32}]
    assert query(victim.store, "PRAGMA table_info('scans')").num_rows > 5
    assert query(victim.store, "EXPLAIN ANALYZE SELECT count(*) FROM runs").num_rows == 1
    assert query(victim.store, "SELECT 1 AS copy").to_pylist() == [{"copy": 1}]
    assert query(victim.store, "SUMMARIZE scans").num_rows > 5
    victim.unchanged()


# --- case 2: every way a command writes a file ---------------------------------------------------
def test_case2_output_cannot_overwrite_a_part(victim, capsys):
    err = _refused(victim, capsys, "SELECT 1 AS x", "--output", str(victim.part), expect="inside the store")
    assert str(victim.part) in err and "Nothing was written" in err


def test_case2_output_cannot_add_a_part_to_another_table(victim, capsys):
    _refused(victim, capsys, "SELECT * FROM predictions", "--format", "parquet", "--output", str(victim.new_part),
             expect="inside the store")


def test_case2_output_cannot_be_the_store_root(victim, capsys):
    _refused(victim, capsys, "SELECT 1 AS x", "--output", str(victim.root), expect="the store itself")


def test_case2_output_through_a_symlink_into_the_store(victim, capsys):
    link = victim.outside / "innocent"
    link.symlink_to(victim.tables / "scans")
    _refused(victim, capsys, "SELECT 1 AS x", "--format", "parquet", "--output", str(link / "part-zz.parquet"),
             expect="inside the store")


def test_case2_copy_with_write_cannot_overwrite_a_part(victim, capsys):
    _refused(victim, capsys, "COPY scans TO '{part}' (FORMAT parquet)", "--write", expect="inside the store")


def test_case2_copy_with_write_cannot_add_a_part(victim, capsys):
    _refused(victim, capsys, "COPY (SELECT * FROM predictions) TO '{new}' (FORMAT parquet)", "--write",
             expect="inside the store")


def test_case2_copy_with_write_cannot_traverse_out_of_its_folder(victim, capsys):
    """PARTITION_BY with a FILENAME_PATTERN climbing out of the target folder into tables/scans."""
    climb = os.path.relpath(victim.tables / "scans" / "part-evil{{i}}", victim.outside / "out" / "label=x")
    _refused(victim, capsys, f"COPY (SELECT 'x' AS label, 1 AS v) TO 'out' (FORMAT parquet, PARTITION_BY label, "
             f"FILENAME_PATTERN '{climb}')", "--write")


def test_case2_copy_with_write_cannot_use_a_computed_target(victim, capsys):
    _refused(victim, capsys, "COPY scans TO ('{tables}/scans/' || 'part-zz.parquet')", "--write",
             expect="one plain quoted file name")


def test_case2_copy_and_output_outside_the_store_still_work(victim, capsys):
    status, out, err = _cli(capsys, "sql", "COPY (SELECT scan_id FROM scans) TO 'ids.parquet' (FORMAT parquet)",
                            "--write", "--store", str(victim.root))
    assert status == 0, err
    assert pq.read_table(victim.outside / "ids.parquet").num_rows == 40
    status, out, err = _cli(capsys, "sql", "SELECT * FROM scans", "--output", "all.csv", "--store", str(victim.root))
    assert status == 0 and "wrote 40 rows to all.csv" in out, err
    assert len((victim.outside / "all.csv").read_text().splitlines()) == 41
    victim.unchanged()


def test_case2_an_interrupted_output_leaves_the_previous_file_whole(victim, capsys, monkeypatch):
    target = victim.outside / "result.parquet"
    pq.write_table(pa.table({"old": [1, 2, 3]}), target)
    previous = target.read_bytes()

    def interrupted(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1" + b"\0" * 100)  # half a file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    status, _, _ = _cli(capsys, "sql", "SELECT * FROM scans", "--output", str(target), "--format", "parquet",
                        "--store", str(victim.root))
    assert status == 130
    assert target.read_bytes() == previous
    assert sorted(p.name for p in victim.outside.iterdir()) == ["result.parquet"]  # no temp file left
    victim.unchanged()


# --- case 7 (query side): a damaged part breaks only queries of its own table -----------------------
def _flip_data_pages(part: Path, column: str) -> None:
    """Corrupt the middle of ``column``'s first data page, leaving the footer readable."""
    meta = pq.ParquetFile(part).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(next(i for i, n in enumerate(names) if n.startswith(column)))
    start = chunk.data_page_offset + 24
    data = bytearray(part.read_bytes())
    for i in range(start, start + max(16, chunk.total_compressed_size - 48)):
        data[i] ^= 0x5A
    part.write_bytes(bytes(data))
    assert pq.ParquetFile(part).metadata.num_rows == meta.num_rows


@pytest.mark.parametrize("damage", ["junk part", "truncated part", "corrupt data pages"])
def test_case7_a_damaged_part_breaks_only_its_own_table(victim, capsys, damage):
    if damage == "junk part":
        bad = victim.tables / "efficientnet_b0" / "part-99999999999999999999-junk0000.parquet"
        bad.write_bytes(b"PAR1 this is not a parquet file" * 4)
    elif damage == "truncated part":
        bad = victim.feature_part
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        bad = victim.feature_part
        _flip_data_pages(bad, "embedding")
    victim.before = _digest(victim.root)
    root = str(victim.root)
    status, out, err = _cli(capsys, "sql", "SELECT count(*) AS n FROM scans", "--store", root)
    assert status == 0 and "40" in out, err
    status, out, err = _cli(capsys, "sql", "SELECT * FROM runs", "--store", root)
    assert status == 0 and "(1 row)" in out, err
    queries = ["SELECT sum(list_sum(embedding)) AS s FROM efficientnet_b0"]
    if damage != "corrupt data pages":  # an unreadable footer fails every query of the table, filtered or not
        queries += ["SELECT count(*) FROM efficientnet_b0 WHERE scan_id = 'none'",
                    "SELECT s.scan_id FROM scans s JOIN efficientnet_b0 e USING (scan_id) LIMIT 1"]
    for sql in queries:
        err = _refused(victim, capsys, sql, expect=str(bad))
        assert "check --repair" in err and "efficientnet_b0" in err


def test_case7_damaged_part_error_class(victim):
    from features.errors import DamagedPartError
    from store.sql import query

    (victim.tables / "efficientnet_b0" / "part-99999999999999999999-junk0000.parquet").write_bytes(b"junk")
    with pytest.raises(DamagedPartError, match="junk0000"):
        query(victim.store, "SELECT count(*) FROM efficientnet_b0")
    assert query(victim.store, "SELECT count(*) AS n FROM scans").to_pylist() == [{"n": 40}]


# --- case 10 (predict's output options) ------------------------------------------------------------
def test_case10_predict_hint_names_only_options_predict_accepts(victim, capsys):
    status, out, err = _cli(capsys, "predict", "--run", victim.run, "--dataset", DATASET, "--max-rows", "3",
                            "--store", str(victim.root))
    assert status == 0, err
    hint = next(line for line in out.splitlines() if "more rows not shown" in line)
    named = set(re.findall(r"--[a-z][a-z-]+", hint))
    assert named and named <= {"--max-rows", "--output", "--format"}, hint
    status, out, err = _cli(capsys, "predict", "--run", victim.run, "--dataset", DATASET, "--output", "scores.csv",
                            "--store", str(victim.root))
    assert status == 0 and "wrote 40 rows to scores.csv" in out, err
    lines = (victim.outside / "scores.csv").read_text().splitlines()
    assert len(lines) == 41 and "proba" in lines[0] and "in_training" in lines[0]
    status, out, err = _cli(capsys, "predict", "--run", victim.run, "--dataset", DATASET, "--format", "json",
                            "--max-rows", "0", "--store", str(victim.root))
    assert status == 0 and len(out.splitlines()) == 40 and "scored 40 units" in err  # stdout holds only data
    victim.unchanged()


def test_case10_predict_output_inside_the_store_is_refused_before_scoring(victim, capsys):
    status, out, err = _cli(capsys, "predict", "--run", victim.run, "--dataset", DATASET, "--write",
                            "--output", str(victim.new_part), "--store", str(victim.root))
    victim.unchanged()  # nothing appended to 'predictions' either
    assert status == 2 and "inside the store" in err, err


# --- the real command line, in a subprocess ------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("sql", "SET log_query_path='{part}'; SELECT 2"),
    ("sql", "WITH x AS (COPY scans TO '{part}') SELECT 1"),
    ("sql", "SELECT 1 AS x", "--output", "{part}"),
    ("sql", "COPY scans TO '{part}' (FORMAT parquet)", "--write"),
], ids=["log_query_path", "cte-copy", "output-over-part", "write-copy-over-part"])
def test_cli_subprocess_refuses_and_keeps_the_store(victim, args):
    done = run_cli(*(victim.fill(a) for a in args), store=str(victim.root))
    victim.unchanged()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    check = run_cli("sql", "SELECT count(*) AS n FROM scans", "--format", "csv", store=str(victim.root))
    assert check.returncode == 0 and check.stdout.splitlines()[1] == "40"


def test_cli_subprocess_damaged_table_only(victim):
    (victim.tables / "efficientnet_b0" / "part-99999999999999999999-junk0000.parquet").write_bytes(b"junk")
    done = run_cli("sql", "SELECT count(*) AS n FROM scans", "--format", "csv", store=str(victim.root))
    assert done.returncode == 0 and done.stdout.splitlines()[1] == "40", done.stderr
    done = run_cli("sql", "SELECT count(*) FROM efficientnet_b0", store=str(victim.root))
    assert done.returncode == 2 and "junk0000" in done.stderr and "check --repair" in done.stderr
    assert "Traceback" not in done.stderr
