"""Hyperparameter search inside training rows only (nested: the caller passes training rows).

``tune`` tries every combination of a model's ``search_space(level)`` on subject-grouped inner folds
of the rows it is given and returns an unfitted copy with the best parameters (mean macro F1 over the
folds; multi-label: mean per-label AUC). An ensemble's members are tuned one by one on their own
columns. Test subjects are never passed here, so they cannot influence any choice.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score

from features.errors import ParameterError
from features.splits import inner_splits

__all__ = ["tune", "SEARCH_LEVELS", "grid"]

SEARCH_LEVELS = ("none", "quick", "thorough")


def grid(space: dict[str, list]) -> list[dict]:
    """Every combination of ``space`` (``{name: values}``) as a list of parameter dicts, in order."""
    if not space:
        return [{}]
    names = list(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]


def _score(model, X, y) -> float:
    if y.ndim == 2:
        from sklearn.metrics import roc_auc_score

        proba = model.predict_proba(X)
        scores = [roc_auc_score(y[:, j], proba[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        return float(np.mean(scores)) if scores else 0.0
    return float(f1_score(y, model.predict(X), average="macro", zero_division=0.0))


def _search_one(estimator, X, y, groups, *, level: str, seed: int) -> tuple[object, dict, str | None]:
    space = estimator.search_space(level) if hasattr(estimator, "search_space") else {}
    candidates = grid(space)
    if len(candidates) == 1:
        return clone(estimator), {}, None
    folds = inner_splits(y, groups, n_splits=3, seed=seed, grouped_only=True)
    if folds is None:
        return clone(estimator), {}, (
            f"{getattr(estimator, 'name', type(estimator).__name__)}: search skipped (some class has a single training "
            "subject, so no subject-grouped inner folds exist); defaults kept"
        )
    best, best_score = {}, -np.inf
    for params in candidates:
        scores = []
        for train, held in folds:
            model = clone(estimator).set_params(**params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X[train], y[train], groups[train] if groups is not None else None)
            scores.append(_score(model, X[held], y[held]))
        score = float(np.mean(scores))
        if score > best_score + 1e-12:  # ties keep the earlier (simpler) combination
            best, best_score = params, score
    return clone(estimator).set_params(**best), best, None


def tune(estimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, level: str, seed: int = 0):
    """An unfitted copy of ``estimator`` with parameters chosen on inner folds of these rows.

    Returns ``(estimator, chosen, notes)``: ``chosen`` maps a model (or member) name to the parameters
    picked, ``notes`` lists searches that could not run. ``level`` is none | quick | thorough.
    """
    if level not in SEARCH_LEVELS:
        raise ParameterError(
            f"The 'search' parameter of fit must be one of {', '.join(SEARCH_LEVELS)}. Got {level!r} instead."
        )
    if level == "none":
        return clone(estimator), {}, []
    if getattr(estimator, "combines_members", False):
        members, chosen, notes = [], {}, []
        for name, member, (start, stop) in estimator.members:
            tuned, params, note = _search_one(member, X[:, start:stop], y, groups, level=level, seed=seed)
            members.append((name, tuned, (start, stop)))
            chosen[name] = params
            if note:
                notes.append(note)
        return clone(estimator).set_params(members=members), chosen, notes
    tuned, params, note = _search_one(estimator, X, y, groups, level=level, seed=seed)
    return tuned, {getattr(estimator, "name", "model"): params}, [note] if note else []
