"""Visual vocabularies as store artifacts, and the subject split that keeps them honest.

A bag-of-visual-words vocabulary is fitted on descriptors of *training* subjects only, so that no
held-out subject ever shapes the features it is tested on. Which subjects are held out is decided by
one deterministic rule, ``split_subjects`` (below), shared with the classifiers' held-out test set.

On disk a vocabulary is ``artifacts/vocabularies/<sha256>.npz`` (``centers`` k x d float32 and
``idf`` k float32, written byte-for-byte reproducibly so equal vocabularies get equal names) with
``<sha256>.json`` beside it: descriptor, size, the training subjects, how they were chosen, how many
images and descriptors were used, the fitting parameters and a ``fit_key`` that lets a rerun find
the vocabulary it fitted before instead of fitting a new one.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from store.artifacts import find_artifact, list_artifacts, save_artifact
from store.errors import InputError, StoreError, check_param
from store.layout import Store

__all__ = [
    "KIND",
    "SPLIT_RULE",
    "SubjectSplit",
    "subject_labels",
    "split_subjects",
    "training_subjects",
    "dataset_subject_split",
    "Vocabulary",
    "vocabulary_bytes",
    "save_vocabulary",
    "load_vocabulary",
    "find_vocabulary",
    "list_vocabularies",
    "vocabularies_table",
    "read_subject_list",
]

KIND = "vocabularies"
SPLIT_RULE = (
    "per label stratum (a subject's most frequent non-null label; subjects without one form their own "
    "stratum), subjects ordered by sha256('<seed>:<subject>'); the first max(1, floor(test_fraction * n)) "
    "of each stratum with n >= 2 subjects are held out for testing, the rest are training subjects"
)


# --- the subject split -----------------------------------------------------------------------
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
    counts: dict[str, Counter] = {}
    for subject, label in zip(subjects, labels):
        if subject is None:
            continue
        bucket = counts.setdefault(subject, Counter())
        if label not in (None, ""):
            bucket[label] += 1
    result: dict[str, str | None] = {}
    for subject, bucket in counts.items():
        if bucket:
            top = max(bucket.values())
            result[subject] = min(label for label, n in bucket.items() if n == top)
        else:
            result[subject] = None
    return result


def split_subjects(table: pa.Table | Mapping[str, str | None], *, test_fraction: float = 0.3, seed: int = 0) -> SubjectSplit:
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


def training_subjects(table: pa.Table | Mapping[str, str | None], *, test_fraction: float = 0.3, seed: int = 0) -> tuple[str, ...]:
    """The training side of ``split_subjects(table, ...)``: subjects a vocabulary may learn from."""
    return split_subjects(table, test_fraction=test_fraction, seed=seed).train


def dataset_subject_split(store: Store, dataset: str, *, test_fraction: float = 0.3, seed: int = 0) -> SubjectSplit:
    """``split_subjects`` for every subject of ``dataset`` in the store.

    A subject's label is the most frequent one over its scans; a subject whose scans carry no label
    (CRMO: labels live on pairs) takes the most frequent label over its pairs. Use this one function
    wherever a held-out test set is needed, so vocabularies and classifiers agree on it.
    """
    from store.sql import connect
    from store.tables import table_exists

    if not table_exists(store, "scans"):
        raise StoreError(f"The store {store.root} has no 'scans' table; run 'python cli.py ingest --dataset {dataset}' first.")
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
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise InputError(f"Cannot read the subject list {path}: {exc.strerror}. Give a text file with one subject key per line.") from None
    subjects = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            subjects.append(line)
    if not subjects:
        raise InputError(f"The subject list {path} names no subject; put one subject key (scans.subject) per line.")
    return tuple(dict.fromkeys(subjects))


# --- vocabulary artifacts ----------------------------------------------------------------------
@dataclass(frozen=True)
class Vocabulary:
    """A fitted vocabulary: ``centers`` (k x d float32), ``idf`` (k float32), its artifact hash and meta."""

    sha256: str
    centers: np.ndarray
    idf: np.ndarray
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.centers.shape[0])

    @property
    def descriptor(self) -> str:
        return str(self.meta.get("descriptor", ""))

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(self.meta.get("subjects", ()))


def vocabulary_bytes(centers: np.ndarray, idf: np.ndarray) -> bytes:
    """A reproducible ``.npz`` of ``centers`` and ``idf`` (fixed zip timestamps: same arrays, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("centers", centers), ("idf", idf)):
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buffer.getvalue()


def _load(artifact) -> Vocabulary:
    with np.load(artifact.path, allow_pickle=False) as data:
        centers = data["centers"].astype(np.float32)
        idf = data["idf"].astype(np.float32)
    return Vocabulary(artifact.sha256, centers, idf, dict(artifact.meta))


def save_vocabulary(store: Store, centers: np.ndarray, idf: np.ndarray, *, meta: Mapping[str, Any]) -> Vocabulary:
    """Store a vocabulary as a content-addressed artifact (idempotent) and return it."""
    centers = np.asarray(centers, dtype=np.float32)
    idf = np.asarray(idf, dtype=np.float32)
    if centers.ndim != 2 or idf.shape != (centers.shape[0],):
        raise InputError(f"A vocabulary needs centers (k, d) and idf (k,); got {centers.shape} and {idf.shape}.")
    full_meta = {"vocab_size": int(centers.shape[0]), "dimension": int(centers.shape[1]), **meta}
    artifact = save_artifact(store, KIND, vocabulary_bytes(centers, idf), suffix=".npz", meta=full_meta)
    return _load(artifact)


def load_vocabulary(store: Store, ref: str) -> Vocabulary:
    """The vocabulary whose hash starts with ``ref`` (at least 6 hex characters)."""
    return _load(find_artifact(store, KIND, ref))


def find_vocabulary(store: Store, fit_key: str) -> Vocabulary | None:
    """The newest vocabulary fitted with ``fit_key`` (same data and parameters), or None."""
    matches = [a for a in list_artifacts(store, KIND) if a.meta.get("fit_key") == fit_key]
    return _load(matches[-1]) if matches else None


def list_vocabularies(store: Store) -> list[dict]:
    """One row per stored vocabulary, oldest first, for ``cli.py vocab list``.

    Keys: ``sha256`` (12 hex), ``descriptor``, ``vocab_size``, ``dimension``, ``dataset``,
    ``n_subjects``, ``subjects`` (comma-separated pseudonymous keys), ``subject_rule``, ``n_images``,
    ``n_descriptors``, ``fit_seconds``, ``created``.
    """
    rows = []
    for artifact in list_artifacts(store, KIND):
        meta = artifact.meta
        subjects = list(meta.get("subjects", ()))
        rows.append(
            {
                "sha256": artifact.short,
                "descriptor": meta.get("descriptor"),
                "vocab_size": meta.get("vocab_size"),
                "dimension": meta.get("dimension"),
                "dataset": meta.get("dataset"),
                "n_subjects": len(subjects),
                "subjects": ",".join(subjects),
                "subject_rule": meta.get("subject_rule"),
                "n_images": meta.get("n_images"),
                "n_descriptors": meta.get("n_descriptors"),
                "fit_seconds": meta.get("fit_seconds"),
                "created": meta.get("created"),
            }
        )
    return rows


def vocabularies_table(store: Store) -> pa.Table:
    """``list_vocabularies`` as an Arrow table (``cli.py vocab list``), one row per vocabulary, oldest first."""
    rows = list_vocabularies(store)
    types = {
        "sha256": pa.string(), "descriptor": pa.string(), "vocab_size": pa.int32(), "dimension": pa.int32(),
        "dataset": pa.string(), "n_subjects": pa.int32(), "subjects": pa.string(), "subject_rule": pa.string(),
        "n_images": pa.int32(), "n_descriptors": pa.int64(), "fit_seconds": pa.float64(), "created": pa.string(),
    }
    return pa.table({name: pa.array([row[name] for row in rows], type) for name, type in types.items()})
