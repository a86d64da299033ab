"""features.registration: phase correlation (sub-pixel) and rigid registration on a real photograph."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from features.errors import InputError
from features.registration import (
    Registration,
    apply_registration,
    apply_shift,
    overlap_slices,
    register_rigid,
    register_translation,
)


@pytest.fixture(scope="module")
def camera():
    return data.camera().astype(np.float32)


def shifted(image, shift):
    """``image`` moved by ``shift`` with cubic-spline interpolation (edges replicated)."""
    return ndimage.shift(image, shift, order=3, mode="nearest").astype(np.float32)


@pytest.mark.parametrize("true_shift", [(5.0, -3.0), (-17.0, 22.0), (2.4, -7.35), (0.3, 0.6), (-12.75, 20.1)])
def test_recovers_integer_and_subpixel_shifts_within_a_quarter_pixel(camera, true_shift):
    moving = shifted(camera, true_shift)  # moving = camera moved by true_shift
    found = register_translation(camera, moving, upsample=20)
    assert isinstance(found, Registration)
    # the shift to apply to moving is the inverse of the one that made it
    np.testing.assert_allclose(found.shift, (-true_shift[0], -true_shift[1]), atol=0.25)
    assert found.confidence > 0.99
    assert found.rotation == 0.0


def test_registered_difference_is_near_zero_where_unregistered_is_not(camera):
    moving = shifted(camera, (6.0, -4.0))
    found = register_translation(camera, moving)
    registered = apply_shift(moving, found.shift)
    rows, cols = overlap_slices(camera.shape, found.shift)
    inner = (slice(rows.start + 2, rows.stop - 2), slice(cols.start + 2, cols.stop - 2))
    registered_diff = np.abs(camera[inner] - registered[inner]).mean()
    unregistered_diff = np.abs(camera[inner] - moving[inner]).mean()
    assert registered_diff < 0.5  # grey levels 0..255: essentially identical
    assert unregistered_diff > 10
    assert registered_diff < unregistered_diff / 50


def test_confidence_is_low_for_unrelated_images(camera):
    other = data.coins().astype(np.float32)
    other = np.pad(other, ((0, 512 - other.shape[0]), (0, 512 - other.shape[1])), mode="reflect")
    found = register_translation(camera, other)
    assert 0.0 <= found.confidence < 0.5


def test_flat_images_do_not_crash_and_report_their_agreement():
    flat = np.full((32, 32), 7.0)
    found = register_translation(flat, flat)
    assert found.shift == (0.0, 0.0) and found.confidence == 1.0
    found = register_translation(flat, np.arange(32 * 32, dtype=float).reshape(32, 32))
    assert found.confidence == 0.0


def test_apply_shift_integer_is_exact_and_fills_with_the_minimum(camera):
    moved = apply_shift(camera, (3, -2))
    np.testing.assert_array_equal(moved[3:, :-2], camera[:-3, 2:])
    assert np.all(moved[:3] == camera.min()) and np.all(moved[:, -2:] == camera.min())
    moved = apply_shift(camera, (1.5, 0.0), fill=-1.0)
    assert np.all(moved[0] == -1.0)


def test_colour_images_register_on_their_mean_and_move_every_channel(camera):
    colour = np.stack([camera, camera * 0.5, 255 - camera], axis=-1)
    moving = np.stack([shifted(colour[..., c], (4.0, 9.0)) for c in range(3)], axis=-1)
    found = register_translation(colour, moving)
    np.testing.assert_allclose(found.shift, (-4.0, -9.0), atol=0.25)
    back = apply_shift(moving, found.shift)
    assert back.shape == colour.shape
    np.testing.assert_allclose(back[20:-20, 20:-20], colour[20:-20, 20:-20], atol=1e-3)


def test_mismatched_sizes_are_refused_with_advice(camera):
    with pytest.raises(InputError, match="common canvas"):
        register_translation(camera, camera[:-1])


def test_rigid_registration_recovers_rotation_and_translation(camera):
    from skimage.transform import rotate

    moving = rotate(camera, 9.0, resize=False, order=1, mode="edge", preserve_range=True).astype(np.float32)
    moving = shifted(moving, (5.0, -3.0))
    found = register_rigid(camera, moving)
    assert abs(found.rotation - (-9.0)) < 0.25
    assert found.confidence > 0.98
    back = apply_registration(moving, found)
    inner = (slice(80, -80), slice(80, -80))
    assert np.abs(back[inner] - camera[inner]).mean() < 6  # interpolation residue only
    assert np.abs(moving[inner] - camera[inner]).mean() > 25
