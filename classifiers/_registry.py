"""The model registry: one decorator registers a classifier class under a name.

Built-in families live in ``classifiers.models`` (logistic, svm_rbf, naive_bayes, random_forest,
xgboost, knn) and ``classifiers.ensemble`` (ensemble, stacking); a later module (a torch ``mlp``
head) registers itself the same way and is listed in ``_BUILTIN_MODULES``, imported when present.
"""

from __future__ import annotations

from features.registry import Registry

__all__ = ["register_model", "create_model", "model_class", "list_models", "is_ensemble"]

MODELS = Registry("model", builtin_modules=(
    "classifiers.models",
    "classifiers.ensemble",
    "classifiers.torch_heads",
))


def register_model(name: str):
    """Class decorator: register a classifier class as ``name`` (and set ``cls.name``)."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def model_class(name: str) -> type:
    """The class registered as ``name``; ``ParameterError`` listing the known names otherwise."""
    return MODELS.get(name)


def create_model(name: str, **params):
    """Build the model registered as ``name`` with keyword ``params`` (validated at once)."""
    return MODELS.create(name, **params)


def is_ensemble(name: str) -> bool:
    """True when the model registered as ``name`` combines members (voting or stacking)."""
    return bool(getattr(model_class(name), "combines_members", False))
