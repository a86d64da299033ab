"""features.canvas: ChronoMID padding to a common canvas and resizing."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from features.canvas import canvas_offset, common_canvas, pad_to_canvas, resize
from features.errors import InputError


def test_common_canvas_is_the_largest_height_and_width():
    # ChronoMID: heights 400-500 and widths 500-700 vary independently; the canvas takes each maximum.
    assert common_canvas([(412, 690), (501, 540), (450, 763, 3)]) == (501, 763)


def test_common_canvas_of_nothing_is_an_error():
    with pytest.raises(InputError, match="at least one"):
        common_canvas([])


def test_padding_keeps_every_pixel_centred_and_fills_with_the_image_minimum():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, size=(37, 52)).astype(np.float32)
    padded = pad_to_canvas(image, (64, 81))
    top, left = canvas_offset(image.shape, (64, 81))
    assert (top, left) == ((64 - 37) // 2, (81 - 52) // 2)
    assert padded.shape == (64, 81) and padded.dtype == image.dtype
    np.testing.assert_array_equal(padded[top : top + 37, left : left + 52], image)
    border = np.ones(padded.shape, bool)
    border[top : top + 37, left : left + 52] = False
    assert np.all(padded[border] == image.min())
    # centred: the margins on either side differ by at most one pixel
    assert abs(top - (64 - 37 - top)) <= 1 and abs(left - (81 - 52 - left)) <= 1


def test_padding_a_real_photograph_with_its_own_minimum_and_integer_dtype():
    camera = data.camera()[100:300, 50:400]  # uint8, minimum > 0 in this crop
    padded = pad_to_canvas(camera, (256, 512))
    top, left = canvas_offset(camera.shape, (256, 512))
    assert padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[top : top + 200, left : left + 350], camera)
    assert padded[0, 0] == camera.min() and padded[-1, -1] == camera.min()
    assert (padded == camera.min()).sum() >= 256 * 512 - 200 * 350


def test_padding_colour_and_explicit_fill():
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) + 5
    padded = pad_to_canvas(image, (4, 5))
    assert padded.shape == (4, 5, 3)
    np.testing.assert_array_equal(padded[1:3, 1:4], image)
    assert padded[0, 0, 0] == 5.0
    mask = pad_to_canvas(np.ones((2, 3)), (4, 5), fill=0)
    assert mask.sum() == 6


def test_images_larger_than_the_canvas_are_refused_not_cropped():
    with pytest.raises(InputError, match="does not fit"):
        pad_to_canvas(np.zeros((10, 10)), (9, 12))


def test_nan_minimum_is_refused():
    image = np.ones((3, 3), np.float32)
    image[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pad_to_canvas(image, (5, 5))


def test_resize_keeping_aspect_fits_and_pads_with_the_minimum():
    camera = data.camera()[:, 128:384].astype(np.float32)  # 512 x 256, aspect 2:1
    out = resize(camera, (128, 128), keep_aspect=True)
    assert out.shape == (128, 128) and out.dtype == np.float32
    # scaled by 1/4 to 128 x 64, centred: 32 columns of fill on each side
    assert np.all(out[:, :32] == camera.min()) and np.all(out[:, -32:] == camera.min())
    inner = out[:, 32:96]
    assert inner.std() > 10  # real content, not fill
    assert abs(inner.mean() - camera.mean()) < 0.05 * camera.mean()


def test_resize_without_aspect_stretches_to_the_canvas():
    camera = data.camera()[:, 128:384].astype(np.float32)
    out = resize(camera, (128, 128), keep_aspect=False)
    assert out.shape == (128, 128)
    assert out[:, :8].std() > 1  # no padding column: the image fills the canvas
    assert abs(out.mean() - camera.mean()) < 0.05 * camera.mean()


def test_resize_upsamples_too():
    small = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = resize(small, (6, 8), keep_aspect=True)
    assert out.shape == (6, 8)
    assert out.min() >= small.min() and out.max() <= small.max()
