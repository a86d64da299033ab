"""Reports: the HTML page with its PNG plots, the summary table text and the runs list."""

from __future__ import annotations

import re

import pytest

from classifiers.evaluate import fit_model
from classifiers.report import format_runs, format_summary, write_report
from features.errors import StoreError
from store.runs import list_runs
from tests.test_featuresets import build_crmo_like, build_specimens_like

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_writes_html_and_the_pngs_it_shows(tmp_store, tmp_path):
    build_crmo_like(tmp_store, n_subjects=18, dim=16, vocab=20)
    result = fit_model(tmp_store, "ensemble", folds=3, progress=False, n_boot=100)
    path = write_report(tmp_store, result.run_id[:12])  # a unique prefix is enough
    assert path == tmp_store.root / "reports" / result.run_id / "index.html"
    page = path.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    for member in ("logistic", "svm_rbf", "naive_bayes", "ensemble"):
        assert f"roc_{member}.png" in images and f"confusion_{member}.png" in images
    assert "folds_f1_macro.png" in images
    for name in images:
        data = (path.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert "Member vs ensemble" in page and "inception_v3:diff" in page and "±" in page
    other = write_report(tmp_store, result.run_id, out_dir=tmp_path / "elsewhere")
    assert other.parent == tmp_path / "elsewhere" and (other.parent / "roc_ensemble.png").is_file()
    with pytest.raises(StoreError, match="python cli.py runs"):
        write_report(tmp_store, "r1999")


def test_report_of_a_multilabel_run_has_roc_curves_per_label(tmp_store):
    build_specimens_like(tmp_store, n_subjects=48)
    result = fit_model(tmp_store, "logistic", target="level2", folds=3, progress=False, n_boot=50)
    path = write_report(tmp_store, result.run_id)
    images = re.findall(r'<img src="([^"]+)"', path.read_text())
    assert "roc_logistic.png" in images and not any(i.startswith("confusion_") for i in images)
    assert all((path.parent / i).read_bytes().startswith(PNG_MAGIC) for i in images)


def test_summary_and_runs_text():
    def entry(member, dev, test, **extra):
        return {"member": member, "dev_split": "cv", "dev": dev, "test": test, "train": {}, "agreement": None,
                "n_test_subjects": 12, **extra}

    summary = [
        entry("logistic", {"accuracy": (0.8, 0.05, 5), "f1_macro": (0.75, 0.1, 5), "error": (0.25, 0.1, 5)},
              {"accuracy": (0.7, 0.0, 1, 0.5, 0.9), "error": (0.3, 0.0, 1, 0.1, 0.5)}),
        entry("ensemble", {"accuracy": (0.85, 0.04, 5)}, {}),
    ]
    text = format_summary(summary, title="run r1")
    lines = text.splitlines()
    assert lines[0] == "run r1" and lines[1].split()[:3] == ["member", "cv", "acc"]
    assert "0.800 ± 0.050" in text and "0.700 [0.50, 0.90]" in text
    assert "error = 1 - macro F1" not in text  # the CRMO footer comes from the profile, not by default
    assert lines[4].startswith("ensemble") and lines[4].count("-") >= 4
    crmo = format_summary(summary, metrics=("accuracy", "error"),
                          context={"metric_notes": ["error = 1 - macro F1 (CRMO poster)"], "folds": 5, "seeds": [0]})
    assert "error = 1 - macro F1 (CRMO poster)" in crmo and "5-fold subject-grouped" in crmo
    import pyarrow as pa

    from store.runs import RUNS

    assert "no runs yet" in format_runs(pa.Table.from_pylist([], schema=RUNS))


def test_runs_list_shows_each_fit(tmp_store):
    build_crmo_like(tmp_store, n_subjects=12, dim=8, vocab=10)
    result = fit_model(tmp_store, "logistic", folds=3, progress=False, n_boot=0)
    text = format_runs(list_runs(tmp_store))
    assert result.run_id in text and "crmo" in text and "logistic" in text and "pairs" in text
