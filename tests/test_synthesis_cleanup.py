"""Tests for the mask clean-up part of dualsynth.synthesis (k-means + small-object removal)."""
from __future__ import annotations


import numpy as np
import pytest
from skimage.measure import label as sk_label

from dualsynth.synthesis import (
    CleanupResult,
    clean_mask,
    kmeans_labels,
    nearest_level_labels,
    remove_small_objects_fill,
    scaled_min_object_px,
)

LV3 = np.array([0.0, 0.5, 1.0])
LV4 = np.array([0.0, 1 / 3, 2 / 3, 1.0])


def component_sizes(labels: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Sizes of the connected same-class regions (skimage, independent of the implementation)."""
    comp = sk_label(labels.astype(np.int64), background=-1, connectivity=connectivity)
    return np.bincount(comp.ravel())[1:]


def stripes(h: int, w: int, k: int) -> np.ndarray:
    """k vertical stripes of classes 0..k-1."""
    return np.repeat((np.arange(w) * k // w)[None, :], h, axis=0).astype(np.int64)


# --------------------------------------------------------------------------- scaled size
def test_scaled_min_object_px():
    assert scaled_min_object_px(256) == 200
    assert scaled_min_object_px(512) == 800
    assert scaled_min_object_px(128) == 50
    assert scaled_min_object_px(64) == 12  # 200 / 16 = 12.5 -> 12 (round half to even)
    assert scaled_min_object_px(256, base_px=100) == 100
    assert isinstance(scaled_min_object_px(384), int)
    for bad in (0, -256, 25.6):
        with pytest.raises(ValueError, match="patch_size"):
            scaled_min_object_px(bad)


# --------------------------------------------------------------------------- nearest level
def test_nearest_level_labels():
    ch = np.array([[-0.3, 0.2, 0.26, 0.74], [0.76, 1.4, 0.5, 0.25]])
    # levels 0, .5, 1: midpoints .25 and .75; ties go to the lower class
    np.testing.assert_array_equal(nearest_level_labels(ch, LV3), [[0, 0, 1, 1], [2, 2, 1, 0]])
    assert nearest_level_labels(ch, LV3).dtype == np.uint8


# --------------------------------------------------------------------------- clean_mask
def test_specks_and_off_palette_grey():
    gt = np.zeros((64, 64), dtype=np.int64)
    gt[:, 32:] = 2
    gt[16:48, 20:44] = 1  # a large class-1 object across the border
    # the mask channel renders class 1 off the palette (0.58 instead of 0.5)
    rendered = np.array([0.02, 0.58, 0.97])
    rng = np.random.default_rng(0)
    ch = rendered[gt] + rng.normal(0, 0.03, gt.shape)
    ch[4:6, 4:6] = 0.97  # 4-px speck of class 2 inside class 0
    ch[55:58, 50:53] = 0.55  # 9-px speck of class 1 inside class 2
    res = clean_mask(ch, LV3, min_object_px=20)
    assert isinstance(res, CleanupResult)
    assert res.raw.shape == ch.shape and res.raw.dtype.kind == "f"
    assert res.clustered.dtype == np.uint8 and res.cleaned.dtype == np.uint8
    assert set(np.unique(res.cleaned).tolist()) <= {0, 1, 2}
    # the specks are there after clustering ...
    assert (res.clustered[4:6, 4:6] == 2).all()
    assert (res.clustered[55:58, 50:53] == 1).all()
    # ... and filled with the neighbouring class afterwards
    np.testing.assert_array_equal(res.cleaned, gt)
    assert res.removed_objects == 2
    # naive nearest-level labelling of raw also shows the specks: 4 + 9 pixels changed
    assert res.changed_fraction == pytest.approx(13 / 64**2)


def test_large_object_kept_small_removed():
    lab = np.zeros((40, 40), dtype=np.uint8)
    lab[2:17, 2:22] = 2  # 15 x 20 = 300 px
    lab[25:35, 2:22] = 1  # 10 x 20 = 200 px: not smaller than 200, kept
    lab[25:36, 25:39] = 2  # 11 x 14 = 154 px
    lab[25:34, 25:39] = 1  # class 1 on top: 9 x 14 = 126 px of class 1 and 2 x 14 = 28 px of class 2
    out, removed = remove_small_objects_fill(lab, 200, 3)
    expected = np.zeros_like(lab)
    expected[2:17, 2:22] = 2
    expected[25:35, 2:22] = 1
    # small objects: the 28-px class-2 strip and the 126-px class-1 block (the 200-px block stays).
    # strip (smallest first): border with class 1 = 14 edges (top), with class 0 = 14 (bottom) + 2 + 2
    # (sides) = 18 -> class 0.  Then the 126-px block touches only class 0 -> class 0.
    np.testing.assert_array_equal(out, expected)
    assert removed == 2
    out2, removed2 = remove_small_objects_fill(lab, 100, 3)
    # with 100 px only the 28-px strip goes (to class 0, the longer border)
    expected2 = lab.copy()
    expected2[34:36, 25:39] = 0
    np.testing.assert_array_equal(out2, expected2)
    assert removed2 == 1


def test_speck_takes_class_with_longest_border():
    lab = np.zeros((20, 20), dtype=np.int64)
    lab[10:, :] = 2
    lab[8:11, 5:8] = 1  # 3x3 speck: rows 8, 9 in class 0, row 10 in class 2
    # borders: class 0: top 3 + sides 2*2 = 7 ; class 2: bottom 3 + sides 2*1 = 5 -> class 0
    out, removed = remove_small_objects_fill(lab, 10, 3)
    expected = lab.copy()
    expected[8:11, 5:8] = 0
    np.testing.assert_array_equal(out, expected)
    assert removed == 1


def test_nested_small_objects():
    lab = np.zeros((30, 30), dtype=np.int64)
    lab[12:17, 12:17] = 1  # 25 px
    lab[14, 14] = 2  # 1 px inside it
    out, removed = remove_small_objects_fill(lab, 20, 3)
    expected = lab.copy()
    expected[14, 14] = 1
    np.testing.assert_array_equal(out, expected)
    assert removed == 1
    out, removed = remove_small_objects_fill(lab, 50, 3)
    np.testing.assert_array_equal(out, 0)
    assert removed == 2


def test_connectivity():
    lab = np.zeros((40, 40), dtype=np.int64)
    idx = np.arange(5, 35)
    lab[idx, idx] = 1  # a diagonal line of 30 px
    out4, removed4 = remove_small_objects_fill(lab, 5, 2, connectivity=1)
    np.testing.assert_array_equal(out4, 0)  # 30 single pixels
    assert removed4 == 30
    out8, removed8 = remove_small_objects_fill(lab, 5, 2, connectivity=2)
    np.testing.assert_array_equal(out8, lab)  # one 30-px object
    assert removed8 == 0


def test_filled_object_joins_all_touching_objects_of_its_new_class():
    lab = np.full((20, 20), 2, dtype=np.int64)
    lab[10:13, 5:10] = 0  # 15 px
    lab[10:13, 11:16] = 0  # 15 px
    lab[10:13, 10] = 1  # 3-px bridge: border with class 0 = 3 + 3, with class 2 = 1 + 1 -> class 0
    out, removed = remove_small_objects_fill(lab, 20, 3)
    # bridge + both bars = 33 px >= 20: one object, kept
    expected = lab.copy()
    expected[10:13, 10] = 0
    np.testing.assert_array_equal(out, expected)
    assert removed == 1


def test_diagonal_neighbours_with_connectivity_2():
    lab = np.full((11, 11), 2, dtype=np.int64)  # background, class 2
    lab[1:5, 1:6] = 0
    lab[5, 1:5] = 0
    lab[6, 4] = 0  # object L: 20 + 4 + 1 = 25 px
    lab[6:10, 6:10] = 0  # object R: 16 px, touches the speck only diagonally
    lab[5, 5] = 1  # 1-px speck
    # 8-neighbourhood of the speck: class 0 at up, left, up-left, down-left (L) and down-right (R) = 5;
    # class 2 at right, down, up-right = 3 -> class 0; the speck joins L and R: 25 + 1 + 16 = 42 >= 30
    out, removed = remove_small_objects_fill(lab, 30, 3, connectivity=2)
    expected = lab.copy()
    expected[5, 5] = 0
    np.testing.assert_array_equal(out, expected)
    assert removed == 1


def test_all_objects_small_keeps_largest():
    lab = np.zeros((10, 10), dtype=np.int64)
    lab[:, 5:8] = 1  # 30 px
    lab[:, 8:] = 2  # 20 px; class 0 has 50 px: the largest
    out, removed = remove_small_objects_fill(lab, 200, 3)
    # 20-px object -> its only neighbour class 1 (50 px together) -> the kept class-0 object
    np.testing.assert_array_equal(out, 0)
    assert removed == 2
    # the kept object is the largest, not the one that absorbs the others first:
    lab = np.zeros((10, 10), dtype=np.int64)  # class 0: cols 0-3, 40 px (largest)
    lab[:, 4:7] = 1
    lab[:5, 7] = 1  # class 1: 30 + 5 = 35 px
    lab[5:, 7] = 2
    lab[:, 8:] = 2  # class 2: 5 + 20 = 25 px, touches class 1 only
    # 25-px class 2 -> class 1 (60 px); 60-px class 1 -> class 0, the kept largest object
    out, removed = remove_small_objects_fill(lab, 200, 3)
    np.testing.assert_array_equal(out, 0)
    assert removed == 2
    # a single object smaller than the limit stays as it is
    one = np.full((5, 5), 2)
    out, removed = remove_small_objects_fill(one, 200, 3)
    np.testing.assert_array_equal(out, one)
    assert removed == 0


def test_min_object_px_zero_changes_nothing():
    rng = np.random.default_rng(5)
    ch = rng.random((48, 48))
    res = clean_mask(ch, LV4, 0, seed=1)
    np.testing.assert_array_equal(res.cleaned, res.clustered)
    assert res.removed_objects == 0
    lab = rng.integers(0, 4, (30, 30))
    for m in (0, 1):
        out, removed = remove_small_objects_fill(lab, m, 4)
        np.testing.assert_array_equal(out, lab)
        assert removed == 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("connectivity", [1, 2])
def test_removal_properties_on_noise(seed, connectivity):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    lab = rng.integers(0, k, (36, 40))
    if seed % 2:  # smoother labels: a mixture of large and small objects
        from scipy import ndimage

        smooth = ndimage.gaussian_filter(rng.random((36, 40)), 1.5)
        lab = np.minimum((smooth - smooth.min()) / np.ptp(smooth) * k, k - 1).astype(np.int64)
    m = int(rng.integers(3, 40))
    out, removed = remove_small_objects_fill(lab, m, k, connectivity=connectivity)
    assert out.shape == lab.shape and out.dtype == np.uint8
    assert out.max() < k  # every pixel holds a class (no holes)
    sizes_out = component_sizes(out, connectivity)
    sizes_in = component_sizes(lab, connectivity)
    if sizes_in.max() >= m:
        # no small object left, none created
        assert sizes_out.min() >= m
        # pixels of the large input objects keep their class
        comp = sk_label(lab, background=-1, connectivity=connectivity)
        large = np.isin(comp, np.flatnonzero(np.bincount(comp.ravel()) >= m))
        np.testing.assert_array_equal(out[large], lab[large])
        assert removed == int(np.count_nonzero(sizes_in < m)) - _small_kept(lab, out, m, connectivity)
    # deterministic
    out2, removed2 = remove_small_objects_fill(lab.copy(), m, k, connectivity=connectivity)
    np.testing.assert_array_equal(out, out2)
    assert removed == removed2


def _small_kept(lab, out, m, connectivity):
    """Small input objects whose class did not change (they absorbed others and grew)."""
    comp = sk_label(lab, background=-1, connectivity=connectivity)
    sizes = np.bincount(comp.ravel())
    n = 0
    for i in np.flatnonzero((sizes > 0) & (sizes < m)):
        sel = comp == i
        n += bool(out[sel][0] == lab[sel][0])
    return n


# --------------------------------------------------------------------------- k-means
def test_kmeans_recovers_classes_around_four_levels():
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:128, :128]
    gt = stripes(128, 128, 4)
    gt[(yy - 64) ** 2 + (xx - 20) ** 2 < 15**2] = 3
    ch = LV4[gt] + rng.normal(0, 0.05, gt.shape)
    lab = kmeans_labels(ch, LV4, seed=0)
    assert lab.dtype == np.uint8
    assert (lab == gt).mean() >= 0.99


def test_kmeans_beats_nearest_level_on_drifted_levels():
    # the model renders the classes away from the palette levels
    gt = stripes(128, 128, 4)
    rendered = np.array([0.05, 0.42, 0.72, 0.98])
    ch = rendered[gt] + np.random.default_rng(2).normal(0, 0.05, gt.shape)
    naive = (nearest_level_labels(ch, LV4) == gt).mean()
    km = (kmeans_labels(ch, LV4, seed=0) == gt).mean()
    assert naive < 0.985  # class 1 straddles the 0.5 midpoint of the palette
    assert km >= 0.99
    res = clean_mask(ch, LV4, 50, seed=0)
    np.testing.assert_array_equal(res.clustered, kmeans_labels(ch, LV4, seed=0))
    assert (res.cleaned == gt).mean() >= 0.999
    # changed_fraction is measured against the naive labelling of raw, not against `clustered`
    assert res.changed_fraction == pytest.approx(np.mean(res.cleaned != nearest_level_labels(ch, LV4)))
    assert res.changed_fraction > 0.01
    res_naive = clean_mask(ch, LV4, 50, use_kmeans=False)
    np.testing.assert_array_equal(res_naive.clustered, nearest_level_labels(ch, LV4))


def test_kmeans_two_centres_may_map_to_one_class():
    # only two value modes, both near class 0 and class 2 of 3; k-means still has 3 clusters
    gt = stripes(32, 32, 2) * 2
    ch = np.where(gt == 0, 0.0, 1.0) + np.random.default_rng(0).normal(0, 0.02, gt.shape)
    lab = kmeans_labels(ch, LV3, seed=0)
    np.testing.assert_array_equal(lab, gt)
    # constant channel (fewer distinct values than clusters)
    np.testing.assert_array_equal(kmeans_labels(np.full((8, 8), 0.9), LV3), 2)


def test_determinism_with_seed():
    rng = np.random.default_rng(3)
    gt = stripes(96, 96, 3)
    ch = LV3[gt] + rng.normal(0, 0.2, gt.shape)  # heavy noise: clusters overlap
    a = clean_mask(ch, LV3, 30, seed=7)
    b = clean_mask(ch.copy(), LV3, 30, seed=7)
    np.testing.assert_array_equal(a.clustered, b.clustered)
    np.testing.assert_array_equal(a.cleaned, b.cleaned)
    assert a.changed_fraction == b.changed_fraction
    assert a.removed_objects == b.removed_objects
    np.testing.assert_array_equal(
        kmeans_labels(ch, LV3, seed=4, sample_size=500), kmeans_labels(ch, LV3, seed=4, sample_size=500)
    )


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_clean_mask_for_k_classes(k):
    levels = np.linspace(0.0, 1.0, k)
    rng = np.random.default_rng(k)
    gt = stripes(96, 96, k)
    yy, xx = np.mgrid[:96, :96]
    gt[(yy - 48) ** 2 + (xx - 90) ** 2 < 10**2] = 0  # a disk of class 0 in the last stripe (~300 px)
    ch = levels[gt] + rng.normal(0, 0.12 / (k - 1), gt.shape)
    for j in range(k):  # 2x2 specks of a wrong class in the middle of every stripe, off the disk
        x = int((j + 0.5) * 96 / k) - 1
        for y in (15, 75):
            ch[y : y + 2, x : x + 2] = levels[(j + 1) % k]
    res = clean_mask(ch, levels, 30, seed=0)
    assert set(np.unique(res.cleaned).tolist()) <= set(range(k))
    assert (res.cleaned == gt).mean() >= 0.999
    assert component_sizes(res.cleaned).min() >= 30
    assert res.removed_objects >= 2 * k


def test_realistic_256_mask():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    gt = np.zeros((256, 256), dtype=np.int64)
    gt[(yy - 80) ** 2 + (xx - 90) ** 2 < 40**2] = 1
    gt[(yy - 170) ** 2 + (xx - 170) ** 2 < 50**2] = 2
    gt[200:240, 20:100] = 3
    ch = LV4[gt] + rng.normal(0, 0.08, gt.shape)
    res = clean_mask(ch, LV4, scaled_min_object_px(256))
    assert (res.cleaned == gt).mean() > 0.99


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "ch, levels, m, match",
    [
        (np.zeros((4, 4, 1)), LV3, 5, "2-D"),
        (np.zeros(16), LV3, 5, "2-D"),
        (np.zeros((0, 4)), LV3, 5, "empty"),
        (np.where(np.eye(4) > 0, np.nan, 0.0), LV3, 5, "NaN"),
        (np.full((4, 4), 255, dtype=np.uint8), LV3, 5, r"expected roughly \[0, 1\]"),
        (np.zeros((4, 4)), [0.0, 1.0, 0.5], 5, "strictly increasing"),
        (np.zeros((4, 4)), [0.0, 0.5, 0.5, 1.0], 5, "strictly increasing"),
        (np.zeros((4, 4)), [0.0, 0.5, 1.2], 5, r"\[0, 1\]"),
        (np.zeros((4, 4)), [-0.1, 0.5], 5, r"\[0, 1\]"),
        (np.zeros((4, 4)), [0.5], 5, "2 to 256"),
        (np.zeros((4, 4)), [[0.0, 1.0]], 5, "1-D"),
        (np.zeros((4, 4)), LV3, -1, "min_object_px must be >= 0"),
        (np.zeros((4, 4)), LV3, 2.5, "min_object_px must be an integer"),
    ],
)
def test_clean_mask_errors(ch, levels, m, match):
    with pytest.raises(ValueError, match=match):
        clean_mask(ch, levels, m)


def test_remove_small_objects_errors():
    lab = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="outside 0..2"):
        remove_small_objects_fill(lab + 3, 5, 3)
    with pytest.raises(ValueError, match="integer class-index"):
        remove_small_objects_fill(lab.astype(float), 5, 3)
    with pytest.raises(ValueError, match="connectivity"):
        remove_small_objects_fill(lab, 5, 3, connectivity=3)
    with pytest.raises(ValueError, match="2-D"):
        remove_small_objects_fill(lab[None], 5, 3)
    with pytest.raises(ValueError, match="sample_size"):
        kmeans_labels(np.zeros((4, 4)), LV3, sample_size=0)
