"""Arrow schemas of the core tables (DESIGN.md, "Core tables").

``scans`` and ``pairs`` have fixed core columns; a dataset may add label columns of its own
(``level1``, ``level2``, ``grade``, ``split`` ...) after them. Readers join on the core columns only.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "SCANS_CORE",
    "PAIRS_CORE",
    "FAILURES",
    "DATASETS",
    "REFERENCE_MODES",
]

REFERENCE_MODES = ("absolute", "relative", "given")

SCANS_CORE = pa.schema(
    [
        # HMAC-SHA256(store secret, dataset \0 real relative path \0 frame)[:32]: an identity, unlinkable across stores
        ("scan_id", pa.string()),
        # HMAC-SHA256(store secret, SHA-256 of the decoded pixels): equal pixels share it within one store only
        ("pixel_sha256", pa.string()),
        ("dataset", pa.string()),
        ("subject", pa.string()),  # HMAC-SHA256(store secret, PatientID)[:32]; never the raw ID
        ("time_index", pa.int32()),  # whole weeks/days since the subject's first study; null if unknown
        ("days_from_baseline", pa.int32()),
        ("view", pa.string()),  # a coded view (DV, LAT, AP...), 'other' for an uncoded header value, or ''
        ("slice", pa.int32()),  # InstanceNumber / manifest slice; frame number for multi-frame files
        ("frame", pa.int32()),  # frame within a multi-frame file, else 0
        ("volume_id", pa.string()),  # the volume (store.volumes) this image is a slice of; null for a 2-D image
        ("volume_slice", pa.int32()),  # 0-based index of this slice along the volume's k axis; null outside one
        # relative to the dataset root, POSIX separators; identifying or non-UTF-8 components are keyed
        # markers '[label~tag]' (store.paths) that store.pixels resolves with the secret
        ("path", pa.string()),
        ("modality", pa.string()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        ("channels", pa.int32()),  # 1 for greyscale, 3 for colour
        ("window_center", pa.float64()),  # DICOM VOI window, null when absent
        ("window_width", pa.float64()),
        ("label", pa.string()),
        ("labels", pa.list_(pa.string())),  # multi-label targets; [] when none
    ]
)

PAIRS_CORE = pa.schema(
    [
        ("pair_id", pa.string()),  # sha256(reference_scan_id \0 comparison_scan_id \0 mode)[:32] (keyed via scan ids)
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("reference_scan_id", pa.string()),  # equals comparison_scan_id for a subject's first time point
        ("comparison_scan_id", pa.string()),
        ("reference_mode", pa.string()),  # absolute | relative | given
        ("interval_days", pa.int32()),
        ("time_index", pa.int32()),  # the comparison scan's time index
        ("label", pa.string()),
    ]
)

FAILURES = pa.schema(
    [
        ("key", pa.string()),  # scan_id / pair_id / path-derived id of what failed
        ("dataset", pa.string()),
        ("path", pa.string()),  # relative to the dataset root
        ("stage", pa.string()),  # ingest:read, ingest:decode, extract:<name>, ...
        ("error_class", pa.string()),
        ("message", pa.string()),  # says what to do; never contains PHI
        ("time", pa.timestamp("us", tz="UTC")),
        # when a later run processed the input: null while the failure is open (store.failures)
        ("resolved_at", pa.timestamp("us", tz="UTC")),
    ]
)

DATASETS = pa.schema(
    [
        ("dataset", pa.string()),
        ("root", pa.string()),  # absolute path of the dataset's files
        ("layout", pa.string()),
        ("synthetic", pa.bool_()),  # a generated demo stand-in, announced as such by every command
        ("time_unit", pa.string()),  # week | day | none
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
