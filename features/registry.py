"""One plugin registry: a decorator registers a class under a name; ``create`` builds it by name.

Both model families use it: ``classifiers._registry`` (``register_model``, ``create_model``) and
``extractors._registry`` (``register_extractor``, ``create_extractor``). The built-in plugins live in
modules imported on first look-up, so importing the registry stays cheap and a missing optional
dependency of one plugin module is reported by name instead of hiding every other plugin.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from features.errors import ParameterError

__all__ = ["Registry"]

T = TypeVar("T", bound=type)


class Registry:
    """Classes by name for one ``kind`` of plugin (``"model"``, ``"extractor"``).

    ``builtin_modules`` are imported before the first look-up; each registers its classes with
    ``register``. Unknown names raise ``ParameterError`` listing the known ones.
    """

    def __init__(self, kind: str, *, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.builtin_modules = builtin_modules
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class as ``name`` (and set ``cls.name``)."""

        def decorate(cls: T) -> T:
            known = self._classes.get(name)
            if known is not None and known is not cls:
                raise ParameterError(
                    f"{self.kind.capitalize()} name {name!r} is already registered by {known.__module__}."
                    f"{known.__qualname__}; choose another name for {cls.__qualname__}."
                )
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def load_builtins(self) -> None:
        """Import every built-in plugin module (a module missing one of its own imports raises)."""
        for module in self.builtin_modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # the module exists but one of its imports is missing: say so
                    raise

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self.load_builtins()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        """The class registered as ``name``; ``ParameterError`` listing the known names otherwise."""
        self.load_builtins()
        try:
            return self._classes[name]
        except KeyError:
            raise ParameterError(
                f"Unknown {self.kind} {name!r}. Known {self.kind}s: {', '.join(sorted(self._classes))}."
            ) from None

    def create(self, name: str, **params):
        """An instance of the class registered as ``name`` with keyword ``params``, validated at once."""
        instance = self.get(name)(**params)
        instance.validate_params()
        return instance
