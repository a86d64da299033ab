"""Pairs only where there is a time course: single-time-point images make no (self-)pairs unless asked."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from features.dataset_layouts import get_layout, has_time_course, longitudinal_pairs
from features.errors import ParameterError
from store.ingest import ingest_dataset
from store.layout import open_store
from store.tables import read_table, table_exists
from tests._ingest_samples import write_dicom


def _rows(store, table, dataset):
    if not table_exists(store, table):  # a store whose only dataset has no pairs has no pairs table
        return []
    data = read_table(store, table)
    return data.filter(pc.equal(data.column("dataset"), dataset)).to_pylist()


def _scan(subject: str, time: int | None, k: int, *, view: str = "AP", slice_: int | None = None) -> dict:
    return {"scan_id": f"{subject}-{time}-{view}-{k}", "subject": subject, "time_index": time,
            "days_from_baseline": None if time is None else 7 * time, "view": view, "slice": slice_,
            "frame": 0, "path": f"{subject}/{time}/{view}/{k}.png", "label": "a" if k % 2 else "b"}


def test_single_time_points_make_no_pairs_unless_asked():
    layout = get_layout("generic")
    # 780 patients, one image each at time 0: the case that used to give 1,560 self-pairs
    scans = [_scan(f"P{i:03d}", 0, i) for i in range(780)]
    assert not has_time_course(scans, layout)
    assert longitudinal_pairs(scans, layout, "clinic") == ([], 0)
    on_request, unpaired = longitudinal_pairs(scans, layout, "clinic", self_pairs=True)
    assert len(on_request) == 1560 and unpaired == 0
    assert all(p["reference_scan_id"] == p["comparison_scan_id"] and p["interval_days"] == 0 for p in on_request)
    # two views of one visit, or several slices of one visit, are still one time point
    multiview = [_scan("P1", 0, 0, view="DV"), _scan("P1", 0, 1, view="LAT")]
    volume = [_scan("P2", 3, k, slice_=k) for k in range(4)]
    assert longitudinal_pairs(multiview + volume, layout, "clinic") == ([], 0)


def test_a_time_course_keeps_its_baseline_self_pairs():
    layout = get_layout("chronomid")
    followed = [_scan("A", t, k, slice_=k) for t in (0, 1) for k in range(2)]
    once = [_scan("B", 0, 0, slice_=0)]
    assert has_time_course(followed + once, layout)
    pairs, unpaired = longitudinal_pairs(followed + once, layout, "mice")
    selfs = [p for p in pairs if p["reference_scan_id"] == p["comparison_scan_id"]]
    # A's two baseline slices and B's single scan pair with themselves in both modes; A's week 1 pairs with week 0
    assert len(selfs) == 6 and len(pairs) == 6 + 4 and unpaired == 0
    without, _ = longitudinal_pairs(followed + once, layout, "mice", self_pairs=False)
    assert len(without) == 4 and all(p["reference_scan_id"] != p["comparison_scan_id"] for p in without)


@pytest.fixture()
def one_visit_folder(tmp_path):
    """Six patients, one visit each: two PNG views (manifest time 0) and DICOM files with a StudyDate."""
    root = tmp_path / "onevisit"
    root.mkdir()
    rng = np.random.default_rng(3)
    lines = ["path,subject,time,view,label"]
    for p in range(6):
        for view in ("AP", "LAT"):
            name = f"p{p}_{view}.png"
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / name)
            lines.append(f"{name},P{p},0,{view},{'sick' if p % 2 else 'well'}")
        write_dicom(root / f"dicom/p{p}.dcm", rng.integers(0, 4000, (8, 8), dtype=np.uint16),
                    patient_id=f"DCM-{p}", study_date="20240105")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_single_time_point_manifest_ingests_zero_pairs(tmp_path, one_visit_folder):
    store = open_store(tmp_path / "store")
    summary = ingest_dataset(store, "onevisit", root=one_visit_folder, progress=False)
    assert (summary.scans_rows, summary.failed, summary.pairs_rows) == (18, 0, 0)
    assert _rows(store, "pairs", "onevisit") == []
    assert {r["time_index"] for r in _rows(store, "scans", "onevisit")} == {0}
    assert "pairs 0 rows" in summary.summary_line() and "no repeated time points: no pairs" in summary.summary_line()

    asked = ingest_dataset(store, "onevisit", root=one_visit_folder, progress=False, self_pairs=True)
    assert asked.pairs_rows == 36 and asked.ingested == 0  # relabelling only: nothing decoded again
    assert "self-pairs on request" in asked.summary_line()
    pairs = _rows(store, "pairs", "onevisit")
    assert len(pairs) == 36 and all(p["reference_scan_id"] == p["comparison_scan_id"] for p in pairs)

    with pytest.raises(ParameterError, match="'self_pairs' parameter of ingest"):
        ingest_dataset(store, "onevisit", root=one_visit_folder, progress=False, self_pairs="yes")


def test_cli_self_pairs_option(tmp_path, one_visit_folder, cli):
    store = tmp_path / "store"
    default = cli("ingest", "--dataset", "onevisit", "--root", str(one_visit_folder), store=store)
    assert default.returncode == 0, default.stderr
    assert "pairs 0 rows, 0 unpaired slices (no repeated time points: no pairs; --self-pairs" in default.stdout
    asked = cli("ingest", "--dataset", "onevisit", "--root", str(one_visit_folder), "--self-pairs", store=store)
    assert asked.returncode == 0, asked.stderr
    assert "pairs 36 rows" in asked.stdout and "self-pairs on request" in asked.stdout
