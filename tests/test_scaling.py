"""Issue 16 item 4: large source images scaled before patching (data YAML ``source.scale``).

Images are resampled by area averaging, masks by nearest neighbour (``dualsynth.patching.scaling``); the value is
validated where data YAMLs are, recorded in the manifest, and refused with the file and the key when bad.
"""
import json

import numpy as np
import pytest
import yaml
from scipy import ndimage

from dualsynth.config import ParamError, load_data_config
from dualsynth.io import DataError, read_image, read_mask, write_png
from dualsynth.patching import Manifest, PatchingError, load_sources, prepare_dataset
from dualsynth.patching.scaling import rescale_image, rescale_mask, scaled_shape

from conftest import ROOT

_UNSET = object()
COLORS = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]  # matrix, grain_a, grain_b as RGB colour masks (like metaldam)


def _large_pair(seed: int, height: int = 1200, width: int = 1600) -> tuple[np.ndarray, np.ndarray]:
    """A 1600 × 1200 RGB 'micrograph' of blobs with fine noise, and its class-index mask (3 classes)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(height, width)), 12)
    field = (field - field.mean()) / field.std()
    mask = np.digitize(field, [-0.4, 0.6]).astype(np.uint8)  # 0 / 1 / 2, all three present
    base = np.array([[60, 60, 70], [150, 140, 120], [210, 200, 190]], np.float64)[mask]
    img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return img, mask


def _dataset(root, n_images=3, scale=_UNSET, lq="hq", size=(1200, 1600), **source):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    colours = np.array(COLORS, np.uint8)
    for i in range(n_images):
        img, mask = _large_pair(i, *size)
        write_png(root / "images" / f"img{i}.png", img)
        write_png(root / "masks" / f"img{i}.png", colours[mask])
    data = {"name": "large", "channels": 3,
            "classes": [{"name": n, "color": c} for n, c in zip(["matrix", "grain_a", "grain_b"], COLORS)],
            "source": {"kind": "pairs", "images": str(root / "images"), "masks": str(root / "masks"),
                       "mask_encoding": "rgb", "lq_masks": lq, "test_image_fraction": 0.34, **source},
            "tiers": {"small": [2, 1], "big": [4, 2], "test_main": 1, "test_extra": 2}}
    if scale is not _UNSET:
        data["source"]["scale"] = scale
    path = root / "large.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_area_averaging_and_nearest_on_a_large_image():
    img, mask = _large_pair(0)
    small, small_mask = rescale_image(img, 0.5), rescale_mask(mask, 0.5)
    assert small.shape == (600, 800, 3) and small.dtype == np.uint8 and small_mask.shape == (600, 800)
    # area averaging at an exact 2× reduction: each pixel is the mean of its 2 × 2 block (to the rounding of uint8)
    blocks = img.astype(np.float64).reshape(600, 2, 800, 2, 3).mean(axis=(1, 3))
    assert np.abs(small - blocks).max() <= 0.5
    for scale in (0.5, 0.3, 0.137):
        out, out_mask = rescale_image(img, scale), rescale_mask(mask, scale)
        assert out.shape[:2] == out_mask.shape == scaled_shape(1200, 1600, scale)
        np.testing.assert_allclose(out.mean(axis=(0, 1)), img.mean(axis=(0, 1)), atol=0.5)  # mean kept per channel
        assert set(np.unique(out_mask)) <= {0, 1, 2}
        frac = np.bincount(mask.ravel(), minlength=3) / mask.size
        np.testing.assert_allclose(np.bincount(out_mask.ravel(), minlength=3) / out_mask.size, frac, atol=0.02)
    # area averaging smooths the noise (a decimation would keep its full spread)
    assert small.std() < img.std() and (img[::2, ::2].std() - small.std()) > 3
    assert scaled_shape(1201, 1599, 0.5) == (601, 800)  # rounded half up


def test_masks_get_no_label_from_between_two_classes():
    """Classes 0 and 2 side by side: an interpolating resize would put 1 on their border; nearest never does."""
    mask = np.zeros((301, 299), np.uint8)
    mask[:, 150:] = 2
    mask[::7, ::5] = 2
    for scale in (0.5, 0.33, 0.71):
        assert set(np.unique(rescale_mask(mask, scale))) <= {0, 2}


def test_scale_through_the_data_yaml(tmp_path):
    path = _dataset(tmp_path / "data", scale=0.25)
    cfg = load_data_config(path)
    sources = load_sources(cfg, 64, 0)
    for s in sources:
        orig = read_image(s.path, channels=3)
        assert s.image.shape == (300, 400, 3) and s.mask_hq.shape == s.mask_lq.shape == (300, 400)
        assert s.original_size == (1200, 1600)
        np.testing.assert_allclose(s.image.mean(axis=(0, 1)), orig.mean(axis=(0, 1)), atol=0.5)
        assert set(np.unique(s.mask_hq)) <= {0, 1, 2}
    m = prepare_dataset(cfg, tmp_path / "out", patch_size=64, seed=0, progress=False)
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert data["data"]["source"]["scale"] == 0.25
    for rec in data["sources"]:
        assert (rec["height"], rec["width"], rec["original_height"], rec["original_width"]) == (300, 400, 1200, 1600)
    # a 400 × 300 image gives a 6 × 4 grid of 64 px patches (the unscaled one would give 25 × 18)
    assert len(data["patches"]) == 3 * 6 * 4
    _, masks = m.load_arrays("BMQ", "train")
    assert masks.shape[1:] == (64, 64) and set(np.unique(masks)) <= {0, 1, 2}
    for e in m.entries("test", "test"):
        assert set(np.unique(read_mask(m.root / data["patches"][e["id"]]["mask_hq"], m.palette, "index"))) <= {0, 1, 2}


def test_scale_one_changes_nothing(tmp_path):
    plain = prepare_dataset(load_data_config(_dataset(tmp_path / "a", n_images=2, size=(480, 640))), tmp_path / "pa",
                            patch_size=64, seed=0, progress=False).data
    path = _dataset(tmp_path / "b", n_images=2, scale=1.0, size=(480, 640))
    one = prepare_dataset(load_data_config(path), tmp_path / "pb", patch_size=64, seed=0, progress=False).data
    assert "original_height" not in one["sources"][0]
    assert one["tiers"] == plain["tiers"] and one["test"] == plain["test"]
    for pid, rec in plain["patches"].items():
        if rec.get("image"):
            assert (tmp_path / "pa" / rec["image"]).read_bytes() == (tmp_path / "pb" / rec["image"]).read_bytes()


def test_degraded_lq_masks_are_made_after_scaling(tmp_path):
    cfg = load_data_config(_dataset(tmp_path / "data", n_images=2, scale=0.5, lq="degrade", size=(480, 640)))
    for s in load_sources(cfg, 64, 0):
        assert s.mask_lq.shape == s.mask_hq.shape == (240, 320)
        assert set(np.unique(s.mask_lq)) <= {0, 1, 2} and (s.mask_lq != s.mask_hq).any()


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, 2, "half", True, None, [0.5], float("nan")])
def test_invalid_scale_is_refused_naming_file_and_key(tmp_path, bad):
    path = _dataset(tmp_path / "data", n_images=0, scale=bad)
    with pytest.raises(ParamError, match=r"large\.yaml: source\.scale must be a factor in \(0, 1\], e\.g\. 0\.5"):
        load_data_config(path)


def test_scale_on_the_generated_default_is_refused(tmp_path):
    data = yaml.safe_load((ROOT / "params" / "data" / "ndfeb_default.yaml").read_text())
    data["source"]["scale"] = 0.5
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ParamError, match=r"gen\.yaml: source\.scale applies to source kind 'pairs' only"):
        load_data_config(tmp_path / "gen.yaml")


def test_scaled_below_one_patch_and_lq_size_mismatch_are_explained(tmp_path):
    cfg = load_data_config(_dataset(tmp_path / "data", n_images=2, scale=0.05, size=(480, 640)))
    with pytest.raises(PatchingError, match=r"img0\.png: source\.scale 0\.05 \(data YAML .*large\.yaml\) makes this "
                                            r"640×480 image 32×24 px \(W×H\), smaller than one 64×64 patch; "
                                            r"raise source\.scale"):
        load_sources(cfg, 64, 0)
    lq_dir = tmp_path / "data" / "masks_lq"
    lq_dir.mkdir()
    for i in range(2):
        write_png(lq_dir / f"img{i}.png", np.zeros((480, 640 if i else 600, 3), np.uint8))  # RGB: matrix
    path = _dataset(tmp_path / "data2", n_images=2, scale=0.5, lq="folder", masks_lq=str(lq_dir), size=(480, 640))
    with pytest.raises(DataError, match=r"masks_lq/img0\.png: LQ mask is 600×480 \(W×H\) but image .*img0\.png is "
                                        r"640×480"):
        load_sources(load_data_config(path), 64, 0)
