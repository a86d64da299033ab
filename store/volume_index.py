"""The volume step of an ingest: ``volumes`` and ``volume_pairs`` rows from a dataset's scans.

Run by ``store.ingest`` after the scans are derived, for layouts with ``volumes`` set. Every NIfTI
file is one volume (its slices are its frames). DICOM files are grouped by SeriesInstanceUID and a
series (each stack of one orientation and size in it, ``store.dicom_series.split_stacks``) becomes one
volume when its planes make a regular stack; one image, or images all at one position, stay 2-D. A stack
that is not regular (a gap, a duplicated position, uneven spacing) is recorded in ``failures`` (stage
``ingest:volume``, the path of its first slice) and makes no volume; its slices stay ordinary scans,
numbered along the normal in ``volume_slice``.

Scan dicts of member slices get ``volume_id`` and ``volume_slice`` (0-based index along the volume's
k axis); only headers are read here, never voxels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.dataset_layouts import Layout, longitudinal_pairs, scan_id
from features.errors import ChronofeatError
from store.dicom_series import SeriesGeometry, assemble_series, read_planes, split_stacks
from store.digest import open_regular
from store.failures import Failure, open_failures, record_failures, resolve_failures
from store.layout import Store
from store.nifti import read_nifti_geometry
from store.paths import PathResolver
from store.provenance import combine_hashes

__all__ = ["VolumeIndex", "index_volumes", "record_volume_failures", "VOLUME_STAGE"]

VOLUME_STAGE = "ingest:volume"


@dataclass(frozen=True)
class VolumeIndex:
    """What the volume step found: ``volumes`` rows, ``pairs`` (``volume_pairs`` rows), ``failures``."""

    volumes: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def _volume_row(members: list[dict], *, volume_id: str, kind: str, affine: np.ndarray,
                shape: tuple[int, int, int], thickness: float | None) -> dict:
    """The ``volumes`` row of a volume whose member scans are ``members`` (in slice order)."""
    first = members[0]
    spacing = [float(np.linalg.norm(affine[:3, axis])) for axis in (2, 1, 0)]
    for k, scan in enumerate(members):
        scan["volume_id"], scan["volume_slice"] = volume_id, k
    return {
        "volume_id": volume_id, "pixel_sha256": combine_hashes(*(m["pixel_sha256"] for m in members)),
        "dataset": first["dataset"], "subject": first["subject"], "time_index": first["time_index"],
        "days_from_baseline": first["days_from_baseline"], "view": first["view"], "source_kind": kind,
        "path": first["path"],
        "slice_paths": [m["path"] for m in members] if kind == "dicom" else [],
        "slice_frames": [int(m["frame"]) for m in members] if kind == "dicom" else [],
        "shape": [int(n) for n in shape], "spacing": spacing,
        "affine": [float(v) for v in np.asarray(affine, dtype=np.float64).reshape(-1)],
        "slice_thickness": thickness if thickness is not None else spacing[0], "modality": first["modality"],
        "label": first.get("label"),
    }


def _nifti_volumes(scans_by_file: dict[str, list[dict]], kinds: dict[str, str], resolver: PathResolver,
                   *, secret: bytes, dataset: str, found: VolumeIndex) -> None:
    for file_key, members in scans_by_file.items():
        if kinds.get(file_key) != "nifti":
            continue
        members.sort(key=lambda s: s["frame"])
        stored = members[0]["path"]
        volume_id = scan_id(secret, dataset, "volume:" + file_key, 0)
        try:
            with open_regular(resolver.resolve(stored), label=stored) as handle:
                affine, shape = read_nifti_geometry(handle, name=stored)
        except ChronofeatError as exc:
            found.failures.append(Failure(key=volume_id, dataset=dataset, path=stored, stage=VOLUME_STAGE,
                                          error_class=type(exc).__name__, message=str(exc)))
            continue
        found.volumes.append(_volume_row(members, volume_id=volume_id, kind="nifti", affine=affine, shape=shape,
                                         thickness=None))


def _series_planes(scans_by_file: dict[str, list[dict]], kinds: dict[str, str], resolver: PathResolver) -> dict:
    """The planes of the dataset's DICOM files grouped by series UID (files without planes left out)."""
    series: dict[str, list] = defaultdict(list)
    for file_key, members in scans_by_file.items():
        if kinds.get(file_key) != "dicom":
            continue
        stored = members[0]["path"]
        try:
            file = resolver.resolve(stored)
        except ChronofeatError:
            continue
        for plane in read_planes(Path(file), stored):
            series[plane.series_uid].append(plane)
    return series


def _dicom_volumes(scans_by_file: dict[str, list[dict]], kinds: dict[str, str], resolver: PathResolver,
                   *, secret: bytes, dataset: str, found: VolumeIndex) -> None:
    scan_of = {(m["path"], int(m["frame"])): m for members in scans_by_file.values() for m in members}
    stacks = [(uid, n, stack) for uid, planes in sorted(_series_planes(scans_by_file, kinds, resolver).items())
              for n, stack in enumerate(split_stacks(planes))]
    for uid, n, planes in stacks:
        geometry = assemble_series(planes)
        if geometry is None:
            continue  # 2-D images (one plane, or all at one position): no volume
        volume_id = scan_id(secret, dataset, f"series:{uid}:{n}" if n else f"series:{uid}", 0)
        ordered = [scan_of[(p.path, p.frame)] for p in geometry.planes if (p.path, p.frame) in scan_of]
        if len(ordered) != len(planes):
            continue  # frames the header announces but ingestion did not decode: those files have their failures
        if isinstance(geometry, SeriesGeometry):
            found.volumes.append(_volume_row(ordered, volume_id=volume_id, kind="dicom", affine=geometry.affine,
                                             shape=geometry.shape, thickness=geometry.thickness))
            continue
        for k, scan in enumerate(ordered):
            scan["volume_slice"] = k
        first = ordered[0]["path"] if ordered else planes[0].path
        found.failures.append(Failure(
            key=volume_id, dataset=dataset, path=first, stage=VOLUME_STAGE, error_class="DatasetError",
            message=(f"{first}: the DICOM series of {len(planes)} slices starting here is not a volume: "
                     f"{geometry.message}. Its slices are kept as 2-D scans (numbered along the normal in "
                     "volume_slice); add the missing slices or remove the duplicates, then ingest again."),
        ))


def _pairs(volumes: list[dict], layout: Layout, dataset: str, self_pairs: bool | None) -> list[dict]:
    """``volume_pairs`` rows: ``longitudinal_pairs`` over the volumes (each a one-slice 'scan')."""
    as_scans = [{**v, "scan_id": v["volume_id"], "slice": 0, "frame": 0} for v in volumes]
    rows, _ = longitudinal_pairs(as_scans, layout, dataset, self_pairs=self_pairs)
    out = []
    for row in rows:
        row["reference_volume_id"] = row.pop("reference_scan_id")
        row["comparison_volume_id"] = row.pop("comparison_scan_id")
        out.append(row)
    out.sort(key=lambda p: (p["subject"], p["reference_mode"], p["time_index"] is None, p["time_index"] or 0,
                            p["pair_id"]))
    return out


def index_volumes(
    scans: list[dict], index_rows: list[dict], *, folder: Path, secret: bytes, dataset: str, layout: Layout,
    self_pairs: bool | None = None,
) -> VolumeIndex:
    """Volumes, volume pairs and volume failures of a dataset whose derived ``scans`` came from ``index_rows``.

    ``scans`` (dicts, each with ``file_key``) gain ``volume_id`` / ``volume_slice`` (``None`` outside a
    volume). ``folder``: the dataset root (stored paths are resolved with ``secret``).
    """
    for scan in scans:
        scan.setdefault("volume_id", None)
        scan.setdefault("volume_slice", None)
    kinds = {row["file_key"]: row["kind"] for row in index_rows}
    scans_by_file: dict[str, list[dict]] = defaultdict(list)
    for scan in scans:
        scans_by_file[scan["file_key"]].append(scan)
    resolver = PathResolver(Path(folder), lambda: secret)
    found = VolumeIndex()
    _nifti_volumes(scans_by_file, kinds, resolver, secret=secret, dataset=dataset, found=found)
    _dicom_volumes(scans_by_file, kinds, resolver, secret=secret, dataset=dataset, found=found)
    found.volumes.sort(key=lambda v: (v["subject"], v["time_index"] is None, v["time_index"] or 0, v["view"],
                                      v["volume_id"]))
    found.pairs.extend(_pairs(found.volumes, layout, dataset, self_pairs))
    return found


def record_volume_failures(store: Store, dataset: str, failures: list[Failure], *, producer: str) -> int:
    """Make ``failures`` the open ``ingest:volume`` failures of ``dataset``: new ones recorded, those that no
    longer occur marked resolved; return how many are open."""
    table = open_failures(store, dataset=dataset)
    known = {k for k, s in zip(table.column("key").to_pylist(), table.column("stage").to_pylist(), strict=True)
             if s == VOLUME_STAGE}
    record_failures(store, failures, producer=producer)
    fixed = known - {f.key for f in failures}
    if fixed:
        resolve_failures(store, dataset=dataset, keys=fixed, producer=producer)
    return len(failures)
