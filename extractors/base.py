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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pyarrow as pa
from sklearn.base import BaseEstimator

from store.failures import Failure
from store.layout import Store
from store.provenance import params_hash

__all__ = ["Extractor", "ExtractedBatch", "KeyColumn"]

KeyColumn = Literal["scan_id", "pair_id", "specimen_id"]


@dataclass
class ExtractedBatch:
    """Rows computed for some work units (``output_schema()``) and the units that failed."""

    rows: pa.RecordBatch | pa.Table
    failures: list[Failure] = field(default_factory=list)


class Extractor(BaseEstimator):
    """Base class of every registered extractor (see the module docstring for the protocol)."""

    name: ClassVar[str] = "extractor"

    # --- configuration -------------------------------------------------------------------
    def validate_params(self) -> None:
        """Raise ``ParameterError`` (scikit-learn wording) for any parameter out of range."""

    def key_column(self) -> KeyColumn:
        """Which key one output row carries: ``scan_id``, ``pair_id`` or ``specimen_id``."""
        return "scan_id"

    def config(self) -> dict:
        """What identifies this configuration: extractor name and every parameter."""
        return {"extractor": self.name, "params": self.get_params(deep=False)}

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
    def units(self, store: Store, dataset: str) -> pa.Table:
        """Work units of ``dataset``: key column, ``source_sha256`` and whatever ``transform`` needs."""
        raise NotImplementedError

    def prepare(self, store: Store, pending: pa.Table) -> None:
        """Check everything that can fail without pixels, then fit learned state (``*_``)."""

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        """Yield computed rows for ``pending`` units, batch by batch, in order."""
        raise NotImplementedError
