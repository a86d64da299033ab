"""Statistics of a difference volume, per volume and per slab along z (pure: arrays in, numbers out).

The 3-D counterpart of ``features.stats.difference_statistics``, with the same names
(``features.stats.statistic_names``: ``diff_mean`` ... ``ssim``) and the same meaning, computed over the
voxels of ``mask`` (where both registered volumes hold data). Per slab: the volume is cut into ``n_slabs``
slabs of (nearly) equal thickness along z and each gets the same statistics, named ``slab{i}_<name>``
(``slab0_diff_mean`` is the first slab's, from z = 0), so a table holds them as named float columns.

Built to stay within a few volumes of memory at 300^3: the difference values are read in float32, moments
are accumulated in float64 chunk by chunk; the noise level (in-plane 3x3 Laplacian-like filter, median
absolute deviation, as in 2-D) and the structural similarity (2-D SSIM per z slice, averaged over the
valid voxels) are read on at most ``max_slices`` evenly spaced slices of the volume (or slab), and the
histogram range on at most ``_RANGE_SAMPLES`` evenly strided voxels of each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.errors import InputError, check_param, is_int
from features.stats import PERCENTILES, _noise_support, _ssim, sigma_column, statistic_names

__all__ = ["VolumeStatistics", "volume_statistics", "slab_names", "slab_bounds"]

_CHUNK = 4_000_000
_RANGE_SAMPLES = 4_000_000
_LAPLACE_NORM = 6.0


@dataclass(frozen=True)
class VolumeStatistics:
    """``values``: the whole volume's statistics then every slab's (``slab_names`` order); ``histogram``:
    the whole volume's normalised ``n_bins`` histogram of differences (float32, sums to 1)."""

    values: dict[str, float]
    histogram: np.ndarray


def slab_names(n_slabs: int, k_sigmas: Sequence[float] = (1, 2, 3)) -> list[str]:
    """``statistic_names(k_sigmas)`` then ``slab{i}_<name>`` for each of the ``n_slabs`` slabs."""
    base = statistic_names(tuple(k_sigmas))
    return base + [f"slab{i}_{name}" for i in range(int(n_slabs)) for name in base]


def slab_bounds(depth: int, n_slabs: int) -> list[tuple[int, int]]:
    """``[(z0, z1), ...]``: ``n_slabs`` consecutive ranges covering ``range(depth)``, thicknesses differing by <= 1."""
    edges = np.linspace(0, int(depth), int(n_slabs) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _moments(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard deviation and skewness of float32 ``values``, accumulated in float64 by chunks."""
    n = values.size
    mean = float(values.mean(dtype=np.float64))
    m2 = m3 = 0.0
    for start in range(0, n, _CHUNK):
        centred = values[start:start + _CHUNK].astype(np.float64) - mean
        m2 += float(np.dot(centred, centred))
        m3 += float((centred * centred * centred).sum())
    std = float(np.sqrt(m2 / n))
    skew = (m3 / n) / std**3 if std > 1e-12 * max(1.0, abs(mean)) else 0.0
    return mean, std, float(skew)


def _slices(depth: int, max_slices: int) -> np.ndarray:
    return np.unique(np.linspace(0, depth - 1, min(depth, max_slices)).round().astype(int))


def _noise(image: np.ndarray, mask: np.ndarray, slices: np.ndarray) -> float:
    """Noise sigma of a volume from the in-plane filter responses of ``slices`` (``features.stats`` rule)."""
    from scipy import ndimage

    pooled = []
    for z in slices:
        if min(image.shape[1:]) < 3 or not mask[z].any():
            continue
        plane = image[z].astype(np.float64)
        response = ndimage.correlate1d(plane, [1.0, -2.0, 1.0], axis=0, mode="reflect")
        response = ndimage.correlate1d(response, [1.0, -2.0, 1.0], axis=1, mode="reflect")
        values = response[_noise_support(mask[z], plane.shape)]
        pooled.append(values[values != 0.0])
    values = np.concatenate(pooled) if pooled else np.empty(0)
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))) / _LAPLACE_NORM)


def _ssim_volume(reference: np.ndarray, comparison: np.ndarray, mask: np.ndarray, slices: np.ndarray) -> float:
    total = weight = 0.0
    for z in slices:
        count = int(mask[z].sum())
        if count and min(reference.shape[1:]) >= 3:
            total += count * _ssim(reference[z], comparison[z], mask[z])
            weight += count
    return total / weight if weight else 1.0


def _robust_range(reference: np.ndarray, comparison: np.ndarray, mask: np.ndarray) -> float:
    stride = max(1, int(np.ceil(mask.size / _RANGE_SAMPLES)))
    keep = mask.reshape(-1)[::stride]
    pooled = np.concatenate([reference.reshape(-1)[::stride][keep], comparison.reshape(-1)[::stride][keep]])
    if pooled.size == 0:
        return 0.0
    lo, hi = np.percentile(pooled, [1.0, 99.0])
    if hi <= lo:
        lo, hi = pooled.min(), pooled.max()
    return float(hi - lo)


def _magnitudes(values: np.ndarray, thresholds: Sequence[float], span: float, n_bins: int):
    """Chunk by chunk (no full-size temporary): mean |value|, fraction above each threshold, the histogram
    of ``values`` clipped to ``[-span, span]`` and the largest |value|."""
    above = np.zeros(len(thresholds), np.int64)
    counts = np.zeros(int(n_bins), np.int64)
    total = largest = 0.0
    for start in range(0, values.size, _CHUNK):
        chunk = values[start:start + _CHUNK]
        counts += np.histogram(chunk, bins=int(n_bins), range=(-span, span))[0]
        counts[0] += int(np.count_nonzero(chunk < -span))
        counts[-1] += int(np.count_nonzero(chunk > span))
        magnitude = np.abs(chunk)
        total += float(magnitude.sum(dtype=np.float64))
        largest = max(largest, float(magnitude.max()))
        above += [int(np.count_nonzero(magnitude > t)) for t in thresholds]
    return total / values.size, above / values.size, counts, largest


def _block_statistics(diff, reference, comparison, mask, *, n_bins, k_sigmas, max_slices, same):
    """``(values, histogram)`` of one block (the volume or a slab): ``features.stats`` names and meaning.

    Memory: one float32 copy of the block's valid differences, reordered in place by the percentiles.
    """
    values = diff[mask]
    if values.size == 0:
        raise InputError(
            "A difference volume (or one of its slabs) has no voxel covered by both registered volumes; "
            "check that the pair shows the same anatomy, or use fewer slabs."
        )
    mean, std, skew = _moments(values)
    slices = _slices(diff.shape[0], max_slices)
    ref_noise = _noise(reference, mask, slices)
    sigma = float(np.hypot(ref_noise, ref_noise if same else _noise(comparison, mask, slices)))
    span = _robust_range(reference, comparison, mask)
    if span <= 0.0:
        span = max(float(np.abs(values).max()), 1.0)
    mean_abs, above, counts, _ = _magnitudes(values, [float(k) * sigma for k in k_sigmas], span, n_bins)
    result = {"diff_mean": mean, "diff_std": std, "diff_skew": skew}
    percentiles = np.percentile(values, PERCENTILES, overwrite_input=True)
    del values
    result.update({f"diff_p{p:02d}": float(v) for p, v in zip(PERCENTILES, percentiles, strict=True)})
    result["diff_mean_abs"] = float(mean_abs)
    result["noise_sigma"] = sigma
    result.update({sigma_column(k): float(f) for k, f in zip(k_sigmas, above, strict=True)})
    histogram = (counts / counts.sum()).astype(np.float32)
    nonzero = histogram[histogram > 0].astype(np.float64)
    result["diff_entropy"] = float(-(nonzero * np.log2(nonzero)).sum())
    result["ssim"] = 1.0 if same else _ssim_volume(reference, comparison, mask, slices)
    return result, histogram


def volume_statistics(
    diff: np.ndarray,
    reference: np.ndarray,
    comparison: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_bins: int = 32,
    k_sigmas: Sequence[float] = (1, 2, 3),
    n_slabs: int = 4,
    max_slices: int = 32,
) -> VolumeStatistics:
    """Statistics of a difference volume ``diff`` (usually ``comparison - reference``) over ``mask``.

    ``reference`` and ``comparison``: the two registered ``(z, y, x)`` volumes ``diff`` came from (same
    shape; pass one array as both for a subject's first time point, as in 2-D); ``mask``: voxels both
    cover (default all); ``n_slabs`` (0: none) slabs along z, each at least one slice thick; ``max_slices``
    per block for the noise level and SSIM. A block with no valid voxel raises ``InputError``.
    """
    same = reference is comparison
    diff, reference = np.asarray(diff), np.asarray(reference)
    comparison = reference if same else np.asarray(comparison)
    if diff.ndim != 3 or reference.shape != diff.shape or comparison.shape != diff.shape:
        raise InputError(
            f"volume_statistics needs three (z, y, x) volumes of one shape; got {diff.shape}, "
            f"{reference.shape} and {comparison.shape}."
        )
    mask = np.ones(diff.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != diff.shape:
        raise InputError(f"The mask has shape {mask.shape}, the difference volume {diff.shape}.")
    check_param("volume_statistics", "n_slabs", n_slabs, kind=f"an int in [0, {diff.shape[0]}] (the z depth)",
                ok=is_int(n_slabs, 0) and n_slabs <= diff.shape[0])
    options = {"n_bins": n_bins, "k_sigmas": tuple(k_sigmas), "max_slices": int(max_slices), "same": same}
    values, histogram = _block_statistics(diff, reference, comparison, mask, **options)
    for i, (z0, z1) in enumerate(slab_bounds(diff.shape[0], n_slabs) if n_slabs else []):
        block = slice(z0, z1)
        slab, _ = _block_statistics(diff[block], reference[block], comparison[block] if not same else reference[block],
                                    mask[block], **options)
        values.update({f"slab{i}_{name}": value for name, value in slab.items()})
    return VolumeStatistics(values=values, histogram=histogram)
