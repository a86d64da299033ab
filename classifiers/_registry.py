"""The model registry: one decorator registers a classifier class under a name.

Built-in families live in ``classifiers.models`` (logistic, svm_rbf, naive_bayes, random_forest,
xgboost, knn) and ``classifiers.ensemble`` (ensemble, stacking); a later module (a torch ``mlp``
head, the X-CNN) registers itself the same way and is listed in ``MODELS``' built-in modules.
"""

from __future__ import annotations

from features.registry import Registry

__all__ = ["register_model", "create_model", "model_class", "list_models", "is_ensemble", "learns_from_features"]

MODELS = Registry("model", builtin_modules=(
    "classifiers.models",
    "classifiers.ensemble",
    "classifiers.torch_heads",
    "classifiers.xcnn",
    "classifiers.finetune",
))


# The registry's own methods, under the names the rest of chronofeat uses.
register_model = MODELS.register  # class decorator: register a classifier class as ``name`` (sets ``cls.name``)
list_models = MODELS.names  # every registered name, sorted
model_class = MODELS.get  # the class registered as ``name``; ParameterError listing the known names otherwise
create_model = MODELS.create  # build the model registered as ``name`` with keyword params (validated at once)


def is_ensemble(name: str) -> bool:
    """True when the model registered as ``name`` combines members (voting or stacking)."""
    return bool(getattr(model_class(name), "combines_members", False))


def learns_from_features(name: str) -> bool:
    """True when the model registered as ``name`` is fitted on feature-table rows (not from images or the store
    through its own ``fit_in_store``, as the X-CNN and the hierarchical head are)."""
    return not hasattr(model_class(name), "fit_in_store")
