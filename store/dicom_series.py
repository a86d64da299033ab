"""DICOM series assembled into volumes: slices grouped by SeriesInstanceUID, ordered along the slice normal.

``read_planes`` reads, without pixels, where each frame of a DICOM file lies: ImagePositionPatient and
ImageOrientationPatient (per frame of an enhanced multi-frame file, from its functional groups),
PixelSpacing, SliceThickness, Rows/Columns and the series UID. ``split_stacks`` splits a series into
stacks of one orientation and size (a localizer's three planes are three one-image stacks);
``assemble_series`` orders one stack's planes by their position along the normal (``row x column``
direction cosines) and either returns the volume's geometry or says why it cannot be one: a position
given twice (duplicated slice), a gap larger than the others (missing slices), uneven spacing. A stack
whose planes all lie at one position (copies of one image, a cine) is no volume and no problem. Nothing
is guessed: a stack that is not regular is reported, never resampled or filled.

Geometry follows ``store.volumes``: voxel ``(i, j, k)`` = (column, row, slice in normal order), affine to
RAS mm (DICOM's LPS x and y negated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SlicePlane", "SeriesGeometry", "SeriesProblem", "read_planes", "split_stacks", "assemble_series",
           "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOL = 1e-3
_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class SlicePlane:
    """One frame's plane: file (real path relative to the root), frame, series UID, position and orientation
    (LPS), pixel spacing ``(row spacing, column spacing)`` mm, slice thickness, size."""

    path: str
    frame: int
    series_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    thickness: float | None
    rows: int
    cols: int


@dataclass(frozen=True)
class SeriesGeometry:
    """A regular stack: its planes in slice order, the RAS affine, shape ``(z, y, x)``, spacing ``(z, y, x)``."""

    planes: list[SlicePlane]
    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    thickness: float | None


@dataclass(frozen=True)
class SeriesProblem:
    """Why a series is not a volume: ``message`` (no PHI: positions along the normal, counts) and the planes
    in the order found (sorted along the normal when that could be done)."""

    message: str
    planes: list[SlicePlane]


def _floats(value, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _plane_values(ds, frame_group, shared) -> tuple:
    """(position, orientation, pixel spacing, thickness) of one frame: from the frame's functional groups,
    else the shared ones, else the top-level keyword."""
    def pick(sequence: str, keyword: str):
        for group in (frame_group, shared):
            outer = getattr(group, sequence, None) if group is not None else None
            if outer and hasattr(outer[0], keyword):
                return getattr(outer[0], keyword)
        return getattr(ds, keyword, None)

    return (
        pick("PlanePositionSequence", "ImagePositionPatient"),
        pick("PlaneOrientationSequence", "ImageOrientationPatient"),
        pick("PixelMeasuresSequence", "PixelSpacing"),
        pick("PixelMeasuresSequence", "SliceThickness"),
    )


def _plane(ds, path: str, frame: int, frame_group, shared) -> SlicePlane | None:
    position, orientation, spacing, thickness = _plane_values(ds, frame_group, shared)
    position, orientation, spacing = _floats(position, 3), _floats(orientation, 6), _floats(spacing, 2)
    if position is None or orientation is None or spacing is None:
        return None
    try:
        thick = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thick = None
    return SlicePlane(path, frame, str(getattr(ds, "SeriesInstanceUID", "") or ""), position, orientation,
                      spacing, thick, int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0))


def read_planes(file: Path, path: str) -> list[SlicePlane]:
    """The plane of every frame of the DICOM file ``file`` (``path``: its real relative path), read without
    pixel data; ``[]`` when it has no SeriesInstanceUID or no complete position/orientation/spacing, or
    cannot be parsed (decoding problems are reported by ingestion itself)."""
    import pydicom

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        return _frame_planes(ds, path) if getattr(ds, "SeriesInstanceUID", None) else []
    except Exception:  # a header pydicom rejects or with malformed values (NumberOfFrames '1A'): not a volume slice
        return []


def _frame_planes(ds, path: str) -> list[SlicePlane]:
    """The planes of every frame of the parsed header ``ds`` (``[]`` when one lacks its geometry)."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shared_seq = getattr(ds, "SharedFunctionalGroupsSequence", None)
    shared = shared_seq[0] if shared_seq else None
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    if frames > 1 and len(per_frame) < frames:
        return []  # a multi-frame file without per-frame positions: no position is guessed
    planes = []
    for frame in range(frames):
        group = per_frame[frame] if frames > 1 else None
        plane = _plane(ds, path, frame, group, shared)
        if plane is None:
            return []
        planes.append(plane)
    return planes


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    return normal / (np.linalg.norm(normal) or 1.0)


def _uniform(planes: list[SlicePlane]) -> str | None:
    """Why ``planes`` cannot share one grid (orientation, size or pixel spacing differ), else ``None``."""
    first = planes[0]
    for plane in planes[1:]:
        if not np.allclose(plane.orientation, first.orientation, atol=_ORIENTATION_TOL):
            return "its slices have different orientations (ImageOrientationPatient)"
        if (plane.rows, plane.cols) != (first.rows, first.cols):
            return "its slices have different sizes (Rows/Columns)"
        if not np.allclose(plane.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            return "its slices have different PixelSpacing"
    return None


def _spacing_problem(offsets: np.ndarray) -> str | None:
    """Why the sorted positions ``offsets`` along the normal are not a regular stack, else ``None``."""
    steps = np.diff(offsets)
    if steps.size == 0:
        return None
    step = float(np.median(steps))
    duplicates = np.flatnonzero(steps <= 1e-3 * max(abs(step), 1e-3))
    if duplicates.size:
        where = ", ".join(f"{offsets[i]:.2f} mm" for i in duplicates[:5])
        return (f"{duplicates.size} duplicated slice position(s) along the slice normal (at {where}): two files "
                "give the same slice")
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP_FACTOR * step)
    if gaps.size:
        missing = int(sum(round(steps[i] / step) - 1 for i in gaps))
        where = ", ".join(f"{offsets[i]:.2f}-{offsets[i + 1]:.2f} mm" for i in gaps[:5])
        return (f"{missing} missing slice(s): gap(s) between {where} along the slice normal, where the other slices "
                f"are {step:.3g} mm apart")
    if not np.allclose(steps, step, rtol=0.05, atol=1e-3):
        return f"its slice spacing varies ({steps.min():.3g} to {steps.max():.3g} mm)"
    return None


def _affine(first: SlicePlane, normal: np.ndarray, step: float) -> np.ndarray:
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    row_spacing, col_spacing = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # i: along a row, i.e. across columns
    lps[:3, 1] = col * row_spacing  # j: down the rows
    lps[:3, 2] = normal * step
    lps[:3, 3] = first.position
    return LPS_TO_RAS @ lps


def split_stacks(planes: list[SlicePlane]) -> list[list[SlicePlane]]:
    """One series' planes grouped into stacks of one orientation and size (a 3-plane localizer is three
    stacks), in order of first appearance."""
    stacks: dict[tuple, list[SlicePlane]] = {}
    for plane in planes:
        key = (tuple(round(v, 3) for v in plane.orientation), plane.rows, plane.cols)
        stacks.setdefault(key, []).append(plane)
    return list(stacks.values())


def assemble_series(planes: list[SlicePlane]) -> SeriesGeometry | SeriesProblem | None:
    """The volume one stack of ``planes`` (``split_stacks``) makes, the problem that stops it making one, or
    ``None`` when it is no stack at all (one plane, or every plane at one position: copies of one image, a
    cine at one location).

    Planes are sorted by position along the normal (ties by path and frame).
    """
    why = _uniform(planes)
    if why is not None:
        return SeriesProblem(why, planes)
    normal = _normal(planes[0].orientation)
    ordered = sorted(planes, key=lambda p: (float(np.dot(p.position, normal)), p.path, p.frame))
    offsets = np.array([float(np.dot(p.position, normal)) for p in ordered])
    if len(ordered) < 2 or np.ptp(offsets) <= 1e-3:
        return None
    why = _spacing_problem(offsets)
    if why is not None:
        return SeriesProblem(why, ordered)
    first = ordered[0]
    step = float(np.median(np.diff(offsets)))
    affine = _affine(first, normal, step)
    shape = (len(ordered), first.rows, first.cols)
    spacing = (step, float(first.pixel_spacing[0]), float(first.pixel_spacing[1]))
    return SeriesGeometry(ordered, affine, shape, spacing, first.thickness)
