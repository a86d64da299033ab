"""End to end on the synthetic demos: ChronoMID canvas and difference statistics, CRMO bag of words.

Slow-ish (ingests two demos); the AUC of the late-week PTH vs wild-type classification is printed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from extractors import build_from_options
from extractors.diffstats import DiffStats
from extractors.runner import run_extraction
from features.canvas import canvas_offset, common_canvas, pad_to_canvas
from store.sql import query
from store.subjects import dataset_subject_split
from store.tables import read_table, table_kv_metadata
from store.vocabulary import list_vocabularies

pytestmark = pytest.mark.slow

LATE_WEEKS = 7  # PTH starts at week 4 and thickens the cortex progressively


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from store.ingest import ingest_dataset
    from store.layout import open_store

    store = open_store(tmp_path_factory.mktemp("handcrafted_demo"))
    ingest_dataset(store, "chronomid", progress=False)
    ingest_dataset(store, "crmo", progress=False)
    return store


def test_chronomid_images_of_varying_sizes_all_come_out_on_one_canvas(demo_store):
    from store.pixels import PixelReader

    scans = query(demo_store, "SELECT path, frame, rows, cols FROM scans WHERE dataset = 'chronomid'").to_pylist()
    shapes = {(r["rows"], r["cols"]) for r in scans}
    assert len(shapes) > 10  # the operator crop really varies
    canvas = common_canvas(shapes)
    reader = PixelReader(demo_store, "chronomid")
    for row in scans[::4]:
        image = reader.read(row["path"], row["frame"])
        padded = pad_to_canvas(image, canvas)
        top, left = canvas_offset(image.shape, canvas)
        assert padded.shape == canvas
        np.testing.assert_array_equal(padded[top : top + image.shape[0], left : left + image.shape[1]], image)
        outside = np.ones(canvas, bool)
        outside[top : top + image.shape[0], left : left + image.shape[1]] = False
        assert np.all(padded[outside] == image.min())


class _LateWeeks(DiffStats):
    """diffstats restricted to the late weeks' pairs, to keep this test short."""

    def units(self, store, dataset):
        units = super().units(store, dataset)
        return units.filter(pc.greater_equal(units.column("time_index"), LATE_WEEKS))


def test_absolute_diffstats_separate_pth_from_wild_type_in_late_weeks(demo_store):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    extractor = _LateWeeks(reference="absolute", workers=2)
    summary = run_extraction(extractor, demo_store, dataset="chronomid", progress=False)
    assert summary.table == "diffstats_absolute" and summary.failed == 0 and summary.written > 100
    columns = extractor.column_names()
    rows = query(
        demo_store,
        "SELECT d.*, p.subject, p.label, p.time_index FROM diffstats_absolute d JOIN pairs p USING (pair_id)",
    ).to_pylist()
    assert {r["label"] for r in rows} == {"wild_type", "pth"} and min(r["time_index"] for r in rows) >= LATE_WEEKS
    features = np.array([[r[c] for c in columns] for r in rows])
    labels = np.array([r["label"] == "pth" for r in rows], int)
    subjects = np.array([r["subject"] for r in rows])
    assert np.isfinite(features).all()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_predict(model, features, labels, groups=subjects, cv=LeaveOneGroupOut(), method="predict_proba")[
        :, 1
    ]
    auc = roc_auc_score(labels, scores)
    print(f"\nchronomid late weeks (>= {LATE_WEEKS}): {len(rows)} pairs of {len(set(subjects))} mice, "
          f"leave-one-mouse-out logistic regression on diffstats_absolute: AUC = {auc:.3f}")
    assert auc >= 0.9  # chance is 0.5


@pytest.mark.parametrize("descriptor", ["sift", "orb", "kaze"])
def test_crmo_bag_of_words_tables_for_50_and_500_words(demo_store, descriptor):
    split = dataset_subject_split(demo_store, "crmo")
    n_scans = query(demo_store, "SELECT count(*) AS n FROM scans WHERE dataset = 'crmo'").to_pylist()[0]["n"]
    for size in (50, 500):
        extractor = build_from_options(f"{descriptor}_bovw", {"vocab_size": size, "workers": 2})
        extractor.set_params(progress=False)
        summary = run_extraction(extractor, demo_store, dataset="crmo", progress=False)
        assert summary.table == f"{descriptor}_bovw{size}" and summary.failed == 0
        table = read_table(demo_store, summary.table)
        assert table.num_rows == n_scans
        assert table.schema.field("histogram").type == pa.list_(pa.float32(), size)
        histograms = np.asarray(table.column("histogram").to_pylist())
        keypoints = np.asarray(table.column("n_keypoints").to_pylist())
        assert (keypoints > 0).all()
        np.testing.assert_allclose(histograms.sum(axis=1), 1.0, rtol=1e-4)
        vocabulary = extractor.vocabulary_
        assert table_kv_metadata(demo_store, summary.table)["chronofeat.vocabulary"] == vocabulary.sha256
        assert set(vocabulary.subjects) == set(split.train) and not set(vocabulary.subjects) & set(split.test)
        assert (histograms > 0).sum(axis=1).mean() > min(10, size / 5)  # words are actually used
    listed = {(r["descriptor"], r["vocab_size"]) for r in list_vocabularies(demo_store)}
    assert {(descriptor, 50), (descriptor, 500)} <= listed
