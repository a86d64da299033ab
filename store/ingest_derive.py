"""The derive stage of an ingest: ``scans`` rows from the dataset's index rows and its manifest.

Subjects (manifest ``subject``, else PatientID, pseudonymised), time indices (the manifest's ``time``
when given, else whole weeks/days per the layout since the subject's first date: manifest ``date``,
else StudyDate, else AcquisitionDate; missing stays missing), slices (manifest ``slice``, else the frame
of a multi-frame file, else InstanceNumber, else rank of SliceLocation), views and labels. Pure: the
caller reads the index and writes the tables.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa

from features.dataset_layouts import OTHER_VIEW, Layout, time_index_from_days
from store.manifest import Manifest
from store.paths import IdentifyingValues
from store.pseudonym import Pseudonymizer
from store.schema import SCANS_CORE

__all__ = ["DerivedScans", "derive_scans", "scans_table"]


@dataclass(frozen=True)
class DerivedScans:
    """Scan rows (core columns + the manifest's label columns; each also carries ``file_key``, not a
    column, for matching ``pairs.csv``) and the time unit actually used (week, day, index, none...)."""

    scans: list[dict]
    time_unit: str


@dataclass
class _Draft:
    """A scan row before its time index is known: the study day ordinal and a manifest time, if any."""

    scan: dict
    ordinal: int | None
    given_time: int | None


def _view(row: dict, layout: Layout) -> str:
    by_keyword = {"ViewPosition": row.get("view_position"), "SeriesDescription": row.get("description_view")}
    for keyword in layout.view_keywords:
        value = by_keyword.get(keyword)
        if value:
            return value if value in layout.views else OTHER_VIEW
    return ""


def _manifest_view(entry, layout: Layout) -> str:
    """A manifest's ``view`` as given, unless it holds the row's own subject identifier."""
    view = entry.view
    if entry.subject and IdentifyingValues([entry.subject]).found_in(view):
        return OTHER_VIEW
    return view


def _subject(row: dict, entry, pseudonyms: Pseudonymizer) -> str:
    if entry is not None and entry.subject:
        return pseudonyms.subject(entry.subject)
    return row["subject"] or pseudonyms.subject("file:" + row["file_key"])


def _ordinal(row: dict, entry, pseudonyms: Pseudonymizer) -> int | None:
    """The real day ordinal of the scan: the manifest's date, else the index's shifted day unshifted."""
    if entry is not None and entry.date is not None:
        return entry.date.toordinal()
    if row["day"] is not None and row["subject"]:
        return row["day"] - pseudonyms.shift(row["subject"])
    return None


def _slice(row: dict, entry) -> int | None:
    if entry is not None and entry.slice is not None:
        return entry.slice
    return row["frame"] if row["frames"] > 1 else row["instance_number"]


def _labels(entry, manifest: Manifest | None) -> dict:
    """The label columns of a scan: ``label``, ``labels`` and the manifest's extra columns."""
    labels = {"label": entry.label if entry is not None else None,
              "labels": list(entry.labels) if entry is not None else []}
    list_columns = set(manifest.list_columns) if manifest else {"labels"}
    for column in manifest.extra_columns if manifest else ():
        value = entry.extra.get(column) if entry is not None else None
        labels[column] = (list(value) if value else []) if column in list_columns else value
    return labels


def _draft(row: dict, entry, *, dataset: str, layout: Layout, manifest: Manifest | None,
           pseudonyms: Pseudonymizer) -> _Draft:
    view = _manifest_view(entry, layout) if entry is not None and entry.view is not None else _view(row, layout)
    scan = {
        "scan_id": row["scan_id"], "file_key": row["file_key"], "pixel_sha256": row["pixel_sha256"],
        "dataset": dataset, "subject": _subject(row, entry, pseudonyms), "time_index": None,
        "days_from_baseline": None, "view": view, "slice": _slice(row, entry), "frame": row["frame"],
        "path": row["path"], "modality": row["modality"] or "", "rows": row["rows"], "cols": row["cols"],
        "channels": row["channels"], "window_center": row["window_center"], "window_width": row["window_width"],
        **_labels(entry, manifest),
    }
    return _Draft(scan, _ordinal(row, entry, pseudonyms), entry.time if entry is not None else None)


def _assign_times(drafts: list[_Draft], layout: Layout) -> str:
    """Set each scan's ``days_from_baseline`` and ``time_index``; return the time unit used."""
    baseline: dict[str, int] = {}
    for draft in drafts:
        if draft.ordinal is not None:
            subject = draft.scan["subject"]
            baseline[subject] = min(draft.ordinal, baseline.get(subject, draft.ordinal))
    used_dates = used_manual = False
    for draft in drafts:
        scan = draft.scan
        days = draft.ordinal - baseline[scan["subject"]] if draft.ordinal is not None else None
        scan["days_from_baseline"] = days
        if layout.constant_time_index is not None:
            scan["time_index"] = layout.constant_time_index
        elif draft.given_time is not None:
            scan["time_index"], used_manual = draft.given_time, True
        else:
            scan["time_index"] = time_index_from_days(layout, days)
            used_dates = used_dates or scan["time_index"] is not None
    if layout.time_unit != "auto":
        return layout.time_unit
    return "week" if used_dates else ("index" if used_manual else "none")


def derive_scans(
    index_rows: list[dict], *, dataset: str, layout: Layout, manifest: Manifest | None, pseudonyms: Pseudonymizer,
    manifest_by_key: dict[str, object],
) -> DerivedScans:
    """Scan rows of ``dataset`` from its ``index_rows`` (one per frame) and the time unit actually used.

    ``manifest_by_key``: the manifest's rows by file key. Rows are sorted by path, frame and scan id.
    """
    drafts = [
        _draft(row, manifest_by_key.get(row["file_key"]), dataset=dataset, layout=layout, manifest=manifest,
               pseudonyms=pseudonyms)
        for row in index_rows
    ]
    unit = _assign_times(drafts, layout)
    scans = [draft.scan for draft in drafts]
    _rank_slice_locations(scans, index_rows)
    scans.sort(key=lambda s: (s["path"], s["frame"], s["scan_id"]))
    return DerivedScans(scans, unit)


def _rank_slice_locations(scans: list[dict], index_rows: list[dict]) -> None:
    """Number slices without InstanceNumber by SliceLocation within subject, time and view (1-based)."""
    groups: dict[tuple, list[tuple[float, str, dict]]] = defaultdict(list)
    for scan, row in zip(scans, index_rows, strict=True):
        if scan["slice"] is None and row["slice_location"] is not None:
            key = (scan["subject"], scan["time_index"], scan["view"])
            groups[key].append((row["slice_location"], scan["path"], scan["scan_id"], scan))
    for members in groups.values():
        for rank, (*_, scan) in enumerate(sorted(members, key=lambda m: (m[0], m[1], m[2])), start=1):
            scan["slice"] = rank


def scans_table(scans: list[dict], manifest: Manifest | None) -> pa.Table:
    """The ``scans`` rows as an Arrow table: the core schema plus the manifest's label columns."""
    fields = list(SCANS_CORE)
    list_columns = set(manifest.list_columns) if manifest else set()
    for column in manifest.extra_columns if manifest else ():
        fields.append(pa.field(column, pa.list_(pa.string()) if column in list_columns else pa.string()))
    schema = pa.schema(fields)
    columns = {f.name: [s.get(f.name) for s in scans] for f in schema}
    return pa.table(columns, schema=schema)
