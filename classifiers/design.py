"""The design of a fit: which units, their subjects and targets, and X for every feature set.

``load_design`` reads units (``store.featureset.load_units``), joins each distinct feature set
(``store.featureset.load_feature_set``), keeps the units that have every feature and a target value,
and places the feature sets side by side in one float32 X; ``columns`` says where each set lives, so
ensemble members can read their own set. ``augmented_training`` makes the CRMO augmentation of
training rows (pair order swapped with the label mapped, and noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from classifiers.profiles import TargetSpec
from features.errors import EvaluationError
from features.sets import FeatureSet, assemble, swappable
from store.featureset import (
    LoadedFeatureSet,
    feature_tables,
    load_feature_set,
    load_units,
)
from store.layout import Store

__all__ = ["Design", "load_design", "augmented_training", "label_text"]


def label_text(value, labels: list[str] | None = None) -> str | None:
    """A target value as stored in ``predictions``: the label, or a multi-label row as 'a|b' (sorted)."""
    if value is None:
        return None
    if labels is not None:  # indicator row
        return "|".join(label for label, v in zip(labels, value, strict=True) if v)
    return str(value)


@dataclass
class Design:
    """Units used by a fit (or a prediction) with their X, subjects and targets."""

    dataset: str
    unit: str
    reference_mode: str | None
    target: TargetSpec | None
    keys: np.ndarray
    subjects: np.ndarray
    raw: np.ndarray | None  # raw target column values (before mapping), object array
    y: np.ndarray | None  # labels (object, n) or multi-label indicator (n, L)
    classes: list[str]
    multilabel: bool
    split_values: np.ndarray | None
    X: np.ndarray
    columns: dict[str, tuple[int, int]]
    sets: list[LoadedFeatureSet]
    rows: np.ndarray  # positions in the units table
    notes: list[str] = field(default_factory=list)

    @property
    def table_hashes(self) -> dict[str, str | None]:
        """Configuration hash of every feature table read (``chronofeat.params_hash``)."""
        out: dict[str, str | None] = {}
        for loaded in self.sets:
            out.update(loaded.table_hashes)
        return out

    @property
    def can_swap(self) -> bool:
        """True when every feature set can be rebuilt with reference and comparison exchanged."""
        return self.unit == "pairs" and all(swappable(s.blocks) for s in self.sets)

    def swapped_X(self) -> np.ndarray:
        """X of the same units with each pair's order reversed (only when ``can_swap``)."""
        return _stack(self.sets, self.rows, swapped=True)


def _stack(sets: list[LoadedFeatureSet], rows: np.ndarray, *, swapped: bool = False) -> np.ndarray:
    """The feature sets' X of units ``rows``, side by side in order (one float32 array)."""
    if len(sets) == 1:
        return assemble(sets[0].blocks, sets[0].time, rows=rows, swapped=swapped)
    return np.hstack([assemble(s.blocks, s.time, rows=rows, swapped=swapped) for s in sets])


def _column(units: pa.Table, name: str) -> list:
    return units.column(name).to_pylist()


def _present(loaded: list[LoadedFeatureSet], n_units: int, unit: str) -> tuple[np.ndarray, list[str]]:
    """Units that have a current row in every feature set, and a note per set that misses some."""
    present = np.ones(n_units, dtype=bool)
    notes = []
    for item in loaded:
        missing = int((~item.present).sum())
        if missing:
            stale = sum(item.stale.values())
            bad = sum(item.nonfinite.values())
            detail = f" ({stale} computed from older pixels: re-run extract)" if stale else ""
            detail += f" ({bad} stored rows hold NaN/inf features)" if bad else ""
            notes.append(f"{missing} of {n_units} {unit} have no current row in {item.feature_set}{detail}; left out")
        present &= item.present
    return present, notes


@dataclass
class _TargetColumn:
    """The target column of the units: raw values, which units it keeps, whether it is multi-label."""

    raw: np.ndarray | None = None  # object array, one value per unit (None when there is no target column)
    keep: np.ndarray | None = None  # units that pass the target's filters (and, fitting, have a value)
    multilabel: bool = False
    notes: list[str] = field(default_factory=list)


def _target_column(units: pa.Table, target: TargetSpec | None, present: np.ndarray, *, unit: str, dataset: str,
                   require_target: bool, multilabel: bool | None) -> _TargetColumn:
    """Read ``target``'s column and filters from ``units`` (``present``: the units with every feature);
    ``EvaluationError`` when fitting needs a column the units lack."""
    if target is None or target.column not in units.column_names:
        if target is not None and require_target:
            raise EvaluationError(
                f"Target column {target.column!r} is not a column of the {unit} of {dataset!r} (columns: "
                f"{', '.join(c for c in units.column_names if c not in ('key', 'source_sha256'))}). "
                "Choose --target among them."
            )
        return _TargetColumn(multilabel=bool(multilabel))
    if multilabel is None:
        column_type = units.schema.field(target.column).type
        multilabel = pa.types.is_list(column_type) or pa.types.is_large_list(column_type)
    raw = np.array(_column(units, target.column), dtype=object)
    keep = present.copy()
    for column, value in target.where:
        if column not in units.column_names:
            raise EvaluationError(
                f"Target {target.name!r} filters on column {column!r}, which the {unit} of {dataset!r} lack."
            )
        keep &= np.array([v == value for v in _column(units, column)])
    values = raw if multilabel else [target.map_value(v) for v in raw]
    labelled = np.array([v is not None for v in values], dtype=bool)
    notes = []
    if require_target:
        unlabelled = int((keep & ~labelled).sum())
        if unlabelled:
            notes.append(f"{unlabelled} {unit} have no value for target {target.describe()}; left out")
        keep &= labelled
    return _TargetColumn(raw=raw, keep=keep, multilabel=bool(multilabel), notes=notes)


def _encode(raw: np.ndarray, target: TargetSpec, multilabel: bool, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """(y, label space) for the raw target values of the kept units; ``classes`` fixes the label space
    when not empty. Multi-label y is an (n, L) 0/1 indicator, else an object array of label text."""
    if multilabel:
        space = classes or sorted({str(label) for v in raw if v is not None for label in v})
        index = {label: j for j, label in enumerate(space)}
        y = np.zeros((len(raw), len(space)), dtype=np.int64)
        for i, value in enumerate(raw):
            for label in value or ():
                if str(label) in index:
                    y[i, index[str(label)]] = 1
        return y, space
    y = np.array([None if (m := target.map_value(v)) is None else str(m) for v in raw], dtype=object)
    return y, classes or sorted({v for v in y if v is not None})


def _check_classes(
    target: TargetSpec, space: list[str], multilabel: bool, n_rows: int, unit: str, dataset: str
) -> None:
    n_classes = len(space)
    if (not multilabel and n_classes < 2) or (multilabel and n_classes < 1):
        only = f" (only {space[0]!r})" if space else ""
        raise EvaluationError(
            f"Target {target.describe()} has {n_classes} class(es){only} among the {n_rows} {unit} of {dataset!r} "
            "with features; a classifier needs at least two. Choose another --target (e.g. a COLUMN=VALUE binary "
            "target), or ingest data with more than one class."
        )


def load_design(
    store: Store,
    dataset: str,
    unit: str,
    feature_sets: list[FeatureSet],
    target: TargetSpec | None,
    *,
    reference_mode: str | None = None,
    require_target: bool = True,
    classes: list[str] | None = None,
    multilabel: bool | None = None,
) -> Design:
    """Load the units of ``dataset`` and X for ``feature_sets`` (distinct sets, in order).

    With ``require_target`` (fitting) units without a target value are left out and at least two
    classes must remain; without it (predicting) every unit with features is kept and ``y`` holds the
    target where known. ``classes`` / ``multilabel`` fix the label space (a saved model's) instead of
    reading it from the data. Raises ``TableNotFoundError``, ``EvaluationError``, ``DatasetError``.
    """
    units = load_units(store, dataset, unit, reference_mode=reference_mode)
    tables = feature_tables(store)
    distinct = list(dict.fromkeys(feature_sets))
    loaded = [load_feature_set(store, fs, units, unit, tables=tables) for fs in distinct]
    keep, notes = _present(loaded, units.num_rows, unit)
    column = _target_column(units, target, keep, unit=unit, dataset=dataset, require_target=require_target,
                            multilabel=multilabel)
    notes += column.notes
    if column.keep is not None:
        keep = column.keep
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise EvaluationError(
            f"No {unit} of {dataset!r} have every feature of {', '.join(map(str, distinct))}"
            + (f" and a value for target {target.describe()}" if target is not None and require_target else "")
            + ". Run the extraction for this dataset (python cli.py extract ...) or choose other --features."
        )
    raw = y = None
    space = list(classes or [])
    if column.raw is not None:
        raw = column.raw[rows]
        y, space = _encode(raw, target, column.multilabel, space)
    if require_target and target is not None:
        _check_classes(target, space, column.multilabel, len(rows), unit, dataset)
    split_values = np.array(_column(units, "split"), dtype=object)[rows] if "split" in units.column_names else None
    columns, start = {}, 0
    for item in loaded:
        columns[str(item.feature_set)] = (start, start + item.width)
        start += item.width
    return Design(
        dataset=dataset, unit=unit, reference_mode=reference_mode, target=target,
        keys=np.array(_column(units, "key"), dtype=object)[rows],
        subjects=np.array(_column(units, "subject"), dtype=object)[rows],
        raw=raw, y=y, classes=space, multilabel=column.multilabel, split_values=split_values,
        X=_stack(loaded, rows), columns=columns, sets=loaded, rows=rows, notes=notes,
    )


def augmented_training(
    design: Design,
    train: np.ndarray,
    *,
    swap_labels: dict | None,
    noise: float,
    seed: int,
    X_swapped: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Training rows ``train`` plus augmented copies: (X, y, groups, notes).

    Swapped copies (pair order reversed, raw label mapped by ``swap_labels`` then by the target) are
    added when the design ``can_swap`` and every raw label has a swapped label; then one noisy copy of
    every row so far, Gaussian with ``noise`` x each feature's training standard deviation. Copies keep
    their subject, so they stay on the training side of every inner fold.
    """
    X, y, groups = design.X[train], design.y[train], design.subjects[train]
    notes: list[str] = []
    if design.can_swap and swap_labels and not design.multilabel and all(v in swap_labels for v in design.raw[train]):
        swapped = X_swapped if X_swapped is not None else design.swapped_X()
        y_swapped = np.array([str(design.target.map_value(swap_labels[v])) for v in design.raw[train]], dtype=object)
        X = np.vstack([X, swapped[train]])
        y = np.concatenate([y, y_swapped])
        groups = np.concatenate([groups, groups])
    else:
        notes.append(
            "pair-order swap not applied (needs per-image pair modes on pairs "
            "and a label map for swapped pairs); noise only"
        )
    if noise > 0:
        rng = np.random.default_rng(seed)
        scale = X.std(axis=0, dtype=np.float64).astype(np.float32) * np.float32(noise)
        noisy = X + rng.standard_normal(X.shape, dtype=np.float32) * scale
        X = np.vstack([X, noisy])
        y = np.concatenate([y, y]) if y.ndim == 1 else np.vstack([y, y])
        groups = np.concatenate([groups, groups])
    return X, y, groups, notes
