"""The pool part of synthesis.py: clean-up with any palette order, shuffled pool on disk, prefixes."""
import json

import numpy as np
import pytest

from dualsynth.io import DataError, read_mask
from dualsynth.palette import Palette
from dualsynth.synthesis import SyntheticSample, clean_decoded, load_pool, write_pool


def test_clean_decoded_with_unsorted_grey_levels(rng):
    # class 0 is white, class 1 black, class 2 mid-grey: grey levels not in index order
    pal = Palette(("a", "b", "c"), ((1, 1, 1), (2, 2, 2), (3, 3, 3)), (255, 0, 128))
    truth = np.zeros((48, 48), np.uint8)
    truth[:, 16:32] = 1
    truth[:, 32:] = 2
    channel = pal.grey_unit[truth] + rng.normal(0, 0.03, truth.shape).astype(np.float32)
    channel[5, 5] = pal.grey_unit[1]  # a one-pixel speck of class b inside class a
    s = clean_decoded(np.zeros((48, 48, 1), np.uint8), channel, pal, min_object_px=10)
    assert np.array_equal(s.cleaned, truth)
    assert s.naive[5, 5] == 1 and s.cleaned[5, 5] == 0


def _sample(i):
    img = np.full((8, 8, 3), i, np.uint8)
    m = np.full((8, 8), i % 4, np.uint8)
    return SyntheticSample(img, m.astype(np.float32) / 3, m, m, m, 0.0, 0)


def test_write_and_load_pool(tmp_path, ndfeb_palette):
    samples = [_sample(i) for i in range(10)]
    pool = write_pool(samples, tmp_path, seed=3)
    assert pool["size"] == 10 and [it["id"] for it in pool["items"]] == [f"syn{i:05d}" for i in range(10)]
    order = [it["generated_index"] for it in pool["items"]]
    assert sorted(order) == list(range(10)) and order != list(range(10))  # shuffled
    assert write_pool(samples, tmp_path / "again", seed=3)["items"] == pool["items"]  # same seed, same order
    assert load_pool(tmp_path) == json.loads((tmp_path / "pool.json").read_text())
    first = pool["items"][0]
    assert np.array_equal(read_mask(tmp_path / first["mask"], ndfeb_palette, "index"),
                          samples[first["generated_index"]].cleaned)


def test_missing_pool_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no synthetic pool; run 04_synthesis first"):
        load_pool(tmp_path)
