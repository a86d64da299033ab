"""The extractor registry: one decorator registers a class under a name."""

from __future__ import annotations

from collections.abc import Callable

from features.errors import ParameterError
from features.registry import Registry

__all__ = [
    "register_extractor", "create_extractor", "list_extractors", "extractor_class",
    "register_cli_alias", "cli_aliases", "build_from_options",
]

EXTRACTORS = Registry("extractor", builtin_modules=(
    "extractors.cnn",
    "extractors.bovw",
    "extractors.diffstats",
    "extractors.diffstats3d",
    "extractors.siamese",
    "extractors.cae",
    "extractors.volume_nets",
))


def register_extractor(name: str):
    """Class decorator: register an ``Extractor`` subclass as ``name`` (and set ``cls.name``)."""
    return EXTRACTORS.register(name)


def list_extractors() -> list[str]:
    """Names of every registered extractor, sorted."""
    return EXTRACTORS.names()


def extractor_class(name: str) -> type:
    """The class registered as ``name``; ``ParameterError`` listing the known names otherwise."""
    return EXTRACTORS.get(name)


def create_extractor(name: str, **params):
    """Build the extractor registered as ``name`` with keyword ``params`` (validated at once)."""
    return EXTRACTORS.create(name, **params)


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
    EXTRACTORS.load_builtins()
    return sorted(_CLI_ALIASES)


def build_from_options(alias: str, options: dict):
    """The extractor ``extract --extractor ALIAS`` means, configured from the CLI ``options``.

    ``options`` holds every ``extract`` option as parsed (None where not given); builders take the
    ones they understand and must reject, with ``ParameterError``, given options they cannot honour.
    """
    EXTRACTORS.load_builtins()
    if alias in _CLI_ALIASES:
        extractor = _CLI_ALIASES[alias](_Options(options))
    else:
        raise ParameterError(
            f"Unknown extractor {alias!r} for 'extract --extractor'. Known: {', '.join(cli_aliases())}."
        )
    extractor.validate_params()
    return extractor
