"""Attacks on the store's own integrity: its secret (case 5), damaged parts (case 7), its location (case 10).

Every test drives the real ``cli.py`` in a subprocess (the exit status and the words on the terminal
are the promise) over a store built by a real ingest of DICOM files written with pydicom.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests._ingest_samples import write_dicom

REPO = Path(__file__).resolve().parents[2]
DATASET = "attackds"


def cli(*args: str, store: Path | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` (store through ``--store`` when given; ``$CHRONOFEAT_STORE`` never inherited)."""
    env = {k: v for k, v in os.environ.items() if k != "CHRONOFEAT_STORE"}
    env["CHRONOFEAT_NO_BOOTSTRAP"] = "1"
    extra = ["--store", str(store)] if store is not None else []
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args, *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _write_subject(root: Path, patient: int, visit: int, date: str) -> None:
    pixels = np.random.default_rng(patient * 10 + visit).integers(0, 4000, (16, 16)).astype(np.uint16)
    write_dicom(root / f"p{patient}" / f"visit{visit}.dcm", pixels, patient_id=f"PAT-{patient:04d}",
                patient_name=f"Doe^Pat{patient}", study_date=date, instance=1)


def _ingest(root: Path, store: Path) -> subprocess.CompletedProcess:
    return cli("ingest", "--dataset", DATASET, "--root", str(root), store=store)


def _scans(store: Path) -> list[tuple]:
    pattern = str(store / "tables" / "scans" / "part-*.parquet")
    return duckdb.sql(f"SELECT subject, path FROM read_parquet('{pattern}') ORDER BY path").fetchall()


@pytest.fixture
def ingested(tmp_path):
    """A dataset of 3 patients x 2 visits (DICOM) and a store holding its ingest: (data folder, store)."""
    root = tmp_path / "data"
    for patient in range(3):
        for visit, date in enumerate(("20240101", "20240301")):
            _write_subject(root, patient, visit, date)
    store = tmp_path / "store"
    done = _ingest(root, store)
    assert done.returncode == 0, done.stderr
    assert len({s for s, _ in _scans(store)}) == 3
    return root, store


# ------------------------------------------------------------------------------- case 5: the secret


def test_deleted_secret_refuses_ingest_and_restoring_it_works(ingested):
    root, store = ingested
    backup = (store / "secret").read_bytes()
    before = _scans(store)
    (store / "secret").unlink()
    _write_subject(root, 0, 2, "20240501")  # a third visit of patient 0 arrives
    done = _ingest(root, store)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "secret" in done.stderr and "missing" in done.stderr and "backup" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (store / "secret").exists(), "no new secret may be made for a store holding pseudonyms"
    assert _scans(store) == before
    (store / "secret").write_bytes(backup)
    os.chmod(store / "secret", 0o600)
    done = _ingest(root, store)
    assert done.returncode == 0, done.stderr
    rows = _scans(store)
    assert len(rows) == 7 and len({s for s, _ in rows}) == 3, "the new visit joins its patient's subject"


def test_changed_secret_refuses_ingest(ingested):
    root, store = ingested
    before = _scans(store)
    (store / "secret").write_bytes(os.urandom(32))
    _write_subject(root, 1, 2, "20240601")
    done = _ingest(root, store)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "secret" in done.stderr and "not the one" in done.stderr and "backup" in done.stderr
    assert "Traceback" not in done.stderr
    assert _scans(store) == before
    assert len({s for s, _ in _scans(store)}) == 3


def test_secret_is_private_and_a_readable_one_is_made_private(ingested):
    root, store = ingested
    assert stat.S_IMODE((store / "secret").stat().st_mode) == 0o600
    os.chmod(store / "secret", 0o644)
    done = _ingest(root, store)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((store / "secret").stat().st_mode) == 0o600
    assert "readable by other users" in done.stderr


# ------------------------------------------------------------------------------- case 7: damaged parts


@pytest.fixture
def damaged(ingested):
    """The copy with a truncated part and a junk part added to ``scans``."""
    root, store = ingested
    scans = store / "tables" / "scans"
    [good] = sorted(scans.glob("part-*.parquet"))
    truncated = scans / "part-00000000000000000001-truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = scans / "part-99999999999999999999-junk.parquet"
    junk.write_bytes(b"this is not parquet at all\n" * 20)
    return root, store, truncated, junk


def test_damaged_part_tables_lists_the_others_and_flags_it(damaged):
    _, store, truncated, junk = damaged
    done = cli("tables", store=store)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "pairs" in lines and "datasets" in lines
    assert "DAMAGED" in lines["scans"] and "check" in lines["scans"]
    assert "DAMAGED" not in lines["pairs"]


def test_damaged_part_show_names_it_and_other_tables_work(damaged):
    _, store, truncated, junk = damaged
    done = cli("show", "scans", store=store)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert truncated.name in done.stderr and junk.name in done.stderr
    assert "check --repair" in done.stderr and "Traceback" not in done.stderr
    done = cli("show", "pairs", store=store)
    assert done.returncode == 0, done.stderr
    assert "pairs:" in done.stdout or "table pairs" in done.stdout


def test_damaged_part_ingest_refuses_clearly(damaged):
    root, store, truncated, _ = damaged
    done = _ingest(root, store)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert truncated.name in done.stderr and "check --repair" in done.stderr
    assert "Traceback" not in done.stderr and "ArrowInvalid" not in done.stderr


def test_check_finds_repair_quarantines_and_says_what_to_rerun(damaged):
    root, store, truncated, junk = damaged
    done = cli("check", store=store)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert truncated.name in done.stdout and junk.name in done.stdout
    assert truncated.exists() and junk.exists(), "check alone changes nothing"

    done = cli("check", "--repair", store=store)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert f"python cli.py ingest --dataset {DATASET}" in done.stdout
    quarantine = store / "quarantine" / "scans"
    assert (quarantine / truncated.name).is_file() and (quarantine / junk.name).is_file()
    assert not truncated.exists() and not junk.exists()
    moved = [json.loads(line) for line in (store / "quarantine" / "manifest.jsonl").read_text().splitlines()]
    assert {Path(m["from"]).name for m in moved} == {truncated.name, junk.name}
    assert all(m["problem"] and m["to"].startswith("quarantine/scans/") for m in moved)

    done = cli("check", store=store)
    assert done.returncode == 0, done.stdout
    assert "no problems" in done.stdout
    assert cli("show", "scans", store=store).returncode == 0
    assert _ingest(root, store).returncode == 0


# ------------------------------------------------------------------------------- case 10: where a store may live


@pytest.fixture
def source_tree(tmp_path):
    """A git work tree shaped like this project: packages ``store/`` and ``features/``, ``featurestore/`` ignored."""
    tree = tmp_path / "project"
    for package in ("store", "features"):
        (tree / package).mkdir(parents=True)
        (tree / package / "__init__.py").write_text("")
    (tree / ".gitignore").write_text("featurestore/\n")
    (tree / "README.md").write_text("a project\n")
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tree)], check=True, capture_output=True, timeout=30)
        subprocess.run(["git", "-C", str(tree), "add", "."], check=True, capture_output=True, timeout=30)
    return tree


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if ".git" not in p.parts}


@pytest.mark.parametrize("where", ["store", "features/x"])
def test_store_inside_a_source_package_is_refused(source_tree, where):
    before = _listing(source_tree)
    done = cli("tables", "--store", where, cwd=source_tree)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "package" in done.stderr and "--force" in done.stderr and "Traceback" not in done.stderr
    assert _listing(source_tree) == before, "nothing may be written into the source tree"
    done = cli("tables", "--store", where, "--force", cwd=source_tree)
    assert done.returncode == 0, done.stderr
    assert (source_tree / where / "tables").is_dir()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_store_in_an_unignored_folder_of_a_work_tree_is_refused_and_ignored_one_is_fine(source_tree):
    before = _listing(source_tree)
    done = cli("tables", "--store", "mystore", cwd=source_tree)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "git" in done.stderr and ".gitignore" in done.stderr
    assert _listing(source_tree) == before
    done = cli("tables", cwd=source_tree)  # the default ./featurestore, ignored by git
    assert done.returncode == 0, done.stderr
    assert (source_tree / "featurestore" / "tables").is_dir()


def test_this_repositorys_own_package_is_refused_and_its_default_store_is_not():
    from features.errors import UnsafeLocationError
    from store.location import check_store_location

    for inside in (REPO / "store", REPO / "features" / "x", REPO / "store" / "tables"):
        with pytest.raises(UnsafeLocationError, match="package"):
            check_store_location(inside)
    if shutil.which("git") and (REPO / ".git").exists():
        check_store_location(REPO / "featurestore")  # ignored by .gitignore: allowed
