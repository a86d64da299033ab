"""Read-only SQL over the store, from the library and from the command line."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from features.errors import ReadOnlyQueryError
from store.provenance import part_metadata
from store.sql import query
from store.tables import write_part


@pytest.fixture
def store_with_scans(tmp_store):
    scans = pa.table(
        {
            "scan_id": [f"s{i}" for i in range(120)],
            "subject": [f"p{i % 7}" for i in range(120)],
            "label": [["improved", "persisted", "regressed"][i % 3] for i in range(120)],
        }
    )
    write_part(tmp_store, "scans", scans, metadata=part_metadata(producer="test"))
    return tmp_store


def _store_digest(store) -> str:
    digest = hashlib.sha256()
    for path in sorted(store.root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(store.root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_select_group_by(store_with_scans):
    result = query(store_with_scans, "SELECT label, count(*) AS n FROM scans GROUP BY 1 ORDER BY 1")
    assert result.to_pylist() == [
        {"label": "improved", "n": 40}, {"label": "persisted", "n": 40}, {"label": "regressed", "n": 40}
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE scans",
        "DROP VIEW scans",
        "COPY scans TO 'x.csv'",
        "DELETE FROM scans",
        "INSERT INTO scans VALUES ('a','b','c')",
        "UPDATE scans SET label = 'x'",
        "ATTACH 'other.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPORT DATABASE 'out'",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; DROP VIEW scans",
    ],
)
def test_statements_that_change_or_export_are_refused(store_with_scans, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _store_digest(store_with_scans)
    with pytest.raises(ReadOnlyQueryError, match="--write"):
        query(store_with_scans, sql)
    assert _store_digest(store_with_scans) == before
    assert not (tmp_path / "x.csv").exists()


def test_temporary_objects_are_allowed(store_with_scans):
    result = query(
        store_with_scans, "CREATE TEMP TABLE t AS SELECT subject FROM scans; SELECT count(DISTINCT subject) AS n FROM t"
    )
    assert result.to_pylist() == [{"n": 7}]


def test_cli_refuses_drop_and_copy_and_leaves_store_unchanged(store_with_scans, cli, tmp_path):
    before = _store_digest(store_with_scans)
    for sql in ("DROP TABLE scans", "COPY scans TO 'x.csv'"):
        done = cli("sql", sql, store=store_with_scans)
        assert done.returncode == 2, done.stderr
        assert "Refused" in done.stderr and "--write" in done.stderr
    assert _store_digest(store_with_scans) == before
    assert not list(tmp_path.rglob("x.csv"))


def test_cli_truncates_large_results_with_a_note(store_with_scans, cli, tmp_path):
    done = cli("sql", "SELECT * FROM scans", store=store_with_scans)
    assert done.returncode == 0, done.stderr
    assert "70 more rows not shown (120 in all)" in done.stdout
    assert len(done.stdout.splitlines()) < 60
    out = tmp_path / "all.csv"
    done = cli("sql", "SELECT * FROM scans", "--format", "csv", "--output", str(out), store=store_with_scans)
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 121


def test_cli_tables_and_show(store_with_scans, cli):
    done = cli("tables", store=store_with_scans)
    assert done.returncode == 0, done.stderr
    assert "scans" in done.stdout and "120" in done.stdout
    done = cli("show", "scans", store=store_with_scans)
    assert "120 rows in 1 part" in done.stdout and "producer" in done.stdout
    done = cli("show", "nope", store=store_with_scans)
    assert done.returncode == 2 and "no table 'nope'" in done.stderr
