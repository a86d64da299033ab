"""Slice policies: which 2-D images of a volume a 2-D extractor works on (``extract --slices``).

A policy is written as text and parsed by ``parse_slice_policy``:

- ``all`` -- every slice (the default; also every 2-D image that is not part of a volume);
- ``every:K`` -- slices ``0, K, 2K, ...`` of each volume (index along the volume's k axis);
- ``central:N`` -- the central slab of ``N`` consecutive slices of each volume (all of them when the
  volume has fewer), starting at ``(depth - N) // 2``;
- ``mip:PLANE`` -- one image per volume, its maximum-intensity projection onto ``PLANE`` (``axial``,
  ``coronal``, ``sagittal``: projected along the voxel axis closest to the world S, A or R axis; or
  ``k``, ``j``, ``i``: along that voxel axis);
- ``kth`` -- ChronoMID's k-th-slice pairing: slice k of one time point with slice k of the other (the
  pairs ingestion builds); for pair extractors it keeps the pairs of volume slices, for scan extractors
  it is ``all``.

Every policy but ``all`` keeps only images that are slices of a volume. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from features.errors import ParameterError

__all__ = ["SlicePolicy", "parse_slice_policy", "MIP_PLANES", "maximum_projection", "projection_axis"]

MIP_PLANES = ("axial", "coronal", "sagittal", "k", "j", "i")
_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # RAS: R (x), A (y), S (z)
_VOXEL_AXIS = {"i": 0, "j": 1, "k": 2}
_FORM = re.compile(r"^(all|kth|every:(\d+)|central:(\d+)|mip:([a-z]+))$")


@dataclass(frozen=True)
class SlicePolicy:
    """A parsed slice policy: ``kind`` (all | every | central | mip | kth) and its ``value`` (K, N, plane)."""

    kind: str
    value: int | str | None = None

    @property
    def spec(self) -> str:
        """The policy as written (``every:4``): what provenance records."""
        return self.kind if self.value is None else f"{self.kind}:{self.value}"

    @property
    def tag(self) -> str:
        """A table-name suffix (``every4``, ``central5``, ``mip_axial``, ``kth``; ``''`` for ``all``)."""
        if self.kind == "all":
            return ""
        if self.kind == "mip":
            return f"mip_{self.value}"
        return self.kind if self.value is None else f"{self.kind}{self.value}"

    def keeps(self, index: int | None, depth: int | None) -> bool:
        """Whether slice ``index`` (0-based) of a volume of ``depth`` slices is kept (``None``: not a volume
        slice, kept only by ``all``). ``mip`` keeps no slice: its units are derived images."""
        if self.kind == "all":
            return True
        if index is None or depth is None or self.kind == "mip":
            return False
        if self.kind == "every":
            return index % int(self.value) == 0
        if self.kind == "central":
            start = max((depth - int(self.value)) // 2, 0)
            return start <= index < start + int(self.value)
        return True  # kth: every volume slice


def parse_slice_policy(text: str | None) -> SlicePolicy:
    """The ``SlicePolicy`` written as ``text`` (``None`` or ``''``: ``all``); ``ParameterError`` otherwise."""
    value = (text or "all").strip().lower()
    match = _FORM.match(value)
    number = int(match.group(2) or match.group(3) or 0) if match else 0
    plane = match.group(4) if match else None
    if match is None or (match.group(1).startswith(("every", "central")) and number < 1) or (
        plane is not None and plane not in MIP_PLANES
    ):
        raise ParameterError(
            f"The 'slices' parameter must be one of all, every:K, central:N (K, N >= 1), mip:PLANE (PLANE in "
            f"{', '.join(MIP_PLANES)}) or kth. Got {text!r} instead."
        )
    if value in ("all", "kth"):
        return SlicePolicy(value)
    if plane is not None:
        return SlicePolicy("mip", plane)
    return SlicePolicy(value.split(":")[0], number)


def projection_axis(affine: np.ndarray, plane: str) -> int:
    """The array axis of a ``(z, y, x)`` volume to project along for ``plane`` (see the module docstring):
    the voxel axis whose direction in ``affine`` (voxel -> RAS) is closest to the plane's normal."""
    if plane in _VOXEL_AXIS:
        return 2 - _VOXEL_AXIS[plane]
    if plane not in _WORLD_AXIS:
        raise ParameterError(f"The MIP plane must be one of {', '.join(MIP_PLANES)}. Got {plane!r} instead.")
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = np.abs(directions[_WORLD_AXIS[plane]]) / np.maximum(np.linalg.norm(directions, axis=0), 1e-12)
    return 2 - int(np.argmax(cosines))


def maximum_projection(array: np.ndarray, affine: np.ndarray, plane: str) -> np.ndarray:
    """The float32 maximum-intensity projection of ``array`` ``(z, y, x)`` onto ``plane`` (2-D: the two
    remaining axes in array order)."""
    return np.asarray(array).max(axis=projection_axis(affine, plane)).astype(np.float32)
