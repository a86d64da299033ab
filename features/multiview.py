"""The IMPC multiview composite: one 3-channel image per specimen from its DV and lateral X-rays.

Recipe (IMPC paper, Figure 5): the images of one view are averaged into one mean image per view
(channel 0 = mean DV, channel 1 = mean LAT); Canny edge maps of the two mean images are blended
with the DV edges weighted higher (channel 2). Each input image is first brought to [0, 1] by its
robust 1st-99th percentile window and resampled onto the output size keeping its aspect ratio, so
images of different sizes and exposures can be averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.canvas import resize
from features.errors import InputError

__all__ = ["multiview_composite", "view_mean", "robust_unit_range"]


def robust_unit_range(image: np.ndarray, *, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """``image`` (greyscale; colour is averaged) mapped linearly so its ``low``-``high`` percentiles
    span [0, 1], then clipped to [0, 1]; a flat image gives zeros. Returns float32."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=2)
    if image.ndim != 2 or image.size == 0:
        raise InputError(f"Expected a greyscale (H, W) or colour (H, W, C) image; got shape {image.shape}.")
    if not np.isfinite(image).all():
        raise InputError("The image holds NaN or infinite values; replace them before building a composite.")
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def view_mean(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Mean of ``images`` (one view of one specimen), each windowed to [0, 1] and resized to ``size``
    keeping its aspect ratio (border = 0, the window's minimum). Empty ``images`` gives zeros."""
    if len(images) == 0:
        return np.zeros(size, np.float32)
    stack = [resize(robust_unit_range(image), size, keep_aspect=True) for image in images]
    return np.mean(stack, axis=0).astype(np.float32)


def multiview_composite(
    dv_images: Sequence[np.ndarray],
    lat_images: Sequence[np.ndarray],
    *,
    size: tuple[int, int] = (224, 224),
    dv_weight: float = 0.6,
    canny_sigma: float = 2.0,
) -> np.ndarray:
    """The specimen's ``size + (3,)`` float32 composite in [0, 1]: mean DV, mean LAT, blended edges.

    Edges: ``dv_weight * canny(mean DV) + (1 - dv_weight) * canny(mean LAT)`` (``dv_weight`` in
    (0.5, 1]: DV counts more, as in the paper). A specimen with images of only one view gets a zero
    channel for the missing view and only that view's weighted edges; with no image at all it raises
    ``InputError``.
    """
    from skimage.feature import canny

    if not (0.5 < float(dv_weight) <= 1.0):
        raise InputError(f"dv_weight must be in (0.5, 1] so that DV edges weigh more; got {dv_weight!r}.")
    if len(dv_images) == 0 and len(lat_images) == 0:
        raise InputError("A multiview composite needs at least one DV or LAT image; the specimen has none.")
    height, width = (int(v) for v in size)
    if height < 8 or width < 8:
        raise InputError(f"Composite size {size!r} is too small; use at least 8x8 (the paper uses 224x224).")
    dv = view_mean(dv_images, (height, width))
    lat = view_mean(lat_images, (height, width))
    edges = np.zeros((height, width), np.float32)
    if len(dv_images):
        edges += float(dv_weight) * canny(dv, sigma=canny_sigma).astype(np.float32)
    if len(lat_images):
        edges += (1.0 - float(dv_weight)) * canny(lat, sigma=canny_sigma).astype(np.float32)
    return np.stack([dv, lat, edges], axis=-1)
