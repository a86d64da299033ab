"""features.difference: registered difference images, first time point, different sizes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from features.canvas import canvas_offset
from features.difference import (
    align_pair,
    difference_image,
    first_time_point_difference,
)
from features.errors import InputError


@pytest.fixture(scope="module")
def camera():
    return data.camera().astype(np.float32)


def test_difference_of_shifted_copies_is_near_zero_only_when_registered(camera):
    moved = ndimage.shift(camera, (7.0, -5.0), order=1, mode="nearest")
    registered, reg = difference_image(camera, moved, register=True)
    plain, none = difference_image(camera, moved, register=False)
    assert none is None
    np.testing.assert_allclose(reg.shift, (7.0, -5.0), atol=0.25)  # reference moved onto comparison
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(registered[inner]).mean() < 0.5
    assert np.abs(plain[inner]).mean() > 10


def test_difference_shows_real_change_in_the_comparison_frame(camera):
    later = camera.copy()
    later[200:240, 300:340] += 60.0  # "new bone" at time t
    later = ndimage.shift(later, (3.0, 4.0), order=0, mode="nearest")  # and the mouse moved
    diff, reg = difference_image(camera, later)
    np.testing.assert_allclose(reg.shift, (3.0, 4.0), atol=0.25)
    # the change appears where it is in the comparison image, the rest is ~0
    assert diff[205:240, 305:340].mean() == pytest.approx(60.0, abs=1.0)
    outside = np.ones(diff.shape, bool)
    outside[195:250, 295:350] = False
    outside[:10] = outside[:, :10] = False
    assert np.abs(diff[outside]).mean() < 0.5


def test_first_time_point_is_uniform_at_the_comparison_minimum(camera):
    for diff, reg in (difference_image(None, camera), difference_image(camera, camera, is_first=True)):
        assert reg is None
        assert diff.shape == camera.shape and diff.dtype == np.float32
        assert np.all(diff == camera.min())
    np.testing.assert_array_equal(first_time_point_difference(camera + 3), np.full(camera.shape, camera.min() + 3))


def test_images_of_different_sizes_meet_on_their_common_canvas(camera):
    reference = camera[40:460, 10:500]  # 420 x 490
    comparison = camera[30:480, 20:480]  # 450 x 460
    aligned = align_pair(reference, comparison)
    assert aligned.reference.shape == aligned.comparison.shape == (450, 490)
    # both crops come from one photograph: registration finds their relative offset exactly
    top_r, left_r = canvas_offset(reference.shape, (450, 490))
    top_c, left_c = canvas_offset(comparison.shape, (450, 490))
    expected = ((40 - top_r) - (30 - top_c), (10 - left_r) - (20 - left_c))
    np.testing.assert_allclose(aligned.registration.shift, expected, atol=0.25)
    # where both hold real pixels, the images agree
    assert aligned.mask.sum() > 0.8 * 420 * 460
    assert np.abs(aligned.comparison - aligned.reference)[aligned.mask].max() < 1e-3
    diff, _ = difference_image(reference, comparison)
    assert diff.shape == (450, 490)


def test_channel_mismatch_and_nan_are_refused(camera):
    with pytest.raises(InputError, match="channels"):
        difference_image(camera, np.stack([camera] * 3, axis=-1))
    bad = camera.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        difference_image(camera, bad)
