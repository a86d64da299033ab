"""The IMPC multiview composite: one 3-channel image per specimen from its DV and lateral X-rays.

Recipe (IMPC paper, Figure 5): the images of one view are averaged into one mean image per view
(channel 0 = mean DV, channel 1 = mean LAT); Canny edge maps of the two mean images are blended
with the DV edges weighted higher (channel 2). Each input image is first brought to [0, 1] by its
robust 1st-99th percentile window and resampled onto the output size keeping its aspect ratio, so
images of different sizes and exposures can be averaged.

Views (the paper's DV-only / LAT-only / multiview comparison): ``parse_views`` reads a choice such as
``"DV"``, ``"LAT"`` or ``"DV,LAT"``; ``view_group`` maps a scan's view name (``DV``, ``VD``, ``AP``,
``LATERAL`` ...) to ``"DV"`` or ``"LAT"``; ``specimen_image`` builds a specimen's network input for a
choice of views: both views give the composite; one view gives that view's mean image (same window,
averaging and fit as the composite's channel) repeated over the three channels — the single-view
input of the paper's Tables 4 and 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.canvas import resize
from features.errors import InputError

__all__ = [
    "multiview_composite", "view_mean", "robust_unit_range", "DV_VIEWS", "LAT_VIEWS", "VIEW_GROUPS", "view_group",
    "parse_views", "views_label", "specimen_image",
]

DV_VIEWS = frozenset({"DV", "DORSOVENTRAL", "VD", "AP", "PA"})
LAT_VIEWS = frozenset({"LAT", "LATERAL", "LV", "LL", "RL"})
VIEW_GROUPS = ("DV", "LAT")


def view_group(view) -> str | None:
    """``"DV"`` or ``"LAT"`` for a scan's view name (case and spaces ignored; ``VD``, ``AP``, ``LATERAL``,
    ``LV`` ... included); None for any other view (skull, limbs, '')."""
    name = (view or "").strip().upper()
    if name in DV_VIEWS:
        return "DV"
    if name in LAT_VIEWS:
        return "LAT"
    return None


def parse_views(views) -> tuple[str, ...] | None:
    """The canonical choice of views: None (no choice: every view) or a sorted tuple of ``"DV"`` / ``"LAT"``.

    ``views`` is None, a string such as ``"DV"``, ``"lat"``, ``"DV,LAT"`` / ``"DV+LAT"``, or a sequence
    of view names. ``InputError`` naming the accepted values for anything else.
    """
    if views is None:
        return None
    parts = views.replace("+", ",").split(",") if isinstance(views, str) else list(views)
    chosen = set()
    for part in parts:
        group = view_group(part) if isinstance(part, str) else None
        if group is None:
            raise InputError(
                f"The 'views' parameter must be DV, LAT or DV,LAT (view names such as VD or LATERAL count as "
                f"DV / LAT). Got {views!r} instead."
            )
        chosen.add(group)
    return tuple(g for g in VIEW_GROUPS if g in chosen)


def views_label(views) -> str:
    """How a choice of views is named in tables and reports: ``DV``, ``LAT``, ``DV+LAT`` or ``all``."""
    parsed = parse_views(views)
    return "all" if parsed is None else "+".join(parsed)


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


def specimen_image(
    dv_images: Sequence[np.ndarray],
    lat_images: Sequence[np.ndarray],
    *,
    views=("DV", "LAT"),
    size: tuple[int, int] = (224, 224),
    dv_weight: float = 0.6,
    canny_sigma: float = 2.0,
) -> np.ndarray:
    """A specimen's ``size + (3,)`` float32 input in [0, 1] for a choice of ``views`` (see ``parse_views``).

    Both views (or None): ``multiview_composite``. One view: that view's ``view_mean`` repeated over
    three channels; the other view's images are not used. ``InputError`` when the chosen view has no
    image.
    """
    chosen = parse_views(views) or VIEW_GROUPS
    if len(chosen) == 2:
        return multiview_composite(dv_images, lat_images, size=size, dv_weight=dv_weight, canny_sigma=canny_sigma)
    images = dv_images if chosen == ("DV",) else lat_images
    if len(images) == 0:
        raise InputError(f"The specimen has no {chosen[0]} image; a {chosen[0]}-only input needs at least one.")
    height, width = (int(v) for v in size)
    mean = view_mean(images, (height, width))
    return np.repeat(mean[:, :, None], 3, axis=2)
