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


def test_dihedral_gives_eight_distinct_aligned_copies(rng):
    from dualsynth.dual import dihedral

    img = rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    mask = (img[..., 0] > 128).astype(np.uint8)
    di, dm = dihedral(img, mask)
    assert di.shape == (16, 6, 6, 3) and dm.shape == (16, 6, 6)
    assert np.array_equal(di[:2], img)
    assert len({di[k * 2].tobytes() for k in range(8)}) == 8
    assert np.array_equal(dm, (di[..., 0] > 128).astype(np.uint8))  # masks move with their images
    with pytest.raises(ValueError, match="square"):
        dihedral(np.zeros((1, 4, 6, 1), np.uint8), np.zeros((1, 4, 6), np.uint8))
