"""The results statement (dualsynth.report) on small fake experiment folders."""
import json

import numpy as np
import pytest

from dualsynth import report
from dualsynth.io import DataError, atomic_write_json
from dualsynth.variants import parse_variant

CLASSES = [{"name": "matrix", "color": [0, 0, 0], "grey": 0}, {"name": "pores", "color": [255, 255, 255], "grey": 255}]


def fake_experiment(root, name, scores, similarity=None):
    """``scores``: {variant: {seed: (per-image Missing Class IoU list, per-class {name: score})}}."""
    exp = root / name
    patches = {f"p{i}": {"fractions_hq": [0.95, 0.05]} for i in range(6)}
    atomic_write_json(exp / "patches" / "manifest.json", {
        "format": 1, "data": {"name": f"data-{name}", "classes": CLASSES}, "patch_size": 32, "channels": 1,
        "patches": patches, "tiers": {"BMQ": {"train": [{"id": k, "mask": "hq"} for k in patches], "val": []}},
        "test": []})
    for variant, seeds in scores.items():
        v = parse_variant(variant)
        for seed, (per_image, per_class) in seeds.items():
            mci = float(np.mean(per_image))
            atomic_write_json(exp / "unet" / variant / f"seed{seed}" / "metrics.json", {
                "variant": variant, "seed": seed, "group": v.group, "tier": v.tier, "percent": v.percent,
                "augment": False, "num_real_train": 48, "num_synthetic_train": 0, "num_test": len(per_image),
                "accuracy": mci, "miou": mci, "miou_dataset": mci, "missing_class_iou": mci, "per_class": per_class,
                "per_image": [{"missing_class_iou": s} for s in per_image], "complete": True})
    if similarity is not None:
        atomic_write_json(exp / "synthetic" / "quality.json", {"similarity": similarity})
    return exp


def similarity(syn_pores):
    m = lambda s, r: {"synthetic_vs_real": s, "real_vs_real": r}  # noqa: E731
    return {"n_real": 6, "n_real_halves": [3, 3], "n_synthetic": 12,
            "measures": {"class_fraction_w1": m(0.04, 0.01), "s2_rms": m(0.002, 0.002)},
            "class_fractions": {"real": {"matrix": 0.95, "pores": 0.05},
                                "synthetic": {"matrix": 1 - syn_pores, "pores": syn_pores}}}


@pytest.fixture
def helps(tmp_path, rng):
    base = rng.uniform(0.6, 0.8, 20)
    # BMQ_50 is better by 0.04 / 0.05 / 0.06 on seeds 0 / 1 / 2; BMQ_100 exists for seed 0 only and is worse
    scores = {"BMQ_0": {s: (base + 0.01 * s, {"matrix": 0.9, "pores": 0.5}) for s in range(3)},
              "BMQ_50": {s: (base + 0.01 * s + 0.04 + 0.01 * s, {"matrix": 0.9, "pores": 0.6}) for s in range(3)},
              "BMQ_100": {0: (base - 0.1, {"matrix": 0.85, "pores": 0.3})}}
    return fake_experiment(tmp_path, "good", scores, similarity(0.045))


def test_helps_with_seed_interval_and_missing_seeds(helps):
    rep = report.experiment_report(helps)
    json.dumps(rep, allow_nan=False)
    assert rep["seeds_per_variant"] == {"BMQ_0": [0, 1, 2], "BMQ_50": [0, 1, 2], "BMQ_100": [0]}
    g = rep["largest_gain"]
    assert g["variant"] == "BMQ_50" and g["base"] == "BMQ_0" and g["gain_n"] == 3
    assert g["gain"] == pytest.approx(0.05)
    # per-seed gains 0.04, 0.05, 0.06: half width t(0.975, 2) · 0.01 / √3 = 0.024841
    assert (g["gain_ci_low"], g["gain_ci_high"]) == pytest.approx((0.05 - 0.024841, 0.05 + 0.024841), abs=1e-5)
    assert g["p_value"] < 1e-3 and g["significant"]
    assert g["per_class"]["pores"]["gain"] == pytest.approx(0.1)
    assert rep["rare_classes"] == ["pores"]
    assert rep["verdict"] is True and rep["statement"].startswith("Synthetic data helps on data-good")
    assert rep["significantly_better"] == 1 and rep["significantly_worse"] == 1
    # BMQ_100 has seed 0 only: its gain is against the base's seed 0 (-0.1), not the base's 3-seed mean (-0.11)
    from dualsynth import batch, stats

    runs = batch.collect_metrics(helps)
    ranked = stats.ranked_table(stats.summarise(runs, ["missing_class_iou"]), runs, helps).set_index("variant")
    assert ranked.loc["BMQ_100", "gain_vs_base"] == pytest.approx(-0.1) and ranked.loc["BMQ_100", "gain_n"] == 1
    assert rep["mean_class_gain_with_synthetic"]["pores"] == pytest.approx((0.1 - 0.2) / 2)


def test_does_not_help_names_the_under_reproduced_class(tmp_path, rng):
    base = rng.uniform(0.6, 0.8, 20)
    scores = {"SHQ_0": {0: (base, {"matrix": 0.9, "pores": 0.6})},
              "SHQ_100": {0: (base - 0.05 + rng.normal(0, 0.01, 20), {"matrix": 0.9, "pores": 0.3})}}
    rep = report.experiment_report(fake_experiment(tmp_path, "bad", scores, similarity(0.005)))
    assert rep["verdict"] is False
    g = rep["largest_gain"]
    assert g["gain_n"] == 1 and g["gain_ci_low"] is None and g["gain"] < 0
    text = rep["statement"]
    assert "does not help on data-bad" in text and "n=1 seed, no interval" in text
    assert "under-reproduces pores (0.5% of synthetic pixels vs 5.0% real)" in text
    assert "class_fraction_w1 0.04 vs real-vs-real 0.01" in text and "s2_rms" not in text  # equal to its baseline
    assert "pores (rare) loses most" in text


def test_no_runs_and_cli_table(helps, tmp_path, capsys):
    empty = fake_experiment(tmp_path, "empty", {})
    rep = report.experiment_report(empty)
    assert rep["runs"] == 0 and rep["verdict"] is None
    out = tmp_path / "reports"
    assert report.main([str(helps), str(empty), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| data-")]
    assert len(rows) == 2 and "| yes |" in rows[0] and "BMQ_50 +0.050 [+0.025, +0.075]" in rows[0]
    md = (out / "good" / "report.md").read_text()
    assert "| pores (rare) |" in md and "class_fraction_w1" in md
    assert json.loads((out / "empty" / "report.json").read_text())["runs"] == 0
    assert not (helps / "results").exists()  # --out-dir: nothing written into the experiment


def test_only_base_variants_give_no_verdict(tmp_path, rng):
    # what notebook 07 sees after a default run of 06 (one base variant): a report without a comparison, no crash
    scores = {"SHQ_0": {0: (rng.uniform(0.6, 0.8, 10), {"matrix": 0.9, "pores": 0.6})}}
    rep = report.experiment_report(fake_experiment(tmp_path, "base", scores))
    assert rep["runs"] == 1 and rep["best"]["variant"] == "SHQ_0"
    assert rep["variants_with_synthetic"] == 0 and rep["largest_gain"] is None
    assert "SHQ_0" in report.report_markdown(rep)


def test_largest_gain_among_many_needs_holm_and_pairs_are_images(tmp_path):
    """Ten variants against one base: the best one's raw p (0.036) would say "helps", Holm over ten does not."""
    from dualsynth import batch, stats

    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.8, 20)
    shift = np.linspace(-0.03, 0.06, 20)
    rng.shuffle(shift)
    scores = {"BMQ_0": {0: (base, {"matrix": 0.9, "pores": 0.5})},
              "BMQ_50": {0: (base + shift, {"matrix": 0.9, "pores": 0.5})}}
    for p in (75, 100, 150, 200, 250, 300):
        scores[f"BMQ_{p}"] = {0: (base + rng.normal(0, 0.03, 20), {"matrix": 0.9, "pores": 0.5})}
    for p in (50, 75):
        scores[f"SyntMQ_{p}"] = {0: (base + rng.normal(0, 0.03, 20), {"matrix": 0.9, "pores": 0.5})}
    rep = report.experiment_report(fake_experiment(tmp_path, "many", scores))
    g = rep["largest_gain"]
    assert g["variant"] == "BMQ_50" and rep["variants_with_synthetic"] == 9
    assert 0.01 < g["p_value"] < 0.05 < g["p_holm"] and not g["significant"]
    assert rep["verdict"] is False and "Holm-adjusted over 9 variants" in rep["statement"]
    # two seeds with different per-image noise: one pair per test image (scores averaged over the seeds),
    # not one pair per image × seed
    noise, noise2 = rng.normal(0, 0.05, (2, 20)), rng.normal(0, 0.05, (2, 20))
    two = {"BMQ_0": {s: (base + noise[s], {"matrix": 0.9}) for s in (0, 1)},
           "BMQ_50": {s: (base + 0.01 + noise2[s], {"matrix": 0.9}) for s in (0, 1)}}
    exp = fake_experiment(tmp_path, "two", two)
    runs = batch.collect_metrics(exp)
    ranked = stats.ranked_table(stats.summarise(runs, ["missing_class_iou"]), runs, exp).set_index("variant")
    per_image = stats.paired_test(base + 0.01 + noise2.mean(0), base + noise.mean(0))["p_value"]
    pooled = stats.paired_test((base + 0.01 + noise2).ravel(), (base + noise).ravel())["p_value"]
    assert ranked.loc["BMQ_50", "paired_p"] == pytest.approx(per_image) and per_image != pytest.approx(pooled)


def test_rare_flag_follows_rare_fraction(tmp_path, rng):
    base = rng.uniform(0.6, 0.8, 20)
    scores = {"SHQ_0": {0: (base, {"matrix": 0.9, "pores": 0.6})},
              "SHQ_100": {0: (base - 0.05, {"matrix": 0.9, "pores": 0.3})}}
    exp = fake_experiment(tmp_path, "rare", scores)
    assert "pores (rare) loses most" in report.experiment_report(exp)["statement"]  # 5 % < 10 %
    rep = report.experiment_report(exp, rare_fraction=0.01)
    assert rep["rare_classes"] == [] and "pores loses most" in rep["statement"]


def test_report_leaves_out_runs_made_from_other_data(tmp_path, rng):
    """07/report after 04 or 05 were re-run without 06: old runs are not silently scored."""
    import warnings

    from dualsynth import batch
    from dualsynth.io import write_png
    from dualsynth.variants import inputs_fingerprint

    base = rng.uniform(0.6, 0.8, 10)
    exp = fake_experiment(tmp_path, "stale", {"SHQ_0": {0: (base, {"matrix": 0.9})},
                                              "SHQ_100": {0: (base + 0.1, {"matrix": 0.9})}})
    pair = {"image": str(exp / "i.png"), "mask": str(exp / "m.png"), "source": "synthetic", "id": "i"}
    write_png(exp / "i.png", np.zeros((4, 4), np.uint8))
    write_png(exp / "m.png", np.zeros((4, 4), np.uint8))
    data = {"variant": "SHQ_100", "group": "mixed", "tier": "SHQ", "percent": 100, "augment": False,
            "num_real_train": 1, "num_synthetic_train": 1, "train": [pair], "val": [pair], "test": [pair]}
    atomic_write_json(exp / "variants" / "SHQ_100.json", data)
    f = exp / "unet" / "SHQ_100" / "seed0" / "metrics.json"
    atomic_write_json(f, {**json.loads(f.read_text()), "inputs_fingerprint": inputs_fingerprint(data)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(batch.collect_metrics(exp).variant) == ["SHQ_0", "SHQ_100"]  # current: kept, no warning
    write_png(exp / "i.png", np.full((4, 4), 7, np.uint8))  # 04 re-generated the synthetic image
    with pytest.warns(UserWarning, match=r"1 finished run\(s\) .*other data.*SHQ_100.*left out"):
        rep = report.experiment_report(exp)
    assert rep["runs"] == 1 and rep["largest_gain"] is None
    with pytest.raises(DataError, match=r"trained on other data .*SHQ_100"):
        batch.collect_metrics(exp, stale="error")
    assert len(batch.collect_metrics(exp, stale="keep")) == 2


def test_one_seed_gain_is_not_established(tmp_path, rng):
    """A significant per-image gain on one seed compares two trained models, not two recipes: no "helps" yet."""
    base = rng.uniform(0.6, 0.8, 20)
    scores = {"SHQ_0": {0: (base, {"matrix": 0.9, "pores": 0.6})},
              "SHQ_100": {0: (base + 0.05 + rng.normal(0, 0.01, 20), {"matrix": 0.9, "pores": 0.7})},
              # a variant with two seeds 0.1 apart: its seed-to-seed sd is 0.1/√2 = 0.0707
              "BMQ_0": {0: (base, {"matrix": 0.9}), 1: (base + 0.1, {"matrix": 0.9})}}
    exp = fake_experiment(tmp_path, "oneseed", scores)
    rep = report.experiment_report(exp)
    g = rep["largest_gain"]
    assert g["significant"] and g["gain_n"] == 1 and g["gain"] > 0.04
    assert rep["verdict"] is None and rep["statement"].startswith("Not established on data-oneseed")
    assert "run SHQ_100 and SHQ_0 with more seeds" in rep["statement"]
    assert rep["seed_sd_median"] == pytest.approx(0.1 / np.sqrt(2)) and "spread (here 0.071" in rep["statement"]
    assert "Seed-to-seed standard deviation 0.071 (median over 1 variant" in report.report_markdown(rep)
    assert "| not established (1 seed) |" in report.combined_table([rep])


def test_compare_runs_across_experiments(tmp_path, rng, capsys):
    """A variant against another experiment's (e.g. a fork with other U-Net settings): seeds matched, images paired."""
    base = rng.uniform(0.5, 0.7, 12)
    a = fake_experiment(tmp_path, "long", {"SHQ_0": {s: (base + 0.1 + 0.01 * s, {"matrix": 0.9}) for s in range(3)}})
    b = fake_experiment(tmp_path, "short", {"SHQ_0": {s: (base + rng.normal(0, 0.01, 12), {"matrix": 0.9})
                                                      for s in range(2)}})
    c = report.compare_runs(a, "SHQ_0", b, "SHQ_0")
    assert c["seeds"] == [0, 1] and c["test_images"] == 12  # seed 2 of "long" has no partner
    assert c["per_seed"] == pytest.approx([0.1, 0.11], abs=0.01) and c["gain"] == pytest.approx(np.mean(c["per_seed"]))
    assert c["gain_ci_low"] < c["gain"] < c["gain_ci_high"] and c["p_value"] < 0.01
    assert report.main(["--compare", f"{a}:SHQ_0", f"{b}:SHQ_0"]) == 0
    assert "on seeds [0, 1]: +0.10" in capsys.readouterr().out
    other = fake_experiment(tmp_path, "other", {"SHQ_0": {0: (base[:5], {"matrix": 0.9})}})
    with pytest.raises(DataError, match=r"different test sets \(12 vs 5 images\)"):
        report.compare_runs(a, "SHQ_0", other, "SHQ_0")
    with pytest.raises(DataError, match=r"no seed with complete runs of both .*BMQ_0 \(seeds \[\]\)"):
        report.compare_runs(a, "SHQ_0", b, "BMQ_0")
    assert report.main(["--compare", f"{a}:SHQ_0", "nocolon"]) == 2
    assert "expected EXPERIMENT_FOLDER:VARIANT twice" in capsys.readouterr().err


def test_holm_family_counts_the_augmentation_baseline_too(tmp_path, rng):
    base = rng.uniform(0.5, 0.8, 20)
    scores = {"BMQ_0": {0: (base, {"matrix": 0.9})},
              "BMQ_50": {0: (base - 0.02 + rng.normal(0, 0.02, 20), {"matrix": 0.9})},
              "BMQ_aug": {0: (base - 0.01 + rng.normal(0, 0.02, 20), {"matrix": 0.9})}}
    rep = report.experiment_report(fake_experiment(tmp_path, "aug", scores))
    assert rep["variants_with_synthetic"] == 1 and "Holm-adjusted over 2 variants" in rep["statement"]
