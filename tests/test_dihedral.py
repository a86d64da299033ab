"""``features.augment.dihedral``: quarter turns and mirrors that keep a difference image exact."""

import numpy as np
import pytest
import torch

from features.augment import dihedral
from features.errors import InputError, ParameterError


def _scan(rng, side=16):
    return rng.normal(size=(2, 1, side, side)).astype(np.float32)


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, -1])
@pytest.mark.parametrize("mirror", [False, True])
def test_turning_the_difference_equals_differencing_the_turned_scans(turns, mirror):
    rng = np.random.default_rng(abs(turns) + 10 * mirror)
    reference, comparison = _scan(rng), _scan(rng)
    turned = dihedral(comparison - reference, quarter_turns=turns, mirror=mirror)
    expected = dihedral(comparison, quarter_turns=turns, mirror=mirror) - dihedral(
        reference, quarter_turns=turns, mirror=mirror)
    assert np.array_equal(turned, expected)
    assert sorted(turned.ravel()) == sorted((comparison - reference).ravel())  # pixels moved, none made up


def test_numpy_and_torch_agree_and_the_eight_transforms_differ():
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    seen = set()
    for turns in range(4):
        for mirror in (False, True):
            as_numpy = dihedral(image, quarter_turns=turns, mirror=mirror)
            as_torch = dihedral(torch.from_numpy(image), quarter_turns=turns, mirror=mirror)
            assert isinstance(as_torch, torch.Tensor) and np.array_equal(as_torch.numpy(), as_numpy)
            seen.add(as_numpy.tobytes())
    assert len(seen) == 8
    # one quarter turn is counter-clockwise, as numpy.rot90: the top row becomes the left column
    assert dihedral(image, quarter_turns=1, mirror=False)[0, 0, :, 0].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="square images; got 4x6"):
        dihedral(np.zeros((1, 1, 4, 6)), quarter_turns=1, mirror=False)
    assert dihedral(np.zeros((1, 1, 4, 6)), quarter_turns=2, mirror=True).shape == (1, 1, 4, 6)
    with pytest.raises(ParameterError, match="The 'quarter_turns' parameter of dihedral must be an int. Got 1.5"):
        dihedral(np.zeros((1, 1, 4, 4)), quarter_turns=1.5, mirror=False)
