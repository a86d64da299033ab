"""scikit-learn's estimator checks for every registered classifier that learns from a feature matrix.

Each model of the registry (``classifiers.list_models()``) is built small and fast and run through
``sklearn.utils.estimator_checks.parametrize_with_checks``, as is ``LowVarianceFilter``. Models that do
not take ``fit(X, y)`` with a 1-D ``y`` are left out, with the reason in ``NOT_ESTIMATOR_CHECKED``; a new
registered model is checked automatically (built with its defaults unless ``FAST_PARAMS`` says more).

Checks a model fails are listed per model in ``expected_failed_checks`` (strict xfail: a listed check
that passes fails the test, so the lists stay true), each with its reason: a deliberate difference from
scikit-learn's conventions (``DESIGN``, ``TREE_NAN``, ``EXTRA``).
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers import create_model, list_models, model_class
from classifiers._registry import learns_from_features
from classifiers.models import LowVarianceFilter

# Models whose fit is not fit(X, y) on a matrix: the estimator checks do not apply.
NOT_ESTIMATOR_CHECKED = {
    "hierarchical": "needs Y as a hierarchical 0/1 indicator with level column counts (levels=...), never 1-D y",
    "xcnn": "learns from images in the store (fit_in_store), not from a feature matrix",
}

_MEMBERS = ("logistic", "naive_bayes")  # ensembles: two quick members reading every column
FAST_PARAMS = {
    "random_forest": {"n_estimators": 10},
    "xgboost": {"n_estimators": 10},
    "mlp": {"max_epochs": 20},
}

# --- why checks fail ------------------------------------------------------------------------------------
DESIGN = {
    "check_supervised_y_2d": "a 2-D y is a multi-label 0/1 indicator (one model per label), not a column vector",
    "check_fit2d_1sample": "one training row is refused with chronofeat's own EvaluationError wording "
    "(a single class in the training rows, and what to do), not scikit-learn's",
    "check_class_weight_classifiers": "class_weight is validated as None or 'balanced' only; per-class dicts "
    "are refused on purpose",
}
TREE_NAN = {
    "check_estimators_nan_inf": "NaN is a missing value for tree models, as in scikit-learn's and XGBoost's own",
}
EXTRA = {
    "random_forest": TREE_NAN,
    "xgboost": TREE_NAN,
    "mlp": {
        "check_estimators_nan_inf": "contract gap (reported): NaN/inf in X are not refused before torch training",
        "check_classifiers_train": "contract gap (reported): X and y of different lengths are not refused",
    },
    "stacking": {
        "check_supervised_y_2d": "stacking refuses multi-label targets on purpose (use the voting 'ensemble')",
    },
}


def _build(name: str):
    params = dict(FAST_PARAMS.get(name, {}))
    if getattr(model_class(name), "combines_members", False):
        # (start, stop) column ranges are slices: a stop past the last column reads every column.
        params["members"] = [(member, create_model(member), (0, 1_000)) for member in _MEMBERS]
    return create_model(name, **params)


def _checked(names) -> list:
    """Every model that learns from a feature matrix: not listed in ``NOT_ESTIMATOR_CHECKED``, and without a
    ``fit_in_store`` (a model that learns from images in the store, as xcnn and finetune do, has no fit(X, y))."""
    return [_build(name) for name in names if name not in NOT_ESTIMATOR_CHECKED and learns_from_features(name)]


def expected_failed_checks(estimator) -> dict[str, str]:
    """Check name -> reason, for ``estimator`` (a registered model or the filter)."""
    if isinstance(estimator, LowVarianceFilter):
        return {}
    design = dict(DESIGN)
    if "class_weight" not in estimator.get_params():
        del design["check_class_weight_classifiers"]
    return {**design, **EXTRA.get(type(estimator).name, {})}


def test_every_registered_model_is_checked_or_has_a_reason():
    unchecked = set(NOT_ESTIMATOR_CHECKED) & set(list_models())
    assert all(NOT_ESTIMATOR_CHECKED[name] for name in unchecked)
    assert set(EXTRA) <= set(list_models())


# check_classifiers_regression_target: the models refuse the continuous y; the warning on the way is noise
QUIET = pytest.mark.filterwarnings("ignore:The number of unique classes is greater:UserWarning")


@QUIET
@parametrize_with_checks([*_checked(list_models()), LowVarianceFilter()], expected_failed_checks=expected_failed_checks,
                         xfail_strict=True)
def test_estimator_contract(estimator, check):
    check(estimator)

