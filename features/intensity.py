"""Intensity policy for medical images fed to ImageNet-trained networks: any units in, [0, 1] out.

A pretrained CNN expects an 8-bit-like photo scaled to [0, 1] before its own mean/std
normalisation. Medical pixels are CT Hounsfield units, MR signal of arbitrary scale, X-ray counts,
µCT densities. The policy, applied to each image on its own before the model's normalisation:

1. **DICOM window** — when the scan carries a VOI window (WindowCenter/WindowWidth, recorded in
   ``scans.window_center`` / ``window_width``), the linear VOI function of DICOM PS3.3 C.11.2.1.2.1
   maps it to [0, 1]: what the radiologist was meant to see is what the network sees.
2. **Robust percentiles** — otherwise the 0.5th and 99.5th percentiles of the image map to 0 and 1
   (clipped outside), so one hot pixel or a zero-padded border does not squash the contrast.
   Colour images are stretched jointly over their channels (the hue balance is kept); images whose
   channels are different quantities (a multiview composite) are stretched per channel.
3. A constant image (no contrast at all, e.g. the uniform difference image of a first time point)
   maps to all zeros: there is nothing to stretch and 0 is "the image minimum".

Arrays in, arrays out: ``(H, W)`` or ``(H, W, C)``, any real dtype; output ``float32`` in [0, 1].
"""

from __future__ import annotations

import numpy as np

from features.errors import InputError

__all__ = [
    "PERCENTILES",
    "window_to_unit",
    "percentile_to_unit",
    "to_unit_range",
    "to_three_channels",
    "to_grey",
]

PERCENTILES = (0.5, 99.5)


def _as_float_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"An image of shape {image.shape} cannot be scaled; an (H, W) or (H, W, C) array is needed.")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_) or np.iscomplexobj(image):
        raise InputError(f"An image of dtype {image.dtype} cannot be scaled; a real-valued array is needed.")
    out = image.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise InputError(
            "The image holds NaN or infinite values, so no intensity range can be derived from it; "
            "replace them (e.g. np.nan_to_num) first."
        )
    return out


def window_to_unit(image: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``image`` through the DICOM linear VOI window (``center``, ``width``) to float32 [0, 1].

    DICOM PS3.3 C.11.2.1.2.1: ``x <= c - 0.5 - (w-1)/2`` -> 0, ``x > c - 0.5 + (w-1)/2`` -> 1, else
    ``((x - (c - 0.5)) / (w - 1) + 0.5)``. ``width`` must be >= 1 (``InputError`` otherwise).
    """
    pixels = _as_float_image(image)
    center, width = float(center), float(width)
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise InputError(
            f"DICOM window centre {center} / width {width} is not usable (the width must be a finite number "
            ">= 1); fix the WindowWidth tag or scale with intensity='percentile'."
        )
    if width == 1:  # the standard's degenerate case: a threshold at c - 0.5
        return (pixels > center - 0.5).astype(np.float32)
    out = (pixels - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def _stretch(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    lo, hi = np.percentile(pixels, [low, high])
    if not hi > lo:
        return np.zeros(pixels.shape, dtype=np.float32)
    out = (pixels - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def percentile_to_unit(
    image: np.ndarray, *, percentiles: tuple[float, float] = PERCENTILES, per_channel: bool = False
) -> np.ndarray:
    """Map the ``percentiles`` (low, high) of ``image`` to 0 and 1, clipping outside; float32 out.

    ``per_channel`` stretches each channel of an ``(H, W, C)`` image on its own; otherwise one range
    is taken over all pixels. A constant image (or channel) becomes all zeros.
    """
    pixels = _as_float_image(image)
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"Percentiles {percentiles!r} must satisfy 0 <= low < high <= 100.")
    if per_channel and pixels.ndim == 3:
        return np.stack([_stretch(pixels[..., c], low, high) for c in range(pixels.shape[2])], axis=-1)
    return _stretch(pixels, low, high)


def to_unit_range(
    image: np.ndarray,
    *,
    window_center: float | None = None,
    window_width: float | None = None,
    mode: str = "auto",
    per_channel: bool = False,
) -> np.ndarray:
    """The chronofeat intensity policy (module docstring): ``image`` in any units -> float32 [0, 1].

    ``mode='auto'`` uses the DICOM window when both ``window_center`` and ``window_width`` are given
    (not None/NaN), else the 0.5-99.5 percentile stretch; ``mode='percentile'`` ignores any window.
    ``per_channel`` applies to the percentile stretch only (a window is one range for all channels).
    """
    if mode not in ("auto", "percentile"):
        raise InputError(f"Intensity mode {mode!r} is not known; use 'auto' or 'percentile'.")
    has_window = (
        mode == "auto"
        and window_center is not None
        and window_width is not None
        and np.isfinite(window_center)
        and np.isfinite(window_width)
    )
    if has_window:
        return window_to_unit(image, window_center, window_width)
    return percentile_to_unit(image, per_channel=per_channel)


def to_three_channels(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 1)`` repeated to ``(H, W, 3)``; ``(H, W, 3)`` returned as is.

    An RGBA image (4 channels) loses its alpha channel. Other channel counts raise ``InputError``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    raise InputError(
        f"An image of shape {image.shape} cannot be given to a 3-channel network: greyscale (H, W), "
        "(H, W, 1), RGB (H, W, 3) or RGBA (H, W, 4) is needed."
    )


def to_grey(image: np.ndarray) -> np.ndarray:
    """An (H, W) float32 image from (H, W) or (H, W, C) pixels (channels averaged)."""
    image = np.asarray(image, dtype=np.float32)
    return image.mean(axis=2) if image.ndim == 3 else image
