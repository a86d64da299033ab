"""``fit``: the CRMO recipe end to end on synthetic tables, honest splits, determinism, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from classifiers.design import augmented_training, load_design
from classifiers.evaluate import fit_model
from classifiers.planning import plan_fit
from classifiers.predict import format_prediction_summary, predict
from classifiers.profiles import profile_for
from features.errors import (
    DatasetError,
    EvaluationError,
    ParameterError,
    TableNotFoundError,
)
from features.sets import parse_feature_set
from store.runs import list_runs, load_model, run_metrics, run_predictions, run_row
from store.sql import query
from store.tables import table_exists, table_kv_metadata
from tests.test_featuresets import (
    build_crmo_like,
    build_scans_like,
    build_specimens_like,
    write_pairs,
    write_scans,
)

OUTPUT_TABLES = ("runs", "metrics", "predictions")
FAST = {"progress": False, "n_boot": 100}


def _subjects_never_split(store, run_id):
    """Assert, from the stored predictions, that no subject is on both sides of any split of the run."""
    rows = run_predictions(store, run_id).to_pylist()
    model = run_row(store, run_id)["model"]
    rows = [r for r in rows if r["member"] == model]
    for seed in sorted({r["seed"] for r in rows}):
        cv = [r for r in rows if r["split"] in ("cv", "val") and r["seed"] == seed]
        test = {r["subject"] for r in rows if r["split"] == "test" and r["seed"] == seed}
        folds: dict[int, set] = {}
        for r in cv:
            folds.setdefault(r["fold"], set()).add(r["subject"])
        assert not test & {r["subject"] for r in cv}, "a test subject was used in training"
        for k, held in folds.items():  # a fold trains on every other fold's subjects
            trained = set().union(*(s for j, s in folds.items() if j != k))
            assert not held & trained, f"seed {seed} fold {k} shares subjects with its training folds"
        keys = [r["key"] for r in cv]
        assert len(keys) == len(set(keys)), "a unit was validated in two folds"


def test_crmo_recipe_end_to_end(tmp_store):
    build_crmo_like(tmp_store, n_subjects=30)
    result = fit_model(tmp_store, "ensemble", progress=False)  # default n_boot=1000
    text = "\n".join(result.summary_lines())
    assert "dataset 'crmo': the only dataset with feature tables" in text
    for line in ("logistic      on inception_v3:diff", "svm_rbf       on sift_bovw500:concat",
                 "naive_bayes   on sift_bovw500:concat", "[profile default]"):
        assert line in text
    summary = {e["member"]: e for e in result.summary}
    assert list(summary) == ["logistic", "svm_rbf", "naive_bayes", "ensemble"]
    table_lines = [
        line for line in text.splitlines() if line.startswith(("logistic ", "svm_rbf ", "naive_bayes ", "ensemble "))
    ]
    assert len(table_lines) == 4 and "±" in table_lines[-1]
    # the CNN difference carries the label: logistic and the ensemble beat chance (1/3) clearly
    assert summary["logistic"]["dev"]["accuracy"][0] > 0.6 and summary["ensemble"]["test"]["accuracy"][0] > 0.6

    run = run_row(tmp_store, result.run_id)
    assert (
        run["unit"] == "pairs" and run["target"] == "label" and run["members"] == ["logistic", "svm_rbf", "naive_bayes"]
    )
    for table in ("inception_v3", "sift_bovw500"):
        assert run["feature_hashes"][table] == table_kv_metadata(tmp_store, table)["chronofeat.params_hash"]
    assert run["classes"] == ["improved", "persisted", "regressed"]
    metrics = run_metrics(tmp_store, result.run_id).to_pylist()
    test_error = [m for m in metrics if m["member"] == "ensemble" and m["split"] == "test" and m["metric"] == "error"]
    assert len(test_error) == 1 and test_error[0]["ci_low"] <= test_error[0]["value"] <= test_error[0]["ci_high"]
    per_class = {
        m["class"] for m in metrics if m["metric"] == "auc" and m["member"] == "svm_rbf" and m["split"] == "test"
    }
    assert per_class <= {"improved", "persisted", "regressed"} and per_class
    _subjects_never_split(tmp_store, result.run_id)

    # SQL: predictions join back to pairs; the per-subject errors query of the README works
    joined = query(tmp_store, f"""
        SELECT p.subject, count(*) AS n, sum(CASE WHEN pr.y_pred <> pr.y_true THEN 1 ELSE 0 END) AS errors
        FROM predictions pr JOIN pairs p ON p.pair_id = pr.key AND p.subject = pr.subject
        WHERE pr.run_id = '{result.run_id}' AND pr.member = 'ensemble' AND pr.split = 'test'
        GROUP BY 1 ORDER BY errors DESC""")
    assert joined.num_rows == run["config"]["test_subjects"]["0"] and sum(joined.column("n").to_pylist()) > 0
    proba = query(tmp_store, f"SELECT proba['improved'] AS p FROM predictions WHERE run_id = '{result.run_id}' LIMIT 1")
    assert 0.0 <= proba.column("p")[0].as_py() <= 1.0

    # the saved model is the final one: it scores the held-out pairs exactly as the run did
    scored = predict(tmp_store, result.run_id, "crmo", members=True)
    assert scored.table.num_rows == 4 * run["n_units"]
    test_rows = {
        (r["member"], r["key"]): r["y_pred"]
        for r in run_predictions(tmp_store, result.run_id, split="test").to_pylist()
    }
    again = {
        (r["member"], r["key"]): r["y_pred"] for r in scored.table.to_pylist() if (r["member"], r["key"]) in test_rows
    }
    assert again == test_rows
    assert not any(r["in_training"] for r in scored.table.to_pylist() if (r["member"], r["key"]) in test_rows)
    assert "scored" in format_prediction_summary(scored)

    binary = fit_model(tmp_store, "ensemble", target="binary", **FAST)
    assert run_row(tmp_store, binary.run_id)["classes"] == ["improved", "persisted_or_regressed"]
    assert {e["member"] for e in binary.summary} == {"logistic", "svm_rbf", "naive_bayes", "ensemble"}
    assert [r["run_id"] for r in list_runs(tmp_store).to_pylist()] == [result.run_id, binary.run_id]


def test_every_split_kind_keeps_subjects_apart(tmp_store, tmp_path):
    data = build_crmo_like(tmp_store, n_subjects=30, dim=32, vocab=20, split_column=True)
    listed = sorted({r["subject"] for r in data["pairs"]})[:4]
    (tmp_path / "test_subjects.txt").write_text("# held out by hand\n" + "\n".join(listed) + "\n")
    runs = [
        fit_model(tmp_store, "logistic", **FAST),                                # CV + held-out test
        fit_model(tmp_store, "logistic", seeds=3, folds=3, **FAST),              # several seeds
        fit_model(tmp_store, "logistic", test_subjects="per-class", **FAST),     # ChronoMID rule
        fit_model(tmp_store, "logistic", split="given", **FAST),                 # the data's split
        fit_model(tmp_store, "logistic", test_subjects=0, folds=4, **FAST),      # CV only
        fit_model(tmp_store, "logistic", test_subjects=str(tmp_path / "test_subjects.txt"), **FAST),
    ]
    for result in runs:
        _subjects_never_split(tmp_store, result.run_id)
    seeds = run_predictions(tmp_store, runs[1].run_id, split="test").to_pylist()
    held = {s: {r["subject"] for r in seeds if r["seed"] == s} for s in (0, 1, 2)}
    assert held[0] != held[1] or held[1] != held[2]  # seeds draw different test subjects
    per_class = {
        r["subject"]: r["y_true"] for r in run_predictions(tmp_store, runs[2].run_id, split="test").to_pylist()
    }
    assert len(per_class) == 3  # one subject per class
    given = run_predictions(tmp_store, runs[3].run_id).to_pylist()
    assert {(r["split"], r["fold"]) for r in given if r["split"] != "test"} == {("val", 0)}  # the given val side
    assert not run_predictions(tmp_store, runs[4].run_id, split="test").num_rows
    assert {r["subject"] for r in run_predictions(tmp_store, runs[5].run_id, split="test").to_pylist()} == set(listed)


def test_given_split_sharing_a_subject_is_refused(tmp_store):
    build_crmo_like(tmp_store, n_subjects=20, dim=8, vocab=10, split_column=True)
    # one subject whose first pair is on the training side and whose second pair is a test pair
    sides = ("train", "train", "test")
    scans = [{"scan_id": f"x{i}", "pixel_sha256": f"p{i}", "dataset": "crmo", "subject": "shared", "time_index": i,
              "split": side} for i, side in enumerate(sides)]
    write_scans(tmp_store, scans, extra=[("split", pa.string())])
    write_pairs(tmp_store, [{"pair_id": f"pp{i}", "dataset": "crmo", "subject": "shared", "reference_scan_id": f"x{i}",
                             "comparison_scan_id": f"x{i + 1}", "reference_mode": "given", "label": "improved"}
                            for i in range(2)])
    from tests.test_featuresets import write_features

    write_features(tmp_store, "inception_v3", "scan_id", ["x0", "x1", "x2"], ["p0", "p1", "p2"], "embedding",
                   np.ones((3, 8)), dataset="crmo", params={"extractor": "cnn", "architecture": "inception_v3"})
    with pytest.raises(EvaluationError, match="both sides of the given"):
        fit_model(tmp_store, "logistic", split="given", features="inception_v3:diff", **FAST)
    assert not any(table_exists(tmp_store, t) for t in OUTPUT_TABLES)


def test_same_seed_same_metrics(tmp_store):
    build_crmo_like(tmp_store, n_subjects=24, dim=64, vocab=30)
    first = fit_model(tmp_store, "ensemble", folds=3, **FAST)
    second = fit_model(tmp_store, "ensemble", folds=3, **FAST)

    def values(run_id):
        return [{k: v for k, v in r.items() if k != "run_id"} for r in run_metrics(tmp_store, run_id).to_pylist()]

    assert values(first.run_id) == values(second.run_id) and len(values(first.run_id)) > 100
    predictions = [
        {k: v for k, v in r.items() if k != "run_id"} for r in run_predictions(tmp_store, first.run_id).to_pylist()
    ]
    assert predictions == [{k: v for k, v in r.items() if k != "run_id"}
                           for r in run_predictions(tmp_store, second.run_id).to_pylist()]
    third = fit_model(tmp_store, "ensemble", folds=3, seeds=2, **FAST)
    assert values(third.run_id) != values(first.run_id)


@pytest.mark.parametrize("kwargs, error, fix", [
    ({"features": "resnet50:diff"}, TableNotFoundError, "does not exist"),
    ({"members": "logistic=efficientnet_b3:diff"}, TableNotFoundError, "efficientnet_b3"),
    ({"folds": 40}, EvaluationError, "--folds"),
    ({"target": "nonexistent"}, EvaluationError, "Choose --target"),
    ({"dataset": "crmoo"}, DatasetError, "ingest"),
    ({"search": "exhaustive"}, ParameterError, "'search'"),
])
def test_bad_requests_are_clear_and_write_nothing(tmp_store, kwargs, error, fix):
    build_crmo_like(tmp_store, n_subjects=12, dim=8, vocab=10)
    with pytest.raises(error) as info:
        fit_model(tmp_store, "ensemble", **FAST, **kwargs)
    assert fix in str(info.value)
    assert not any(table_exists(tmp_store, t) for t in OUTPUT_TABLES)
    assert (
        not list((tmp_store.artifacts_dir / "models").glob("*"))
        if (tmp_store.artifacts_dir / "models").exists()
        else True
    )


def test_a_target_with_one_class_is_refused_and_writes_nothing(tmp_store):
    build_crmo_like(tmp_store, n_subjects=12, dim=8, vocab=10, one_class=True)
    with pytest.raises(EvaluationError) as info:
        fit_model(tmp_store, "ensemble", **FAST)
    assert "1 class(es) (only 'improved')" in str(info.value) and "--target" in str(info.value)
    assert not any(table_exists(tmp_store, t) for t in OUTPUT_TABLES)


def test_missing_default_member_is_left_out_and_said(tmp_store):
    build_crmo_like(tmp_store, n_subjects=18, dim=8, vocab=20, cnn_table=None, bovw_table="orb_bovw50")
    result = fit_model(tmp_store, "ensemble", **FAST)
    text = "\n".join(result.summary_lines())
    assert "NOTE: left out member logistic: no feature table for it (inception_v3:diff)" in text
    assert [e["member"] for e in result.summary] == ["svm_rbf", "naive_bayes", "ensemble"]
    assert "orb_bovw50:concat" in text  # 'or whatever BoVW table exists'
    with pytest.raises(TableNotFoundError, match="inception_v3"):  # named explicitly: an error
        fit_model(tmp_store, "logistic", features="inception_v3:diff", **FAST)


def test_dataset_is_picked_when_alone_and_asked_for_when_not(tmp_store):
    with pytest.raises(DatasetError, match="No dataset"):
        fit_model(tmp_store, "ensemble", **FAST)
    build_crmo_like(tmp_store, n_subjects=12, dim=8, vocab=10)
    build_scans_like(tmp_store, n_per_class=3, weeks=(0, 1))
    with pytest.raises(DatasetError) as info:
        fit_model(tmp_store, "ensemble", **FAST)
    assert "chronomid (efficientnet_b0)" in str(info.value) and "--dataset" in str(info.value)


def test_chronomid_profile_scans_with_time_and_one_mouse_per_class(tmp_store):
    build_scans_like(tmp_store, n_per_class=5, weeks=(0, 1, 3, 4, 5))
    result = fit_model(tmp_store, "logistic", folds=4, **FAST)
    text = "\n".join(result.summary_lines())
    assert "on efficientnet_b0+time" in text and "one subject per class" in text
    test = run_predictions(tmp_store, result.run_id, split="test").to_pylist()
    assert sorted({(r["subject"], r["y_true"]) for r in test}, key=lambda t: t[1])[0][1] == "pth"
    assert len({r["subject"] for r in test}) == 2
    model = load_model(tmp_store, result.run_id)
    assert model.feature_sets == ["efficientnet_b0+time"] and model.estimator.n_features_in_ == 33


def test_multilabel_specimen_target(tmp_store):
    build_specimens_like(tmp_store, n_subjects=60)
    result = fit_model(tmp_store, "logistic", target="level2", folds=3, **FAST)
    run = run_row(tmp_store, result.run_id)
    assert run["unit"] == "specimens" and run["classes"] == ["Ribcage", "Spine", "Whole-body"]
    assert run["n_units"] == 30  # level 2 is judged on the abnormal specimens only
    metrics = run_metrics(tmp_store, result.run_id).to_pylist()
    aucs = {m["class"]: m["value"] for m in metrics if m["metric"] == "auc" and m["split"] == "cv" and m["fold"] == -1}
    assert set(aucs) == {"Ribcage", "Spine", "Whole-body"} and min(aucs.values()) > 0.7
    assert any(m["metric"] == "auc_macro" for m in metrics)


def test_augmentation_swaps_pairs_with_mapped_labels_and_adds_noise(tmp_store):
    build_crmo_like(tmp_store, n_subjects=9, dim=8, vocab=10)
    design = load_design(tmp_store, "crmo", "pairs", [parse_feature_set("inception_v3:diff")],
                         profile_for("crmo").targets["binary"], reference_mode="given")
    train = np.arange(len(design.y))
    X, y, groups, notes = augmented_training(design, train, swap_labels=profile_for("crmo").swap_labels,
                                             noise=0.05, seed=0)
    n = len(train)
    assert X.shape == (4 * n, 8) and notes == []
    np.testing.assert_allclose(X[n:2 * n], -design.X)  # diff of the swapped pair
    raw = design.raw
    expect = ["improved" if r == "regressed" else "persisted_or_regressed" for r in raw]
    assert y[n:2 * n].tolist() == expect  # regressed <-> improved, then the binary map
    assert np.array_equal(groups[:2 * n], np.concatenate([design.subjects, design.subjects]))
    assert 0 < np.abs(X[2 * n:] - X[:2 * n]).mean() < 0.2 * np.abs(X[:2 * n]).mean()
    result = fit_model(tmp_store, "logistic", augment=True, folds=3, **FAST)
    assert json.loads(json.dumps(run_row(tmp_store, result.run_id)["config"]))["augment"] is True
    _subjects_never_split(tmp_store, result.run_id)


def test_plan_prints_profile_defaults_and_overrides(tmp_store):
    build_crmo_like(tmp_store, n_subjects=12, dim=8, vocab=10)
    plan = plan_fit(tmp_store, "ensemble", members="logistic=sift_bovw500:absdiff,knn")
    assert [(m.name, str(m.feature_set), m.source) for m in plan.members] == [
        ("logistic", "sift_bovw500:absdiff", "--members"), ("knn", "inception_v3:diff", "profile default")]
    plan = plan_fit(tmp_store, "stacking", features="inception_v3:concat")
    assert {str(m.feature_set) for m in plan.members} == {"inception_v3:concat"}
    with pytest.raises(ParameterError, match="--members is for"):
        plan_fit(tmp_store, "logistic", members="knn")
    exact = plan_fit(tmp_store, "ensemble", members="logistic=sift_bovw500:absdiff,svm_rbf", exact=True)
    assert {m.model: m.params.get("exact") for m in exact.members} == {"logistic": None, "svm_rbf": True}


def test_device_cuda_without_a_gpu_fails_before_any_work(tmp_store):
    from classifiers.models import cuda_available

    build_crmo_like(tmp_store, n_subjects=12, dim=8, vocab=10)
    with pytest.raises(ParameterError, match="--device cuda applies to models with a device"):
        plan_fit(tmp_store, "logistic", device="cuda")
    if cuda_available():
        pytest.skip("a CUDA device is present here")
    from features.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="device='cuda'"):
        fit_model(tmp_store, "xgboost", device="cuda", **FAST)
    assert not any(table_exists(tmp_store, t) for t in OUTPUT_TABLES)
