"""Subject-grouped splits: no subject is ever on both sides, whatever the split kind or seed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.errors import EvaluationError, ParameterError
from features.splits import (
    check_disjoint,
    cv_folds,
    given_split,
    held_out_subjects,
    holdout_split,
    inner_splits,
    split_subjects,
    subject_majority_labels,
)


def _rows(n_subjects: int, per_subject: int = 3, classes=("a", "b", "c"), seed: int = 0):
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(n_subjects):
        for _ in range(per_subject):
            subjects.append(f"s{s:03d}")
            labels.append(classes[s % len(classes)] if rng.random() < 0.8 else classes[rng.integers(len(classes))])
    return np.array(subjects, dtype=object), np.array(labels, dtype=object)


def test_majority_labels_ignore_nulls_and_break_ties_alphabetically():
    labels = subject_majority_labels(["x", "x", "x", "y", "y", "z"], ["b", "a", None, "b", "a", None])
    assert labels == {"x": "a", "y": "a", "z": None}


def test_held_out_subjects_is_the_vocabulary_rule():
    subjects, labels = _rows(20)
    majority = {str(s): str(label) for s, label in subject_majority_labels(subjects, labels).items()}
    for seed in (0, 1, 2):
        mine = held_out_subjects(subjects, labels, rule="fraction", seed=seed, test_fraction=0.3)
        assert mine == frozenset(split_subjects(majority, test_fraction=0.3, seed=seed).test)
    assert held_out_subjects(subjects, labels, seed=0) != held_out_subjects(subjects, labels, seed=1)
    assert held_out_subjects(subjects, labels, seed=3) == held_out_subjects(
        list(reversed(subjects)), list(reversed(labels)), seed=3
    )


def test_per_class_rule_holds_out_one_subject_of_each_class():
    subjects = np.repeat([f"m{i}" for i in range(10)], 4)
    labels = np.repeat(["wild_type"] * 5 + ["pth"] * 5, 4)
    for seed in range(5):
        held = held_out_subjects(subjects, labels, rule="per_class", seed=seed)
        majority = subject_majority_labels(subjects, labels)
        assert sorted(majority[s] for s in held) == ["pth", "wild_type"]
    assert held_out_subjects(subjects, labels, rule="none") == frozenset()
    with pytest.raises(ParameterError, match="'rule'"):
        held_out_subjects(subjects, labels, rule="random")


def test_cv_folds_are_grouped_stratified_and_cover_every_row_once():
    subjects, labels = _rows(25)
    folds = cv_folds(labels, subjects, folds=5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([f.val for f in folds])
    assert sorted(seen.tolist()) == list(range(len(subjects)))
    for fold in folds:
        assert not set(subjects[fold.train]) & set(subjects[fold.val])
        assert set(labels[fold.train]) == {"a", "b", "c"}
    again = cv_folds(labels, subjects, folds=5, seed=0)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(folds, again, strict=True))


def test_fewer_subjects_than_folds_names_the_fix():
    subjects, labels = _rows(4)
    with pytest.raises(EvaluationError) as info:
        cv_folds(labels, subjects, folds=5, seed=0)
    assert "--folds 4" in str(info.value)


def test_given_split_accepts_synonyms_and_refuses_shared_subjects():
    subjects = np.array(["a", "a", "b", "c", "d"], dtype=object)
    sides = given_split(["Train", "training", "dev", "test", "validation"], subjects)
    assert sides["train"].tolist() == [0, 1] and sides["val"].tolist() == [2, 4] and sides["test"].tolist() == [3]
    with pytest.raises(EvaluationError, match="both sides of the given train/test"):
        given_split(["train", "test", "train", "test", "train"], subjects)
    with pytest.raises(EvaluationError, match="not a split name"):
        given_split(["train", "train", "later", "test", "val"], subjects)
    with pytest.raises(EvaluationError, match="no 'train' rows"):
        given_split(["test"] * 5, subjects)


def test_check_disjoint_and_holdout_split():
    groups = np.array(["a", "b", "a", "c"], dtype=object)
    with pytest.raises(EvaluationError, match="1 subject"):
        check_disjoint(groups, np.array([0]), np.array([2]), what="test")
    split = holdout_split(groups, frozenset({"a"}))
    assert split.test.tolist() == [0, 2] and split.train.tolist() == [1, 3]


def test_inner_splits_keep_every_class_in_training_and_fall_back_only_when_grouping_is_impossible():
    subjects, labels = _rows(12)
    splits = inner_splits(labels, subjects, n_splits=3, seed=0)
    for train, held in splits:
        assert set(labels[train]) == set(labels)
        assert not set(subjects[train]) & set(subjects[held])
    # one subject holds all of class 'z': no grouped split keeps it in training
    lonely_subjects = np.concatenate([subjects, ["only", "only"]])
    lonely_labels = np.concatenate([labels, ["z", "z"]])
    assert inner_splits(lonely_labels, lonely_subjects, grouped_only=True) is None
    assert inner_splits(lonely_labels, lonely_subjects) is not None  # row-level, for calibration only


@settings(max_examples=40, deadline=None)
@given(
    n_subjects=st.integers(min_value=6, max_value=30),
    per_subject=st.integers(min_value=1, max_value=4),
    n_classes=st.integers(min_value=2, max_value=4),
    seed=st.integers(min_value=0, max_value=10_000),
    folds=st.integers(min_value=2, max_value=5),
)
def test_no_subject_on_both_sides_of_any_split(n_subjects, per_subject, n_classes, seed, folds):
    classes = tuple("abcd"[:n_classes])
    subjects, labels = _rows(n_subjects, per_subject, classes, seed)
    held = held_out_subjects(subjects, labels, rule="fraction", seed=seed, test_fraction=0.25)
    split = holdout_split(subjects, held)
    assert not set(subjects[split.train]) & set(subjects[split.test])
    train_subjects = subjects[split.train]
    try:
        cv = cv_folds(labels[split.train], train_subjects, folds=folds, seed=seed)
    except EvaluationError as exc:  # too few subjects / rows for that many folds: said, never a bad split
        assert "--folds" in str(exc)
        return
    for fold in cv:
        assert not set(train_subjects[fold.train]) & set(train_subjects[fold.val])
        assert len(fold.val) and len(fold.train)
