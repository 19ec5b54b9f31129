import numpy as np
import pytest

from dualsynth.dual import class_pixel_weights, compose, compose_batch, num_channels, split
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


def test_class_pixel_weights_favour_rare_classes_and_keep_the_mean():
    masks = np.zeros((2, 20, 20), np.int64)
    masks[:, :, 10:] = 1                 # 50 %
    masks[0, 0, 0] = masks[1, 0, 0] = 2  # 2 of 800 pixels
    w, per_class = class_pixel_weights(masks, 4, power=0.5)
    assert w.shape == masks.shape and w.dtype == np.float32
    assert w.mean() == pytest.approx(1.0, rel=1e-5)
    assert per_class[3] == 0  # absent: nothing to weigh
    assert per_class[2] > per_class[0] > 0
    f = np.array([398, 400, 2]) / 800
    assert per_class[2] / per_class[1] == pytest.approx((f[1] / f[2]) ** 0.5, rel=1e-6)
    # the cap: at most max_ratio times the most frequent class's weight
    _, capped = class_pixel_weights(masks, 4, power=1.0, max_ratio=5.0)
    assert capped[2] / capped[1] == pytest.approx(5.0)
    ones, flat = class_pixel_weights(masks, 4, power=0.0)
    np.testing.assert_allclose(ones, 1.0)
    with pytest.raises(ValueError, match="power"):
        class_pixel_weights(masks, 4, power=-1)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_pixel_weights(masks, 2)
    with pytest.raises(ValueError, match="N, H, W"):
        class_pixel_weights(masks[0], 4)


def test_image_error_per_class_counts_only_the_micrograph_channels():
    from dualsynth.dual import image_error_per_class

    x = np.zeros((2, 4, 4, 3), np.float32)  # 1 micrograph channel + 2 mask channels
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, :, :1] = 1  # class 1: the first column (8 of 32 pixels)
    recon = x.copy()
    recon[..., 1:] = 1.0  # a wrong mask part does not count
    recon[:, :, :1, 0] = 0.5  # the micrograph wrong only inside class 1
    err = image_error_per_class(x, recon, masks, 1, ["a", "b", "absent"])
    assert err == {"all": pytest.approx(0.25 * 8 / 32), "a": 0.0, "b": pytest.approx(0.25), "absent": None}
    with pytest.raises(ValueError, match="do not fit together"):
        image_error_per_class(x, recon[:1], masks, 1, ["a", "b"])


def test_rare_class_weights_only_when_a_class_is_rarer_than_the_threshold():
    from dualsynth.dual import class_pixel_weights, rare_class_weights

    names = ["matrix", "film", "speck", "absent"]
    m = np.zeros((2, 20, 20), np.uint8)
    m[0, :4] = 1  # film: 10 % of the pixels
    m[1, 0, :2] = 2  # speck: 0.25 %
    pixel, per_class, note = rare_class_weights(m, names, 0.5)  # below 1 %: weighted
    want_pixel, want_class = class_pixel_weights(m, 4, 0.5)
    np.testing.assert_array_equal(pixel, want_pixel)
    np.testing.assert_array_equal(per_class, want_class)
    assert per_class[2] > per_class[1] > per_class[0] and per_class[3] == 0 and "speck: 0.25%" in note
    # the rarest class present (not the absent one) decides: 0.25 % is not below 0.2 %
    pixel, per_class, note = rare_class_weights(m, names, 0.5, below=0.002)
    assert pixel is None and per_class is None and "speck, covers 0.25%" in note and "plain loss" in note
    assert rare_class_weights(m, names, 0.5, below=1)[0] is not None  # 1: always
    assert rare_class_weights(m, names, 0)[0] is None  # no power, no weights
    with pytest.raises(ValueError, match="below must be in"):
        rare_class_weights(m, names, 0.5, below=0)
