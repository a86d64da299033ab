"""``fit MODEL``: one entry point for every registered model, whatever it learns from.

Most models learn from feature tables (``classifiers.evaluate``: subject-grouped CV, held-out test
subjects, ensembles). A model class that learns from something else — the X-CNN from images, the
hierarchical head from specimen targets — says so by defining a classmethod
``fit_in_store(store, request) -> outcome``; ``fit`` calls it instead. Every outcome has
``summary_lines()``: what ``cli.py fit`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

from classifiers._registry import model_class
from store.layout import Store

__all__ = ["FitRequest", "FitOutcome", "fit"]


@dataclass(frozen=True)
class FitRequest:
    """Every option of ``cli.py fit``; None means "the model's or the dataset profile's default"."""

    model: str
    dataset: str | None = None
    target: str | None = None
    features: str | None = None
    members: str | None = None
    folds: int | None = None
    test_subjects: str | None = None
    seeds: int | None = None
    split: str = "auto"
    search: str = "none"
    augment: bool = False
    device: str | None = None
    reference: str | None = None
    timestamps: bool | None = None
    epochs: int | None = None

    @classmethod
    def from_options(cls, options: dict) -> FitRequest:
        """The request from a dict of parsed options (keys that are not fields are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})


class FitOutcome(Protocol):
    """What a fit returns: anything that can say what it did in lines of text."""

    def summary_lines(self) -> list[str]: ...


def fit(store: Store, request: FitRequest) -> FitOutcome:
    """Fit and judge ``request.model`` on ``request.dataset``; the run is written to ``store``."""
    cls = model_class(request.model)
    fit_in_store = getattr(cls, "fit_in_store", None)
    if fit_in_store is not None:
        return fit_in_store(store, request)
    from classifiers.evaluate import fit_features

    return fit_features(store, request)
