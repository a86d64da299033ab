"""Ensembles over members that each read their own columns of X: soft/hard voting and stacking.

A member is ``(name, estimator, (start, stop))``: the estimator sees ``X[:, start:stop]`` only, so
one X (the feature sets of all members side by side) feeds members that use different feature sets —
the CRMO recipe: logistic on the CNN pair difference, SVM and naive Bayes on the BoVW concatenation.
Fitted members stay reachable (``members_``) so each can be judged on its own beside the ensemble.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.base import clone

from classifiers._registry import register_model
from classifiers.models import POSITIVE, ChronoClassifier, Rule, _is_number, int_rule, keep_params
from features.errors import EvaluationError, ParameterError, check_param, is_int
from features.splits import inner_splits

__all__ = ["VotingEnsemble", "StackingEnsemble", "align_proba"]


def align_proba(proba: np.ndarray, have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Reorder probability columns from classes ``have`` to classes ``want`` (absent classes get 0)."""
    out = np.zeros((proba.shape[0], len(want)), dtype=np.float64)
    position = {c: i for i, c in enumerate(want)}
    for j, c in enumerate(have):
        out[:, position[c]] = proba[:, j]
    return out


def _is_member(member) -> bool:
    """True for ``(name, estimator, (start, stop))`` with a fit/predict_proba estimator and 0 <= start < stop."""
    return (
        isinstance(member, (list, tuple)) and len(member) == 3 and isinstance(member[0], str)
        and hasattr(member[1], "fit") and hasattr(member[1], "predict_proba")
        and isinstance(member[2], (list, tuple)) and len(member[2]) == 2
        and all(is_int(v, 0) for v in member[2]) and member[2][0] < member[2][1]
    )


class _MemberEnsemble(ChronoClassifier):
    combines_members: ClassVar[bool] = True
    param_rules: ClassVar[dict[str, Rule]] = {}

    def validate_params(self) -> None:
        owner = type(self).__name__
        members = self.members
        ok = isinstance(members, (list, tuple)) and len(members) > 0
        check_param(owner, "members", members, kind="a non-empty list of (name, estimator, (start, stop))", ok=ok)
        for member in members:
            if not _is_member(member):
                raise ParameterError(
                    f"The 'members' parameter of {owner} must be a non-empty list of (name, estimator, "
                    f"(start, stop)). Got member {member!r} instead."
                )
        names = [m[0] for m in members]
        if len(set(names)) != len(names):
            raise ParameterError(f"The 'members' parameter of {owner} must have unique names. Got {names!r} instead.")
        for _, estimator, _ in members:
            if hasattr(estimator, "validate_params"):
                estimator.validate_params()
        super().validate_params()

    def check_available(self) -> None:
        for _, estimator, _ in self.members:
            if hasattr(estimator, "check_available"):
                estimator.check_available()

    @property
    def member_names(self) -> list[str]:
        """Names of the members, in order."""
        return [m[0] for m in self.members]

    def _columns(self, X: np.ndarray, columns) -> np.ndarray:
        return X[:, columns[0]:columns[1]]

    def _member_model(self, estimator):
        """The unfitted model a member is fitted as (a clone; ``VotingEnsemble`` may wrap it in calibration)."""
        return clone(estimator)

    def _fit_members(self, X, y, groups) -> dict:
        fitted = {}
        for name, estimator, columns in self.members:
            model = self._member_model(estimator)
            model.fit(self._columns(X, columns), y, groups) if _accepts_groups(model) else model.fit(
                self._columns(X, columns), y
            )
            fitted[name] = model
        return fitted

    def member_proba(self, name: str, X) -> np.ndarray:
        """Probabilities of fitted member ``name`` on ``X`` (the whole X), columns in ``classes_`` order."""
        X = np.asarray(X)
        columns = dict((m[0], m[2]) for m in self.members)[name]
        model = self.members_[name]
        proba = model.predict_proba(self._columns(X, columns))
        return proba if self.multilabel_ else align_proba(proba, model.classes_, self.classes_)

    def member_predict(self, name: str, X) -> np.ndarray:
        """Labels predicted by fitted member ``name`` on ``X`` (indicator rows for multi-label)."""
        return self.labels_from(self.member_proba(name, X))

    def member_features_kept(self, name: str) -> tuple[int, int] | None:
        """(columns kept by member ``name``'s low-variance filter, its columns in), or None when it has no filter."""
        kept = getattr(self.members_[name], "features_kept", None)
        return kept() if kept is not None else None


def _accepts_groups(model) -> bool:
    import inspect

    return "groups" in inspect.signature(model.fit).parameters


@register_model("ensemble")
class VotingEnsemble(_MemberEnsemble):
    """Soft (weighted mean probability) or hard (weighted majority) voting over members.

    ``weights``: one non-negative number per member (None: equal). ``calibrate``: 'sigmoid' or 'isotonic'
    fits every member through ``classifiers.calibration.CalibratedMember`` (subject-grouped inner folds),
    so a member whose raw probabilities are near 0/1 (Gaussian naive Bayes) cannot outvote the others by
    overconfidence alone; 'none' uses the members' own probabilities. Hard voting ties go to the class
    listed first in ``classes_``.
    """

    param_rules = {
        "voting": ("'soft' or 'hard'", lambda v: v in ("soft", "hard")),
        "calibrate": ("one of 'none', 'sigmoid', 'isotonic'", lambda v: v in ("none", "sigmoid", "isotonic")),
    }

    def __init__(self, *, members=(), voting="soft", weights=None, calibrate="none"):
        keep_params(self, locals())

    def _member_model(self, estimator):
        from classifiers.calibration import calibrated

        return calibrated(clone(estimator), self.calibrate, seed=int(getattr(estimator, "random_state", 0) or 0))

    def validate_params(self) -> None:
        super().validate_params()
        w = self.weights
        ok = w is None or (isinstance(w, (list, tuple)) and len(w) == len(self.members)
                           and all(_is_number(v, low=0) for v in w) and sum(w) > 0)
        check_param("VotingEnsemble", "weights", w, kind="None or one non-negative number per member", ok=ok)

    def fit(self, X, y, groups=None):
        """Fit every member on its columns of ``X``; return ``self``."""
        X, y, groups = self._fit_inputs(X, y, groups)
        self._set_classes(y)
        self.members_ = self._fit_members(X, y, groups)
        return self

    def _weights(self) -> np.ndarray:
        w = np.ones(len(self.members)) if self.weights is None else np.asarray(self.weights, dtype=float)
        return w / w.sum()

    def predict_proba(self, X) -> np.ndarray:
        """Soft: weighted mean of member probabilities. Hard: weighted share of member votes per class."""
        X = self._predict_inputs(X)
        weights = self._weights()
        total = None
        for weight, name in zip(weights, self.member_names, strict=True):
            if self.voting == "soft":
                part = self.member_proba(name, X)
            elif self.multilabel_:
                part = self.member_predict(name, X).astype(float)
            else:
                votes = self.member_predict(name, X)
                part = (votes[:, None] == self.classes_[None, :]).astype(float)
            total = weight * part if total is None else total + weight * part
        return total


@register_model("stacking")
class StackingEnsemble(_MemberEnsemble):
    """Stacking: a logistic regression learns from the members' out-of-fold probabilities.

    The out-of-fold probabilities come from subject-grouped folds inside the training rows
    (``inner_splits``), then every member is refitted on all training rows.
    """

    param_rules = {"final_C": POSITIVE, "folds": int_rule(2)}

    def __init__(self, *, members=(), final_C=1.0, folds=3):
        keep_params(self, locals())

    def _stack(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([self.member_proba(name, X) for name in self.member_names])

    def fit(self, X, y, groups=None):
        """Fit the final logistic regression on out-of-fold member probabilities, then the members."""
        from sklearn.linear_model import LogisticRegression

        X, y, groups = self._fit_inputs(X, y, groups)
        self._set_classes(y)
        if self.multilabel_:
            raise EvaluationError("stacking does not support multi-label targets; use 'ensemble' (voting) instead.")
        folds = inner_splits(y, groups, n_splits=self.folds, seed=0)
        if folds is None:
            raise EvaluationError(
                "stacking: some class has a single training row, so no out-of-fold probabilities can be "
                "made for it. Use 'ensemble' (voting), fewer folds, or more data."
            )
        stacked = np.zeros((len(y), len(self.members) * len(self.classes_)))
        for train, held in folds:
            self.members_ = self._fit_members(X[train], y[train], None if groups is None else groups[train])
            stacked[held] = self._stack(X[held])
        self.final_ = LogisticRegression(C=self.final_C, l1_ratio=0.0, max_iter=2000).fit(stacked, y)
        self.members_ = self._fit_members(X, y, groups)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities of the final logistic regression over the members' probabilities."""
        X = self._predict_inputs(X)
        return align_proba(self.final_.predict_proba(self._stack(X)), self.final_.classes_, self.classes_)
