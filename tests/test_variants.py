import json

import pytest

from dualsynth import variants as V

from conftest import ROOT
from conftest import fake_pool as _pool


def test_exactly_the_paper_variants():
    names = V.variant_names(include_aug=False)
    assert len(names) == 46 and len(set(names)) == 46
    assert sum(n.endswith("_0") for n in names) == 4
    assert sum(n.startswith("Synt") for n in names) == 14
    assert len([n for n in names if not n.startswith("Synt") and not n.endswith("_0")]) == 28
    assert "BMQ_aug" in V.variant_names()


def test_committed_yamls_are_exactly_the_variants(tmp_path):
    committed = sorted(p.stem for p in (ROOT / "params" / "variants").glob("*.yaml"))
    assert committed == sorted(V.variant_names(include_pretrain=True))  # the 47 + the 28 PT_ variants
    # and they are what the generator writes
    V.write_variant_yamls(tmp_path)
    for p in (ROOT / "params" / "variants").glob("*.yaml"):
        assert p.read_text() == (tmp_path / p.name).read_text()


def test_parse_and_counts():
    v = V.parse_variant("SHQ_50")
    assert (v.group, v.tier, v.synthetic_count(16, 48)) == ("mixed", "SHQ", 8)  # paper: 16 real + 8 synthetic
    assert V.parse_variant("BMQ_300").synthetic_count(48, 48) == 144
    s = V.parse_variant("SyntLQ_50")
    assert (s.group, s.tier, s.synthetic_count(16, 48)) == ("synthetic", "BLQ", 24)  # 24 synthetic, 12 real val
    assert V.parse_variant("SyntMQ_75").tier == "BMQ"
    assert V.parse_variant("BMQ_aug").augment
    for bad in ("SHQ_60", "XYZ_50", "SLQ_aug", "SyntLQ_0", "shq_50"):
        with pytest.raises(V.VariantError, match="unknown variant"):
            V.parse_variant(bad)
    assert [v.name for v in V.select("base")] == ["SHQ_0", "SLQ_0", "BLQ_0", "BMQ_0"]
    assert len(V.select("all")) == 47


def test_core_is_the_small_study_make_run_trains():
    """``core``: a base set of each size with its 100 % mix, and the pretrain-then-fine-tune variant — every
    comparison the results statement makes has its base in the same selection."""
    core = V.select("core")
    assert [v.name for v in core] == ["SHQ_0", "BMQ_0", "SHQ_100", "BMQ_100", "PT_SHQ_100"]
    names = {v.name for v in core}
    assert all(f"{v.tier}_0" in names for v in core)
    assert [v.name for v in V.select("core,SHQ_0,BLQ_0")][-1] == "BLQ_0"  # merged without duplicates
    makefile = (ROOT / "Makefile").read_text()
    run = makefile.split("\nrun:")[1].split("\n\n")[0]
    assert "--variants $(VARIANTS)" in run and "--matched-controls" in run  # PT_SHQ_100 needs SHQ_0@<its updates>
    assert "VARIANTS ?= core" in makefile and "STUDY_VARIANTS ?= all" in makefile


@pytest.fixture
def manifest(tiny_manifest):
    return tiny_manifest  # conftest's shared builder


def test_materialise_lists(manifest, tmp_path):
    pool = _pool(30)
    base = V.materialise("SHQ_0", manifest, pool, tmp_path)
    assert (len(base["train"]), len(base["val"]), len(base["test"])) == (4, 2, 2)
    mixed = V.materialise("SHQ_50", manifest, pool, tmp_path)
    assert mixed["num_synthetic_train"] == 2 and len(mixed["train"]) == 6
    assert [t["id"] for t in mixed["train"] if t["source"] == "synthetic"] == ["s000", "s001"]  # prefix of the pool
    big = V.materialise("BMQ_300", manifest, pool, tmp_path)
    syn_big = [t["id"] for t in big["train"] if t["source"] == "synthetic"]
    assert len(syn_big) == 24 and syn_big[:2] == ["s000", "s001"]
    only = V.materialise("SyntMQ_100", manifest, pool, tmp_path)
    assert only["num_real_train"] == 0 and all(t["source"] == "synthetic" for t in only["train"])
    assert len(only["train"]) == 8 and only["val"] == V.materialise("BMQ_0", manifest, pool, tmp_path)["val"]
    # validation and test are always real, and test never overlaps training
    for v in (base, mixed, big, only):
        assert all(t["source"] == "real" for t in v["val"] + v["test"])
        assert not {t["image"] for t in v["test"]} & {t["image"] for t in v["train"]}
    # BMQ differs from BLQ only in masks
    blq, bmq = V.materialise("BLQ_0", manifest, pool, tmp_path), V.materialise("BMQ_0", manifest, pool, tmp_path)
    assert [t["image"] for t in blq["train"]] == [t["image"] for t in bmq["train"]]
    assert [t["mask"] for t in blq["train"]] != [t["mask"] for t in bmq["train"]]


def test_pool_too_small_and_zero(manifest, tmp_path):
    with pytest.raises(V.VariantError, match=r"BMQ_300 needs 24 synthetic images but the synthetic pool has 10"):
        V.materialise("BMQ_300", manifest, _pool(10), tmp_path)
    # a percentage that rounds to 0 images is refused: 4 train × 50 % = 2 is fine, but a 1-image tier is not
    from dualsynth.variants import Variant

    with pytest.raises(V.VariantError, match=r"is 0 synthetic images"):
        V.materialise(Variant("SHQ_10", "mixed", "SHQ", 10), manifest, _pool(10), tmp_path)


def test_materialise_all_writes_json(manifest, tmp_path):
    paths = V.materialise_all(V.select("SHQ_0,SLQ_75"), manifest, _pool(30), tmp_path, tmp_path / "variants")
    data = json.loads(paths[1].read_text())
    assert data["variant"] == "SLQ_75" and data["num_synthetic_train"] == 3
    assert V.load_variant(paths[0])["variant"] == "SHQ_0"
