"""Dataset layouts (generic, crmo, chronomid, impc, spine) and the pairing rules they define.

A layout says which files are images, how time is counted, which manifest columns are lists, where
the ``view`` comes from and how ``pairs`` rows are formed. The pairing functions are pure: scan rows
(dicts) in, pair rows (dicts) out.

A ``view`` taken from a header is a coded value: a term of the layout's vocabulary (``views``), else
``other`` (``coded_view``), never free text. ``scan_id`` is keyed by the store secret, so the same file
has unrelated identities in two stores.

Pairing (``absolute`` / ``relative``): scans with a time index are grouped by subject, view and the
layout's extra match columns (``level`` for spine). Within a group each time point is a volume whose
slices are ordered by ``slice`` (then frame, then path); the k-th slice of one time point pairs with
the k-th of the other, stopping when either runs out (ChronoMID). ``absolute`` compares each time
point with the group's first, ``relative`` with the previous available one (missing time points are
skipped, never interpolated). The first time point's slices pair with themselves in both modes
(``interval_days`` 0) -- but only in a dataset with a time course (some group seen at two or more time
points, ``has_time_course``) or on request (``self_pairs=True``): images of single time points make no
pairs at all. A slice left without a partner in some mode counts as unpaired.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from features.errors import DatasetError

__all__ = [
    "GivenPair",
    "Layout",
    "LAYOUTS",
    "DEMO_DATASETS",
    "get_layout",
    "default_layout",
    "VIEW_TERMS",
    "OTHER_VIEW",
    "coded_view",
    "scan_id",
    "pair_id",
    "time_index_from_days",
    "has_time_course",
    "longitudinal_pairs",
    "given_pairs",
]


@dataclass(frozen=True)
class GivenPair:
    """One ``pairs.csv`` line: two file paths (relative to the root) and the pair's label."""

    line: int
    reference_path: str
    comparison_path: str
    label: str | None

DEMO_DATASETS = ("crmo", "chronomid", "impc", "spine", "tibia3d")
OTHER_VIEW = "other"
# Projection and plane codes: DICOM ViewPosition defined terms (AP, PA, LL, RL, ...), mammography views,
# veterinary projections (DV, VD, LAT) and the imaging planes series descriptions name.
VIEW_TERMS = (
    "AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LAT", "LATERAL", "OBL", "OBLIQUE", "DV", "VD",
    "CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AX", "AXIAL", "COR", "CORONAL", "SAG",
    "SAGITTAL", "TRA", "TRANSVERSE",
)


@dataclass(frozen=True)
class Layout:
    """How one kind of dataset folder is read and paired.

    ``time_unit``: ``week``/``day`` (time index = whole units since the subject's first date), ``none``
    (``constant_time_index`` for every scan) or ``auto`` (generic: weeks when dates exist). ``view_keywords``:
    DICOM keywords tried in order for ``view``. ``list_columns``: manifest columns read as lists.
    ``pair_modes``: longitudinal modes built from scans. ``given_pairs``: whether ``pairs.csv`` is
    ``required``, ``optional`` or ignored (``none``). ``match_columns``: columns besides subject and
    view that paired scans share. ``pair_label``: ``subject`` (the subject's label) or ``comparison``
    (the comparison scan's label). ``dicom_only``: only ``*.dcm`` files are taken from the folder
    (plus files the manifest lists); otherwise every file is an input. ``views``: the coded view
    values kept from headers (anything else becomes ``other``).
    """

    name: str
    time_unit: str
    view_keywords: tuple[str, ...]
    list_columns: tuple[str, ...] = ("labels",)
    pair_modes: tuple[str, ...] = ()
    given_pairs: str = "none"
    match_columns: tuple[str, ...] = ()
    pair_label: str = "comparison"
    dicom_only: bool = True
    constant_time_index: int | None = None
    views: tuple[str, ...] = VIEW_TERMS
    volumes: bool = False  # index NIfTI files and DICOM series as volumes (store.volume_index)


LAYOUTS: dict[str, Layout] = {
    "generic": Layout(
        "generic", "auto", ("ViewPosition", "SeriesDescription"), pair_modes=("absolute", "relative"),
        given_pairs="optional", dicom_only=False, volumes=True,
    ),
    "crmo": Layout("crmo", "week", ("ViewPosition",), given_pairs="required"),
    "chronomid": Layout(
        "chronomid", "week", ("ViewPosition",), pair_modes=("absolute", "relative"), pair_label="subject"
    ),
    "impc": Layout(
        "impc", "none", ("ViewPosition", "SeriesDescription"), list_columns=("labels", "level2", "level3"),
        constant_time_index=0,
    ),
    "spine": Layout("spine", "day", ("ViewPosition",), pair_modes=("absolute", "relative"), match_columns=("level",)),
    "tibia3d": Layout(
        "tibia3d", "week", (), pair_modes=("absolute", "relative"), pair_label="subject", dicom_only=False,
        volumes=True,
    ),
}


def get_layout(name: str) -> Layout:
    """The layout called ``name``; ``DatasetError`` listing the known ones otherwise."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise DatasetError(f"Unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}.") from None


def default_layout(dataset: str) -> str:
    """The layout a dataset gets when none is named: its own name for the four built-ins, else generic."""
    return dataset if dataset in DEMO_DATASETS else "generic"


def coded_view(value: str | None, layout: Layout, *, free_text: bool = False) -> str:
    """The ``view`` a header value gives under ``layout``: ``''`` when blank, the value (upper-cased) when it
    is one of ``layout.views``, else ``other``. With ``free_text`` (a SeriesDescription) the first word
    of the text that is a term counts (``"Full body DV"`` -> ``DV``)."""
    text = (value or "").strip().upper()
    if not text:
        return ""
    if text in layout.views:
        return text
    if free_text:
        for word in re.split(r"[^A-Z0-9]+", text):
            if word in layout.views:
                return word
    return OTHER_VIEW


def scan_id(secret: bytes, dataset: str, path: str, frame: int) -> str:
    """The identity of one 2-D image in a store: hex HMAC-SHA256 under the store ``secret`` of dataset,
    NUL, the file's real path relative to the root (its bytes, ``os.fsencode``), NUL, frame; 32 characters.

    Frame 0's id is also the file's key (index rows, failures). Keyed, so the same file in two stores
    gets two unrelated ids.
    """
    message = dataset.encode("utf-8") + b"\0" + os.fsencode(path) + b"\0" + str(int(frame)).encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def pair_id(reference_scan_id: str, comparison_scan_id: str, mode: str) -> str:
    """The identity of one pair: sha256(reference, NUL, comparison, NUL, mode) hex, 32 characters."""
    return hashlib.sha256(f"{reference_scan_id}\0{comparison_scan_id}\0{mode}".encode()).hexdigest()[:32]


def time_index_from_days(layout: Layout, days: int | None) -> int | None:
    """Whole weeks (``week``, ``auto``) or days (``day``) in ``days``; ``None`` when unknown or unit ``none``."""
    if days is None:
        return None
    if layout.time_unit in ("week", "auto"):
        return days // 7
    if layout.time_unit == "day":
        return days
    return None


def _slice_order(scan: dict) -> tuple:
    return (scan.get("slice") is None, scan.get("slice") or 0, scan.get("frame") or 0, scan["path"])


def _pair(dataset: str, reference: dict, comparison: dict, mode: str, label, *, self_pair: bool = False) -> dict:
    if self_pair:
        interval = 0
    elif reference.get("days_from_baseline") is None or comparison.get("days_from_baseline") is None:
        interval = None
    else:
        interval = comparison["days_from_baseline"] - reference["days_from_baseline"]
    return {
        "pair_id": pair_id(reference["scan_id"], comparison["scan_id"], mode),
        "dataset": dataset,
        "subject": comparison["subject"],
        "reference_scan_id": reference["scan_id"],
        "comparison_scan_id": comparison["scan_id"],
        "reference_mode": mode,
        "interval_days": interval,
        "time_index": comparison.get("time_index"),
        "label": label,
    }


def _subject_labels(scans: Sequence[dict]) -> dict[str, str | None]:
    from features.splits import subject_majority_labels  # scikit-learn: not at cli.py's parser time

    return subject_majority_labels([scan["subject"] for scan in scans], [scan.get("label") for scan in scans])


def _time_groups(scans: Sequence[dict], layout: Layout) -> dict[tuple, dict[int, list[dict]]]:
    """Scans with a time index by (subject, view, match columns), then by time index."""
    groups: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for scan in scans:
        if scan.get("time_index") is None:
            continue
        key = (scan["subject"], scan.get("view") or "") + tuple(str(scan.get(c)) for c in layout.match_columns)
        groups[key][scan["time_index"]].append(scan)
    return groups


def has_time_course(scans: Sequence[dict], layout: Layout) -> bool:
    """Whether some subject (within one view and the layout's match columns) has scans at two or more
    distinct time indices: only then do longitudinal pairs, self-pairs included, exist by default."""
    return any(len(by_time) > 1 for by_time in _time_groups(scans, layout).values())


def longitudinal_pairs(
    scans: Sequence[dict], layout: Layout, dataset: str, *, self_pairs: bool | None = None
) -> tuple[list[dict], int]:
    """Absolute/relative pair rows of ``scans`` under ``layout`` and the number of unpaired slices.

    ``scans`` are dicts with scan_id, subject, time_index, days_from_baseline, view, slice, frame, path,
    label and the layout's match columns. Scans without a time index are not paired. The count is of
    distinct scans after their subject's first time point that lack a partner in at least one mode.
    ``self_pairs``: whether each group's first time point pairs with itself (``interval_days`` 0);
    ``None`` (default) means only when the dataset has a time course (``has_time_course``), so a
    dataset of single time points gets no pairs.
    """
    if not layout.pair_modes:
        return [], 0
    labels = _subject_labels(scans) if layout.pair_label == "subject" else {}
    groups = _time_groups(scans, layout)
    if self_pairs is None:
        self_pairs = any(len(by_time) > 1 for by_time in groups.values())

    def label_of(scan: dict):
        return labels.get(scan["subject"]) if layout.pair_label == "subject" else scan.get("label")

    pairs: list[dict] = []
    unpaired: set[str] = set()
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        by_time = groups[key]
        times = sorted(by_time)
        volumes = {t: sorted(by_time[t], key=_slice_order) for t in times}
        first = volumes[times[0]]
        for scan in first if self_pairs else ():
            for mode in layout.pair_modes:
                pairs.append(_pair(dataset, scan, scan, mode, label_of(scan), self_pair=True))
        for position in range(1, len(times)):
            comparison = volumes[times[position]]
            for mode in layout.pair_modes:
                reference = first if mode == "absolute" else volumes[times[position - 1]]
                count = min(len(reference), len(comparison))
                for k in range(count):
                    pairs.append(_pair(dataset, reference[k], comparison[k], mode, label_of(comparison[k])))
                unpaired.update(scan["scan_id"] for scan in comparison[count:])
    return pairs, len(unpaired)


def given_pairs(
    scans: Sequence[dict], pairs: Sequence[GivenPair], dataset: str, *, file_key: Callable[[str], str] | None = None
) -> tuple[list[dict], list[GivenPair]]:
    """Pair rows (mode ``given``) for ``pairs.csv`` lines, and the lines whose files have no scans.

    Multi-frame files pair frame k with frame k. ``label`` is the line's label. With ``file_key`` (path
    in ``pairs.csv`` -> file key) scans are matched by their ``file_key`` entry instead of their ``path``
    (stored paths may be redacted).
    """
    by_path: dict[str, list[dict]] = defaultdict(list)
    for scan in scans:
        by_path[scan["file_key"] if file_key else scan["path"]].append(scan)
    key_of = file_key or (lambda path: path)
    rows, unresolved = [], []
    for given in pairs:
        references = sorted(by_path.get(key_of(given.reference_path), []), key=_slice_order)
        comparisons = sorted(by_path.get(key_of(given.comparison_path), []), key=_slice_order)
        if not references or not comparisons:
            unresolved.append(given)
            continue
        for reference, comparison in zip(references, comparisons, strict=False):
            rows.append(_pair(dataset, reference, comparison, "given", given.label))
    return rows, unresolved
