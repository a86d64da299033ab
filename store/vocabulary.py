"""Visual vocabularies as store artifacts.

A bag-of-visual-words vocabulary is fitted on descriptors of *training* subjects only, so that no
held-out subject ever shapes the features it is tested on. Which subjects are held out is decided by
one deterministic rule, ``features.splits.split_subjects``, shared with the classifiers' held-out test set.

On disk a vocabulary is ``artifacts/vocabularies/<sha256>.npz`` (``centers`` k x d float32 and
``idf`` k float32, written byte-for-byte reproducibly so equal vocabularies get equal names) with
``<sha256>.json`` beside it: descriptor, size, the training subjects, how they were chosen, how many
images and descriptors were used, the fitting parameters and a ``fit_key`` that lets a rerun find
the vocabulary it fitted before instead of fitting a new one.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from features.errors import InputError
from store.artifacts import find_artifact, list_artifacts, save_artifact
from store.layout import Store

__all__ = [
    "KIND",
    "Vocabulary",
    "vocabulary_bytes",
    "save_vocabulary",
    "load_vocabulary",
    "find_vocabulary",
    "list_vocabularies",
    "vocabularies_table",
]

KIND = "vocabularies"
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
