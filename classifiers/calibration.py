"""Probability calibration of a member on subject-grouped inner folds, so no member of a soft vote
dominates by overconfidence.

Gaussian naive Bayes on a few hundred BoVW columns says 0.999 or 0.001 for almost every unit; averaged
with a logistic regression and an SVM that say 0.6, it outvotes both every time and the "ensemble" is
naive Bayes alone. ``CalibratedMember`` wraps a member in scikit-learn's ``CalibratedClassifierCV``
(``ensemble=False``: the member's out-of-fold probabilities on subject-grouped inner folds of the
training rows — ``features.splits.inner_splits`` — fit a sigmoid (Platt) or isotonic map; the member
itself is then refitted on all training rows), so its probabilities say how often it is right.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from features.errors import EvaluationError, ParameterError, check_param, is_int

__all__ = ["CALIBRATION_METHODS", "CalibratedMember", "calibrated"]

CALIBRATION_METHODS = ("none", "sigmoid", "isotonic")


class CalibratedMember(ClassifierMixin, BaseEstimator):
    """``estimator`` with probabilities calibrated by ``method`` (sigmoid | isotonic) on ``folds``
    subject-grouped inner folds of the rows given to ``fit``.

    Learnt: ``calibrated_`` (the ``CalibratedClassifierCV``), ``classes_``; ``estimator_`` is the member
    refitted on every training row (``features_kept``, ``n_iter_`` and the like are read from it).
    """

    combines_members: ClassVar[bool] = False

    def __init__(self, estimator=None, *, method="sigmoid", folds=3, random_state=None):
        self.estimator = estimator
        self.method = method
        self.folds = folds
        self.random_state = random_state

    def validate_params(self) -> None:
        """``ParameterError`` for a method other than sigmoid / isotonic or fewer than 2 folds."""
        check_param("CalibratedMember", "method", self.method, kind="'sigmoid' or 'isotonic'",
                    ok=self.method in ("sigmoid", "isotonic"))
        check_param("CalibratedMember", "folds", self.folds, kind="an int in [2, inf)", ok=is_int(self.folds, 2))
        if hasattr(self.estimator, "validate_params"):
            self.estimator.validate_params()

    def check_available(self) -> None:
        """The wrapped member's backend check."""
        if hasattr(self.estimator, "check_available"):
            self.estimator.check_available()

    def fit(self, X, y, groups=None):
        """Calibrate ``estimator`` on subject-grouped inner folds of (``X``, ``y``); return ``self``."""
        from sklearn.calibration import CalibratedClassifierCV

        from features.splits import inner_splits

        self.validate_params()
        y = np.asarray(y)
        if y.ndim == 2:
            raise EvaluationError(
                "Probability calibration (--calibrate) is for single-label targets; this target is multi-label. "
                "Use --calibrate none."
            )
        seed = 0 if self.random_state is None else int(self.random_state)
        folds = inner_splits(y, groups, n_splits=self.folds, seed=seed)
        if folds is None:
            raise EvaluationError(
                f"--calibrate {self.method}: some class has a single training row, so no inner folds can calibrate "
                "its probabilities. Use --calibrate none, fewer held-out subjects, or more data."
            )
        params = {"groups": np.asarray(groups)} if groups is not None and _accepts_groups(self.estimator) else {}
        self.calibrated_ = CalibratedClassifierCV(clone(self.estimator), method=self.method, cv=folds, ensemble=False)
        self.calibrated_.fit(X, y, **params)
        self.classes_ = self.calibrated_.classes_
        self.estimator_ = self.calibrated_.calibrated_classifiers_[0].estimator
        self.n_features_in_ = int(np.asarray(X).shape[1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated class probabilities (n, k) in ``classes_`` order."""
        check_is_fitted(self)
        return self.calibrated_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def features_kept(self) -> tuple[int, int] | None:
        """(columns kept by the low-variance filter, columns in) of the refitted member, as it reports them."""
        check_is_fitted(self)
        kept = getattr(self.estimator_, "features_kept", None)
        return kept() if kept is not None else None


def _accepts_groups(model) -> bool:
    return "groups" in inspect.signature(model.fit).parameters


def calibrated(estimator, method: str, *, seed: int = 0):
    """``estimator`` wrapped in ``CalibratedMember(method)``, or itself unchanged for ``method='none'``."""
    if method not in CALIBRATION_METHODS:
        raise ParameterError(
            f"The 'calibrate' parameter must be one of {', '.join(CALIBRATION_METHODS)}. Got {method!r} instead.")
    return estimator if method == "none" else CalibratedMember(estimator, method=method, random_state=seed)
