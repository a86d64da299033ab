"""The extractor registry: one decorator registers a class under a name."""

from __future__ import annotations

from typing import Callable, TypeVar

from store.errors import ParameterError

__all__ = [
    "register_extractor", "create_extractor", "list_extractors", "extractor_class",
    "register_cli_alias", "cli_aliases", "build_from_options",
]

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = (
    "extractors.cnn",
    "extractors.bovw",
    "extractors.diffstats",
    "extractors.siamese",
    "extractors.cae",
)
T = TypeVar("T", bound=type)


def register_extractor(name: str) -> Callable[[T], T]:
    """Class decorator: register an ``Extractor`` subclass as ``name`` (and set ``cls.name``)."""

    def decorate(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ParameterError(
                f"Extractor name {name!r} is already registered by {_REGISTRY[name].__module__}."
                f"{_REGISTRY[name].__qualname__}; choose another name for {cls.__qualname__}."
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing: say so
                raise


def list_extractors() -> list[str]:
    """Names of every registered extractor, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def extractor_class(name: str) -> type:
    """The class registered as ``name``; ``ParameterError`` listing the known names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(
            f"Unknown extractor {name!r}. Known extractors: {', '.join(sorted(_REGISTRY))}."
        ) from None


def create_extractor(name: str, **params):
    """Build the extractor registered as ``name`` with keyword ``params`` (validated at once)."""
    extractor = extractor_class(name)(**params)
    extractor.validate_params()
    return extractor


# --- command-line names --------------------------------------------------------------------
# ``extract --extractor inception`` names a CLI alias; each family registers the aliases it serves
# with a builder that turns the parsed command-line options (a dict) into a configured extractor.
_CLI_ALIASES: dict[str, Callable[[dict], object]] = {}


class _Options(dict):
    """Command-line options: an option that was not given reads as None."""

    def __missing__(self, key):
        return None


def register_cli_alias(alias: str, builder: Callable[[dict], object]) -> None:
    """Let ``extract --extractor ALIAS`` build an extractor with ``builder(options)``."""
    _CLI_ALIASES[alias] = builder


def cli_aliases() -> list[str]:
    """Every name ``extract --extractor`` accepts, sorted."""
    _load_builtins()
    return sorted(_CLI_ALIASES)


def build_from_options(alias: str, options: dict):
    """The extractor ``extract --extractor ALIAS`` means, configured from the CLI ``options``.

    ``options`` holds every ``extract`` option as parsed (None where not given); builders take the
    ones they understand and must reject, with ``ParameterError``, given options they cannot honour.
    """
    _load_builtins()
    if alias in _CLI_ALIASES:
        extractor = _CLI_ALIASES[alias](_Options(options))
    else:
        raise ParameterError(
            f"Unknown extractor {alias!r} for 'extract --extractor'. Known: {', '.join(cli_aliases())}."
        )
    extractor.validate_params()
    return extractor
