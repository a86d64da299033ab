"""svm_rbf on many rows: the Nystroem approximation above ``approximate_above``, ``--exact`` keeps the SVC."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.svm import SVC

from classifiers._registry import create_model
from classifiers.models import NystroemSVC
from classifiers.planning import MemberPlan, _svm_scaling_text
from classifiers.request import FitRequest
from features.errors import ParameterError
from features.sets import parse_feature_set


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=800, n_features=40, n_informative=12, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.5, random_state=0)
    groups = np.arange(len(y)) // 2  # two rows per subject
    return X[:600], y[:600], groups[:600], X[600:], y[600:]


def _inner(model):
    return model.pipeline_.named_steps["model"].calibrated_classifiers_[0].estimator


def test_above_the_threshold_the_svm_is_approximated_and_predicts_well(data):
    X, y, groups, X_test, y_test = data
    model = create_model("svm_rbf", approximate_above=500, n_components=200, random_state=0).fit(X, y, groups)
    assert isinstance(_inner(model), NystroemSVC)
    proba = model.predict_proba(X_test)
    assert proba.shape == (200, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.mean(model.predict(X_test) == y_test) > 0.8
    assert model.get_params()["approximate_above"] == 500  # provenance records the threshold


def test_at_or_below_the_threshold_and_with_exact_the_svm_is_exact(data):
    X, y, groups, _, _ = data
    below = create_model("svm_rbf", approximate_above=600, random_state=0).fit(X, y, groups)
    exact = create_model("svm_rbf", approximate_above=10, exact=True, random_state=0).fit(X, y, groups)
    assert isinstance(_inner(below), SVC) and isinstance(_inner(exact), SVC)


def test_approximation_agrees_with_the_exact_svm(data):
    X, y, groups, X_test, _ = data
    approx = create_model("svm_rbf", approximate_above=100, n_components=400, random_state=0).fit(X, y, groups)
    exact = create_model("svm_rbf", random_state=0).fit(X, y, groups)
    assert np.mean(approx.predict(X_test) == exact.predict(X_test)) > 0.85


def test_soft_vote_ensemble_runs_with_an_approximated_member(data):
    X, y, groups, X_test, y_test = data
    members = [("svm", create_model("svm_rbf", approximate_above=100, n_components=200, random_state=0), (0, 40)),
               ("logistic", create_model("logistic"), (0, 40))]
    model = create_model("ensemble", members=members, voting="soft").fit(X, y, groups)
    proba = model.predict_proba(X_test)
    assert np.allclose(proba.sum(axis=1), 1.0) and np.mean(model.predict(X_test) == y_test) > 0.8


@pytest.mark.parametrize(("param", "value", "kind"), [
    ("approximate_above", 0, "an int in [1, inf)"), ("n_components", 0, "an int in [1, inf)"), ("exact", 1, "a bool")])
def test_bad_parameters_are_named_in_scikit_learn_words(data, param, value, kind):
    X, y, groups, _, _ = data
    message = f"The '{param}' parameter of SvmRbf must be {kind}. Got {value} instead."
    with pytest.raises(ParameterError, match=re.escape(message)):
        create_model("svm_rbf", **{param: value}).fit(X, y, groups)


def test_plan_text_says_when_the_approximation_is_used_and_exact_reaches_the_member():
    member = MemberPlan("svm_rbf", "svm_rbf", parse_feature_set("sift_bovw500:concat"), {}, "--features")
    assert _svm_scaling_text(member) == ("svm_rbf: above 20,000 training rows, Nystroem kernel approximation "
                                         "(n_components 1000) + linear SVM; --exact for the exact SVM")
    exact = MemberPlan("svm_rbf", "svm_rbf", member.feature_set, {"exact": True}, "--features")
    assert "exact RBF SVM at any row count" in _svm_scaling_text(exact)
    assert FitRequest.from_options({"model": "svm_rbf", "exact": True}).exact is True
