"""Smooth synthetic volumes with a known rigid motion, for checking 3-D registration (pure).

``smooth_phantom`` evaluates a fixed random set of Gaussian blobs (a smooth "anatomy" with structure at
several scales) on a ``(z, y, x)`` grid; given a 4x4 ``(z, y, x)`` mm ``motion`` (the convention of
``features.registration3d``: fixed-grid point -> moving point) it returns the moved anatomy, so that
registering the moved volume onto the unmoved one should recover ``motion``. The volume is computed slab
by slab in float32, so a 300^3 phantom needs little more memory than its own array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.registration3d import grid_centre

__all__ = ["smooth_phantom"]

_SLAB_VOXELS = 4_000_000


def _blobs(extent_mm: np.ndarray, n_blobs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = extent_mm * rng.uniform(0.25, 0.75, size=(n_blobs, 3))
    widths = float(extent_mm.min()) * rng.uniform(0.04, 0.16, size=n_blobs)
    weights = rng.uniform(0.4, 1.0, size=n_blobs) * rng.choice([-1.0, 1.0], size=n_blobs, p=[0.3, 0.7])
    return centres, widths, weights


def smooth_phantom(
    shape: Sequence[int],
    spacing: Sequence[float],
    *,
    motion: np.ndarray | None = None,
    n_blobs: int = 24,
    seed: int = 0,
    scale: float = 1000.0,
) -> np.ndarray:
    """A float32 ``(z, y, x)`` volume of ``n_blobs`` Gaussian blobs (``seed`` picks them), ``scale`` at most.

    With ``motion`` (4x4, ``(z, y, x)`` mm, fixed -> moving) the value at a point ``q`` is the unmoved
    anatomy's at ``motion^-1 q``: the same blobs, moved. Blobs stay in the grid's central half, so a few
    degrees and voxels of motion keep the anatomy inside the field of view.
    """
    shape = tuple(int(s) for s in shape)
    spacing_arr = np.asarray(spacing, np.float64)
    centres, widths, weights = _blobs(grid_centre(shape, spacing_arr) * 2.0, n_blobs, seed)
    inverse = np.eye(4) if motion is None else np.linalg.inv(np.asarray(motion, np.float64))
    out = np.empty(shape, np.float32)
    rows = max(1, _SLAB_VOXELS // (shape[1] * shape[2]))
    y = np.arange(shape[1], dtype=np.float32) * np.float32(spacing_arr[1])
    x = np.arange(shape[2], dtype=np.float32) * np.float32(spacing_arr[2])
    for start in range(0, shape[0], rows):
        z = np.arange(start, min(start + rows, shape[0]), dtype=np.float32) * np.float32(spacing_arr[0])
        grid = np.stack(np.meshgrid(z, y, x, indexing="ij"), axis=-1)
        points = grid @ inverse[:3, :3].T.astype(np.float32) + inverse[:3, 3].astype(np.float32)
        del grid
        slab = np.zeros(points.shape[:3], np.float32)
        for centre, width, weight in zip(centres, widths, weights, strict=True):
            distance2 = ((points - centre.astype(np.float32)) ** 2).sum(axis=-1)
            slab += np.float32(weight) * np.exp(distance2 / np.float32(-2.0 * width * width))
        out[start:start + len(z)] = slab
    out *= np.float32(scale / max(float(np.abs(out).max()), 1e-12))
    return out
