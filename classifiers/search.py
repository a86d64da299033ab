"""Hyperparameter search inside training rows only (nested: the caller passes training rows).

``tune`` tries every combination of a model's ``search_space(level)`` on subject-grouped inner folds
of the rows it is given and returns an unfitted copy with the best parameters: the best mean over the
folds of ``metric`` (``SEARCH_METRICS``; default macro F1, multi-label: mean per-label AUC). An
ensemble's members are tuned one by one on their own columns. Test subjects are never passed here, so
they cannot influence any choice. ``describe_choices`` says what was chosen, in one line per seed.
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

__all__ = ["tune", "SEARCH_LEVELS", "SEARCH_METRICS", "default_search_metric", "describe_choices", "grid"]

SEARCH_LEVELS = ("none", "quick", "thorough")
# what --search-metric accepts: higher is better for every one (log_loss is scored as its negative)
SEARCH_METRICS = ("f1_macro", "accuracy", "balanced_accuracy", "roc_auc", "log_loss")


def default_search_metric(multilabel: bool) -> str:
    """The metric a search maximises when none is named: macro F1, or mean per-label AUC for multi-label."""
    return "roc_auc" if multilabel else "f1_macro"


def grid(space: dict[str, list]) -> list[dict]:
    """Every combination of ``space`` (``{name: values}``) as a list of parameter dicts, in order."""
    if not space:
        return [{}]
    names = list(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]


def _multilabel_score(proba: np.ndarray, y: np.ndarray, metric: str) -> float:
    from sklearn.metrics import roc_auc_score

    if metric == "roc_auc":
        scores = [roc_auc_score(y[:, j], proba[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        return float(np.mean(scores)) if scores else 0.0
    predicted = (proba >= 0.5).astype(int)
    if metric == "f1_macro":
        return float(f1_score(y, predicted, average="macro", zero_division=0.0))
    if metric == "log_loss":
        clipped = np.clip(proba, 1e-15, 1 - 1e-15)
        return float(np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return float((predicted == y).all(axis=1).mean())  # accuracy, balanced_accuracy: exact label sets


def _score(model, X, y, metric: str = "f1_macro") -> float:
    """``metric`` of ``model`` on (``X``, ``y``), higher is better (log_loss negated)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss, roc_auc_score

    if y.ndim == 2:
        return _multilabel_score(model.predict_proba(X), y, metric)
    if metric in ("roc_auc", "log_loss"):
        proba = model.predict_proba(X)
        classes = list(model.classes_)
        if metric == "log_loss":
            return -float(log_loss(y, proba, labels=classes))
        present = [j for j, c in enumerate(classes) if 0 < np.sum(y == c) < len(y)]
        return float(np.mean([roc_auc_score(y == classes[j], proba[:, j]) for j in present])) if present else 0.0
    predicted = model.predict(X)
    if metric == "accuracy":
        return float(accuracy_score(y, predicted))
    if metric == "balanced_accuracy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class absent from these rows
            return float(balanced_accuracy_score(y, predicted))
    return float(f1_score(y, predicted, average="macro", zero_division=0.0))


def _search_one(estimator, X, y, groups, *, level: str, seed: int, metric: str) -> tuple[object, dict, str | None]:
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
            scores.append(_score(model, X[held], y[held], metric))
        score = float(np.mean(scores))
        if score > best_score + 1e-12:  # ties keep the earlier (simpler) combination
            best, best_score = params, score
    return clone(estimator).set_params(**best), best, None


def tune(estimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, level: str, seed: int = 0,
         metric: str | None = None):
    """An unfitted copy of ``estimator`` with parameters chosen on inner folds of these rows.

    Returns ``(estimator, chosen, notes)``: ``chosen`` maps a model (or member) name to the parameters
    picked (``{}``: nothing to search, its defaults), ``notes`` lists searches that could not run.
    ``level`` is none | quick | thorough; ``metric`` one of ``SEARCH_METRICS`` (None: ``default_search_metric``).
    """
    if level not in SEARCH_LEVELS:
        raise ParameterError(
            f"The 'search' parameter of fit must be one of {', '.join(SEARCH_LEVELS)}. Got {level!r} instead."
        )
    metric = metric or default_search_metric(np.asarray(y).ndim == 2)
    if metric not in SEARCH_METRICS:
        raise ParameterError(
            f"The 'search_metric' parameter of fit must be one of {', '.join(SEARCH_METRICS)}. Got {metric!r} instead."
        )
    if level == "none":
        return clone(estimator), {}, []
    if getattr(estimator, "combines_members", False):
        members, chosen, notes = [], {}, []
        for name, member, (start, stop) in estimator.members:
            tuned, params, note = _search_one(member, X[:, start:stop], y, groups, level=level, seed=seed,
                                              metric=metric)
            members.append((name, tuned, (start, stop)))
            chosen[name] = params
            if note:
                notes.append(note)
        return clone(estimator).set_params(members=members), chosen, notes
    tuned, params, note = _search_one(estimator, X, y, groups, level=level, seed=seed, metric=metric)
    return tuned, {getattr(estimator, "name", "model"): params}, [note] if note else []


def describe_choices(level: str, metric: str, chosen: dict) -> list[str]:
    """Lines saying what ``--search level`` chose for the final model of each seed.

    ``chosen`` is ``{seed: {model or member: {parameter: value}}}`` (``runs.config['search_choices']``).
    """
    if level == "none":
        return []
    lines = [f"search {level}: parameters chosen by mean {metric} on subject-grouped inner folds of the final "
             "model's training rows (test subjects never seen):"]
    for seed, members in chosen.items():
        parts = []
        for name, params in members.items():
            text = ", ".join(f"{k}={v}" for k, v in params.items()) if params else "defaults (nothing to search)"
            parts.append(f"{name}: {text}")
        lines.append(f"  seed {seed}: " + "; ".join(parts))
    return lines
