import numpy as np
import pytest

from dualsynth.config import DataConfig, ParamError, TierSpec, load_data_config
from dualsynth.io import DataError, write_png
from dualsynth.palette import NDFEB_PALETTE, Palette
from dualsynth.patching import (
    Manifest,
    PatchingError,
    SourceImage,
    assign_tiers,
    cut_patches,
    filter_patches,
    grid_positions,
    prepare_dataset,
)

from conftest import ROOT, shared_dataset


def test_grid_paper_size():
    pos = grid_positions(2208, 2752, 256)
    assert len(pos) == 80  # 10 × 8
    assert {p[0] for p in pos} == set(range(8)) and {p[1] for p in pos} == set(range(10))
    assert pos[-1][2:] == (7 * 256, 9 * 256)


def test_image_smaller_than_patch():
    with pytest.raises(PatchingError, match=r"small\.png: image is 100×90 px.*smaller than one 128×128 patch"):
        grid_positions(90, 100, 128, source="small.png")


def test_size_mismatch_names_file():
    with pytest.raises(DataError, match=r"a\.png: image is 20×10.*mask is 20×11"):
        SourceImage("a", np.zeros((10, 20, 3), np.uint8), np.zeros((11, 20), np.uint8), path="a.png")


def _source(rng, h=160, w=200, k=4, role="train", name="main"):
    mask = rng.integers(0, k, (h, w)).astype(np.uint8)
    lq = mask.copy()
    lq[::7] = 0
    return SourceImage(name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask, lq, role)


def test_filter_drops_single_class(rng):
    src = _source(rng)
    src.mask_hq[:40, :40] = 0  # first patch (40 px) pure matrix
    patches = cut_patches(src, 40)
    kept = filter_patches(patches, 4, max_majority_fraction=0.995)
    assert len(patches) == 20 and len(kept) == 19
    assert patches[0].drop_reason and "100.0%" in patches[0].drop_reason


def test_assign_tiers_sizes_and_nesting():
    spec = TierSpec(small=(16, 5), big=(48, 12), test_main=7, test_extra=20)
    train = [f"t{i}" for i in range(80)]
    test = [f"x{i}" for i in range(30)]
    plan = assign_tiers(train, test, spec, seed=3)
    t = plan["tiers"]
    assert [len(t[n]["train"]) for n in ("SHQ", "SLQ", "BLQ", "BMQ")] == [16, 16, 48, 48]
    assert [len(t[n]["val"]) for n in ("SHQ", "SLQ", "BLQ", "BMQ")] == [5, 5, 12, 12]
    ids = lambda es: [e["id"] for e in es]  # noqa: E731
    assert ids(t["SHQ"]["train"]) == ids(t["SLQ"]["train"])
    assert set(ids(t["SHQ"]["train"])) <= set(ids(t["BLQ"]["train"]))
    assert set(ids(t["SHQ"]["val"])) <= set(ids(t["BLQ"]["val"]))
    assert ids(t["BLQ"]["train"]) == ids(t["BMQ"]["train"])
    assert {e["mask"] for e in t["SHQ"]["train"]} == {"hq"} and {e["mask"] for e in t["BLQ"]["val"]} == {"lq"}
    small = set(ids(t["SHQ"]["train"] + t["SHQ"]["val"]))
    for e in t["BMQ"]["train"] + t["BMQ"]["val"]:
        assert e["mask"] == ("hq" if e["id"] in small else "lq")
    test_ids = ids(plan["test"])
    assert len(test_ids) == 27 and sum(i.startswith("x") for i in test_ids) == 20
    used = set(ids(t["BLQ"]["train"] + t["BLQ"]["val"]))
    assert not used & set(test_ids), "a test patch is in a training tier"
    assert len(used) + 7 + len([u for u in plan["unused"] if u.startswith("t")]) == 80
    # deterministic by seed, different for another seed
    assert assign_tiers(train, test, spec, seed=3) == plan
    assert assign_tiers(train, test, spec, seed=4) != plan


def test_tier_too_small():
    spec = TierSpec(small=(16, 5), big=(48, 12), test_main=7, test_extra=0)
    with pytest.raises(PatchingError, match=r"need 67 patches.*only 50 patches"):
        assign_tiers([f"t{i}" for i in range(50)], [], spec, seed=0)
    spec = TierSpec(small=(2, 1), big=(4, 2), test_main=1, test_extra=5)
    with pytest.raises(PatchingError, match=r"test_extra=5.*only 3 patches"):
        assign_tiers([f"t{i}" for i in range(20)], ["a", "b", "c"], spec, seed=0)


def test_tierspec_validation():
    with pytest.raises(ParamError, match="at least as many"):
        TierSpec(small=(16, 5), big=(8, 2))


def test_no_patch_left(rng, tmp_path):
    src = _source(rng)
    src.mask_hq[:] = 0
    cfg = DataConfig("x", 3, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((2, 1), (4, 2), 1, 0))
    with pytest.raises(PatchingError, match="no patch left after filtering"):
        prepare_dataset(cfg, tmp_path, patch_size=40, sources=[src], progress=False)


def test_prepare_dataset_small(rng, tmp_path):
    srcs = [_source(rng), _source(rng, role="test", name="other")]
    cfg = DataConfig("x", 3, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((4, 2), (8, 3), 2, 3))
    m = prepare_dataset(cfg, tmp_path, patch_size=40, seed=1, sources=srcs, progress=False)
    m2 = Manifest.load(tmp_path)
    assert m2.data == m.data
    imgs, masks = m2.load_arrays("BMQ", "train")
    assert imgs.shape == (8, 40, 40, 3) and masks.shape == (8, 40, 40)
    _, lq = m2.load_arrays("SLQ", "train")
    _, hq = m2.load_arrays("SHQ", "train")
    assert (lq != hq).any()
    # each patch on disk is exactly the crop of its source
    for e in m2.entries("SHQ", "train"):
        rec = m2.data["patches"][e["id"]]
        crop = srcs[0].mask_hq[rec["y"]:rec["y"] + 40, rec["x"]:rec["x"] + 40]
        assert np.array_equal(crop, m2.load_arrays("SHQ", "train")[1][m2.entries("SHQ", "train").index(e)])
    tt = {r["tier"]: r for r in m2.tier_table()}
    assert tt["BMQ"]["hq_masks"] == 6 and tt["BLQ"]["hq_masks"] == 0
    assert len(m2.entries("test", "test")) == 5


def test_data_yaml_errors(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("name: x\nchannels: 2\nclasses: []\nsource: {kind: pairs}\n")
    with pytest.raises(ParamError, match=r"d\.yaml: channels must be 1 \(grey\) or 3"):
        load_data_config(p)
    p.write_text("name: x\nchannels: 1\nclasses: [{name: a, color: [0,0,0]}, {name: b, color: [1,1,1]}]\n"
                 "source: {kind: pairs, imgs: x}\n")
    with pytest.raises(ParamError, match=r"source keys \['imgs'\] are not known"):
        load_data_config(p)
    p.write_text("name: x\nchannels: 1\nclasses: [{name: a, color: [0,0,0]}, {name: b, color: [1,1,1]}]\n"
                 "source: {kind: pairs}\nextra: 1\n")
    with pytest.raises(ParamError, match=r"unknown keys \['extra'\]"):
        load_data_config(p)


def test_all_data_yamls_load():
    for f in sorted((ROOT / "params" / "data").glob("*.yaml")):
        cfg = load_data_config(f)
        assert cfg.palette.num_classes >= 2


def test_pairs_folder_bad_mask(tmp_path, rng):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pal = Palette.from_names(["a", "b"], [[0, 0, 0], [255, 255, 255]])
    write_png(tmp_path / "images" / "x.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    write_png(tmp_path / "masks" / "x.png", np.full((64, 60), 1, np.uint8))
    cfg = DataConfig("t", 1, pal, {"kind": "pairs", "images": str(tmp_path / "images"),
                                   "masks": str(tmp_path / "masks"), "test_image_fraction": 0.0,
                                   "lq_masks": "hq"}, TierSpec((1, 1), (1, 1), 1, 0))
    from dualsynth.patching import load_sources

    with pytest.raises(DataError, match=r"x\.png: image is 64×64 .*mask .*x\.png is 60×64"):
        load_sources(cfg, 32, 0)
    write_png(tmp_path / "masks" / "x.png", np.full((64, 64), 7, np.uint8))
    with pytest.raises(DataError, match=r"masks/x\.png.*not in the palette"):
        load_sources(cfg, 32, 0)
    (tmp_path / "masks" / "x.png").unlink()
    with pytest.raises(DataError, match=r"x\.png: no mask named x\.\*"):
        load_sources(cfg, 32, 0)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["metaldam", "nasa_super"])
def test_real_dataset_patching(name, tmp_path):
    shared_dataset(name)
    cfg = load_data_config(ROOT / "params" / "data" / f"{name}.yaml")
    m = prepare_dataset(cfg, tmp_path, patch_size=128, seed=0, progress=False)
    assert m.channels == 1
    imgs, masks = m.load_arrays("BMQ", "train")
    assert imgs.shape[1:] == (128, 128, 1) and len(imgs) == cfg.tiers.big[0]
    assert masks.max() < cfg.palette.num_classes
    # test patches come from held-out images only: no image contributes to both
    test_sources = {m.data["patches"][e["id"]]["source"] for e in m.data["test"]}
    train_sources = {m.data["patches"][e["id"]]["source"] for e in m.entries("BLQ", "train") + m.entries("BLQ", "val")}
    assert test_sources and not (test_sources & train_sources)


def test_manifest_missing_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json: file not found; run 01_patching"):
        Manifest.load(tmp_path / "patches")
