"""Which subjects of a dataset in the store are held out: the one split vocabularies and classifiers share,
and subject lists read from text files."""

from __future__ import annotations

import os
from pathlib import Path

from features.errors import InputError, StoreError
from features.splits import SubjectSplit, split_subjects, subject_labels
from store.layout import Store

__all__ = ["dataset_subject_split", "read_subject_list"]


def dataset_subject_split(store: Store, dataset: str, *, test_fraction: float = 0.3, seed: int = 0) -> SubjectSplit:
    """``split_subjects`` for every subject of ``dataset`` in the store.

    A subject's label is the most frequent one over its scans; a subject whose scans carry no label
    (CRMO: labels live on pairs) takes the most frequent label over its pairs. Use this one function
    wherever a held-out test set is needed, so vocabularies and classifiers agree on it.
    """
    from store.sql import connect
    from store.tables import table_exists

    if not table_exists(store, "scans"):
        raise StoreError(
            f"The store {store.root} has no 'scans' table; run 'python cli.py ingest --dataset {dataset}' first."
        )
    con = connect(store)
    try:
        scans = con.sql("SELECT subject, label FROM scans WHERE dataset = ?", params=[dataset]).to_arrow_table()
        pairs = (
            con.sql("SELECT subject, label FROM pairs WHERE dataset = ?", params=[dataset]).to_arrow_table()
            if table_exists(store, "pairs") else None
        )
    finally:
        con.close()
    if scans.num_rows == 0:
        raise StoreError(f"Dataset {dataset!r} has no scans in {store.root}; ingest it first.")
    labels = subject_labels(scans)
    if pairs is not None and pairs.num_rows:
        from_pairs = subject_labels(pairs)
        for subject, label in labels.items():
            if label is None and from_pairs.get(subject) is not None:
                labels[subject] = from_pairs[subject]
    return split_subjects(labels, test_fraction=test_fraction, seed=seed)


def read_subject_list(path: str | os.PathLike) -> tuple[str, ...]:
    """Subject keys from a text file, one per line (blank lines and ``#`` comments ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"Cannot read the subject list {path}: {exc.strerror}. Give a text file with one subject key per line."
        ) from None
    subjects = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            subjects.append(line)
    if not subjects:
        raise InputError(f"The subject list {path} names no subject; put one subject key (scans.subject) per line.")
    return tuple(dict.fromkeys(subjects))
