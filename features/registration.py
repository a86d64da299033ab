"""Aligning two images of the same subject: translation by phase correlation, optionally rigid.

ChronoMID registers two weeks by translation with scikit-image's FFT cross-correlation before
subtracting. ``register_translation`` does that (``skimage.registration.phase_cross_correlation``'s
algorithm, computed here on half spectra, of the images' edge maps, Hann-windowed, sub-pixel by
upsampled DFT; skimage's masked normalised cross-correlation when canvas padding must be ignored) and
says how much to trust the result; ``register_rigid`` first recovers a rotation from the Fourier magnitude
spectra in polar coordinates (translation-invariant), then the translation.

Conventions: shifts are ``(dy, dx)`` in pixels, the amount to move ``moving`` so that it lies on
``reference`` (``scipy.ndimage.shift`` semantics); a rotation is in degrees, counter-clockwise,
about the image centre, applied to ``moving`` before the shift. Colour images are registered on
their channel mean; the transform is then applied to every channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from features.errors import InputError

__all__ = [
    "Registration",
    "register_translation",
    "register_rigid",
    "apply_shift",
    "apply_registration",
    "overlap_slices",
    "agreement",
]


@dataclass(frozen=True)
class Registration:
    """How to move ``moving`` onto ``reference``, and how well that worked.

    ``shift``: ``(dy, dx)`` to apply to ``moving`` (after ``rotation``); ``rotation``: degrees,
    counter-clockwise about the centre (0 for translation-only); ``confidence``: Pearson correlation
    of the reference and the registered moving image over their overlap, clipped to [0, 1] (1 = they
    agree perfectly after the transform, near 0 = nothing in common was found); ``error``: root mean
    square of reference minus registered moving over that overlap, in the images' units.
    """

    shift: tuple[float, float]
    confidence: float
    error: float
    rotation: float = 0.0


def _grey(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        image = image.mean(axis=2)
    if image.ndim != 2 or min(image.shape) < 2:
        raise InputError(f"The {what} image has shape {image.shape}; registration needs an (H, W) or (H, W, C) image.")
    image = image.astype(np.float64, copy=False)
    if not np.isfinite(image).all():
        raise InputError(f"The {what} image holds NaN or infinite values; replace them before registering.")
    return image


def _check_pair(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = _grey(reference, "reference")
    mov = _grey(moving, "moving")
    if ref.shape != mov.shape:
        raise InputError(
            f"The reference ({ref.shape[0]}x{ref.shape[1]}) and moving ({mov.shape[0]}x{mov.shape[1]}) images "
            "differ in size; put both on their common canvas first (features.canvas.pad_to_canvas)."
        )
    return ref, mov


def overlap_slices(shape: tuple[int, int], shift: tuple[float, float]) -> tuple[slice, slice]:
    """Rows and columns of an image of ``shape`` still covered by real pixels after ``shift``.

    Sub-pixel borders are excluded (the partly interpolated row/column is dropped).
    """
    bounds = []
    for size, delta in zip(shape, shift, strict=True):
        start = int(np.ceil(delta)) if delta > 0 else 0
        stop = size + int(np.floor(delta)) if delta < 0 else size
        bounds.append(slice(min(max(start, 0), size), max(min(stop, size), 0)))
    return bounds[0], bounds[1]


def agreement(
    reference: np.ndarray, registered: np.ndarray, valid: tuple[slice, slice] | np.ndarray
) -> tuple[float, float]:
    """(confidence, error) of two aligned greyscale images over ``valid`` (slices or a boolean mask).

    confidence = Pearson correlation clipped to [0, 1] (two equal flat images: 1); error = RMS difference.
    """
    a = reference[valid].ravel()
    b = registered[valid].ravel()
    if a.size < 2:
        return 0.0, float("nan") if a.size == 0 else float(np.abs(a - b).max())
    error = float(np.sqrt(np.mean((a - b) ** 2)))
    a = a - a.mean()
    b = b - b.mean()
    norm = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if norm == 0.0:
        # Two flat images: they agree exactly when they are equal, and then the fit is perfect.
        return (1.0 if error == 0.0 else 0.0), error
    return float(np.clip(np.dot(a, b) / norm, 0.0, 1.0)), error


def apply_shift(
    image: np.ndarray, shift: tuple[float, float], *, order: int = 1, fill: float | None = None
) -> np.ndarray:
    """``image`` moved by ``shift`` = ``(dy, dx)`` pixels (float32; sub-pixel by spline of ``order``).

    Pixels uncovered by the move get ``fill`` (default: the image's minimum, as the ChronoMID padding).
    Integer shifts move pixels exactly. Colour images move every channel.
    """
    from scipy import ndimage

    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InputError(f"apply_shift needs an (H, W) or (H, W, C) image; got shape {image.shape}.")
    dy, dx = (float(v) for v in shift)
    source = image.astype(np.float32, copy=False)
    cval = float(source.min()) if fill is None else float(fill)
    if dy == round(dy) and dx == round(dx):
        out = np.full_like(source, cval)
        rows = overlap_slices(source.shape[:2], (dy, dx))
        src_rows = slice(rows[0].start - int(dy), rows[0].stop - int(dy))
        src_cols = slice(rows[1].start - int(dx), rows[1].stop - int(dx))
        out[rows[0], rows[1]] = source[src_rows, src_cols]
        return out
    full_shift = (dy, dx) + (0.0,) * (source.ndim - 2)
    return ndimage.shift(source, full_shift, order=order, mode="constant", cval=cval, prefilter=order > 1).astype(
        np.float32, copy=False
    )


def _mask(mask: np.ndarray | None, shape: tuple[int, int], what: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise InputError(f"The {what} mask has shape {mask.shape}, the images {shape}.")
    if not mask.any():
        raise InputError(f"The {what} mask marks no pixel as real; nothing can be registered.")
    return mask


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _edges(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the lightly smoothed image: what registration correlates.

    Edges stay where they are when intensities change between time points (bone densifying, a lesion
    brightening, a receiver gain), so correlating edges keeps such changes from pulling the shift.
    """
    from scipy import ndimage
    from skimage.filters import sobel

    return sobel(ndimage.gaussian_filter(image, 1.0))


@lru_cache(maxsize=8)
def _hann(shape: tuple[int, ...]) -> np.ndarray:
    """``skimage.filters.window("hann", shape)``, made once per shape (read-only)."""
    from skimage.filters import window

    taper = window("hann", shape)
    taper.flags.writeable = False
    return taper


def _upsampled_dft(data: np.ndarray, region: int, upsample: int, offsets: np.ndarray) -> np.ndarray:
    """The ``region`` x ``region`` block, from ``offsets``, of the ``upsample``-times upsampled inverse
    DFT of ``data`` by matrix products (Guizar-Sicairos et al. 2008): ``skimage.registration``'s
    ``_upsampled_dft`` applied as ``_upsampled_dft(data.conj(), ...).conj()``, written out here."""
    from scipy.fft import fftfreq

    for n_items, offset in zip(data.shape[::-1], offsets[::-1], strict=True):
        kernel = np.exp(2j * np.pi * ((np.arange(region) - offset)[:, None] * fftfreq(n_items, upsample)))
        data = np.tensordot(kernel, data, axes=(1, -1))
    return data


def _cross_correlation_shift(reference: np.ndarray, moving: np.ndarray, upsample: int) -> np.ndarray:
    """``skimage.registration.phase_cross_correlation(reference, moving, upsample_factor=upsample,
    normalization=None)[0]`` for two real 2-D images, on half spectra (``rfft2``): the same whole-pixel
    peak and the same upsampled-DFT refinement, without the error terms it would also compute."""
    from scipy.fft import irfft2, rfft2

    shape = reference.shape
    half = rfft2(reference)
    half *= rfft2(moving).conj()
    correlation = irfft2(half, s=shape)
    peak = np.unravel_index(np.argmax(np.abs(correlation)), shape)
    shift = np.array(peak, dtype=np.float64)
    size = np.array(shape)
    wrapped = shift > np.trunc(size / 2)
    shift[wrapped] -= size[wrapped]
    if upsample == 1:
        return shift
    # The full spectrum of the (real) correlation from its half: X[-k] = conj(X[k]).
    product = np.empty(shape, np.complex128)
    cols = half.shape[1]
    product[:, :cols] = half
    rows = (-np.arange(shape[0])) % shape[0]
    product[:, cols:] = half[rows][:, shape[1] - np.arange(cols, shape[1])].conj()
    factor = float(upsample)
    shift = np.round(shift * factor) / factor
    region = np.ceil(factor * 1.5)
    centre = np.trunc(region / 2.0)
    refined = _upsampled_dft(product, int(region), upsample, centre - shift * factor)
    best = np.array(np.unravel_index(np.argmax(np.abs(refined)), refined.shape), dtype=np.float64)
    return shift + (best - centre) / factor


def _windowed_shift(ref_edges: np.ndarray, mov_edges: np.ndarray, upsample: int) -> np.ndarray:
    """Sub-pixel cross-correlation shift of two same-size edge images, mean removed and Hann-windowed.

    The window stops the image borders (which do not wrap around) from pulling the peak to zero; the
    correlation is not whitened ('phase' normalisation), which amplifies noise on smooth images.
    """
    taper = _hann(ref_edges.shape)
    return _cross_correlation_shift(
        (ref_edges - ref_edges.mean()) * taper, (mov_edges - mov_edges.mean()) * taper, int(upsample)
    )


def _inner(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """``mask`` shrunk by ``margin`` pixels (edges computed there do not see the padding step)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=margin)
    return inner if inner.sum() >= 64 else mask


def _masked_shift(ref, mov, ref_mask, mov_mask, upsample: int) -> tuple[float, float]:
    """Whole-pixel shift by masked normalised cross-correlation of the edge images, then sub-pixel
    cross-correlation on the rectangle both images cover once that shift is applied."""
    from skimage.registration import phase_cross_correlation

    ref_edges, mov_edges = _edges(ref), _edges(mov)
    ref_inner, mov_inner = _inner(ref_mask), _inner(mov_mask)
    coarse = phase_cross_correlation(ref_edges, mov_edges, reference_mask=ref_inner, moving_mask=mov_inner)[0]
    coarse = (float(np.round(coarse[0])), float(np.round(coarse[1])))
    if upsample <= 1:
        return coarse
    moved_edges = apply_shift(mov_edges, coarse).astype(np.float64)
    covered = ref_inner & (apply_shift(mov_inner.astype(np.float32), coarse, fill=0.0) > 0.5)
    if covered.sum() < 64:
        return coarse
    box = _bounding_box(covered)
    a, b = ref_edges[box], moved_edges[box]
    if min(a.shape) < 8 or np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        return coarse
    residual = _windowed_shift(a, b, int(upsample))
    if np.abs(residual).max() > 1.0:  # the refinement wandered off: keep the robust whole-pixel answer
        return coarse
    return coarse[0] + float(residual[0]), coarse[1] + float(residual[1])


def register_translation(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 20,
    reference_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
) -> Registration:
    """The translation that moves ``moving`` onto ``reference`` (FFT cross-correlation, 1/``upsample`` px).

    Both images must have the same height and width. What is correlated is their smoothed gradient
    magnitude (edges), mean removed and Hann-windowed, so intensity changes between time points do not
    pull the shift. ``reference_mask`` / ``moving_mask`` (True = a real pixel) leave canvas padding
    out: the whole-pixel shift then comes from masked normalised cross-correlation (Padfield 2012) and
    is refined to sub-pixel on the region both images cover, so padding edges cannot pull the answer.
    ``confidence`` and ``error`` are measured after applying the shift, over the pixels both images
    really cover (see ``Registration``); ``error`` is NaN only when the shift leaves no overlap.
    """
    return _register_translation(reference, moving, upsample=upsample, reference_mask=reference_mask,
                                 moving_mask=moving_mask)[0]


def _register_translation(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 20,
    reference_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
) -> tuple[Registration, np.ndarray | None]:
    """``(register_translation(...), moved)``: ``moved`` is ``apply_shift(grey moving, shift)`` (float32),
    which it computes anyway, so that a caller moving the same image need not do it again (None for
    flat images)."""
    if not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise InputError(f"upsample must be an int >= 1; got {upsample!r}.")
    ref, mov = _check_pair(reference, moving)
    ref_mask = _mask(reference_mask, ref.shape, "reference")
    mov_mask = _mask(moving_mask, ref.shape, "moving")
    if np.ptp(ref) == 0.0 or np.ptp(mov) == 0.0:
        # Phase correlation of a flat image is undefined: no shift can be found, say so in confidence.
        confidence, error = agreement(ref, mov, (slice(None), slice(None)))
        return Registration(shift=(0.0, 0.0), confidence=confidence, error=error), None
    if ref_mask is None and mov_mask is None:
        dy, dx = (float(v) for v in _windowed_shift(_edges(ref), _edges(mov), int(upsample)))
    else:
        ref_mask = np.ones(ref.shape, bool) if ref_mask is None else ref_mask
        mov_mask = np.ones(ref.shape, bool) if mov_mask is None else mov_mask
        dy, dx = _masked_shift(ref, mov, ref_mask, mov_mask, int(upsample))
    dy, dx = dy + 0.0, dx + 0.0  # turns -0.0 into 0.0
    moved = apply_shift(mov, (dy, dx))
    if ref_mask is None:
        valid: tuple[slice, slice] | np.ndarray = overlap_slices(ref.shape, (dy, dx))
    else:
        valid = ref_mask & (apply_shift(mov_mask.astype(np.float32), (dy, dx), fill=0.0) > 0.999)
    confidence, error = agreement(ref, moved.astype(np.float64), valid)
    return Registration(shift=(dy, dx), confidence=confidence, error=error), moved


def _rotate(image: np.ndarray, angle: float, *, fill: float | None = None) -> np.ndarray:
    from skimage.transform import rotate

    source = np.asarray(image, dtype=np.float32)
    cval = float(source.min()) if fill is None else float(fill)
    return rotate(source, angle, resize=False, order=1, mode="constant", cval=cval, preserve_range=True).astype(
        np.float32, copy=False
    )


def _rotation_candidates(ref: np.ndarray, mov: np.ndarray, upsample: int) -> float:
    """Rotation (degrees, ccw) of ``mov`` relative to ``ref`` from polar-resampled magnitude spectra.

    The magnitude spectrum does not move when the image translates, and a rotation of the image rotates
    it by the same angle, which becomes a shift along the angle axis in polar coordinates. The spectrum
    is symmetric, so the answer is only known modulo 180 degrees.
    """
    from scipy.fft import fft2, fftshift
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    def spectrum(image: np.ndarray) -> np.ndarray:
        band = difference_of_gaussians(image, 1, 4)
        return np.abs(fftshift(fft2(band * window("hann", image.shape))))

    radius = min(ref.shape) // 4
    angles = 720  # 0.5 degree per row before sub-pixel refinement
    ref_polar = warp_polar(spectrum(ref), radius=radius, output_shape=(angles, radius), scaling="linear")
    mov_polar = warp_polar(spectrum(mov), radius=radius, output_shape=(angles, radius), scaling="linear")
    # Only the half of the (symmetric) spectrum with distinct angles, and not the DC-dominated centre.
    ref_half = ref_polar[: angles // 2, 2:]
    mov_half = mov_polar[: angles // 2, 2:]
    shift, _, _ = phase_cross_correlation(ref_half, mov_half, upsample_factor=upsample, normalization=None)
    return float(shift[0]) * 360.0 / angles


def _rigid_at(ref, mov, angle: float, upsample: int, ref_mask, mov_mask) -> Registration:
    """Translation registration of ``mov`` derotated by ``angle``; agreement over truly covered pixels."""
    derotated = _rotate(mov, -angle)
    # Corners rotated in from outside the image hold fill, not data: they are not real pixels.
    source = np.ones(mov.shape, np.float32) if mov_mask is None else mov_mask.astype(np.float32)
    covered = _rotate(source, -angle, fill=0.0) > 0.999
    if ref_mask is None and mov_mask is None:
        found = register_translation(ref, derotated, upsample=upsample)
    else:
        found = register_translation(ref, derotated, upsample=upsample, reference_mask=ref_mask, moving_mask=covered)
    valid = apply_shift(covered.astype(np.float32), found.shift, fill=0.0) > 0.999
    if ref_mask is not None:
        valid &= ref_mask
    registered = apply_shift(derotated, found.shift).astype(np.float64)
    confidence, error = agreement(ref, registered, valid)
    return Registration(shift=found.shift, confidence=confidence, error=error, rotation=-angle)


def register_rigid(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 20,
    reference_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
) -> Registration:
    """Rotation + translation moving ``moving`` onto ``reference`` (both the same height and width).

    The rotation comes from the polar magnitude spectra, known modulo 180 degrees: both candidates
    are tried and the one that agrees best after translation registration wins; the angle is then
    refined (to about 0.02 degree) on that agreement. Masks as in ``register_translation``. Returns a
    ``Registration`` with ``rotation`` set; ``confidence`` and ``error`` are measured where both
    images hold real pixels.
    """
    from scipy.optimize import minimize_scalar

    ref, mov = _check_pair(reference, moving)
    ref_mask = _mask(reference_mask, ref.shape, "reference")
    mov_mask = _mask(moving_mask, ref.shape, "moving")
    if np.ptp(ref) == 0.0 or np.ptp(mov) == 0.0:
        return register_translation(ref, mov, upsample=upsample)
    coarse = _rotation_candidates(ref, mov, upsample)
    candidates = [
        _rigid_at(ref, mov, a, upsample, ref_mask, mov_mask)
        for a in (coarse, coarse + 180.0 if coarse < 0 else coarse - 180.0)
    ]
    best = max(candidates, key=lambda r: r.confidence)
    angle = -best.rotation
    refined = minimize_scalar(
        lambda a: -_rigid_at(ref, mov, a, 4, ref_mask, mov_mask).confidence,
        bounds=(angle - 0.75, angle + 0.75),
        method="bounded",
        options={"xatol": 0.02},
    )
    if refined.success:
        found = _rigid_at(ref, mov, float(refined.x), upsample, ref_mask, mov_mask)
        if found.confidence >= best.confidence:
            best = found
    return best


def apply_registration(image: np.ndarray, registration: Registration, *, fill: float | None = None) -> np.ndarray:
    """``image`` transformed by ``registration``: rotated by ``rotation`` degrees, then shifted."""
    image = np.asarray(image, dtype=np.float32)
    cval = float(image.min()) if fill is None else float(fill)
    if registration.rotation:
        image = _rotate(image, registration.rotation, fill=cval)
    return apply_shift(image, registration.shift, fill=cval)
