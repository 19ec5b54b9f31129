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


# --------------------------------------------------------------------------- issue 15: data mistakes named
def _folder_cfg(tmp_path, pal, encoding="auto", channels=1, tiers=TierSpec((1, 1), (1, 1), 1, 0), **source):
    src = {"kind": "pairs", "images": str(tmp_path / "images"), "masks": str(tmp_path / "masks"),
           "test_image_fraction": 0.0, "lq_masks": "hq", "mask_encoding": encoding, **source}
    return DataConfig("t", channels, pal, src, tiers, path=tmp_path / "d.yaml")


def _two_class_pair(tmp_path, rng, stem="x", size=64, suffix=".png"):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 1
    write_png(tmp_path / "images" / f"{stem}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return mask


@pytest.mark.parametrize("text,match", [
    ("tiers: {small: '21'}", r"d\.yaml: tiers\.small must be \[train, val\], two integers ≥ 1 .*got '21'"),
    ("tiers: {small: 2}", r"d\.yaml: tiers\.small must be \[train, val\].*got 2"),
    ("tiers: {test_extra: two}", r"d\.yaml: tiers\.test_extra must be an integer ≥ 0, got 'two'"),
    ("source: {kind: pairs, images: i, masks: m, test_image_fraction: quarter}",
     r"d\.yaml: source\.test_image_fraction must be a fraction in \[0, 1\).*got 'quarter'"),
    ("classes: [{name: a, color: [0, 0, 0]}, {name: b, color: [9, 9, 9], grey: mid}]",
     r"classes\[1\] \('b'\) in .*d\.yaml: grey must be an integer 0\.\.255.*got 'mid'"),
    ("classes: [{name: a, color: [0, 0, 0]}, {name: b, color: blue}]",
     r"classes\[1\] \('b'\) in .*d\.yaml: color must be \[R, G, B\] with integers 0\.\.255, got 'blue'"),
    ("source: {kind: generated, width: 2752.5}", r"d\.yaml: source\.width must be an integer number of pixels"),
    ("source: {kind: large_images}", r"d\.yaml: source\.kind must be one of \['generated', 'pairs'\]"),
])
def test_data_yaml_wrong_types_name_file_and_key(tmp_path, text, match):
    """Issue 15 item 8: a value of the wrong type is a ParamError naming the file and the key (not a bare
    TypeError / ValueError from deep inside)."""
    import yaml

    base = {"name": "x", "channels": 1, "classes": [{"name": "a", "color": [0, 0, 0]}, {"name": "b", "color": [9, 9, 9]}],
            "source": {"kind": "pairs", "images": "i", "masks": "m"}}
    base.update(yaml.safe_load(text))
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump(base))
    with pytest.raises(ParamError, match=match):
        load_data_config(p)


def test_same_name_masks_and_hidden_files(tmp_path, rng):
    """Issue 15 items 1 and 10: two masks of one name (x.png, x.tif) are an error naming both; macOS resource forks
    (._x.png) and other hidden files are ignored like .DS_Store; the same image under two names is refused."""
    from dualsynth.patching import load_sources

    pal = Palette.from_names(["a", "b"], [[0, 0, 0], [255, 255, 255]])
    mask = _two_class_pair(tmp_path, rng)
    write_png(tmp_path / "masks" / "x.png", mask)
    (tmp_path / "images" / "._x.png").write_bytes(b"\0\5\26\7AppleDouble")
    (tmp_path / "masks" / "._x.png").write_bytes(b"\0\5\26\7AppleDouble")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0")
    cfg = _folder_cfg(tmp_path, pal)
    assert [s.name for s in load_sources(cfg, 32, 0)] == ["x"]
    import tifffile

    tifffile.imwrite(tmp_path / "masks" / "x.tif", mask)
    with pytest.raises(DataError, match=r"masks/x\.png and .*masks/x\.tif are two masks with the same name 'x'"):
        load_sources(cfg, 32, 0)
    (tmp_path / "masks" / "x.tif").unlink()
    (tmp_path / "images" / "y.png").write_bytes((tmp_path / "images" / "x.png").read_bytes())
    write_png(tmp_path / "masks" / "y.png", mask)
    with pytest.raises(DataError, match=r"images/x\.png and .*images/y\.png hold the same image"):
        load_sources(cfg, 32, 0)


def test_every_image_held_out_is_explained(tmp_path, rng):
    """Issue 15 item 10: one source image (or test_image_fraction 0.95) with test_extra > 0 held every image out for
    testing; the error says so instead of 'only 0 patches are left after filtering'."""
    from dualsynth.patching import load_sources

    pal = Palette.from_names(["a", "b"], [[0, 0, 0], [255, 255, 255]])
    write_png(tmp_path / "masks" / "x.png", _two_class_pair(tmp_path, rng))
    cfg = _folder_cfg(tmp_path, pal, tiers=TierSpec((1, 1), (1, 1), 1, 2))
    with pytest.raises(PatchingError, match=r"holds 1 image\(s\).*1 whole image\(s\) are held out for testing, so "
                                            r"none is left for training.*tiers\.test_extra: 0"):
        load_sources(cfg, 32, 0)
    for stem in ("y", "z"):
        write_png(tmp_path / "masks" / f"{stem}.png", _two_class_pair(tmp_path, rng, stem))
    cfg = _folder_cfg(tmp_path, pal, tiers=TierSpec((1, 1), (1, 1), 1, 2), test_image_fraction=0.95)
    with pytest.raises(PatchingError, match=r"test_image_fraction=0\.95 3 whole image\(s\) are held out"):
        load_sources(cfg, 32, 0)
    srcs = [_source(rng, role="test")]  # sources handed over directly: the tier error says the same
    with pytest.raises(PatchingError, match="every source image was held out for testing"):
        prepare_dataset(DataConfig("x", 3, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((2, 1), (4, 2), 1, 1)),
                        tmp_path / "o", patch_size=40, sources=srcs, progress=False)


def test_mask_mistakes_get_specific_messages(tmp_path, rng):
    """Issue 15 item 10: RGB colour masks declared mask_encoding: index; JPEG masks; masks holding one class with
    max_majority_fraction=1.0 — each error says what is wrong instead of 'raise max_majority_fraction'."""
    from PIL import Image

    from dualsynth.patching import load_sources

    pal = Palette.from_names(["a", "b"], [[0, 0, 0], [255, 0, 0]])
    mask = _two_class_pair(tmp_path, rng)
    write_png(tmp_path / "masks" / "x.png", pal.index_to_rgb(mask))
    with pytest.raises(DataError, match=r"x\.png is a colour \(RGB\) image, but mask_encoding is 'index'.*use "
                                        r"mask_encoding: rgb"):
        load_sources(_folder_cfg(tmp_path, pal, "index"), 32, 0)
    assert load_sources(_folder_cfg(tmp_path, pal, "rgb"), 32, 0)[0].mask_hq.max() == 1
    (tmp_path / "masks" / "x.png").unlink()
    grey = Palette.from_names(["a", "b"], [[0, 0, 0], [255, 255, 255]])
    blocks = np.kron(rng.integers(0, 2, (22, 22)), np.ones((3, 3), np.int64))[:64, :64].astype(np.uint8)
    Image.fromarray(grey.index_to_grey(blocks)).save(tmp_path / "masks" / "x.jpg", quality=75)
    with pytest.raises(DataError, match=r"x\.jpg has \d+ pixels with grey levels not in the palette.*JPEG, whose "
                                        r"lossy compression changes pixel values.*save masks as PNG"):
        load_sources(_folder_cfg(tmp_path, grey, "grey"), 32, 0)
    (tmp_path / "masks" / "x.jpg").unlink()
    write_png(tmp_path / "masks" / "x.png", np.zeros_like(mask))
    cfg = _folder_cfg(tmp_path, grey, "index")
    with pytest.warns(UserWarning, match=r"class\(es\) \['b'\] of the palette .*appear in no mask"), \
            pytest.raises(PatchingError, match=r"every mask holds only class 'a'.*Check the masks and "
                                               r"source\.mask_encoding"):
        prepare_dataset(cfg, tmp_path / "o", patch_size=32, max_majority_fraction=1.0, progress=False)


def test_palette_class_in_no_mask_warns(rng, tmp_path):
    """Issue 15 item 4: a palette class that no mask holds (or no test patch) is a warning naming it, also kept in
    manifest.json, instead of a silently blank per-class score."""
    srcs = [_source(rng, k=3), _source(rng, role="test", name="other", k=3)]  # class 3 (nd_rich) never drawn
    cfg = DataConfig("x", 3, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((4, 2), (8, 3), 2, 3))
    with pytest.warns(UserWarning, match=r"class\(es\) \['nd_rich'\] of the palette \(x\) appear in no mask of the 2 "
                                         r"source image\(s\).*stay blank"):
        m = prepare_dataset(cfg, tmp_path, patch_size=40, seed=1, sources=srcs, progress=False)
    assert "nd_rich" in m.data["warnings"][0]
    srcs[1].mask_hq[:] = np.where(srcs[1].mask_hq == 2, 0, srcs[1].mask_hq)  # oxide only in the training image
    srcs[1].mask_hq[::5, ::5] = 3  # nd_rich in every test patch
    cfg = DataConfig("x", 3, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((4, 2), (8, 3), 0, 3))
    with pytest.warns(UserWarning, match=r"class\(es\) \['oxide'\] appear in no test patch"):
        prepare_dataset(cfg, tmp_path / "b", patch_size=40, seed=1, sources=srcs, progress=False)


def test_patch_size_far_larger_than_the_data_warrants(monkeypatch):
    """Issue 15 item 11: patch_size=2048 on the embedded default (its image grows with the patch) is a warning before
    anything is generated; the sizes the presets use are not."""
    from dualsynth import microstructure, patching

    cfg = load_data_config(ROOT / "params" / "data" / "ndfeb_default.yaml")
    assert patching.patch_size_warning(cfg, 64) is None and patching.patch_size_warning(cfg, 256) is None
    msg = patching.patch_size_warning(cfg, 2048)
    assert "patch_size=2048 makes the generated image 22016×17664 px (64× the pixels" in msg

    class Stop(Exception):
        pass

    monkeypatch.setattr(microstructure, "generate_ndfeb", lambda **kw: (_ for _ in ()).throw(Stop()))
    with pytest.warns(UserWarning, match="patch_size=2048 makes the generated image"), pytest.raises(Stop):
        patching.load_sources(cfg, 2048, 0)
