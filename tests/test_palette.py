import numpy as np
import pytest

from dualsynth.palette import NDFEB_PALETTE, Palette, PaletteError, evenly_spaced_grey_levels


def test_ndfeb_palette_matches_paper():
    p = NDFEB_PALETTE
    assert p.names == ("matrix", "eta", "oxide", "nd_rich")
    # matrix black; Eta grey, oxide light grey, Nd-rich white in the mask channel
    assert p.grey_levels[p.index_of("matrix")] == 0
    assert p.grey_levels[p.index_of("nd_rich")] == 255
    assert 0 < p.grey_levels[p.index_of("eta")] < p.grey_levels[p.index_of("oxide")] < 255
    assert p.colors[0] == (0, 0, 0)
    assert sorted(p.colors[1:]) == sorted([(255, 0, 0), (0, 255, 0), (0, 0, 255)])


def test_round_trips(rng, ndfeb_palette):
    mask = rng.integers(0, 4, size=(17, 23)).astype(np.uint8)
    p = ndfeb_palette
    assert np.array_equal(p.rgb_to_index(p.index_to_rgb(mask)), mask)
    assert np.array_equal(p.grey_to_index(p.index_to_grey(mask)), mask)
    assert np.array_equal(p.to_index(p.index_to_rgb(mask)), mask)
    assert np.array_equal(p.to_index(p.index_to_grey(mask)), mask)
    assert np.array_equal(p.to_index(mask), mask)
    # grey mask stored as RGB with three equal channels
    g = p.index_to_grey(mask)
    assert np.array_equal(p.to_index(np.stack([g, g, g], -1)), mask)
    # RGBA colour mask
    rgba = np.concatenate([p.index_to_rgb(mask), np.full(mask.shape + (1,), 255, np.uint8)], -1)
    assert np.array_equal(p.to_index(rgba), mask)


def test_grey_tolerance(ndfeb_palette):
    grey = np.array([[0, 86, 169, 254]], np.uint8)
    with pytest.raises(PaletteError, match="grey levels not in the palette"):
        ndfeb_palette.grey_to_index(grey, source="m.png")
    assert ndfeb_palette.grey_to_index(grey, tolerance=2).tolist() == [[0, 1, 2, 3]]


def test_unknown_colour_names_file_and_colour(ndfeb_palette):
    rgb = ndfeb_palette.index_to_rgb(np.zeros((4, 4), np.uint8))
    rgb[1, 1] = (12, 200, 7)
    with pytest.raises(PaletteError, match=r"bad\.png.*\(12, 200, 7\)"):
        ndfeb_palette.rgb_to_index(rgb, source="bad.png")


def test_index_out_of_range(ndfeb_palette):
    with pytest.raises(PaletteError, match=r"outside 0\.\.3"):
        ndfeb_palette.to_index(np.array([[0, 7]], np.uint8), encoding="index", source="x.png")


def test_from_dict_and_validation():
    p = Palette.from_dict([{"name": "a", "color": [0, 0, 0]}, {"name": "b", "color": [255, 255, 255]},
                           {"name": "c", "color": [255, 0, 0]}])
    assert p.grey_levels == (0, 128, 255)
    assert Palette.from_dict(p.to_dict()) == p
    with pytest.raises(PaletteError, match="distinct"):
        Palette(("a", "b"), ((0, 0, 0), (0, 0, 0)), (0, 255))
    with pytest.raises(PaletteError, match="unique"):
        Palette(("a", "a"), ((0, 0, 0), (1, 0, 0)), (0, 255))
    with pytest.raises(PaletteError, match="unknown keys"):
        Palette.from_dict([{"name": "a", "color": [0, 0, 0], "gray": 3}, {"name": "b", "color": [1, 1, 1]}])
    assert evenly_spaced_grey_levels(4) == (0, 85, 170, 255)


def test_auto_reads_rgb_mask_with_grey_class_colours():
    p = Palette(("a", "b"), ((0, 0, 0), (128, 128, 128)), (0, 255))
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[1, 1] = 128
    assert p.to_index(rgb).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    # the same classes as grey levels stored in three equal channels still read as grey levels
    grey = np.zeros((3, 3, 3), np.uint8)
    grey[1, 1] = 255
    assert p.to_index(grey).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
