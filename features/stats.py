"""Statistics of a difference image: how much, where and how unusually two time points differ.

Inputs are two aligned greyscale images (the registered reference and the comparison), their
difference ``comparison - reference`` and a mask of the pixels where both hold real data (canvas
padding and pixels uncovered by the registration shift are left out). Outputs are named floats
plus a fixed-bin histogram, so pairs of different datasets, sizes and weeks are comparable:

- ``diff_mean``, ``diff_std``, ``diff_skew``, ``diff_p01`` ... ``diff_p99`` (1/5/25/50/75/95/99th
  percentiles), ``diff_mean_abs``: in the images' own units (e.g. HU);
- ``noise_sigma``: the noise a difference of these two images would have with no real change,
  ``sqrt(s_ref^2 + s_cmp^2)``, each ``s`` estimated robustly from the image itself (median absolute
  deviation of a Laplacian-like 3x3 filter response, Immerkaer 1996; flat areas do not count);
- ``frac_above_{k}sigma``: fraction of pixels whose absolute change exceeds ``k * noise_sigma``;
- histogram: ``n_bins`` equal bins over ``[-R, R]`` where ``R`` is the images' robust dynamic range
  (99th minus 1st percentile of both images' valid pixels), values beyond it counted in the end
  bins, normalised to sum 1; ``diff_entropy`` is its Shannon entropy in bits;
- ``ssim``: mean structural similarity of the two aligned images over the valid pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.errors import InputError

__all__ = [
    "DifferenceStatistics",
    "PERCENTILES",
    "statistic_names",
    "sigma_column",
    "noise_sigma",
    "robust_range",
    "difference_statistics",
]

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_LAPLACE = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])  # its weights' L2 norm is 6


@dataclass(frozen=True)
class DifferenceStatistics:
    """Named scalar statistics (``statistic_names(k_sigmas)`` order) and the normalised histogram."""

    values: dict[str, float]
    histogram: np.ndarray  # float32, length n_bins, sums to 1 (0 everywhere when no valid pixel)


def sigma_column(k: float) -> str:
    """Column name for the fraction of pixels beyond ``k`` noise sigmas: 2 -> ``frac_above_2sigma``,
    1.5 -> ``frac_above_1p5sigma``."""
    return f"frac_above_{float(k):g}sigma".replace(".", "p")


def statistic_names(k_sigmas: Sequence[float] = (1, 2, 3)) -> list[str]:
    """The scalar statistic names ``difference_statistics`` returns, in order."""
    return [
        "diff_mean",
        "diff_std",
        "diff_skew",
        *(f"diff_p{p:02d}" for p in PERCENTILES),
        "diff_mean_abs",
        "noise_sigma",
        *(sigma_column(k) for k in k_sigmas),
        "diff_entropy",
        "ssim",
    ]


def noise_sigma(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust estimate of the additive noise standard deviation of a greyscale ``image``.

    The 3x3 filter ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` cancels smooth structure and multiplies white
    noise's standard deviation by 6; the median absolute deviation of its responses (edges are a
    minority and do not move the median) gives the sigma. Responses touching pixels outside ``mask``
    and exact zeros (flat areas such as canvas padding, which hold no noise) are left out; an image
    with no such response (entirely flat) has sigma 0.
    """
    image = np.asarray(image, dtype=np.float64)
    _check_noise_shape(image.shape)
    return _noise_sigma(image, _noise_support(mask, image.shape))


def _check_noise_shape(shape: tuple[int, ...]) -> None:
    """``InputError`` unless ``shape`` is that of a greyscale image ``noise_sigma`` can read (>= 3x3)."""
    if len(shape) != 2 or min(shape) < 3:
        raise InputError(f"noise_sigma needs a greyscale image of at least 3x3; got shape {shape}.")


def _noise_support(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Where ``noise_sigma`` reads filter responses: 3x3 neighbourhoods inside ``mask``, off the border."""
    from scipy import ndimage

    valid = np.ones(shape, bool) if mask is None else ndimage.binary_erosion(mask, np.ones((3, 3)))
    valid[[0, -1], :] = False
    valid[:, [0, -1]] = False
    return valid


def _noise_sigma(image: np.ndarray, valid: np.ndarray) -> float:
    """``noise_sigma`` of a float64 (H, W) ``image`` over the responses at ``valid`` (``_noise_support``)."""
    from scipy import ndimage

    # _LAPLACE is the outer product of [1, -2, 1] with itself: two 1-D passes instead of one 3x3 pass.
    response = ndimage.correlate1d(image, [1.0, -2.0, 1.0], axis=0, mode="reflect")
    response = ndimage.correlate1d(response, [1.0, -2.0, 1.0], axis=1, mode="reflect")
    values = response[valid]
    values = values[values != 0.0]
    if values.size == 0:
        return 0.0
    mad = np.median(np.abs(values - np.median(values)))
    return float(1.4826 * mad / 6.0)


def robust_range(*images: np.ndarray, mask: np.ndarray | None = None, low: float = 1.0, high: float = 99.0) -> float:
    """The ``high`` minus ``low`` percentile of the pooled valid pixels of ``images`` (0 when flat)."""
    pooled = np.concatenate(
        [np.asarray(im, dtype=np.float64)[mask] if mask is not None else np.ravel(im) for im in images]
    )
    if pooled.size == 0:
        return 0.0
    lo, hi = np.percentile(pooled, [low, high])
    if hi <= lo:
        lo, hi = pooled.min(), pooled.max()
    return float(hi - lo)


def _ssim(reference: np.ndarray, comparison: np.ndarray, mask: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    a = reference.astype(np.float64, copy=False)
    b = comparison.astype(np.float64, copy=False)
    a_valid, b_valid = a[mask], b[mask]
    data_range = float(max(a_valid.max(), b_valid.max()) - min(a_valid.min(), b_valid.min()))
    if data_range == 0.0:
        return 1.0 if np.array_equal(a_valid, b_valid) else 0.0
    win = min(7, min(a.shape) - (1 - min(a.shape) % 2))
    if win < 3:
        return float(np.clip(1.0 - np.abs(a - b)[mask].mean() / data_range, 0.0, 1.0))
    # Only the masked pixels' windows matter: the map is computed on their bounding box grown by half a
    # window (its local statistics are the whole image's there; at the image's own border the reflection
    # is the same), which is the whole image unless the mask leaves out a wide margin.
    half = win // 2
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(max(rows[0] - half, 0), rows[-1] + half + 1), slice(max(cols[0] - half, 0), cols[-1] + half + 1))
    if min(a[box].shape) < win:
        box = (slice(None), slice(None))
    _, ssim_map = structural_similarity(a[box], b[box], win_size=win, data_range=data_range, full=True)
    return float(ssim_map[mask[box]].mean())


def difference_statistics(
    diff: np.ndarray,
    reference: np.ndarray,
    comparison: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_bins: int = 32,
    k_sigmas: Sequence[float] = (1, 2, 3),
) -> DifferenceStatistics:
    """Statistics of ``diff`` (usually ``comparison - reference``) over ``mask`` (default: all pixels).

    ``reference`` and ``comparison`` are the aligned greyscale images the difference came from (both
    the same shape as ``diff``); they give the noise level, the histogram range and the SSIM. For a
    subject's first time point pass the uniform difference and the comparison image as both images.
    An empty mask raises ``InputError``.
    """
    from scipy.stats import skew

    same = reference is comparison  # a first time point: one image as both (its noise once, SSIM 1)
    diff = np.asarray(diff, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    comparison = reference if same else np.asarray(comparison, dtype=np.float64)
    if diff.ndim != 2 or reference.shape != diff.shape or comparison.shape != diff.shape:
        raise InputError(
            f"difference_statistics needs three greyscale arrays of one shape; got {diff.shape}, "
            f"{reference.shape} and {comparison.shape}."
        )
    mask = np.ones(diff.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != diff.shape:
        raise InputError(f"The mask has shape {mask.shape}, the difference image {diff.shape}.")
    if not mask.any():
        raise InputError(
            "The two images share no valid pixel after registration (the shift moved one off the other); "
            "check that the pair shows the same anatomy, or compute without registration."
        )
    _check_noise_shape(diff.shape)
    values = diff[mask]
    std = float(values.std())
    support = _noise_support(mask, diff.shape)
    reference_noise = _noise_sigma(reference, support)
    sigma = float(np.hypot(reference_noise, reference_noise if same else _noise_sigma(comparison, support)))
    result: dict[str, float] = {
        "diff_mean": float(values.mean()),
        "diff_std": std,
        "diff_skew": float(skew(values)) if std > 1e-12 * max(1.0, abs(values.mean())) else 0.0,
    }
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        result[f"diff_p{p:02d}"] = float(v)
    magnitude = np.abs(values)
    result["diff_mean_abs"] = float(magnitude.mean())
    result["noise_sigma"] = sigma
    for k in k_sigmas:
        result[sigma_column(k)] = float((magnitude > float(k) * sigma).mean())

    span = robust_range(reference, comparison, mask=mask)
    if span <= 0.0:
        span = max(float(magnitude.max()), 1.0)
    counts, _ = np.histogram(np.clip(values, -span, span), bins=int(n_bins), range=(-span, span))
    histogram = (counts / counts.sum()).astype(np.float32)
    nonzero = histogram[histogram > 0].astype(np.float64)
    result["diff_entropy"] = float(-(nonzero * np.log2(nonzero)).sum())
    # An image against itself: every SSIM window is (A1 A2) / (B1 B2) with A1 == B1 and A2 == B2, exactly 1.
    result["ssim"] = 1.0 if same else _ssim(reference, comparison, mask)
    return DifferenceStatistics(values=result, histogram=histogram)
