"""``fit MODEL``: one entry point for every registered model, whatever it learns from.

Most models learn from feature tables (``classifiers.evaluate``: subject-grouped CV, held-out test
subjects, ensembles). A model class that learns from something else — the X-CNN from images, the
hierarchical head from specimen targets — says so by defining a classmethod
``fit_in_store(store, request) -> outcome``; ``fit`` calls it instead. Every outcome has
``summary_lines()``: what ``cli.py fit`` prints.
"""

from __future__ import annotations

from typing import Protocol

from classifiers._registry import learns_from_features, model_class
from classifiers.request import FitRequest
from store.layout import Store

__all__ = ["FitRequest", "FitOutcome", "fit"]


class FitOutcome(Protocol):
    """What a fit returns: anything that can say what it did in lines of text."""

    def summary_lines(self) -> list[str]: ...


def fit(store: Store, request: FitRequest) -> FitOutcome:
    """Fit and judge ``request.model`` on ``request.dataset``; the run is written to ``store``."""
    if not learns_from_features(request.model):
        return model_class(request.model).fit_in_store(store, request)
    from classifiers.evaluate import fit_features

    return fit_features(store, request)
