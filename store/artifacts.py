"""Artifacts: files named by their content hash (vocabularies, fitted models, networks, weights).

``artifacts/<kind>/<sha256><suffix>`` holds the bytes; ``<sha256>.json`` beside it holds a small
JSON description (what it is, parameters, subjects used...). Both are written atomically; an
artifact with the same content is stored once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.errors import StoreError
from store._fs import write_atomically
from store.layout import Store
from store.provenance import canonical_json

__all__ = ["Artifact", "save_artifact", "save_artifact_file", "find_artifact", "list_artifacts", "sha256_file"]


@dataclass(frozen=True)
class Artifact:
    """A stored artifact: its kind, content hash, file path and description."""

    kind: str
    sha256: str
    path: Path
    meta: dict

    @property
    def short(self) -> str:
        return self.sha256[:12]


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _save(store: Store, kind: str, sha: str, suffix: str, meta: Mapping[str, Any], writer) -> Artifact:
    directory = store.artifact_dir(kind)
    path = directory / f"{sha}{suffix}"
    if not path.exists():
        writer(path)
    meta_path = directory / f"{sha}.json"
    full_meta = {"kind": kind, "sha256": sha, "file": path.name, **meta}
    if not meta_path.exists():
        write_atomically(meta_path, lambda tmp: tmp.write_bytes(canonical_json(full_meta).encode()))
    return Artifact(kind, sha, path, json.loads(meta_path.read_text()))


def save_artifact(store: Store, kind: str, data: bytes, *, suffix: str, meta: Mapping[str, Any]) -> Artifact:
    """Store ``data`` as an artifact of ``kind`` named by its SHA-256; return it (idempotent)."""
    sha = hashlib.sha256(data).hexdigest()
    return _save(store, kind, sha, suffix, meta, lambda path: write_atomically(path, lambda tmp: tmp.write_bytes(data)))


def save_artifact_file(
    store: Store, kind: str, source: str | os.PathLike, *, suffix: str, meta: Mapping[str, Any]
) -> Artifact:
    """Copy the file ``source`` into the store as an artifact of ``kind`` (streamed, not read whole)."""
    import shutil

    sha = sha256_file(source)

    return _save(
        store, kind, sha, suffix, meta, lambda path: write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))
    )


def find_artifact(store: Store, kind: str, ref: str) -> Artifact:
    """The artifact of ``kind`` whose hash starts with ``ref`` (at least 6 hex characters)."""
    matches = [a for a in list_artifacts(store, kind) if a.sha256.startswith(ref.lower())] if len(ref) >= 6 else []
    if len(matches) != 1:
        known = ", ".join(a.short for a in list_artifacts(store, kind)) or "none"
        what = "matches several" if matches else "matches none"
        raise StoreError(
            f"Artifact reference {ref!r} {what} of the {kind!r} artifacts in {store.root} (known: {known}). "
            "Give at least 6 hex characters of one of them."
        )
    return matches[0]


def list_artifacts(store: Store, kind: str) -> list[Artifact]:
    """Every artifact of ``kind`` with its description, oldest first."""
    directory = store.artifacts_dir / kind
    if not directory.is_dir():
        return []
    found = []
    for meta_path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime):
        if meta_path.name.startswith(".tmp-"):
            continue
        meta = json.loads(meta_path.read_text())
        path = directory / meta.get("file", "")
        if path.is_file():
            found.append(Artifact(kind, meta["sha256"], path, meta))
    return found
