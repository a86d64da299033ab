"""Subject-grouped splits: held-out test subjects, cross-validation folds, given splits, inner folds.

Every function here works on plain arrays (one entry per unit: scan, pair or specimen) and returns
row indices. No subject is ever on both sides of a split: each function either builds the split from
whole subjects or checks it (``check_disjoint``) and raises ``EvaluationError`` naming the fix.

``held_out_subjects`` is the one deterministic rule for "which subjects are the test set"; the BoVW
vocabulary's ``--vocab-split train`` must use the same function so that the vocabulary never sees a
test subject.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)

from features.errors import EvaluationError, InputError, ParameterError, check_param

__all__ = [
    "SPLIT_RULE",
    "SubjectSplit",
    "subject_labels",
    "split_subjects",
    "training_subjects",
    "HELD_OUT_RULES",
    "subject_majority_labels",
    "held_out_subjects",
    "Split",
    "HoldOut",
    "holdout_split",
    "cv_folds",
    "given_split",
    "inner_splits",
    "check_disjoint",
    "GIVEN_SPLIT_NAMES",
    "PER_CLASS_FRACTION",
]

HELD_OUT_RULES = ("per_class", "fraction", "none")
GIVEN_SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "holdout": "test", "held_out": "test",
}


def subject_majority_labels(subjects: Sequence[Hashable], labels: Sequence[Hashable]) -> dict:
    """Map each subject to its most frequent non-null label (ties: the smallest by ``str``; None if none).

    A subject's rows may carry several labels (a CRMO patient has improved and regressed pairs);
    the majority label decides which stratum the subject counts in when subjects are divided.
    The one definition of a subject's label: ``subject_labels`` (tables) and the layouts' pair labels use it.
    """
    per_subject: dict = {}
    for subject, label in zip(subjects, labels, strict=True):
        counts = per_subject.setdefault(subject, Counter())
        if label is not None and label != "":
            counts[label] += 1
    return {
        subject: (sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0] if counts else None)
        for subject, counts in per_subject.items()
    }


PER_CLASS_FRACTION = 1e-9  # split_subjects holds out max(1, floor(f * n)) per stratum: one subject per class


def held_out_subjects(
    subjects: Sequence[Hashable],
    labels: Sequence[Hashable],
    *,
    rule: str = "fraction",
    seed: int = 0,
    test_fraction: float = 0.3,
) -> frozenset:
    """The subjects held out for testing, chosen deterministically from ``seed``.

    ``subjects`` and ``labels`` have one entry per row. This is ``features.splits.split_subjects`` —
    the same rule the BoVW vocabulary uses for ``--vocab-split train`` — applied to each subject's
    majority label: ``fraction`` holds out ``max(1, floor(test_fraction * n))`` subjects of every
    label stratum with n >= 2 subjects; ``per_class`` holds out exactly one subject per class
    (ChronoMID: one mouse per treatment group); ``none`` holds out nobody. Returns a frozenset.
    """

    if rule not in HELD_OUT_RULES:
        raise ParameterError(
            f"The 'rule' parameter of held_out_subjects must be one of {', '.join(HELD_OUT_RULES)}. "
            f"Got {rule!r} instead."
        )
    if len(subjects) != len(labels):
        raise ParameterError(f"subjects ({len(subjects)}) and labels ({len(labels)}) must have one entry per row.")
    if rule == "none":
        return frozenset()
    majority = {
        str(s): (None if lab is None else str(lab)) for s, lab in subject_majority_labels(subjects, labels).items()
    }
    fraction = PER_CLASS_FRACTION if rule == "per_class" else test_fraction
    return frozenset(split_subjects(majority, test_fraction=fraction, seed=seed).test)


@dataclass(frozen=True)
class Split:
    """Row indices of one cross-validation fold: the rows it trains on and the rows it validates on."""

    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class HoldOut:
    """Row indices of the training rows and of the held-out test rows (whole subjects on each side)."""

    train: np.ndarray
    test: np.ndarray


def check_disjoint(groups: np.ndarray, a: np.ndarray, b: np.ndarray, *, what: str) -> None:
    """Raise ``EvaluationError`` when a subject has rows on both sides (``a`` and ``b`` are row indices)."""
    shared = set(np.asarray(groups)[a].tolist()) & set(np.asarray(groups)[b].tolist())
    if shared:
        raise EvaluationError(
            f"{len(shared)} subject(s) appear on both sides of the {what} split. Rows of one subject "
            "must never be split; fix the 'split' column so each subject has a single value, or use "
            "--split auto."
        )


def holdout_split(groups: np.ndarray, test_subjects: frozenset) -> HoldOut:
    """Rows of ``test_subjects`` become the ``test`` side; all other rows ``train``. Checked disjoint."""
    groups = np.asarray(groups)
    if test_subjects:
        is_test = np.isin(groups, np.array(sorted(test_subjects, key=str), dtype=groups.dtype))
    else:
        is_test = np.zeros(len(groups), bool)
    split = HoldOut(np.flatnonzero(~is_test), np.flatnonzero(is_test))
    check_disjoint(groups, split.train, split.test, what="held-out test")
    return split


def cv_folds(strata: np.ndarray, groups: np.ndarray, *, folds: int, seed: int) -> list[Split]:
    """``folds`` subject-grouped, class-stratified folds (``StratifiedGroupKFold``, shuffled by ``seed``).

    ``strata`` is one hashable class key per row (for multi-label targets, the joined label set).
    Indices are positions in the arrays given. Raises ``EvaluationError`` when there are fewer
    subjects than folds.
    """
    groups = np.asarray(groups)
    n_subjects = len(np.unique(groups))
    if folds < 2:
        raise ParameterError(f"The 'folds' parameter of fit must be an int in [2, inf). Got {folds!r} instead.")
    if n_subjects < folds:
        raise EvaluationError(
            f"Cross-validation with {folds} folds needs at least {folds} subjects in training; there are "
            f"{n_subjects}. Use --folds {max(2, n_subjects)} or fewer (at least 2), or hold out fewer test subjects."
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    codes = np.unique(np.asarray(strata).astype(str), return_inverse=True)[1]
    largest = int(np.bincount(codes).max())
    if largest < folds:  # StratifiedGroupKFold needs some class with at least ``folds`` rows
        raise EvaluationError(
            f"Cross-validation with {folds} folds needs a class with at least {folds} rows; the largest has {largest}. "
            f"Use --folds {max(2, largest)} or fewer (at least 2), or hold out fewer test subjects."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = [Split(tr, va) for tr, va in splitter.split(np.zeros(len(groups)), codes, groups)]
    for split in splits:
        check_disjoint(groups, split.train, split.val, what="cross-validation")
    return splits


def given_split(values: Sequence, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of a split given by the data (a ``split`` column: train / val / test).

    Returns ``{"train": idx, "val": idx, "test": idx}`` (empty arrays where a side is absent).
    Synonyms (training, validation, dev, holdout...) are accepted; anything else, a missing value,
    or a subject on two sides raises ``EvaluationError``.
    """
    groups = np.asarray(groups)
    names = []
    for value in values:
        name = GIVEN_SPLIT_NAMES.get(str(value).strip().lower()) if value is not None else None
        if name is None:
            known = ", ".join(sorted(set(GIVEN_SPLIT_NAMES)))
            raise EvaluationError(
                f"The 'split' column holds {value!r}, which is not a split name ({known}). Fix the manifest's "
                "split column, or use --split auto to split by subject."
            )
        names.append(name)
    names = np.array(names)
    sides = {side: np.flatnonzero(names == side) for side in ("train", "val", "test")}
    if len(sides["train"]) == 0:
        raise EvaluationError(
            "The given split has no 'train' rows; fix the manifest's split column or use --split auto."
        )
    check_disjoint(groups, sides["train"], sides["test"], what="given train/test")
    check_disjoint(groups, sides["train"], sides["val"], what="given train/val")
    check_disjoint(groups, sides["val"], sides["test"], what="given val/test")
    return sides


def _all_classes_in_train(splits, y: np.ndarray) -> bool:
    if y.ndim == 2:  # multi-label: every label seen positive (when it is anywhere) in every training part
        wanted = y.any(axis=0)
        return all(np.array_equal(y[tr].any(axis=0), wanted) for tr, _ in splits)
    n_classes = len(np.unique(y))
    return all(len(np.unique(y[tr])) == n_classes for tr, _ in splits)


def inner_splits(
    y: np.ndarray, groups: np.ndarray | None, *, n_splits: int = 3, seed: int = 0, grouped_only: bool = False
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Folds inside a training set (hyperparameter search, probability calibration, stacking).

    Subject-grouped and stratified (``StratifiedGroupKFold``), with every class present in every
    training part; ``n_splits`` is lowered (down to 2) until that holds. When no grouped division
    works (a class with a single subject) it returns ``None`` if ``grouped_only``, else row-level
    ``StratifiedKFold`` folds: used only to calibrate probabilities inside training data, never to judge.
    ``y`` is 1-D (class labels) or 2-D (multi-label indicator: stratified on the joined label set).
    """
    y = np.asarray(y)
    codes = np.unique(_strata_key(y), return_inverse=True)[1]
    if groups is not None:
        groups = np.asarray(groups)
        for k in range(min(n_splits, len(np.unique(groups))), 1, -1):
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)
                try:  # recent scikit-learn raises when a stratum has fewer members than folds
                    splits = list(splitter.split(np.zeros(len(codes)), codes, groups))
                except ValueError:
                    continue
            if _all_classes_in_train(splits, y) and all(len(va) for _, va in splits):
                return splits
        # too many rare strata (e.g. multi-label combinations): still grouped, no longer stratified
        for k in range(min(n_splits, len(np.unique(groups))), 1, -1):
            splits = list(GroupKFold(n_splits=k).split(np.zeros(len(codes)), codes, groups))
            if _all_classes_in_train(splits, y) and all(len(va) for _, va in splits):
                return splits
        if grouped_only:
            return None
    if y.ndim == 2:
        if len(codes) < 2:
            return None
        return list(KFold(n_splits=min(n_splits, len(codes)), shuffle=True, random_state=seed).split(y))
    smallest = int(np.bincount(codes).min())
    if smallest < 2:
        return None
    splitter = StratifiedKFold(n_splits=min(n_splits, smallest), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(codes)), codes))


def _strata_key(y: np.ndarray) -> np.ndarray:
    if y.ndim == 2:
        return np.array(["".join("1" if v else "0" for v in row) for row in y])
    return y.astype(str)


SPLIT_RULE = (
    "per label stratum (a subject's most frequent non-null label; subjects without one form their own "
    "stratum), subjects ordered by sha256('<seed>:<subject>'); the first max(1, floor(test_fraction * n)) "
    "of each stratum with n >= 2 subjects are held out for testing, the rest are training subjects"
)


# --- the one deterministic subject split (BoVW vocabularies, held-out test sets) --------------------------------------
@dataclass(frozen=True)
class SubjectSplit:
    """Training and held-out test subjects (sorted tuples), and how they were chosen."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    test_fraction: float
    seed: int
    rule: str = SPLIT_RULE


def subject_labels(table: pa.Table) -> dict[str, str | None]:
    """Each subject of ``table`` (columns ``subject`` and ``label``) with its most frequent non-null
    label (ties: alphabetically first), or None when none of its rows has a label."""
    if "subject" not in table.column_names:
        raise InputError(f"A subject split needs a 'subject' column; the table has {table.column_names}.")
    subjects = table.column("subject").to_pylist()
    labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(subjects)
    kept = [i for i, subject in enumerate(subjects) if subject is not None]
    return subject_majority_labels([subjects[i] for i in kept], [labels[i] for i in kept])


def split_subjects(
    table: pa.Table | Mapping[str, str | None], *, test_fraction: float = 0.3, seed: int = 0
) -> SubjectSplit:
    """The deterministic stratified subject split (``SPLIT_RULE``) of ``table``'s subjects.

    ``table`` is any Arrow table with ``subject`` and ``label`` columns (scans, pairs) or a ready
    ``{subject: label}`` mapping. The result depends only on the set of (subject, label) and on
    ``test_fraction`` and ``seed``, never on row order; ChronoMID's 5 + 5 mice give one test mouse
    per class with the default fraction.
    """
    check_param("split_subjects", "test_fraction", test_fraction, kind="a float in (0, 1)",
                ok=isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
                and 0.0 < float(test_fraction) < 1.0)
    check_param("split_subjects", "seed", seed, kind="an int", ok=isinstance(seed, int) and not isinstance(seed, bool))
    labels = dict(table) if isinstance(table, Mapping) else subject_labels(table)
    strata: dict[str | None, list[str]] = {}
    for subject, label in labels.items():
        strata.setdefault(label, []).append(subject)
    train: list[str] = []
    test: list[str] = []
    for members in strata.values():
        members.sort(key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        n_test = max(1, int(np.floor(float(test_fraction) * len(members) + 1e-9))) if len(members) >= 2 else 0
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return SubjectSplit(tuple(sorted(train)), tuple(sorted(test)), float(test_fraction), int(seed))


def training_subjects(
    table: pa.Table | Mapping[str, str | None], *, test_fraction: float = 0.3, seed: int = 0
) -> tuple[str, ...]:
    """The training side of ``split_subjects(table, ...)``: subjects a vocabulary may learn from."""
    return split_subjects(table, test_fraction=test_fraction, seed=seed).train
