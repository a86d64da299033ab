"""The model registry, each model's contract, ensembles, metrics with bootstrap intervals, the search."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from classifiers import create_model, is_ensemble, list_models, model_class
from classifiers.metrics import (
    bootstrap_weights,
    classification_metrics,
    multilabel_metrics,
    scores_from_confusion,
    weighted_auc,
    weighted_confusion,
)
from classifiers.models import cuda_available
from classifiers.search import grid, tune
from features.errors import BackendUnavailableError, EvaluationError, ParameterError

SINGLE = ("logistic", "svm_rbf", "naive_bayes", "random_forest", "xgboost", "knn")


def _data(n_per_class: int = 20, d: int = 6, seed: int = 0, shift: float = 3.0):
    """Three separable classes with string labels and 2 rows per subject."""
    rng = np.random.default_rng(seed)
    classes = np.array(["improved", "persisted", "regressed"])
    y = np.repeat(classes, n_per_class)
    X = rng.normal(size=(len(y), d)).astype(np.float32)
    for k in range(3):
        X[y == classes[k], k] += shift
    groups = np.array([f"s{i // 2}" for i in range(len(y))], dtype=object)
    return X, y, groups


def test_registry_lists_every_builtin_and_is_open():
    names = list_models()
    for name in SINGLE + ("ensemble", "stacking"):
        assert name in names
    assert is_ensemble("ensemble") and is_ensemble("stacking") and not is_ensemble("logistic")
    with pytest.raises(ParameterError, match="Unknown model 'lasso'"):
        model_class("lasso")


def test_parameters_are_checked_in_scikit_learn_wording():
    with pytest.raises(ParameterError) as info:
        create_model("logistic", C=0)
    assert str(info.value) == "The 'C' parameter of Logistic must be a float in (0, inf). Got 0 instead."
    with pytest.raises(ParameterError, match="'device' parameter of XGBoost"):
        create_model("xgboost", device="tpu")
    model = model_class("knn")(n_neighbors=-1)  # __init__ stores only; validation is explicit
    assert model.get_params()["n_neighbors"] == -1


@pytest.mark.parametrize("name", SINGLE)
def test_each_model_learns_separable_classes(name):
    X, y, groups = _data(n_per_class=40)
    params = {"n_estimators": 50, "n_jobs": 1} if name in ("random_forest", "xgboost") else {}
    model = create_model(name, **params)
    model.fit(X[::2], y[::2], groups[::2])
    proba = model.predict_proba(X[1::2])
    assert proba.shape == (len(X[1::2]), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(model.classes_) == ["improved", "persisted", "regressed"]
    assert accuracy_score(y[1::2], model.predict(X[1::2])) > 0.8
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "classes_")


def test_low_variance_features_are_learnt_on_training_rows_only():
    X, y, groups = _data()
    X[:, 5] = 0.0
    train, test = np.arange(0, len(y), 2), np.arange(1, len(y), 2)
    X[test, 5] = 100.0  # varies only outside training
    model = create_model("logistic").fit(X[train], y[train])
    assert model.pipeline_.named_steps["variance"].get_support().tolist() == [True] * 5 + [False]
    assert accuracy_score(y[test], model.predict(X[test])) > 0.8  # the test-only feature is ignored


def test_naive_bayes_kinds():
    X, y, _ = _data()
    assert create_model("naive_bayes").fit(np.abs(X), y).kind_ == "gaussian"
    nb = create_model("naive_bayes", kind="auto").fit(np.abs(X), y)
    assert nb.kind_ == "multinomial" and "scale" not in nb.pipeline_.named_steps
    assert create_model("naive_bayes", kind="auto").fit(X, y).kind_ == "gaussian"
    with pytest.raises(EvaluationError, match="non-negative"):
        create_model("naive_bayes", kind="multinomial").fit(X, y)


def test_single_class_and_constant_features_are_clear_errors():
    X, y, _ = _data()
    with pytest.raises(EvaluationError, match="single class"):
        create_model("logistic").fit(X, np.array(["a"] * len(y)))
    with pytest.raises(EvaluationError, match="variance_threshold"):
        create_model("logistic").fit(np.ones_like(X), y)


def test_multilabel_targets_get_one_model_per_label():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    Y = np.column_stack([(X[:, 0] > 0), (X[:, 1] > 0.5), np.zeros(80)]).astype(int)
    model = create_model("logistic").fit(X, Y)
    proba = model.predict_proba(X)
    assert proba.shape == (80, 3) and np.all(proba[:, 2] == 0.0)
    assert roc_auc_score(Y[:, 0], proba[:, 0]) > 0.95
    assert model.predict(X).shape == (80, 3)


def test_xgboost_cuda_is_refused_when_absent():
    if cuda_available():
        pytest.skip("a CUDA device is present here")
    X, y, _ = _data()
    with pytest.raises(BackendUnavailableError, match="device='cuda'"):
        create_model("xgboost", device="cuda").fit(X, y)


def _ensemble_data():
    X, y, groups = _data(d=4)
    noise = np.random.default_rng(5).normal(size=(len(y), 4)).astype(np.float32)
    return np.hstack([X, noise]), y, groups


@pytest.mark.parametrize("voting", ["soft", "hard"])
def test_voting_members_read_only_their_columns(voting):
    X, y, groups = _ensemble_data()
    members = [("signal", create_model("logistic"), (0, 4)), ("noise", create_model("knn", n_neighbors=3), (4, 8))]
    ensemble = create_model("ensemble", members=members, voting=voting, weights=[0.7, 0.3]).fit(
        X[::2], y[::2], groups[::2]
    )
    assert ensemble.members_["signal"].n_features_in_ == 4
    signal = accuracy_score(y[1::2], ensemble.member_predict("signal", X[1::2]))
    noise = accuracy_score(y[1::2], ensemble.member_predict("noise", X[1::2]))
    assert signal > 0.8 > noise
    assert accuracy_score(y[1::2], ensemble.predict(X[1::2])) >= signal - 0.05  # weights favour the informed member
    np.testing.assert_allclose(ensemble.predict_proba(X[1::2]).sum(axis=1), 1.0, rtol=1e-6)


def test_ensemble_parameters_are_validated():
    with pytest.raises(ParameterError, match="'members' parameter of VotingEnsemble"):
        create_model("ensemble", members=[("a", create_model("logistic"), (3, 1))])
    with pytest.raises(ParameterError, match="unique names"):
        create_model("ensemble", members=[("a", create_model("logistic"), (0, 1)), ("a", create_model("knn"), (0, 1))])


def test_stacking_learns_from_out_of_fold_member_probabilities():
    X, y, groups = _ensemble_data()
    members = [("signal", create_model("logistic"), (0, 4)), ("noise", create_model("naive_bayes"), (4, 8))]
    stack = create_model("stacking", members=members).fit(X[::2], y[::2], groups[::2])
    assert stack.final_.coef_.shape == (3, 6)
    assert accuracy_score(y[1::2], stack.predict(X[1::2])) > 0.8


# --- metrics ------------------------------------------------------------------------------------
def test_metrics_match_scikit_learn_and_intervals_bracket_them():
    rng = np.random.default_rng(3)
    classes = np.array(["a", "b", "c"])
    y = rng.choice(classes, 120)
    proba = rng.dirichlet(np.ones(3), 120)
    proba[np.arange(120), np.searchsorted(classes, y)] += 0.6
    proba /= proba.sum(axis=1, keepdims=True)
    pred = classes[proba.argmax(axis=1)]
    groups = np.array([f"s{i // 3}" for i in range(120)])
    rows = {
        (m.metric, m.cls): m for m in classification_metrics(y, pred, proba, classes, groups=groups, n_boot=300, seed=1)
    }
    assert rows[("accuracy", None)].value == pytest.approx(accuracy_score(y, pred))
    assert rows[("balanced_accuracy", None)].value == pytest.approx(balanced_accuracy_score(y, pred))
    assert rows[("mean_class_accuracy", None)].value == rows[("balanced_accuracy", None)].value
    f1 = f1_score(y, pred, average="macro")
    assert rows[("f1_macro", None)].value == pytest.approx(f1) and rows[("error", None)].value == pytest.approx(1 - f1)
    assert rows[("auc", "b")].value == pytest.approx(roc_auc_score(y == "b", proba[:, 1]))
    for key in (("accuracy", None), ("f1_macro", None), ("error", None), ("auc_macro", None), ("auc", "a")):
        row = rows[key]
        assert row.ci_low <= row.value <= row.ci_high and row.ci_low < row.ci_high
    assert sum(rows[("confusion", f"{t}->{p}")].value for t in classes for p in classes) == 120


def test_weighted_helpers_equal_scikit_learn_with_unit_weights():
    rng = np.random.default_rng(7)
    t, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    scores = scores_from_confusion(weighted_confusion(t, p, 3, np.ones((1, 50))))
    assert scores["accuracy"][0] == pytest.approx(accuracy_score(t, p))
    assert scores["f1_macro"][0] == pytest.approx(f1_score(t, p, average="macro"))
    assert scores["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(t, p))
    s = np.round(rng.random(50), 1)  # ties
    truth = rng.integers(0, 2, 50)
    assert weighted_auc(s, truth, np.ones((1, 50)))[0] == pytest.approx(roc_auc_score(truth, s))
    weights = bootstrap_weights(np.repeat(np.arange(10), 5), 4, seed=0)
    assert weights.shape == (4, 50) and np.all(weights.sum(axis=1) == 50)
    assert np.all(weights.reshape(4, 10, 5).std(axis=2) == 0)  # a subject's rows are drawn together


def test_multilabel_metrics_per_label_auc_and_mean():
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 2, (60, 3))
    proba = np.clip(Y * 0.3 + rng.random((60, 3)) * 0.8, 0, 1)
    rows = {(m.metric, m.cls): m for m in multilabel_metrics(Y, proba, ["Spine", "Ribcage", "Whole-body"],
                                                            groups=np.arange(60), n_boot=200)}
    aucs = [roc_auc_score(Y[:, j], proba[:, j]) for j in range(3)]
    assert rows[("auc", "Ribcage")].value == pytest.approx(aucs[1])
    assert rows[("auc_macro", None)].value == pytest.approx(np.mean(aucs))
    assert rows[("auc_macro", None)].ci_low < rows[("auc_macro", None)].value < rows[("auc_macro", None)].ci_high


# --- search -------------------------------------------------------------------------------------
def test_grid_and_tune_choose_inside_the_rows_given():
    assert grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    X, y, groups = _data(shift=0.8)
    tuned, chosen, notes = tune(create_model("knn"), X, y, groups, level="quick", seed=0)
    assert set(chosen["knn"]) == {"n_neighbors"} and tuned.n_neighbors == chosen["knn"]["n_neighbors"]
    assert not hasattr(tuned, "classes_") and notes == []
    members = [("lr", create_model("logistic"), (0, 3)), ("nn", create_model("knn"), (3, 6))]
    ensemble, chosen, _ = tune(create_model("ensemble", members=members), X, y, groups, level="quick", seed=0)
    assert set(chosen) == {"lr", "nn"} and chosen["lr"]["C"] == ensemble.members[0][1].C
    with pytest.raises(ParameterError, match="'search'"):
        tune(create_model("knn"), X, y, groups, level="exhaustive")
