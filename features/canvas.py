"""Putting images of different sizes on one canvas (ChronoMID, section 4).

ChronoMID expands every slice to the largest height and width of the dataset, placing the image in
the centre and filling the border with that image's own minimum; when the canvas is not known in
advance images are resampled to a preset size, keeping their aspect ratio (and padding the same way)
or not. Arrays in, arrays out: ``(H, W)`` greyscale or ``(H, W, C)`` colour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from features.errors import InputError

__all__ = ["common_canvas", "canvas_offset", "pad_to_canvas", "resize"]


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(
            f"The {what} has shape {image.shape}; an (H, W) or (H, W, C) array with H, W >= 1 is needed."
        )
    return image


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in tuple(shape)[:2])
    except (TypeError, ValueError):
        raise InputError(f"Canvas shape {shape!r} is not a pair of integers (height, width).") from None
    if height < 1 or width < 1:
        raise InputError(f"Canvas shape {shape!r} must have height and width >= 1.")
    return height, width


def common_canvas(shapes: Iterable[Sequence[int]]) -> tuple[int, int]:
    """The smallest canvas ``(H, W)`` holding every shape: the largest height and the largest width.

    ``shapes`` are array shapes (only the first two numbers, height and width, are used).
    """
    heights, widths = [], []
    for shape in shapes:
        height, width = _check_shape(shape)
        heights.append(height)
        widths.append(width)
    if not heights:
        raise InputError("common_canvas needs at least one image shape; none were given.")
    return max(heights), max(widths)


def canvas_offset(image_shape: Sequence[int], canvas: Sequence[int]) -> tuple[int, int]:
    """Top-left ``(row, col)`` where ``pad_to_canvas`` places an image of ``image_shape`` on ``canvas``.

    The image is centred; when the spare pixels are odd, the extra one goes below / to the right.
    """
    height, width = _check_shape(image_shape)
    canvas_h, canvas_w = _check_shape(canvas)
    if height > canvas_h or width > canvas_w:
        raise InputError(
            f"An image of {height}x{width} does not fit a {canvas_h}x{canvas_w} canvas; use "
            "common_canvas() over all the images, or resize() to shrink it first."
        )
    return (canvas_h - height) // 2, (canvas_w - width) // 2


def pad_to_canvas(image: np.ndarray, shape: Sequence[int], *, fill: float | None = None) -> np.ndarray:
    """``image`` centred on a canvas of ``shape`` (H, W), the border filled with the image's minimum.

    Every original pixel is kept unchanged (same dtype); ``fill`` overrides the fill value (e.g. 0 for
    a validity mask). Colour images keep their channels; the fill is the minimum over all channels.
    An image larger than the canvas raises ``InputError`` (nothing is cropped silently).
    """
    image = _check_image(image)
    canvas_h, canvas_w = _check_shape(shape)
    top, left = canvas_offset(image.shape, (canvas_h, canvas_w))
    if image.shape[:2] == (canvas_h, canvas_w):
        return image.copy()
    if fill is None:
        fill = image.min()
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(fill):
            raise InputError(
                "The image holds NaN or infinite values, so its minimum (the ChronoMID padding value) is "
                "undefined; replace them (e.g. np.nan_to_num) before padding."
            )
    out = np.full((canvas_h, canvas_w) + image.shape[2:], fill, dtype=image.dtype)
    out[top : top + image.shape[0], left : left + image.shape[1]] = image
    return out


def resize(image: np.ndarray, shape: Sequence[int], *, keep_aspect: bool = True) -> np.ndarray:
    """``image`` resampled to ``shape`` (H, W) as float32, intensities kept in their own units.

    With ``keep_aspect`` the image is scaled by one factor so that it fits inside the canvas and then
    centred on it with the image's minimum as fill (ChronoMID's preset-size variant); without it, each
    axis is scaled to the canvas independently. Shrinking is anti-aliased.
    """
    from skimage.transform import resize as sk_resize

    image = _check_image(image)
    canvas_h, canvas_w = _check_shape(shape)
    source = image.astype(np.float32, copy=False)
    if keep_aspect:
        scale = min(canvas_h / image.shape[0], canvas_w / image.shape[1])
        target = (
            min(canvas_h, max(1, int(round(image.shape[0] * scale)))),
            min(canvas_w, max(1, int(round(image.shape[1] * scale)))),
        )
    else:
        scale = min(canvas_h / image.shape[0], canvas_w / image.shape[1])
        target = (canvas_h, canvas_w)
    if target == image.shape[:2]:
        scaled = source.copy()
    else:
        scaled = sk_resize(
            source,
            target + image.shape[2:],
            order=1,
            mode="edge",
            anti_aliasing=scale < 1,
            preserve_range=True,
        ).astype(np.float32)
    if keep_aspect:
        return pad_to_canvas(scaled, (canvas_h, canvas_w), fill=float(source.min()))
    return scaled
