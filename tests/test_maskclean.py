"""Clean-ups that keep thin and rare phases (dualsynth.maskclean): rims, long thin objects, per-class sizes."""
from __future__ import annotations

import numpy as np
import pytest

from dualsynth.maskclean import (
    clean_labels,
    default_min_object_len,
    reassign_rims,
    remove_small_objects_fill,
)


def film_with_rims(h: int = 40, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A vertical white film (class 3, 3 px) on matrix (0), decoded through the grey levels between:
    a 1-px rim of class 1 and of class 2 on each side; plus a thick class-1 blob that is real."""
    truth = np.zeros((h, w), np.int64)
    truth[:, 18:21] = 3
    truth[5:15, 2:12] = 1  # a real 10 x 10 object of the intermediate class
    decoded = truth.copy()
    decoded[:, 16] = 1
    decoded[:, 17] = 2
    decoded[:, 21] = 2
    decoded[:, 22] = 1
    return truth, decoded


def test_rims_go_to_the_classes_either_side_and_the_film_survives():
    truth, decoded = film_with_rims()
    out, n = reassign_rims(decoded, 4, rim_px=1)
    assert n == 4 * 40  # the four one-pixel rim columns
    np.testing.assert_array_equal(out[:, 18:21], 3)  # film intact
    assert set(np.unique(out[:, 15:24])) <= {0, 3}  # no intermediate class left around it
    np.testing.assert_array_equal(out[5:15, 2:12], 1)  # the thick real object of class 1 is not a rim
    # each rim pixel took the nearest non-rim class: the outer rims matrix, the inner ones the film
    assert (out[:, 16] == 0).all() and (out[:, 17] == 3).all()


def test_rims_need_a_darker_and_a_brighter_neighbour():
    lab = np.zeros((20, 20), np.int64)
    lab[:, 10] = 1  # a thin class-1 line between matrix on both sides: a real thin object, not a transition
    out, n = reassign_rims(lab, 3, rim_px=1)
    assert n == 0
    np.testing.assert_array_equal(out, lab)
    out0, n0 = reassign_rims(film_with_rims()[1], 4, rim_px=0)
    assert n0 == 0
    with pytest.raises(ValueError, match="rim_px"):
        reassign_rims(lab, 3, rim_px=-1)


def test_paper_rule_deletes_a_thin_film_the_thin_rule_keeps():
    lab = np.zeros((40, 40), np.int64)
    lab[5, 2:32] = 1  # a film 1 px wide, 30 px long: 30 px area
    lab[20:25, 20:25] = 2  # a 5 x 5 speck: 25 px area
    paper, removed = remove_small_objects_fill(lab, 50, 3)
    assert removed == 2 and not (paper == 1).any() and not (paper == 2).any()
    length = default_min_object_len(50)  # 2 * sqrt(50) ≈ 14.1 px
    assert length == pytest.approx(14.142, abs=1e-3)
    thin, removed = remove_small_objects_fill(lab, 50, 3, min_object_len=length)
    assert removed == 1
    np.testing.assert_array_equal(thin == 1, lab == 1)  # the film is kept
    assert not (thin == 2).any()  # the speck is not


def test_a_speck_merged_into_a_long_object_does_not_make_it_removable():
    lab = np.zeros((30, 40), np.int64)
    lab[10, 2:30] = 1  # long thin object of class 1 (28 px < 50)
    lab[9, 10:13] = 2  # 3-px speck of class 2 lying on the film: touches the film on 3 pixels, matrix on more
    lab[11, 14:17] = 2  # another speck, below
    out, _ = remove_small_objects_fill(lab, 50, 3, min_object_len=default_min_object_len(50))
    assert (out[10, 2:30] == 1).all()
    assert not (out == 2).any()


def test_per_class_minimum_sizes():
    lab = np.zeros((30, 30), np.int64)
    lab[2:5, 2:5] = 1  # 9 px of class 1
    lab[20:23, 20:23] = 2  # 9 px of class 2
    out, removed = remove_small_objects_fill(lab, [50, 0, 50], 3)  # class 1 may be small
    assert removed == 1
    assert (out[2:5, 2:5] == 1).all() and not (out == 2).any()
    with pytest.raises(ValueError, match="one per class"):
        remove_small_objects_fill(lab, [50, 0], 3)
    with pytest.raises(ValueError, match=">= 0"):
        remove_small_objects_fill(lab, [50, -1, 0], 3)


def test_clean_labels_methods():
    truth, decoded = film_with_rims()
    none, n = clean_labels(decoded, 4, "none", 50)
    np.testing.assert_array_equal(none, decoded)
    assert n == 0
    thin, _ = clean_labels(decoded, 4, "thin", 50, rim_px=1)
    np.testing.assert_array_equal(thin[:, 18:21], 3)
    assert (thin == 3).sum() >= (truth == 3).sum()
    paper, _ = clean_labels(decoded, 4, "paper", 30)
    # the paper's rule judges area only: the 40-px rims stay, the film stays rimmed by classes it does not have
    assert (paper[:, 16] == 1).all() and (paper[:, 17] == 2).all()
    thin30, _ = clean_labels(decoded, 4, "thin", 30, rim_px=1)
    assert not np.isin(thin30[:, 15:24], [1, 2]).any()
    with pytest.raises(ValueError, match="cleanup must be one of"):
        clean_labels(decoded, 4, "magic", 50)
    with pytest.raises(ValueError, match="min_object_len"):
        remove_small_objects_fill(decoded, 50, 4, min_object_len=-2)


def test_paper_preset_keeps_the_papers_mask_channel_and_cleanup():
    """The paper preset stays a reproduction: grey-level mask channel, the paper's clean-up, an unconditioned prior."""
    import yaml

    from dualsynth.config import project_root

    presets = project_root() / "params" / "presets" / "paper"
    p02 = yaml.safe_load((presets / "02_vqvae.yaml").read_text())
    p03 = yaml.safe_load((presets / "03_pixelcnn.yaml").read_text())
    p04 = yaml.safe_load((presets / "04_synthesis.yaml").read_text())
    assert p02["mask_encoding"] == "grey"
    assert p04["cleanup"] == "paper" and p04["min_object_px"] == 200 and p04["use_kmeans"] is True
    assert p03.get("condition", "none") == "none"


def test_quick_preset_and_notebook_defaults_use_the_measured_best_method():
    """One-hot masks with rare classes weighted in their error, a gated prior conditioned on class fractions, no
    clean-up (README: masks that agree with their micrographs; the mask-channel loss on all three datasets) — in the
    quick preset and in the notebooks' own defaults."""
    import yaml

    from dualsynth.config import project_root
    from dualsynth.batch import notebook_parameters

    root = project_root()
    quick = {nb: yaml.safe_load((root / "params" / "presets" / "quick" / f"{nb}.yaml").read_text())
             for nb in ("02_vqvae", "03_pixelcnn", "04_synthesis")}
    assert quick["02_vqvae"]["mask_encoding"] == "onehot" and quick["02_vqvae"]["rare_class_weight"] == 0.5
    assert quick["02_vqvae"].get("rare_class_weight_on", "mask") == "mask"
    assert quick["03_pixelcnn"]["prior"] == "gated" and quick["03_pixelcnn"]["condition"] == "class_fractions"
    assert quick["04_synthesis"]["cleanup"] == "none"
    defaults = {nb: notebook_parameters(root / "notebooks" / f"{nb}.ipynb") for nb in quick}
    assert defaults["02_vqvae"]["mask_encoding"] == "onehot" and defaults["02_vqvae"]["rare_class_weight"] == 0.5
    assert defaults["02_vqvae"]["rare_class_weight_on"] == "mask" and defaults["02_vqvae"]["rare_class_below"] == 0.01
    assert defaults["03_pixelcnn"]["prior"] == "gated" and defaults["03_pixelcnn"]["condition"] == "class_fractions"
    assert defaults["04_synthesis"]["cleanup"] == "none"


def test_per_class_sizes_follow_the_palette_order_when_grey_levels_do_not():
    """clean_decoded works in grey-level order; per-class thresholds given in palette order must follow the classes."""
    from dualsynth.palette import Palette
    from dualsynth.synthesis import clean_decoded

    pal = Palette(("a", "b", "c"), ((1, 1, 1), (2, 2, 2), (3, 3, 3)), (255, 0, 128))  # a is the brightest
    grey = np.zeros((30, 30), np.float32)  # class b (grey 0) everywhere
    grey[2:5, 2:5] = 1.0  # 9 px of class a
    grey[20:23, 20:23] = 128 / 255  # 9 px of class c
    image = np.zeros((30, 30, 1), np.uint8)
    out = clean_decoded(image, grey, pal, [0, 50, 50], use_kmeans=False, cleanup="paper")  # a may be small
    assert (out.cleaned[2:5, 2:5] == 0).all()  # a kept
    assert not (out.cleaned == 2).any()  # c filled
    out = clean_decoded(image, grey, pal, [50, 50, 0], use_kmeans=False, cleanup="paper")  # c may be small
    assert (out.cleaned[20:23, 20:23] == 2).all() and not (out.cleaned == 0).any()
