"""Feature sets: how stored feature tables combine into a model's X (pure: arrays in, arrays out).

A feature set is written ``TERM+TERM+...`` (``,`` works as ``+``); a term is ``TABLE``, ``TABLE:MODE`` or ``time``:

- ``inception_v3:diff`` — a per-image table (keyed by ``scan_id``) turned into one row per pair:
  ``diff`` = comparison - reference, ``absdiff`` = |comparison - reference|, ``concat`` = [reference,
  comparison], ``reference`` / ``comparison`` = one side only;
- ``diffstats_absolute`` — a table keyed by the unit itself (``pair_id`` for pairs, ``scan_id`` for
  scans, ``specimen_id`` for specimens), taken as it is;
- ``time`` — the integer time index (weeks/days, never normalised) as one more feature (ChronoMID).

Text starting with ``+`` (``+time``) extends a default feature set rather than replacing it.
A TABLE may also be a logical feature name (``inception_v3`` for ``inception_v3_bf16``); which table it
means is decided by ``store.feature_catalog`` before loading. The loading side (which rows, which pixels
are current) is ``store.featureset``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from features.errors import ParameterError

__all__ = [
    "PAIR_MODES",
    "FeatureTerm",
    "FeatureSet",
    "parse_feature_set",
    "extend_feature_set",
    "combine_pair",
    "Block",
    "assemble",
    "swappable",
    "column_to_matrix",
    "feature_columns",
    "KEY_COLUMNS",
    "UNIT_OF_KEY",
]

PAIR_MODES = ("diff", "absdiff", "concat", "reference", "comparison")
KEY_COLUMNS = ("scan_id", "pair_id", "specimen_id", "volume_id")
UNIT_OF_KEY = {"scan_id": "scans", "pair_id": "pairs", "specimen_id": "specimens", "volume_id": "volumes"}
_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SYNTAX = (
    "Write a feature set as TERM+TERM+..., each TERM a table name, TABLE:MODE (MODE one of "
    f"{', '.join(PAIR_MODES)}) or 'time'; e.g. 'inception_v3:diff', 'sift_bovw500:concat+time'."
)


@dataclass(frozen=True)
class FeatureTerm:
    """One stored table in a feature set, with the pair mode applied to it (None: as stored)."""

    table: str
    mode: str | None = None

    def __str__(self) -> str:
        return self.table if self.mode is None else f"{self.table}:{self.mode}"


@dataclass(frozen=True)
class FeatureSet:
    """Tables (with modes) whose features are placed side by side, plus the time index if ``time``."""

    terms: tuple[FeatureTerm, ...]
    time: bool = False

    def __str__(self) -> str:
        parts = [str(t) for t in self.terms] + (["time"] if self.time else [])
        return "+".join(parts)

    @property
    def tables(self) -> tuple[str, ...]:
        """The distinct tables this set reads, in order."""
        return tuple(dict.fromkeys(t.table for t in self.terms))

    @property
    def pair_modes(self) -> bool:
        """True when a term turns a per-image table into pair rows."""
        return any(t.mode is not None for t in self.terms)


def parse_feature_set(text: str) -> FeatureSet:
    """Parse ``'inception_v3:diff+time'`` into a ``FeatureSet``; ``ParameterError`` explains bad text."""
    if not isinstance(text, str) or not text.strip():
        raise ParameterError(f"A feature set must be non-empty text. Got {text!r} instead. {_SYNTAX}")
    terms: list[FeatureTerm] = []
    time = False
    for raw in re.split(r"[+,]", text.strip().lstrip("+")):
        token = raw.strip()
        if not token:
            continue
        if token == "time":
            time = True
            continue
        table, sep, mode = token.partition(":")
        if not _TABLE.match(table):
            raise ParameterError(f"Feature set {text!r}: {token!r} is not a table name. {_SYNTAX}")
        if sep and mode not in PAIR_MODES:
            raise ParameterError(f"Feature set {text!r}: unknown pair mode {mode!r}. {_SYNTAX}")
        term = FeatureTerm(table, mode or None)
        if term in terms:
            raise ParameterError(f"Feature set {text!r} names {term} twice. {_SYNTAX}")
        terms.append(term)
    if not terms:
        raise ParameterError(f"Feature set {text!r} names no table ('time' alone is not enough). {_SYNTAX}")
    return FeatureSet(tuple(terms), time)


def extend_feature_set(base: FeatureSet, text: str) -> FeatureSet:
    """``base`` extended by ``text`` when it starts with '+' (``'+time'``), else ``text`` parsed alone."""
    if not text.strip().startswith("+"):
        return parse_feature_set(text)
    extra = text.strip().lstrip("+")
    time = base.time
    terms = list(base.terms)
    for token in (t.strip() for t in re.split(r"[+,]", extra)):
        if token == "time":
            time = True
        elif token:
            term = parse_feature_set(token).terms[0]
            if term not in terms:
                terms.append(term)
    return FeatureSet(tuple(terms), time)


def combine_pair(reference: np.ndarray, comparison: np.ndarray, mode: str) -> np.ndarray:
    """One row per pair from the two images' feature rows (n, d) each, by ``mode`` (see module doc)."""
    if mode == "diff":
        return comparison - reference
    if mode == "absdiff":
        return np.abs(comparison - reference)
    if mode == "concat":
        return np.hstack([reference, comparison])
    if mode == "reference":
        return reference
    if mode == "comparison":
        return comparison
    raise ParameterError(f"Unknown pair mode {mode!r}; use one of {', '.join(PAIR_MODES)}.")


@dataclass(frozen=True)
class Block:
    """Features of one term for every unit: rows of ``matrix`` picked by ``index`` (per unit).

    For a pair mode, ``index`` picks the comparison image's row and ``ref_index`` the reference's.
    """

    name: str
    matrix: np.ndarray
    index: np.ndarray
    ref_index: np.ndarray | None = None
    mode: str | None = None

    @property
    def width(self) -> int:
        """Columns this block contributes to X (twice the table's width for ``concat``)."""
        d = self.matrix.shape[1]
        return 2 * d if self.mode == "concat" else d

    def build(self, rows: np.ndarray | None = None, *, swapped: bool = False) -> np.ndarray:
        """The block's X for units ``rows`` (all when None); ``swapped`` exchanges reference and comparison."""
        index = self.index if rows is None else self.index[rows]
        if self.mode is None:
            return self.matrix[index]
        ref_index = self.ref_index if rows is None else self.ref_index[rows]
        ref, cmp = self.matrix[ref_index], self.matrix[index]
        if swapped:
            ref, cmp = cmp, ref
        return combine_pair(ref, cmp, self.mode)


def swappable(blocks: list[Block]) -> bool:
    """True when every block can be rebuilt with the pair order reversed (only per-image pair modes can)."""
    return all(b.mode is not None for b in blocks)


def assemble(blocks: list[Block], time: np.ndarray | None = None, *, rows: np.ndarray | None = None,
             swapped: bool = False) -> np.ndarray:
    """X (n, sum of widths [+1]) as float32: the blocks side by side, then the time index if given."""
    parts = [b.build(rows, swapped=swapped) for b in blocks]
    if time is not None:
        t = time if rows is None else time[rows]
        parts.append(np.asarray(t, dtype=np.float32)[:, None])
    return (
        np.ascontiguousarray(np.hstack(parts), dtype=np.float32)
        if len(parts) > 1
        else np.asarray(parts[0], dtype=np.float32)
    )


def feature_columns(schema: pa.Schema) -> list[str]:
    """Feature columns of a stored table: float scalars and float (fixed-size) lists, in order.

    The key columns, ``source_sha256``, integer counts (``n_keypoints``) and every non-float column
    are left out: they describe a row rather than measure the image.
    """
    names = []
    for field in schema:
        if field.name in KEY_COLUMNS or field.name == "source_sha256":
            continue
        kind = field.type
        if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        if pa.types.is_floating(kind):
            names.append(field.name)
    return names


def column_to_matrix(column: pa.ChunkedArray | pa.Array, *, name: str = "column") -> np.ndarray:
    """A numeric column as a float32 matrix (n, d): scalars give d = 1, (fixed-size) lists give d = length.

    List values are taken from the child values buffer and reshaped without copying each row
    (one copy per chunk at most, to join chunks / convert dtype). Nulls and ragged lists raise
    ``ValueError`` naming the column.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    pieces = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise ValueError(f"Column {name!r} has {chunk.null_count} null row(s).")
        kind = chunk.type
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
            values = chunk.flatten()
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            offsets = chunk.offsets.to_numpy()
            lengths = np.diff(offsets)
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError(f"Column {name!r} has lists of different lengths ({lengths.min()}..{lengths.max()}).")
            width = int(lengths[0]) if len(lengths) else 0
            values = chunk.flatten()
        else:
            pieces.append(chunk.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)[:, None])
            continue
        if values.null_count:
            raise ValueError(f"Column {name!r} has null values inside its arrays.")
        flat = values.to_numpy(zero_copy_only=False)
        pieces.append(flat.astype(np.float32, copy=False).reshape(len(chunk), width))
    if not pieces:
        return np.zeros((0, 0), dtype=np.float32)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
