"""The inputs of an ingest: every file under a dataset root plus every path its manifest lists.

Nothing is opened here. An entry is classified from ``stat`` alone: a regular file (or a link to one
inside the root), a path the manifest lists that is not there, a special file (FIFO, socket, device),
a symbolic link leading out of the root, or a folder that could not be listed. ``store.ingest`` decodes
the regular files and records the others in ``failures``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from features.dataset_layouts import Layout, scan_id
from features.errors import DatasetError
from store.manifest import MANIFEST_NAME, PAIRS_NAME, Manifest

__all__ = ["InputFile", "DatasetRoot", "EntryKind", "resolve_root", "list_inputs", "walk_inputs", "classify"]


@dataclass(frozen=True)
class InputFile:
    """One input: ``path`` is its real path relative to the root (undecodable bytes as surrogates) and
    ``subject`` the manifest's raw subject; both stay in memory. ``status``: ``file`` (a regular file,
    or a link to one inside the root), ``missing``, ``special`` (FIFO, socket, device), ``outside``
    (a symbolic link leading out of the root) or ``unlisted`` (a folder that could not be listed)."""

    path: str
    key: str
    status: str
    in_manifest: bool
    detail: str = ""
    subject: str | None = field(default=None, repr=False)


class DatasetRoot(NamedTuple):
    """The dataset folder and its manifest file (``None`` when it has none)."""

    folder: Path
    manifest: Path | None


class EntryKind(NamedTuple):
    """What an entry is (``file``, ``missing``, ``special``, ``outside``, ``unlisted``) and a detail."""

    status: str
    detail: str = ""


def resolve_root(root: str | os.PathLike) -> DatasetRoot:
    """The dataset folder and its manifest file (``root`` may name the manifest CSV itself).

    ``DatasetError`` when ``root`` is neither a folder nor a ``.csv`` file.
    """
    path = Path(root).expanduser().resolve()
    if path.is_file() and path.suffix.lower() == ".csv":
        return DatasetRoot(path.parent, path)
    if not path.is_dir():
        raise DatasetError(f"Dataset root {path} is not a folder (or a manifest .csv file). Check --root.")
    manifest = path / MANIFEST_NAME
    return DatasetRoot(path, manifest if manifest.is_file() else None)


def _inside(root: str, target: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _kind_of(mode: int) -> EntryKind:
    """The kind of a file of ``mode`` (as ``stat`` follows links)."""
    if stat.S_ISREG(mode):
        return EntryKind("file")
    if stat.S_ISDIR(mode):
        return EntryKind("special", "folder")
    if stat.S_ISFIFO(mode):
        return EntryKind("special", "FIFO")
    if stat.S_ISSOCK(mode):
        return EntryKind("special", "socket")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return EntryKind("special", "device")
    return EntryKind("special", "special file")


def classify(root: str, full: str) -> EntryKind:
    """The kind of the entry at absolute path ``full`` (below the folder ``root``), without opening it."""
    if not os.path.lexists(full):
        return EntryKind("missing")
    if not _inside(root, os.path.realpath(full)):
        return EntryKind("outside", "symbolic link")
    try:
        mode = os.stat(full).st_mode
    except OSError:
        return EntryKind("missing", "broken symbolic link")
    return _kind_of(mode)


class _Entry(NamedTuple):
    link: bool
    folder: bool  # follows a link
    regular: bool


def _entry_type(entry: os.DirEntry) -> _Entry:
    try:
        link = entry.is_symlink()
        return _Entry(link, entry.is_dir(), not link and entry.is_file(follow_symlinks=False))
    except OSError:
        return _Entry(False, False, False)


def _listing(root: Path, relative_dir: str) -> list[os.DirEntry] | OSError:
    """The entries of folder ``relative_dir`` (below ``root``), or the error listing it raised."""
    base = str(root)
    try:
        with os.scandir(os.path.join(base, relative_dir) if relative_dir else base) as listing:
            return list(listing)
    except OSError as exc:
        if not relative_dir:
            raise DatasetError(
                f"Dataset root {root} cannot be listed ({exc.strerror or type(exc).__name__}). Check its "
                "permissions."
            ) from None
        return exc


def _entry_kind(base: str, entry: os.DirEntry, kind: _Entry, wanted: bool) -> EntryKind | None:
    """The kind of a listed entry that is not a folder to descend into, ``None`` when it is no input."""
    if kind.link:
        if not _inside(base, os.path.realpath(entry.path)):
            return EntryKind("outside", "symbolic link") if kind.folder or wanted else None
        # a link to a folder inside the root is not followed
        return classify(base, entry.path) if wanted and not kind.folder else None
    if not wanted:
        return None
    return EntryKind("file") if kind.regular else classify(base, entry.path)


def walk_inputs(root: Path, dicom_only: bool, skip: set[str]) -> Iterator[tuple[str, EntryKind]]:
    """``(relative path, kind)`` of every entry under ``root`` that is an input: hidden names and ``skip``
    excluded, only ``*.dcm`` with ``dicom_only``. Symbolic links to folders are not followed; one that
    leads out of the root is reported (``outside``), and so is a folder that cannot be listed
    (``unlisted``)."""
    base = str(root)
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        entries = _listing(root, relative_dir)
        if isinstance(entries, OSError):
            yield relative_dir, EntryKind("unlisted", entries.strerror or type(entries).__name__)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            wanted = relative not in skip and (not dicom_only or entry.name.lower().endswith(".dcm"))
            kind = _entry_type(entry)
            if kind.folder and not kind.link:
                pending.append(relative)
                continue
            found = _entry_kind(base, entry, kind, wanted)
            if found is not None:
                yield relative, found


def list_inputs(
    root: Path, layout: Layout, manifest: Manifest | None, manifest_file: Path | None, *, secret: bytes, dataset: str,
    not_inputs: frozenset[str] = frozenset(),
) -> list[InputFile]:
    """Every input, sorted by path: entries in the folder (hidden ones, the CSVs and the relative paths in
    ``not_inputs``, e.g. a BIDS tree's sidecars, excluded; only ``*.dcm`` for the DICOM layouts) plus every
    path the manifest lists. Nothing is opened."""
    skip = {MANIFEST_NAME, PAIRS_NAME, *not_inputs}
    if manifest_file is not None and manifest_file.parent == root:
        skip.add(manifest_file.name)
    found = dict(walk_inputs(root, layout.dicom_only, skip))
    rows = manifest.rows if manifest else {}
    for relative in rows:
        if relative not in found:
            found[relative] = classify(str(root), os.path.join(str(root), *relative.split("/")))
    items = []
    for relative in sorted(found):
        status, detail = found[relative]
        entry = rows.get(relative)
        items.append(InputFile(
            path=relative, key=scan_id(secret, dataset, relative, 0), status=status, in_manifest=entry is not None,
            detail=detail, subject=entry.subject if entry is not None else None,
        ))
    return items
