"""Volumes as network inputs: one intensity policy, one common spacing, one cube size; patches of a cube.

A 3-D network sees every volume of a dataset the same way (``VolumeRecipe``):

1. intensity, per volume: values are clipped to the volume's own 0.5th and 99.5th percentiles and
   scaled to [0, 1] (``"percentile"``; ``"minmax"`` uses the minimum and maximum instead). A constant
   volume becomes all zeros. Non-finite values are an ``InputError``.
2. spacing: the volume is resampled (trilinear, anti-aliased when shrinking) to the recipe's isotropic
   ``spacing`` in mm, so one voxel is the same physical size in every volume. ``common_spacing`` picks
   the dataset's spacing: the one at which its largest physical extent (any axis, any volume) fills the
   cube, as the 2-D recipe pads every slice to the dataset's largest canvas.
3. size: the resampled volume is centred on a ``size`` ** 3 cube; space outside it is filled with 0
   (the volume's minimum after step 1), a volume larger than the cube is centre-cropped.

Patch mode (``patch_side``): a cube with more voxels than a network's budget is seen through patches
of ``patch`` ** 3 voxels: random patches in training (``random_corners``) and, to describe a whole
volume, the patches of a sliding grid with stride ``patch // 2`` (``grid_corners``, the last patch of
each axis flush with the cube's far side) whose outputs are averaged.

Pure computation: arrays in, arrays out, no paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from features.errors import InputError, ParameterError

__all__ = [
    "INTENSITY_POLICIES",
    "DEFAULT_MAX_VOXELS",
    "VolumeRecipe",
    "common_spacing",
    "normalise_intensity",
    "prepare_volume",
    "patch_side",
    "grid_corners",
    "random_corners",
    "cut_patches",
]

INTENSITY_POLICIES = ("percentile", "minmax")
DEFAULT_MAX_VOXELS = 64**3  # the largest cube a network sees whole; above it, patches


def _check_size(owner: str, name: str, value, *, low: int = 8, high: int = 512) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= value <= high
    if not ok or value % 8:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be an int in [{low}, {high}] divisible by 8. "
            f"Got {value!r} instead."
        )


@dataclass(frozen=True)
class VolumeRecipe:
    """How a volume becomes a network input: a ``size`` ** 3 cube at isotropic ``spacing`` mm, intensities
    in [0, 1] by ``intensity`` (one of ``INTENSITY_POLICIES``)."""

    size: int
    spacing: float
    intensity: str = "percentile"

    def validate(self) -> None:
        """``ParameterError`` for a size, spacing or policy out of range."""
        _check_size("VolumeRecipe", "size", self.size)
        if not isinstance(self.spacing, (int, float)) or isinstance(self.spacing, bool) or not self.spacing > 0:
            raise ParameterError(
                f"The 'spacing' parameter of VolumeRecipe must be a float in (0, inf) mm. Got {self.spacing!r} instead."
            )
        if self.intensity not in INTENSITY_POLICIES:
            raise ParameterError(
                f"The 'intensity' parameter of VolumeRecipe must be one of {list(INTENSITY_POLICIES)}. "
                f"Got {self.intensity!r} instead."
            )

    def to_dict(self) -> dict:
        """The recipe as plain JSON types (stored in a network's configuration)."""
        return {**asdict(self), "spacing": float(self.spacing), "kind": "volume"}

    @classmethod
    def from_dict(cls, data: dict) -> VolumeRecipe:
        """The recipe ``to_dict`` wrote."""
        return cls(int(data["size"]), float(data["spacing"]), str(data.get("intensity", "percentile")))


def _check_spacing(spacing, what: str = "volume") -> np.ndarray:
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"The {what}'s spacing must be three positive numbers (z, y, x) in mm. Got {spacing!r}.")
    return values


def common_spacing(shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]], size: int) -> float:
    """The isotropic spacing (mm) at which the largest physical extent among the volumes fills ``size`` voxels.

    ``shapes`` are the volumes' (z, y, x) voxel counts and ``spacings`` their (z, y, x) voxel sizes in mm.
    """
    _check_size("common_spacing", "size", size)
    if len(shapes) == 0 or len(shapes) != len(spacings):
        raise InputError(f"common_spacing needs one spacing per volume and at least one volume; got "
                         f"{len(shapes)} shapes and {len(spacings)} spacings.")
    extents = [np.asarray(shape, np.float64)[-3:] * _check_spacing(spacing)
               for shape, spacing in zip(shapes, spacings, strict=True)]
    return float(max(extent.max() for extent in extents) / size)


def normalise_intensity(volume: np.ndarray, policy: str = "percentile") -> np.ndarray:
    """``volume`` scaled to [0, 1] as float32 by ``policy`` (module docstring); a constant volume gives zeros."""
    data = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError("The volume holds NaN or infinite values; fix or mask them before preparing it.")
    if policy == "percentile":
        low, high = np.percentile(data, [0.5, 99.5])
    elif policy == "minmax":
        low, high = float(data.min()), float(data.max())
    else:
        raise ParameterError(f"The 'policy' parameter of normalise_intensity must be one of "
                             f"{list(INTENSITY_POLICIES)}. Got {policy!r} instead.")
    if not high > low:
        return np.zeros(data.shape, np.float32)
    return np.clip((data - np.float32(low)) / np.float32(high - low), 0.0, 1.0).astype(np.float32)


def _centre_on_cube(volume: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size, size), np.float32)
    src, dst = [], []
    for n in volume.shape:
        if n >= size:
            start = (n - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def prepare_volume(volume: np.ndarray, spacing: Sequence[float], recipe: VolumeRecipe) -> np.ndarray:
    """``volume`` (z, y, x) with voxel ``spacing`` (z, y, x) mm as the recipe's ``(size, size, size)`` float32 cube.

    Intensity first (on the volume's own values), then resampling to ``recipe.spacing``, then centring on
    the cube (module docstring).
    """
    from skimage.transform import resize

    data = np.asarray(volume)
    if data.ndim != 3 or min(data.shape) < 1:
        raise InputError(f"A volume must be a 3-D array (z, y, x); got shape {data.shape}.")
    factors = _check_spacing(spacing) / float(recipe.spacing)
    scaled = normalise_intensity(data, recipe.intensity)
    target = tuple(max(1, int(round(n * f))) for n, f in zip(data.shape, factors, strict=True))
    if target != data.shape:
        scaled = resize(scaled, target, order=1, mode="edge", anti_aliasing=bool(np.any(factors < 1)),
                        preserve_range=True).astype(np.float32)
    return _centre_on_cube(scaled, int(recipe.size))


def patch_side(size: int, patch_size: int | None, max_voxels: int = DEFAULT_MAX_VOXELS) -> int | None:
    """The patch side a network on ``size`` ** 3 cubes uses, or None to see each cube whole.

    ``patch_size`` given: that side (at most ``size``; equal to it means whole cubes). None: whole cubes
    when ``size ** 3 <= max_voxels``, else the largest multiple of 8 whose cube fits the budget.
    """
    _check_size("patch_side", "size", size)
    if not isinstance(max_voxels, (int, np.integer)) or isinstance(max_voxels, bool) or max_voxels < 8**3:
        raise ParameterError(f"The 'max_voxels' parameter must be an int in [512, inf). Got {max_voxels!r} instead.")
    if patch_size is None:
        if size**3 <= max_voxels:
            return None
        side = int(round(max_voxels ** (1 / 3)))
        side -= 1 if side**3 > max_voxels else 0
        return max(8, side // 8 * 8)
    _check_size("patch_side", "patch_size", patch_size, high=size)
    return None if patch_size == size else int(patch_size)


def _axis_starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def grid_corners(size: int, patch: int, stride: int | None = None) -> np.ndarray:
    """``(K, 3)`` corners (z, y, x) of the sliding grid of ``patch`` ** 3 patches covering a ``size`` ** 3
    cube with ``stride`` (default ``patch // 2``); the last patch of each axis ends at the cube's side."""
    if not 1 <= patch <= size:
        raise ParameterError(f"grid_corners: the patch side must be in [1, {size}]. Got {patch!r} instead.")
    stride = max(1, patch // 2) if stride is None else int(stride)
    starts = _axis_starts(size, patch, stride)
    grid = np.stack(np.meshgrid(starts, starts, starts, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3).astype(np.int64)


def random_corners(rng: np.random.Generator, n: int, size: int, patch: int) -> np.ndarray:
    """``(n, 3)`` random corners of ``patch`` ** 3 patches inside a ``size`` ** 3 cube, from ``rng``."""
    return rng.integers(0, size - patch + 1, size=(int(n), 3)).astype(np.int64)


def cut_patches(cubes, corners: np.ndarray, patch: int):
    """The patches ``cubes[i, ..., z:z+p, y:y+p, x:x+p]`` for corner ``i``, stacked; NumPy arrays or torch
    tensors ``(N, ..., S, S, S)`` with one corner per cube."""
    if len(corners) != len(cubes):
        raise InputError(f"cut_patches needs one corner per cube; got {len(corners)} corners for {len(cubes)} cubes.")
    parts = [cube[..., z : z + patch, y : y + patch, x : x + patch] for cube, (z, y, x) in zip(cubes, corners,
                                                                                               strict=True)]
    if hasattr(cubes, "new_zeros"):  # a torch tensor
        import torch

        return torch.stack(parts)
    return np.stack(parts)
