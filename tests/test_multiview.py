"""features.multiview: the IMPC DV/LAT composite."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from features.errors import InputError
from features.multiview import multiview_composite, robust_unit_range, view_mean


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(1)
    dv = data.camera().astype(np.float32)
    lat = data.coins().astype(np.float32) * 4.0 + 1000.0  # another size and intensity range
    dvs = [dv + rng.normal(0, 20, dv.shape).astype(np.float32) for _ in range(3)]
    return dvs, [lat]


def test_composite_channels_are_mean_views_and_dv_weighted_edges(views):
    dvs, lats = views
    out = multiview_composite(dvs, lats, size=(128, 160), dv_weight=0.7)
    assert out.shape == (128, 160, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[..., 0], view_mean(dvs, (128, 160)), atol=1e-6)
    np.testing.assert_allclose(out[..., 1], view_mean(lats, (128, 160)), atol=1e-6)
    edges = out[..., 2]
    values = {round(float(v), 4) for v in np.unique(edges)}
    assert values <= {0.0, 0.3, 0.7, 1.0}
    assert {0.3, 0.7} <= values  # edges of both views present, DV ones weighted higher
    assert (edges > 0).mean() < 0.3  # an edge map, not a filled image


def test_averaging_reduces_noise(views):
    dvs, _ = views
    single = view_mean(dvs[:1], (128, 128))
    mean = view_mean(dvs, (128, 128))
    clean = view_mean([data.camera().astype(np.float32)], (128, 128))
    assert np.abs(mean - clean).mean() < np.abs(single - clean).mean()


def test_missing_view_gives_a_zero_channel_and_no_views_is_an_error(views):
    dvs, _ = views
    out = multiview_composite(dvs, [], size=(64, 64))
    assert np.all(out[..., 1] == 0) and out[..., 0].std() > 0.05
    assert {round(float(v), 4) for v in np.unique(out[..., 2])} <= {0.0, 0.6}
    with pytest.raises(InputError, match="at least one"):
        multiview_composite([], [])
    with pytest.raises(InputError, match="dv_weight"):
        multiview_composite(dvs, [], dv_weight=0.4)


def test_robust_window_ignores_outliers():
    image = np.linspace(0, 100, 10_000, dtype=np.float32).reshape(100, 100)
    image[0, 0] = 1e6
    out = robust_unit_range(image)
    assert out.max() == 1.0 and out.min() == 0.0
    assert 0.45 < out[50, 50] < 0.55
    assert np.all(robust_unit_range(np.full((5, 5), 3.0)) == 0)
