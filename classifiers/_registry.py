"""The model registry: one decorator registers a classifier class under a name.

Built-in families live in ``classifiers.models`` (logistic, svm_rbf, naive_bayes, random_forest,
xgboost, knn) and ``classifiers.ensemble`` (ensemble, stacking); a later module (a torch ``mlp``
head) registers itself the same way and is listed in ``_BUILTIN_MODULES``, imported when present.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from store.errors import ParameterError

__all__ = ["register_model", "create_model", "model_class", "list_models", "is_ensemble"]

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = (
    "classifiers.models",
    "classifiers.ensemble",
    "classifiers.torch_heads",
)
T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: register a classifier class as ``name`` (and set ``cls.name``)."""

    def decorate(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ParameterError(
                f"Model name {name!r} is already registered by {_REGISTRY[name].__module__}."
                f"{_REGISTRY[name].__qualname__}; choose another name for {cls.__qualname__}."
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing: say so
                raise


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def model_class(name: str) -> type:
    """The class registered as ``name``; ``ParameterError`` listing the known names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"Unknown model {name!r}. Known models: {', '.join(sorted(_REGISTRY))}.") from None


def create_model(name: str, **params):
    """Build the model registered as ``name`` with keyword ``params`` (validated at once)."""
    model = model_class(name)(**params)
    model.validate_params()
    return model


def is_ensemble(name: str) -> bool:
    """True when the model registered as ``name`` combines members (voting or stacking)."""
    return bool(getattr(model_class(name), "combines_members", False))
