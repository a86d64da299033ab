"""Difference images between two time points of one subject (ChronoMID, section 5.3).

``D = I(t) - I(t0)``: the comparison image (time t) minus the reference image (time t0, the first
time point for *absolute* differencing, the previous one for *relative*). As in the paper, the
reference is the image that is moved: it is registered onto the comparison by translation, so the
difference lives in the comparison image's frame. Images of different sizes are first centred on
their common canvas, filled with each image's own minimum. A subject's first time point has no
preceding image: its difference image is uniform, equal to the comparison image's minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.canvas import common_canvas, pad_to_canvas
from features.errors import InputError
from features.registration import (
    Registration,
    _register_translation,
    apply_registration,
    register_rigid,
)

__all__ = ["AlignedPair", "align_pair", "difference_image", "first_time_point_difference"]


@dataclass(frozen=True)
class AlignedPair:
    """Two images on one canvas, the reference moved onto the comparison.

    ``reference`` (registered) and ``comparison`` are float32 arrays of the same shape; ``mask`` is
    True where both hold real pixels (not canvas padding, not pixels uncovered by the shift);
    ``registration`` is what moved the reference (None when not registered).
    """

    reference: np.ndarray
    comparison: np.ndarray
    mask: np.ndarray
    registration: Registration | None


def _as_float(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"The {what} image has shape {image.shape}; an (H, W) or (H, W, C) array is needed.")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InputError(f"The {what} image holds NaN or infinite values; replace them before differencing.")
    return image


def align_pair(
    reference: np.ndarray,
    comparison: np.ndarray,
    *,
    register: bool = True,
    rigid: bool = False,
    upsample: int = 20,
) -> AlignedPair:
    """Put ``reference`` and ``comparison`` on their common canvas and move the reference onto the other.

    Registration is by translation (phase correlation) or, with ``rigid``, rotation + translation.
    Without ``register`` the images are only padded. Both must have the same number of channels.
    """
    ref = _as_float(reference, "reference")
    cmp_ = _as_float(comparison, "comparison")
    if ref.shape[2:] != cmp_.shape[2:]:
        raise InputError(
            f"The reference image has shape {ref.shape} and the comparison {cmp_.shape}: their channels "
            "differ, so they cannot be subtracted. Convert both to greyscale or both to colour."
        )
    canvas = common_canvas([ref.shape, cmp_.shape])
    ref_mask = pad_to_canvas(np.ones(ref.shape[:2], np.float32), canvas, fill=0.0)
    cmp_mask = pad_to_canvas(np.ones(cmp_.shape[:2], np.float32), canvas, fill=0.0)
    padded = ref.shape[:2] != canvas or cmp_.shape[:2] != canvas
    ref = pad_to_canvas(ref, canvas)
    cmp_ = pad_to_canvas(cmp_, canvas)
    registration = None
    if register:
        # Padding is not image: with masks, its edges cannot pull the registration.
        masks = {"reference_mask": cmp_mask > 0.5, "moving_mask": ref_mask > 0.5} if padded else {}
        moved = None
        if rigid:
            registration = register_rigid(cmp_, ref, upsample=upsample, **masks)
        else:
            registration, moved = _register_translation(cmp_, ref, upsample=upsample, **masks)
        # A greyscale reference was already moved while registering (the same apply_shift, the same fill).
        ref = moved if moved is not None and ref.ndim == 2 else apply_registration(ref, registration)
        ref_mask = apply_registration(ref_mask, registration, fill=0.0)
    mask = (ref_mask > 0.999) & (cmp_mask > 0.5)
    return AlignedPair(reference=ref, comparison=cmp_, mask=mask, registration=registration)


def first_time_point_difference(comparison: np.ndarray) -> np.ndarray:
    """The difference image of a subject's first time point: uniform at ``comparison``'s minimum."""
    cmp_ = _as_float(comparison, "comparison")
    return np.full(cmp_.shape, cmp_.min(), dtype=np.float32)


def difference_image(
    reference: np.ndarray | None,
    comparison: np.ndarray,
    *,
    register: bool = True,
    is_first: bool = False,
    rigid: bool = False,
    upsample: int = 20,
) -> tuple[np.ndarray, Registration | None]:
    """``comparison - registered reference`` as float32, and the registration used.

    ``reference`` None or ``is_first`` (the subject's first time point, where the pairs table pairs a
    scan with itself) gives the uniform image at the comparison's minimum and no registration.
    When the sizes differ the result has the two images' common canvas shape.
    """
    if reference is None or is_first:
        return first_time_point_difference(comparison), None
    aligned = align_pair(reference, comparison, register=register, rigid=rigid, upsample=upsample)
    return aligned.comparison - aligned.reference, aligned.registration
