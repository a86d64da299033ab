"""Training-time augmentation of image batches (spine Siamese paper, section 3.2).

The paper augments with (i) rotation in [-15°, 15°], (ii) translation of ±48 px in x and ±24 px in y
on a 224-px crop, (iii) rescaling by 90-110 %, (iv) intensity variation ±0.2 and (v) a random flip,
done per pair. Here the translation is given as a fraction of the image size (48/224 ≈ 0.21,
24/224 ≈ 0.11) so the same recipe fits any input size, and the flip is a left-right reflection of the
2-D image. Pure computation: parameters are drawn from a ``numpy.random.Generator`` passed in, and
applied to an ``(N, C, H, W)`` float tensor (or array) with one bilinear resampling per image; pixels
that come from outside the image take that image's minimum, as ChronoMID pads.

``dihedral`` is the exact kind for image-and-difference pairs (ChronoMID): quarter turns and a mirror
move pixels without resampling or fill, so turning a difference image equals differencing the turned
scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.errors import InputError, ParameterError, is_int

__all__ = ["AugmentConfig", "AUGMENT_PAPER", "sample_params", "affine_theta", "augment_batch", "dihedral"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transformations; the defaults are the paper's."""

    rotation_deg: float = 15.0
    translate: tuple[float, float] = (48 / 224, 24 / 224)  # (x, y) as fractions of width and height
    scale: tuple[float, float] = (0.9, 1.1)
    intensity: float = 0.2  # additive, on the [0, 1] intensity scale
    flip: bool = True

    def validate(self) -> None:
        """Raise ``ParameterError`` for a range that cannot be sampled."""
        if not 0 <= self.rotation_deg <= 180:
            raise ParameterError(
                "The 'rotation_deg' parameter of AugmentConfig must be a float in [0, 180]. "
                f"Got {self.rotation_deg!r} instead."
            )
        if len(self.translate) != 2 or not all(0 <= t < 1 for t in self.translate):
            raise ParameterError(
                "The 'translate' parameter of AugmentConfig must be two fractions in [0, 1). "
                f"Got {self.translate!r} instead."
            )
        low, high = self.scale
        if not 0 < low <= high:
            raise ParameterError(
                "The 'scale' parameter of AugmentConfig must be (low, high) with 0 < low <= high. "
                f"Got {self.scale!r} instead."
            )
        if not 0 <= self.intensity < 1:
            raise ParameterError(
                f"The 'intensity' parameter of AugmentConfig must be a float in [0, 1). Got {self.intensity!r} instead."
            )


AUGMENT_PAPER = AugmentConfig()


def sample_params(rng: np.random.Generator, n: int, config: AugmentConfig = AUGMENT_PAPER) -> dict[str, np.ndarray]:
    """Draw the parameters of ``n`` random augmentations.

    Returns arrays of length ``n``: ``angle`` (degrees), ``tx``/``ty`` (fractions of width/height),
    ``scale``, ``shift`` (additive intensity) and ``flip`` (bool). To flip both images of a pair alike,
    copy one draw's ``flip`` into the other's.
    """
    config.validate()
    return {
        "angle": rng.uniform(-config.rotation_deg, config.rotation_deg, n),
        "tx": rng.uniform(-config.translate[0], config.translate[0], n),
        "ty": rng.uniform(-config.translate[1], config.translate[1], n),
        "scale": rng.uniform(config.scale[0], config.scale[1], n),
        "shift": rng.uniform(-config.intensity, config.intensity, n),
        "flip": (rng.random(n) < 0.5) if config.flip else np.zeros(n, dtype=bool),
    }


def affine_theta(params: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """``(n, 2, 3)`` matrices for ``torch.nn.functional.affine_grid`` (output -> input coordinates).

    The forward map scales about the centre, rotates, then translates; the flip mirrors the
    output. Rotation is done in pixel units so a non-square image is not sheared.
    """
    angle = np.deg2rad(np.asarray(params["angle"], dtype=np.float64))
    scale = np.asarray(params["scale"], dtype=np.float64)
    n = len(angle)
    aspect = width / height
    cos, sin = np.cos(angle), np.sin(angle)
    # inverse of (rotate, then scale) in normalised coordinates with x stretched by the aspect ratio
    theta = np.zeros((n, 2, 3), dtype=np.float64)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = sin / scale / aspect
    theta[:, 1, 0] = -sin / scale * aspect
    theta[:, 1, 1] = cos / scale
    # a translation of t (fraction of the size) is 2t in normalised units; the grid samples x - t
    shift = np.stack([-2 * np.asarray(params["tx"]), -2 * np.asarray(params["ty"])], axis=1)
    theta[:, :, 2] = np.einsum("nij,nj->ni", theta[:, :, :2], shift)
    flip = np.asarray(params["flip"], dtype=bool)
    theta[flip, :, 0] *= -1  # mirror the output's x axis
    return theta.astype(np.float32)


def augment_batch(images, params: dict[str, np.ndarray]):
    """Apply the augmentations ``params`` (one per image) to ``images`` ``(N, C, H, W)``.

    ``images`` is a float ``torch.Tensor`` (any device; the result stays there) or a NumPy array (the
    result is a NumPy array). Intensities are assumed on a [0, 1] scale; the shift is added after the
    geometric transform, and the result is not clipped.
    """
    import torch
    import torch.nn.functional as F

    as_numpy = isinstance(images, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) if as_numpy else images
    if tensor.ndim != 4 or not tensor.is_floating_point():
        raise InputError(
            f"augment_batch needs a float (N, C, H, W) batch; got shape {tuple(tensor.shape)} of {tensor.dtype}."
        )
    n, _, height, width = tensor.shape
    if any(len(np.asarray(v)) != n for v in params.values()):
        raise InputError(
            f"augment_batch got {n} images but parameter arrays of other lengths; "
            f"draw them with sample_params(rng, {n})."
        )
    theta = torch.from_numpy(affine_theta(params, height, width)).to(device=tensor.device, dtype=torch.float32)
    low = tensor.amin(dim=(1, 2, 3), keepdim=True)
    grid = F.affine_grid(theta, list(tensor.shape), align_corners=False)
    # sample (x - min) with zero padding, so outside pixels come back as the image's minimum
    moved = F.grid_sample((tensor - low).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shift = torch.as_tensor(np.asarray(params["shift"], dtype=np.float32), device=tensor.device).view(n, 1, 1, 1)
    out = (moved + low + shift).to(tensor.dtype)
    return out.numpy() if as_numpy else out


def dihedral(images, *, quarter_turns: int, mirror: bool):
    """``images`` ``(..., H, W)`` (``torch.Tensor`` or NumPy array) turned by ``quarter_turns`` x 90° and then,
    with ``mirror``, reflected left-right; the same transform for every image, same type out.

    A pixel permutation commutes with subtraction, so applying it to a scan and to its difference image
    keeps the difference exactly that of the transformed scans (ChronoMID's objection to augmentation is
    to transforming the two scans of a pair independently). An odd number of turns needs H == W.
    """
    if not is_int(quarter_turns):
        raise ParameterError(
            f"The 'quarter_turns' parameter of dihedral must be an int. Got {quarter_turns!r} instead."
        )
    turns = int(quarter_turns) % 4
    height, width = images.shape[-2:]
    if turns % 2 and height != width:
        raise InputError(f"dihedral: an odd number of quarter turns needs square images; got {height}x{width}.")
    if isinstance(images, np.ndarray):
        out = np.rot90(images, turns, axes=(-2, -1))
        return np.ascontiguousarray(np.flip(out, axis=-1) if mirror else out)
    import torch

    out = torch.rot90(images, turns, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if mirror else out
