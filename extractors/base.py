"""The extractor contract shared by every feature family.

An extractor is a scikit-learn style estimator: ``__init__`` stores keyword arguments only,
``get_params()`` is its provenance, learned state (a vocabulary, loaded weights) ends in ``_``.
The runner (``extractors.runner``) drives it in four steps:

1. ``units(store, dataset)``   -> Arrow table of work items (key column + ``source_sha256`` + what
                                  ``transform`` needs), read from ``scans`` / ``pairs``;
2. ``prepare(store, pending)`` -> fail fast before any pixel is read (weights, nonfree OpenCV...),
                                  fit what must be fitted (vocabulary on training subjects only);
3. ``transform(store, pending)``-> yields ``ExtractedBatch`` (Arrow rows in ``output_schema()`` plus
                                  the failures of that batch), in order, streaming;
4. the runner writes parts to table ``table_name()`` with ``provenance()`` in their metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import pyarrow as pa
from sklearn.base import BaseEstimator

from features.errors import check_param, is_int
from store.failures import Failure
from store.layout import Store
from store.provenance import params_hash

__all__ = [
    "Extractor", "ExtractedBatch", "KeyColumn", "ParamRule", "check_params", "one_of", "int_in", "BOOL",
]

KeyColumn = Literal["scan_id", "pair_id", "specimen_id"]


@dataclass
class ExtractedBatch:
    """Rows computed for some work units (``output_schema()``) and the units that failed.

    ``units``: how many work units the batch accounts for, when that is not its rows plus its failures.
    """

    rows: pa.RecordBatch | pa.Table | None
    failures: list[Failure] = field(default_factory=list)
    units: int | None = None

    @property
    def done(self) -> int:
        """Work units this batch finished (computed or failed), for progress bars."""
        if self.units is not None:
            return self.units
        return (0 if self.rows is None else self.rows.num_rows) + len(self.failures)


# --- declarative parameter checks (scikit-learn's wording, through features.errors.check_param) ---------
class ParamRule(NamedTuple):
    """What one parameter must be: ``kind`` in words (``"an int in [1, inf)"``) and the test ``ok(value)``."""

    kind: str
    ok: Callable[[Any], bool]


BOOL = ParamRule("a bool", lambda value: isinstance(value, bool))


def one_of(choices: Collection, *, kind: str | None = None) -> ParamRule:
    """The value must be one of ``choices`` (``kind`` defaults to ``"a str among [...]"``)."""
    return ParamRule(kind or f"a str among {list(choices)}", lambda value: value in choices)


def int_in(low: int | None = None, high: int | None = None, *, optional: bool = False,
           kind: str | None = None) -> ParamRule:
    """An int (never a bool) in ``[low, high]`` (a bound that is None is open); None too when ``optional``.

    ``kind`` replaces the default words (``"an int in [low, high]"``, plus ``" or None"`` when optional).
    """
    if kind is None:
        kind = "an int" if low is None and high is None else (
            f"an int in [{'-inf' if low is None else low}, {'inf)' if high is None else f'{high}]'}"
        )
        kind += " or None" if optional else ""

    def ok(value) -> bool:
        if value is None:
            return optional
        return is_int(value, low) and (high is None or value <= high)

    return ParamRule(kind, ok)


def check_params(owner: str, values: Mapping[str, Any], rules: Mapping[str, ParamRule]) -> None:
    """Check each ``values[name]`` against ``rules[name]``, in the rules' order; the first failure raises
    ``ParameterError`` (``The 'name' parameter of OWNER must be KIND. Got VALUE instead.``)."""
    for name, rule in rules.items():
        value = values[name]
        check_param(owner, name, value, kind=rule.kind, ok=bool(rule.ok(value)))


class Extractor(BaseEstimator):
    """Base class of every registered extractor (see the module docstring for the protocol)."""

    name: ClassVar[str] = "extractor"
    # parameters that change how the work runs, never the features: left out of ``config()``
    _RUNTIME_PARAMS: ClassVar[tuple[str, ...]] = ()

    # --- configuration -------------------------------------------------------------------
    def validate_params(self) -> None:
        """Raise ``ParameterError`` (scikit-learn wording) for any parameter out of range."""

    def check_param_rules(self, rules: Mapping[str, ParamRule]) -> None:
        """``check_params`` over this extractor's parameters named in ``rules`` (owner: the class name)."""
        check_params(type(self).__name__, self.get_params(deep=False), rules)

    def key_column(self) -> KeyColumn:
        """Which key one output row carries: ``scan_id``, ``pair_id`` or ``specimen_id``."""
        return "scan_id"

    def feature_params(self) -> dict:
        """The parameters that change the features: every parameter but ``_RUNTIME_PARAMS``."""
        params = self.get_params(deep=False)
        for name in self._RUNTIME_PARAMS:
            params.pop(name, None)
        return params

    def config(self) -> dict:
        """What identifies this configuration: extractor name and every parameter that changes the features."""
        return {"extractor": self.name, "params": self.feature_params()}

    def config_hash(self) -> str:
        """12-hex hash of ``config()``; a changed parameter gives a new hash and a new table."""
        return params_hash(self.config())

    def table_name(self) -> str:
        """Feature table of this configuration: the name alone for defaults, else name + hash."""
        defaults = type(self)().get_params(deep=False)
        if self.get_params(deep=False) == defaults:
            return self.name
        return f"{self.name}_{self.config_hash()[:8]}"

    def output_schema(self) -> pa.Schema:
        """Arrow schema of the rows ``transform`` yields: key, ``source_sha256``, then features."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """Extra metadata for every part (weights identity, vocabulary artifact...); JSON-able."""
        return {}

    # --- work ------------------------------------------------------------------------------
    def for_dataset(self, store: Store, dataset: str) -> Extractor:
        """The extractor that serves ``dataset`` (the runner asks first): ``self``, unless a family adapts
        to the kind of data the dataset holds (``diffstats`` on volume pairs gives ``diffstats3d``)."""
        return self

    def units(self, store: Store, dataset: str) -> pa.Table:
        """Work units of ``dataset``: key column, ``source_sha256`` and whatever ``transform`` needs."""
        raise NotImplementedError

    def prepare(self, store: Store, pending: pa.Table) -> None:
        """Check everything that can fail without pixels, then fit learned state (``*_``)."""

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        """Yield computed rows for ``pending`` units, batch by batch, in order."""
        raise NotImplementedError
