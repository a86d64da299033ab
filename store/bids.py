"""BIDS-like folders of NIfTI volumes read as a manifest: ``sub-*/[ses-*/]anat/*.nii[.gz]``.

A folder is taken as BIDS when it has no ``manifest.csv`` and some ``sub-<label>/`` folder holds NIfTI
files under ``anat/`` (directly or below ``ses-<label>/``). Each NIfTI file becomes a manifest row:

- ``subject``: the ``sub-<label>`` folder name (the raw identifier: pseudonymised like a PatientID,
  never stored);
- time: the date of its session in ``sub-<label>/sub-<label>_sessions.tsv`` (column ``acq_time``, else
  ``date``/``session_date``; ``YYYY-MM-DD`` or an ISO timestamp) -- used like a manifest ``date``, i.e.
  turned into days/weeks from the subject's first session and then dropped -- else the session's rank
  in the subject's sorted session labels (0, 1, 2...), else 0 without sessions;
- ``view``: the BIDS suffix (``T1w``, ``T2w``, ``CT``...), so two contrasts of one session never pair;
- ``label``: the ``label`` column of ``participants.tsv`` (row ``participant_id`` = ``sub-<label>``),
  when present.

The tree's sidecars and notes (``*.json``, ``*.tsv``, ``*.bval``/``*.bvec``, ``*.txt``/``*.md``, ``README``,
``CHANGES``, ``LICENSE``) are not inputs; any other file (a DICOM series beside the NIfTI files) still is.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from features.errors import DatasetError
from store.manifest import Manifest, ManifestRow

__all__ = ["BidsTree", "read_bids_tree", "BIDS_MARKER"]

BIDS_MARKER = "participants.tsv"
_SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
_SESSION = re.compile(r"^ses-[A-Za-z0-9]+$")
_NIFTI = re.compile(r"^(?P<stem>[^/]+?)\.nii(\.gz)?$")
_DATE_COLUMNS = ("acq_time", "date", "session_date")
_SIDECAR_SUFFIXES = (".json", ".tsv", ".bval", ".bvec", ".txt", ".md", ".rst", ".bidsignore")
_NOTES = ("README", "CHANGES", "LICENSE")


@dataclass(frozen=True)
class BidsTree:
    """A BIDS folder read as a manifest (``manifest.file`` is the folder's ``participants.tsv``, even when
    absent) and the relative paths of its files that are not inputs (sidecars, tables, notes)."""

    manifest: Manifest
    not_inputs: frozenset[str]


def _read_tsv(file: Path) -> list[dict[str, str]]:
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{file}: cannot be read as a UTF-8 tab-separated table ({exc}). Fix or remove it.") \
            from None


def _session_dates(subject_dir: Path) -> dict[str, dt.date]:
    """``ses-<label>`` -> date from ``sub-<label>_sessions.tsv`` (empty when absent or dateless)."""
    file = subject_dir / f"{subject_dir.name}_sessions.tsv"
    if not file.is_file():
        return {}
    dates = {}
    for line, row in enumerate(_read_tsv(file), start=2):
        column = next((c for c in _DATE_COLUMNS if row.get(c) and row[c].lower() != "n/a"), None)
        if column is None or not row.get("session_id"):
            continue
        try:
            dates[row["session_id"]] = dt.date.fromisoformat(row[column][:10])
        except ValueError:
            raise DatasetError(
                f"{file} line {line}: column {column!r} must start with a date written YYYY-MM-DD."
            ) from None
    return dates


def _participant_labels(root: Path) -> dict[str, str]:
    file = root / BIDS_MARKER
    if not file.is_file():
        return {}
    return {row["participant_id"]: row["label"] for row in _read_tsv(file)
            if row.get("participant_id") and row.get("label") and row["label"].lower() != "n/a"}


def _nifti_files(anat: Path) -> list[Path]:
    return sorted(p for p in anat.iterdir() if p.is_file() and _NIFTI.match(p.name)) if anat.is_dir() else []


def _subject_rows(root: Path, subject_dir: Path, labels: dict[str, str], start_line: int) -> list[ManifestRow]:
    subject = subject_dir.name
    sessions = sorted(p for p in subject_dir.iterdir() if p.is_dir() and _SESSION.match(p.name))
    dates = _session_dates(subject_dir)
    places = [(s.name, rank, s / "anat") for rank, s in enumerate(sessions)] or [("", 0, subject_dir / "anat")]
    rows = []
    for session, rank, anat in places:
        for file in _nifti_files(anat):
            suffix = _NIFTI.match(file.name)["stem"].rsplit("_", 1)[-1]
            date = dates.get(session)
            rows.append(ManifestRow(
                line=start_line + len(rows), path=file.relative_to(root).as_posix(), subject=subject,
                time=None if date is not None else rank, date=date, view=suffix, label=labels.get(subject),
            ))
    return rows


def read_bids_tree(root: str | Path) -> BidsTree | None:
    """The BIDS folder ``root`` as a ``BidsTree``, or ``None`` when it is not one (no ``sub-*`` folder with
    NIfTI files under ``anat/``). ``DatasetError`` for an unreadable ``participants.tsv``/``sessions.tsv``
    or a session date that is not ``YYYY-MM-DD``."""
    root = Path(root)
    subjects = sorted(p for p in root.iterdir() if p.is_dir() and _SUBJECT.match(p.name))
    labels = _participant_labels(root) if subjects else {}
    rows: dict[str, ManifestRow] = {}
    for subject_dir in subjects:
        for row in _subject_rows(root, subject_dir, labels, start_line=len(rows) + 2):
            rows[row.path] = row
    if not rows:
        return None
    not_inputs = frozenset(
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if p.is_file() and (p.suffix.lower() in _SIDECAR_SUFFIXES or p.name.upper() in _NOTES)
    )
    has_dates = any(r.date is not None for r in rows.values())
    columns = ("path", "subject", "date" if has_dates else "time", "view", "label")
    manifest = Manifest(file=root / BIDS_MARKER, rows=rows, extra_columns=(), list_columns=("labels",),
                        columns=columns)
    return BidsTree(manifest, not_inputs)
