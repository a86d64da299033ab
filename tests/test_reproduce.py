"""``cli.py reproduce PAPER``: each seed paper's experiment as one command."""

from __future__ import annotations

import pytest

import cli
from classifiers.reproduce import PAPERS, ReproduceOptions, Reproduction, reproduce
from features.errors import ParameterError
from store.layout import open_store
from store.runs import list_runs


def test_every_seed_paper_has_one_reproduction_starting_with_its_demo_ingest():
    assert sorted(PAPERS) == ["chronomid", "crmo", "impc", "spine"]
    for name, paper in PAPERS.items():
        assert paper.dataset == name
        assert paper.steps[0][0] == f"ingest the demo dataset {name!r}"
        assert len(paper.steps) >= 2 and paper.result


def test_an_unknown_paper_is_refused_before_anything_runs(tmp_path):
    store = open_store(tmp_path / "store")
    with pytest.raises(ParameterError, match="'paper' parameter of reproduce must be one of"):
        Reproduction(store, "crmo2")
    assert not (tmp_path / "store" / "tables" / "scans").exists()


@pytest.mark.slow
def test_reproduce_crmo_prints_the_member_table_and_leaves_a_run(tmp_path, capsys):
    code = cli.main(["reproduce", "crmo", "--store", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert code == 0
    assert "== 4/4 the poster's voting ensemble" in out
    assert "members calibrated (sigmoid" in out  # no overconfident member outvotes the rest
    names = [line.split()[0] for line in out.splitlines()
             if line.startswith(("logistic ", "svm_rbf ", "naive_bayes ", "ensemble ")) and "±" in line]
    assert names[-1] == "ensemble" and {"svm_rbf", "naive_bayes"} <= set(names)
    assert "train error" in out and "reproduce crmo: done in" in out
    runs = list_runs(open_store(tmp_path / "store"))
    assert runs.num_rows == 1 and runs.column("model").to_pylist() == ["ensemble"]
    again = reproduce(open_store(tmp_path / "store"), "crmo", ReproduceOptions(progress=False))
    assert any("already there" in line for line in again.lines)  # extracted tables are found, not recomputed
    assert len(again.run_ids) == 1 and list_runs(open_store(tmp_path / "store")).num_rows == 2
