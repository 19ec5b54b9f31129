import numpy as np
import pytest

from dualsynth.dual import compose, compose_batch, num_channels, split
from dualsynth.palette import NDFEB_PALETTE


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("encoding", ["grey", "onehot"])
def test_round_trip(rng, channels, encoding):
    img = rng.integers(0, 256, (2, 8, 9, channels), dtype=np.uint8)
    mask = rng.integers(0, 4, (2, 8, 9)).astype(np.uint8)
    d = compose_batch(img, mask, NDFEB_PALETTE, encoding)
    assert d.shape == (2, 8, 9, num_channels(channels, 4, encoding)) and d.dtype == np.float32
    assert d.min() >= 0 and d.max() <= 1
    back, m = split(d, channels, encoding)
    assert np.array_equal(back, img)
    if encoding == "grey":
        assert np.allclose(m, NDFEB_PALETTE.grey_unit[mask])
    else:
        assert np.array_equal(m.argmax(-1), mask) and np.allclose(m.sum(-1), 1)


def test_grey_levels_in_mask_channel():
    d = compose(np.zeros((1, 4, 3), np.uint8), np.array([[0, 1, 2, 3]]), NDFEB_PALETTE)
    assert np.allclose(d[0, :, 3], [0, 85 / 255, 170 / 255, 1])


def test_errors():
    with pytest.raises(ValueError, match="differ in size"):
        compose(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), NDFEB_PALETTE)
    with pytest.raises(ValueError, match="mask encoding"):
        compose(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), NDFEB_PALETTE, "rgb")
    with pytest.raises(ValueError, match="image_channels"):
        split(np.zeros((4, 4, 7)), None, "onehot")
