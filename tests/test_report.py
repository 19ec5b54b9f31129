"""The results statement (dualsynth.report) on small fake experiment folders."""
import json

import numpy as np
import pandas as pd
import pytest

from dualsynth import report
from dualsynth.io import DataError, atomic_write_json, write_png
from dualsynth.variants import parse_run

CLASSES = [{"name": "matrix", "color": [0, 0, 0], "grey": 0}, {"name": "pores", "color": [255, 255, 255], "grey": 255}]


def fake_experiment(root, name, scores, similarity=None, updates=None, extra=None, test_masks=None):
    """``scores``: {run: {seed: (per-image Missing Class IoU list, per-class {name: score})}}; ``updates``: {run:
    update budget} recorded in metrics.json; ``extra``: {(run, seed): more metrics.json keys}; ``test_masks``:
    class-index masks (N, H, W) written as the manifest's test patches."""
    exp = root / name
    patches = {f"p{i}": {"fractions_hq": [0.95, 0.05]} for i in range(6)}
    test = []
    for i, m in enumerate([] if test_masks is None else test_masks):
        write_png(exp / "patches" / f"t{i}.png", np.asarray(m, np.uint8))
        patches[f"t{i}"] = {"fractions_hq": [float((m == 0).mean()), float((m == 1).mean())], "image": f"t{i}.png",
                            "mask_hq": f"t{i}.png"}
        test.append({"id": f"t{i}", "mask": "hq"})
    train = [{"id": f"p{i}", "mask": "hq"} for i in range(6)]
    atomic_write_json(exp / "patches" / "manifest.json", {
        "format": 1, "data": {"name": f"data-{name}", "classes": CLASSES}, "patch_size": 32, "channels": 1,
        "patches": patches, "tiers": {"BMQ": {"train": train, "val": []}}, "test": test})
    for run, seeds in scores.items():
        r = parse_run(run)
        v = r.variant
        for seed, (per_image, per_class) in seeds.items():
            mci = float(np.mean(per_image))
            atomic_write_json(exp / "unet" / run / f"seed{seed}" / "metrics.json", {
                "variant": run, "seed": seed, "group": "control" if r.control else v.group, "tier": v.tier,
                "percent": v.percent, "augment": False, "num_real_train": 48, "num_synthetic_train": 0,
                "num_test": len(per_image), "accuracy": mci, "miou": mci, "miou_dataset": mci,
                "missing_class_iou": mci, "per_class": per_class,
                "per_image": [{"missing_class_iou": s} for s in per_image], "complete": True,
                **({"updates": updates[run]} if updates and run in updates else {}),
                **((extra or {}).get((run, seed), {}))})
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
    assert rep["verdict"] == "helps" and rep["statement"].startswith("Synthetic data helps on data-good")
    assert rep["significantly_better"] == 1 and rep["significantly_worse"] == 1
    # BMQ_100 has seed 0 only: its gain is against the base's seed 0 (-0.1), not the base's 3-seed mean (-0.11)
    from dualsynth import batch, stats

    runs = batch.collect_metrics(helps)
    ranked = stats.ranked_table(stats.summarise(runs, ["missing_class_iou"]), runs, helps).set_index("variant")
    assert ranked.loc["BMQ_100", "gain_vs_base"] == pytest.approx(-0.1) and ranked.loc["BMQ_100", "gain_n"] == 1
    assert rep["mean_class_gain_with_synthetic"]["pores"] == pytest.approx((0.1 - 0.2) / 2)


def test_one_seed_loss_is_inconclusive_and_names_the_under_reproduced_class(tmp_path, rng):
    base = rng.uniform(0.6, 0.8, 20)
    scores = {"SHQ_0": {0: (base, {"matrix": 0.9, "pores": 0.6})},
              "SHQ_100": {0: (base - 0.05 + rng.normal(0, 0.01, 20), {"matrix": 0.9, "pores": 0.3})}}
    rep = report.experiment_report(fake_experiment(tmp_path, "bad", scores, similarity(0.005)))
    assert rep["verdict"] == "inconclusive"  # one seed: no interval, so neither "hurts" nor "does not help"
    g = rep["largest_gain"]
    assert g["gain_n"] == 1 and g["gain_ci_low"] is None and g["gain"] < 0
    text = rep["statement"]
    assert text.startswith("Inconclusive on data-bad") and "n=1 seed, no interval" in text
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
    combined, verdicts = printed.split("One verdict per dataset")[:2]
    rows = [line for line in combined.splitlines() if line.startswith("| data-")]
    assert len(rows) == 2 and "| helps |" in rows[0] and "BMQ_50 vs BMQ_0 +0.050 [+0.025, +0.075]" in rows[0]
    # the verdict table: the headline of each dataset (BMQ_100 has one seed: not the headline, not listed)
    rows = [line for line in verdicts.splitlines() if line.startswith("| data-")]
    assert len(rows) == 2 and rows[0].startswith(
        "| data-good (`good`) | **BMQ_50 vs BMQ_0** | 3 (0–2) | +0.050 [+0.025, +0.075] | helps | interval above 0, "
        "Holm p ") and rows[0].endswith(" < 0.05 |")
    assert rows[1] == "| data-empty (`empty`) | – | – | – | no verdict | no run |"
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
    assert rep["verdict"] == "inconclusive" and "Holm-adjusted over 9 variants" in rep["statement"]
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
    assert rep["verdict"] == "inconclusive" and rep["statement"].startswith("Inconclusive on data-oneseed")
    assert "run SHQ_100 and SHQ_0 with more seeds" in rep["statement"]
    assert rep["seed_sd_median"] == pytest.approx(0.1 / np.sqrt(2)) and "spread (here 0.071" in rep["statement"]
    assert "Seed-to-seed standard deviation 0.071 (median over 1 variant" in report.report_markdown(rep)
    assert "| inconclusive (1 seed) |" in report.combined_table([rep])


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


# --------------------------------------------------------------------------- matched controls and the split of a gain
def _three_seeds(base, updates_gain, synthetic_gain):
    """Per seed s: base + 0.01 s; its control + updates_gain(s); the variant + synthetic_gain(s) on top."""
    pc = {"matrix": 0.9, "pores": 0.5}
    return {"SHQ_0": {s: (base + 0.01 * s, pc) for s in range(3)},
            "SHQ_0@320": {s: (base + 0.01 * s + updates_gain(s), pc) for s in range(3)},
            "SHQ_100": {s: (base + 0.01 * s + updates_gain(s) + synthetic_gain(s), pc) for s in range(3)}}


def test_gain_is_split_at_the_matched_control(tmp_path, rng):
    """Under budget=epochs SHQ_100 had 320 updates and SHQ_0 160: the gain over SHQ_0 is split at SHQ_0@320."""
    from dualsynth import stats

    base = rng.uniform(0.5, 0.7, 20)
    scores = _three_seeds(base, lambda s: 0.03 + 0.005 * s, lambda s: 0.04 + 0.01 * s)
    exp = fake_experiment(tmp_path, "split", scores, updates={"SHQ_0": 160, "SHQ_100": 320, "SHQ_0@320": 320})
    runs, summary, ranked, _ = report.study_tables(exp)
    r = ranked.set_index("variant").loc["SHQ_100"]
    assert (r.control, r.control_kind, r.updates) == ("SHQ_0@320", "matched run", 320)
    assert r.gain_updates == pytest.approx(0.035) and r.gain_synthetic == pytest.approx(0.05)
    assert r.gain_vs_base == pytest.approx(r.gain_updates + r.gain_synthetic)  # same seeds: the parts add up
    # per-seed synthetic gains 0.04, 0.05, 0.06: half width t(0.975, 2) · 0.01 / √3 = 0.024841
    assert (r.gain_synthetic_ci_low, r.gain_synthetic_ci_high) == pytest.approx((0.025159, 0.074841), abs=1e-5)
    assert r.gain_synthetic_n == 3 and r.gain_updates_n == 3 and r.gain_synthetic_p < 1e-4
    # one Holm family: SHQ_100 vs SHQ_0, SHQ_100 vs SHQ_0@320, SHQ_0@320 vs SHQ_0
    assert stats.holm_family_size(ranked) == 3
    raw = [r.paired_p, r.gain_synthetic_p, r.gain_updates_p]
    assert [r.paired_p_holm, r.gain_synthetic_p_holm, r.gain_updates_p_holm] == pytest.approx(stats.holm(raw))
    assert r.gain_synthetic_p_holm > r.gain_synthetic_p and r.gain_synthetic_significant
    assert np.isnan(ranked.set_index("variant").loc["SHQ_0@320", "gain_vs_base"])  # a control is no variant
    rep = report.experiment_report(exp)
    g = rep["largest_gain"]
    assert (g["variant"], g["against"], g["against_kind"]) == ("SHQ_100", "SHQ_0@320", "matched run")
    assert g["gain"] == pytest.approx(0.05) and rep["verdict"] == "helps"
    assert "SHQ_100 vs SHQ_0@320 (its matched control" in rep["statement"]
    assert "over 3 paired tests" in rep["statement"]
    (split,) = rep["splits"]
    assert split["more_updates"]["gain"] == pytest.approx(0.035) and split["synthetic_data"]["gain"] == pytest.approx(0.05)
    assert split["total"]["gain"] == pytest.approx(0.085) and split["more_updates"]["n"] == 3
    md = report.report_markdown(rep)
    assert "| SHQ_100 vs SHQ_0 | 320 (SHQ_0@320) | +0.085" in md and "more updates: control − base" in md
    assert rep["best"]["variant"] == "SHQ_100"


def test_under_a_fixed_budget_the_base_is_the_matched_control(tmp_path, rng):
    base = rng.uniform(0.5, 0.7, 20)
    scores = _three_seeds(base, lambda s: 0.0, lambda s: 0.04 + 0.01 * s)
    del scores["SHQ_0@320"]
    exp = fake_experiment(tmp_path, "fixed", scores, updates={"SHQ_0": 160, "SHQ_100": 160})
    _, _, ranked, _ = report.study_tables(exp)
    r = ranked.set_index("variant").loc["SHQ_100"]
    assert (r.control, r.control_kind, r.gain_updates) == ("SHQ_0", "equal updates", 0.0)
    assert r.gain_synthetic == pytest.approx(r.gain_vs_base) and r.gain_synthetic_p_holm == r.paired_p_holm
    rep = report.experiment_report(exp)
    assert rep["largest_gain"]["against_kind"] == "equal updates" and rep["splits"] == []
    assert "had as many updates as their base (160): the base itself is their matched control" in rep["budget_note"]
    assert "Update budget: 1 variant(s)" in report.report_markdown(rep)


def test_more_updates_without_a_control_is_said(tmp_path, rng):
    base = rng.uniform(0.5, 0.7, 20)
    scores = _three_seeds(base, lambda s: 0.0, lambda s: 0.04 + 0.01 * s)
    del scores["SHQ_0@320"]
    exp = fake_experiment(tmp_path, "nocontrol", scores, updates={"SHQ_0": 160, "SHQ_100": 320})
    rep = report.experiment_report(exp)
    g = rep["largest_gain"]
    assert g["against"] == "SHQ_0" and g["against_kind"] == "base, more updates"
    assert "the gain mixes more updates and synthetic data; add `study --matched-controls`" in rep["statement"]
    assert "no matched control run (SHQ_100)" in rep["budget_note"]


# --------------------------------------------------------------------------- verdict: helps / hurts / does not help / inconclusive
def _two_variants(tmp_path, name, per_seed_gains, margin=0.02):
    rng = np.random.default_rng(7)
    base = rng.uniform(0.5, 0.7, 20)
    pc = {"matrix": 0.9, "pores": 0.5}
    scores = {"BMQ_0": {s: (base + 0.02 * s, pc) for s in range(len(per_seed_gains))},
              "BMQ_50": {s: (base + 0.02 * s + d + rng.normal(0, 0.002, 20), pc)
                         for s, d in enumerate(per_seed_gains)}}
    return report.experiment_report(fake_experiment(tmp_path, name, scores), margin=margin)


def test_verdict_hurts_when_the_interval_lies_below_zero(tmp_path):
    rep = _two_variants(tmp_path, "hurts", [-0.05, -0.06, -0.04])
    assert rep["verdict"] == "hurts" and rep["statement"].startswith("Synthetic data hurts on data-hurts")
    assert rep["largest_gain"]["gain_ci_high"] < 0


def test_verdict_does_not_help_only_when_the_interval_excludes_the_margin(tmp_path):
    rep = _two_variants(tmp_path, "flat", [0.001, -0.002, 0.0005])
    g = rep["largest_gain"]
    assert g["gain_ci_low"] < 0 < g["gain_ci_high"] <= 0.02
    assert rep["verdict"] == "does_not_help"
    assert "does not help on data-flat" in rep["statement"] and "above the margin of +0.020" in rep["statement"]
    # a margin of 0: the interval still includes small gains, so it is not "does not help"
    assert _two_variants(tmp_path, "flat0", [0.001, -0.002, 0.0005], margin=0.0)["verdict"] == "inconclusive"


def test_wide_interval_is_inconclusive_with_the_detectable_gain(tmp_path):
    """The case behind the rule: +0.063 with a 95 % interval of [−0.87, +0.99] over 2 seeds is no "does not help"."""
    rep = _two_variants(tmp_path, "wide", [0.063 - 0.0732, 0.063 + 0.0732])
    g = rep["largest_gain"]
    assert g["gain"] == pytest.approx(0.063, abs=2e-3) and g["gain_n"] == 2
    assert g["gain_half_width"] == pytest.approx(12.7062 * 0.0732, rel=0.02)  # t(0.975, 1) · sd / √2, sd = 0.0732 √2
    assert rep["verdict"] == "inconclusive"
    assert rep["statement"].startswith("Inconclusive on data-wide")
    assert f"could only have shown a gain larger than ±{g['gain_half_width']:.3f}" in rep["statement"]
    assert "even 100 seeds would not resolve a gain of +0.020" in rep["statement"]
    assert f"inconclusive (±{g['gain_half_width']:.3f} detectable)" in report.combined_table([rep])


def test_inconclusive_states_the_seeds_a_margin_needs(tmp_path):
    rep = _two_variants(tmp_path, "some", [0.0, 0.03, 0.06])  # sd 0.03: ±0.075, a gain of 0.02 needs ~11 seeds
    from dualsynth.stats import seeds_needed

    n = seeds_needed(rep["largest_gain"]["gain_sd"], 0.02)
    assert rep["verdict"] == "inconclusive" and 8 <= n <= 14
    assert f"a gain of +0.020 needs about {n} seeds at this spread" in rep["statement"]


# --------------------------------------------------------------------------- collapsed runs
def test_collapsed_run_is_flagged_and_makes_the_verdict_inconclusive(tmp_path, rng):
    base = rng.uniform(0.5, 0.7, 20)
    scores = _three_seeds(base, lambda s: 0.0, lambda s: 0.04 + 0.01 * s)
    del scores["SHQ_0@320"]
    one_class = {"class_names": ["matrix", "pores"], "confusion": [[950, 0], [40, 10]]}  # 99 % predicted matrix
    normal = {"class_names": ["matrix", "pores"], "confusion": [[900, 50], [10, 40]]}
    extra = {(v, s): normal for v in scores for s in range(3)} | {("SHQ_0", 1): one_class}
    exp = fake_experiment(tmp_path, "collapse", scores, updates={"SHQ_0": 160, "SHQ_100": 160}, extra=extra)
    with pytest.warns(UserWarning, match=r"1 run\(s\) collapsed .*SHQ_0 seed 1: predicts matrix on 99% of the test"):
        runs, _, ranked, _ = report.study_tables(exp, warn=True)
    assert runs.collapsed.sum() == 1
    r = ranked.set_index("variant")
    assert (r.loc["SHQ_0", "collapsed"], r.loc["SHQ_0", "collapsed_seeds"]) == (1, "1")  # columns of ranked.csv
    assert (r.loc["SHQ_100", "collapsed"], r.loc["SHQ_100", "collapsed_seeds"]) == (0, "")
    rep = report.experiment_report(exp)
    assert rep["collapsed_runs"] == [{"run": "SHQ_0", "seed": 1,
                                      "reason": "predicts matrix on 99% of the test pixels"}]
    # the same numbers without the collapsed run would say "helps"; resting on it, the verdict is inconclusive
    assert rep["largest_gain"]["gain_ci_low"] > 0 and rep["largest_gain"]["significant"]
    assert rep["verdict"] == "inconclusive" and "rests on collapsed run(s) — SHQ_0 seed 1" in rep["statement"]
    assert "**1 collapsed run(s)**" in report.report_markdown(rep)


def test_score_at_the_majority_baseline_counts_as_collapsed(tmp_path):
    # 4 test masks of 8x8: pores in 16, 8, 0 and 4 pixels; matrix (the majority training class) everywhere scores
    # per image (48/64)/2, (56/64)/2, 64/64, (60/64)/2 -> mean 0.5703125
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[0, :2] = 1
    masks[1, :1] = 1
    masks[3, 0, :4] = 1
    rng = np.random.default_rng(0)
    scores = {"BMQ_0": {0: (rng.uniform(0.7, 0.9, 4), {"matrix": 0.9})},
              "BMQ_50": {0: (np.full(4, 0.56), {"matrix": 0.9})}}
    exp = fake_experiment(tmp_path, "baseline", scores, test_masks=masks)
    runs, _, ranked, baseline = report.study_tables(exp)
    assert baseline == {"class": "matrix", "missing_class_iou": pytest.approx(0.5703125), "test_images": 4}
    assert runs.set_index("variant").collapsed.to_dict() == {"BMQ_0": False, "BMQ_50": True}
    rep = report.experiment_report(exp)
    assert rep["majority_baseline"]["missing_class_iou"] == pytest.approx(0.5703125)
    assert "Missing Class IoU 0.560 ≤ the majority-class baseline 0.570" in rep["collapsed_runs"][0]["reason"]
    assert "predicting matrix everywhere scores Missing Class IoU 0.570" in report.report_markdown(rep)


# --------------------------------------------------------------------------- image–mask consistency (04's pre-test)
def consistency_record(pores=None, matrix=None, overall=0.71, failing=("pores",)):
    """A ``quality.consistency`` record as 04 stores it; ``pores`` / ``matrix`` override per-class numbers."""
    def cls(iou_s, iou_r, f_s, f_r):
        return {"iou_synthetic": iou_s, "iou_real": iou_r, "ratio": iou_s / iou_r if iou_r > 0 else None,
                "fraction_synthetic": f_s, "fraction_real": f_r, "fraction_ratio": f_s / f_r if f_r > 0 else None}

    per = {"matrix": cls(0.90, 0.95, 0.969, 0.923), "pores": cls(0.40, 0.50, 0.031, 0.0775)}
    per["matrix"].update(matrix or {})
    per["pores"].update(pores or {})
    return {"consistency": overall, "iou_sum_synthetic": 1.3, "iou_sum_real": 1.45, "classes": ["matrix", "pores"],
            "per_class": per, "failing_classes": list(failing), "fail_below": 0.8, "num_synthetic": 12, "num_real": 6}


def write_quality(exp, quality):
    atomic_write_json(exp / "synthetic" / "quality.json", quality)
    return exp


def pretest(record):
    return {"encoder": "efficientnetb0", "epochs": 1, "missing_class_iou_real_test": 0.6,
            "missing_class_iou_synthetic": 0.45, **({"consistency": record} if record is not None else {})}


def _one_seed_loss(tmp_path, rng, name):
    base = rng.uniform(0.6, 0.8, 20)
    scores = {"SHQ_0": {0: (base, {"matrix": 0.9, "pores": 0.6})},
              "SHQ_100": {0: (base - 0.05 + rng.normal(0, 0.01, 20), {"matrix": 0.9, "pores": 0.3})}}
    return fake_experiment(tmp_path, name, scores)


def test_consistency_section_says_how_a_class_fails_and_is_a_reason(tmp_path, rng):
    exp = write_quality(_one_seed_loss(tmp_path, rng, "cons"),
                        {"similarity": similarity(0.031), "pretest": pretest(consistency_record())})
    rep = report.experiment_report(exp)
    json.dumps(rep, allow_nan=False)
    c = rep["consistency"]
    assert c["measured"] and c["consistency"] == pytest.approx(0.71) and c["failing_classes"] == ["pores"]
    assert c["failures"]["pores"] == "under-produced, 3.1 % of synthetic mask pixels vs 7.8 % real (ratio 0.40)"
    md = report.report_markdown(rep)
    assert "### Synthetic masks against their micrographs" in md and "Image–mask consistency **0.71**" in md
    assert "| pores | 0.40 / 0.50 | 0.80 | 3.1 % | 7.8 % | 0.40 | **yes** |" in md
    assert "| matrix | 0.90 / 0.95 | 0.95 | 96.9 % | 92.3 % | 1.05 | no |" in md
    assert "- pores: under-produced, 3.1 % of synthetic mask pixels vs 7.8 % real (ratio 0.40)" in md
    assert "efficientnetb0" in md
    # the verdict's reasons (synthetic data does not help here: one seed, a loss)
    assert rep["verdict"] == "inconclusive"
    assert ("the synthetic masks match their micrographs less well than real masks (image–mask consistency 0.71, "
            "below 0.80) and the synthetic masks fail for pores under-produced (3.1 % vs 7.8 % real)") in rep["statement"]
    # the per-class table of 07: the same numbers as a DataFrame
    df = report.consistency_table(exp)
    assert list(df["class"]) == ["matrix", "pores"] and df.attrs["consistency"] == pytest.approx(0.71)
    row = df.set_index("class").loc["pores"]
    assert row.fails and row["fraction_synthetic_%"] == pytest.approx(3.1) and row.iou_ratio == pytest.approx(0.8)
    assert report.consistency_table(rep).equals(df)
    # the cross-experiment table has the column
    table = report.combined_table([rep])
    assert table.splitlines()[0].endswith("| image–mask consistency |")
    assert table.splitlines()[2].endswith("| 0.71, balanced 0.70 (fails: pores) |")
    # the balanced consistency, computed from the per-class entries of a record that predates it
    assert c["consistency_balanced"] == pytest.approx((0.90 * 0.923 / 0.969 + 0.40 * 0.031 / 0.0775) / 1.45)
    assert "Balanced consistency **0.70**" in md
    assert "For scale, real patches" not in md  # a record without a real reference says nothing of it
    ref = {"consistency": 0.93, "consistency_balanced": 0.9, "consistency_capped": 0.914, "num_patches": 12}
    exp_ref = write_quality(_one_seed_loss(tmp_path, rng, "cons_ref"),
                            {"pretest": {**pretest(consistency_record()), "real_reference": ref}})
    md_ref = report.report_markdown(report.experiment_report(exp_ref))
    assert ("For scale, real patches scored the same way (12 validation patches with their own masks): 0.93, "
            "balanced 0.90, capped 0.91") in md_ref


def test_consistency_words_for_a_class_the_judge_cannot_segment_and_disagreeing_masks():
    rec = consistency_record(pores={"iou_real": 0.0, "iou_synthetic": 0.0, "ratio": None, "fraction_synthetic": 0.04,
                                    "fraction_ratio": 0.5},
                             matrix={"iou_synthetic": 0.5, "ratio": 0.5 / 0.95}, overall=0.53,
                             failing=("matrix", "pores"))
    df = report.consistency_table(rec)  # a bare record of quality.consistency, as 04 stores it
    how = dict(zip(df["class"], df["how"]))
    assert how["pores"] == ("the judge cannot segment it on real images (IoU 0.00), so its consistency cannot be "
                            "judged; under-produced, 4.0 % of synthetic mask pixels vs 7.8 % real (ratio 0.50)")
    assert how["matrix"] == ("its synthetic masks disagree with their micrographs: the judge's IoU 0.50 on synthetic "
                             "vs 0.95 on real images (IoU ratio 0.53)")
    # not failing, but not judgeable either: said apart, with its fraction ratio
    rec = consistency_record(pores={"iou_real": 0.0, "ratio": None}, overall=0.95, failing=())
    from dualsynth.report.consistency import _entry, consistency_lines

    lines = "\n".join(consistency_lines(_entry(rec)))
    assert "No class fails" in lines and "Not judged:" in lines
    assert ("- pores: the judge cannot segment it on real images (IoU 0.00), so its consistency cannot be judged; "
            "under-produced") in lines


def test_consistency_record_of_quality_consistency_renders(tmp_path, rng):
    from dualsynth import quality

    real = np.zeros((4, 16, 16), np.int64)
    real[:, 4:8, 4:8] = 1  # pores: 6.25 % of every real mask, segmented perfectly by the judge
    syn = np.zeros((4, 16, 16), np.int64)
    syn[:, 4:6, 4:8] = 1  # half as many pores in the synthetic masks
    rec = quality.consistency(syn, syn, real, real, 2, ["matrix", "pores"])
    exp = write_quality(fake_experiment(tmp_path, "real", {}), {"pretest": pretest(json.loads(json.dumps(rec)))})
    rep = report.experiment_report(exp)
    assert rep["consistency"]["failing_classes"] == ["pores"]
    assert rep["consistency"]["failures"]["pores"].startswith("under-produced, 3.1 % of synthetic mask pixels vs "
                                                               "6.2 % real (ratio 0.50)")
    assert "- pores: under-produced" in report.report_markdown(rep)


def test_curated_pool_is_reported_by_the_judge_that_did_not_pick_it(tmp_path, rng):
    curating = consistency_record(overall=0.95, failing=())
    check = {**pretest(consistency_record()), "judge_seed": 1}  # the second judge: 0.71, pores failing
    exp = write_quality(_one_seed_loss(tmp_path, rng, "curated"),
                        {"pretest": pretest(curating), "pretest_check": check})
    rep = report.experiment_report(exp)
    c = rep["consistency"]
    assert c["consistency"] == pytest.approx(0.71) and c["failing_classes"] == ["pores"]
    assert c["judge"]["independent"] and c["judge"]["curating_consistency"] == pytest.approx(0.95)
    md = report.report_markdown(rep)
    assert "Image–mask consistency **0.71**" in md and "second judge (seed 1) that did not pick the pool" in md
    assert "the curating judge's own consistency is 0.95" in md
    # without the check the curating judge's record is the one reported, with no such sentence
    exp2 = write_quality(_one_seed_loss(tmp_path, rng, "plain"), {"pretest": pretest(curating)})
    rep2 = report.experiment_report(exp2)
    assert rep2["consistency"]["consistency"] == pytest.approx(0.95)
    assert "did not pick the pool" not in report.report_markdown(rep2)


@pytest.mark.parametrize("case, note", [
    ("no quality.json", "no synthetic/quality.json"),
    ("no pretest", "has no pre-test"),
    ("pretest without consistency", "predates the image–mask consistency"),
    ("quality.json older than the pool", "older than the pool"),
])
def test_consistency_not_measured_in_older_experiments(tmp_path, rng, case, note):
    exp = _one_seed_loss(tmp_path, rng, "old")
    if case == "no pretest":
        write_quality(exp, {"similarity": similarity(0.045)})
    elif case == "pretest without consistency":
        write_quality(exp, {"pretest": pretest(None)})
    elif case == "quality.json older than the pool":
        import os

        write_quality(exp, {"pretest": pretest(consistency_record())})
        atomic_write_json(exp / "synthetic" / "pool.json", {"items": []})
        t = (exp / "synthetic" / "pool.json").stat().st_mtime_ns
        os.utime(exp / "synthetic" / "quality.json", ns=(t - 10**9, t - 10**9))
    rep = report.experiment_report(exp)
    json.dumps(rep, allow_nan=False)
    c = rep["consistency"]
    assert not c["measured"] and note in c["note"] and c["per_class"] == {}
    md = report.report_markdown(rep)
    assert "### Synthetic masks against their micrographs" in md and "Image–mask consistency not measured: " in md
    assert "image–mask consistency" not in rep["statement"]  # not measured is no reason
    assert report.combined_table([rep]).splitlines()[2].endswith("| not measured |")
    df = report.consistency_table(exp)
    assert df.empty and note in df.attrs["note"]
    assert report.consistency_table({"experiment": "x"}).empty  # a report.json that predates the entry


def test_consistency_reason_does_not_call_a_high_overall_score_low():
    """An overall consistency above the threshold with a failing class: the reason names the class, not 'less well'."""
    from dualsynth.report.consistency import consistency_reason

    entry = {"measured": True, "fail_below": 0.8, "consistency": 1.04, "failing_classes": ["defect"],
             "per_class": {"defect": {"iou_synthetic": 0.0, "iou_real": 0.0, "ratio": None,
                                      "fraction_synthetic": 0.003, "fraction_real": 0.011, "fraction_ratio": 0.3}}}
    reason = consistency_reason(entry)
    assert "less well" not in reason
    assert reason.startswith("the image–mask consistency is 1.04 overall but the synthetic masks fail for defect")
    # an easy class hiding a hard one: the balanced consistency below the threshold is named
    reason = consistency_reason({**entry, "consistency_balanced": 0.62})
    assert reason.startswith("the image–mask consistency is 1.04 overall (balanced 0.62: no class making up for "
                             "another) but the synthetic masks fail for defect")


# --------------------------------------------------------------------------- one verdict per dataset, adaptive record
def test_synthetic_only_is_not_told_to_run_matched_controls(tmp_path, rng):
    """Under budget=epochs SyntMQ_50 (24 synthetic images) had fewer updates than BMQ_0 (48 real): it holds none of
    the base's images, so there is no control run to add, and the report does not ask for one."""
    base = rng.uniform(0.5, 0.7, 20)
    scores = {"BMQ_0": {s: (base + 0.01 * s, {"matrix": 0.9}) for s in range(2)},
              "SyntMQ_50": {s: (base - 0.1 + 0.01 * s, {"matrix": 0.9}) for s in range(2)}}
    exp = fake_experiment(tmp_path, "syn", scores, updates={"BMQ_0": 480, "SyntMQ_50": 240})
    _, _, ranked, _ = report.study_tables(exp)
    r = ranked.set_index("variant").loc["SyntMQ_50"]
    assert r.control_kind == "synthetic only" and pd.isna(r.control)
    rep = report.experiment_report(exp)
    assert rep["largest_gain"]["against_kind"] == "base, synthetic only"
    assert "--matched-controls" not in rep["statement"] and "synthetic-only variant holds none" in rep["statement"]
    assert "1 synthetic-only variant(s) had another number of updates" in rep["budget_note"]
    assert "matched-controls` with the same settings" not in rep["budget_note"]
    assert rep["headline"]["kind"] == "base, synthetic only"


def test_interval_above_zero_below_the_margin_without_holm_is_does_not_help(tmp_path):
    """Per-seed gains 0.004 / 0.005 / 0.006 (interval above 0, below the margin 0.02), per-image differences
    spread ±0.1 around them: the paired test is not significant, and every gain worth having is excluded."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0.5, 0.7, 20)
    spread = np.r_[np.linspace(0.01, 0.1, 10), -np.linspace(0.01, 0.1, 10)]
    rng.shuffle(spread)
    scores = {"BMQ_0": {s: (base + 0.02 * s, {"matrix": 0.9}) for s in range(3)},
              "BMQ_50": {s: (base + 0.02 * s + 0.004 + 0.001 * s + spread, {"matrix": 0.9}) for s in range(3)}}
    rep = report.experiment_report(fake_experiment(tmp_path, "small", scores))
    g = rep["largest_gain"]
    assert 0 < g["gain_ci_low"] < g["gain_ci_high"] <= 0.02 and not g["significant"]
    assert rep["verdict"] == "does_not_help"
    assert "(it lies above 0, but the paired test is not significant after Holm" in rep["statement"]
    assert rep["headline"]["decided_by"] == "interval below the margin +0.020"


def _adaptive_experiment(tmp_path, name):
    """SHQ_100 and SHQ_300 against their matched controls, with the adaptive record the study would write."""
    from dualsynth import adaptive, batch

    rng = np.random.default_rng(11)
    base = rng.uniform(0.5, 0.7, 20)
    pc = {"matrix": 0.9, "pores": 0.5}
    g100, g300 = [0.05, 0.07, 0.06], [0.05, -0.04, 0.03, -0.02, 0.01]
    scores = {"SHQ_0": {s: (base + 0.01 * s, pc) for s in range(2)},
              "SHQ_0@320": {s: (base + 0.01 * s, pc) for s in range(3)},
              "SHQ_100": {s: (base + 0.01 * s + g + rng.normal(0, 0.002, 20), pc) for s, g in enumerate(g100)},
              "SHQ_0@640": {s: (base + 0.01 * s, pc) for s in range(5)},
              "SHQ_300": {s: (base + 0.01 * s + g + rng.normal(0, 0.002, 20), pc) for s, g in enumerate(g300)}}
    exp = fake_experiment(tmp_path, name, scores,
                          updates={"SHQ_0": 160, "SHQ_0@320": 320, "SHQ_100": 320, "SHQ_0@640": 640, "SHQ_300": 640})
    comps = adaptive.comparisons(["SHQ_0", "SHQ_100", "SHQ_300"], {"SHQ_100": "SHQ_0@320", "SHQ_300": "SHQ_0@640"})
    runs = batch.collect_metrics(exp)
    rp = adaptive.plan_round(runs, comps, [0, 1], 5)
    names = ["SHQ_0", "SHQ_100", "SHQ_300", "SHQ_0@320", "SHQ_0@640"]
    atomic_write_json(exp / "results" / "adaptive.json", adaptive.adaptive_record(rp, runs, names, [0, 1], 5))
    return exp


def test_headline_against_the_matched_control_with_its_seeds_and_the_adaptive_table(tmp_path):
    exp = _adaptive_experiment(tmp_path, "adapt")
    rep = report.experiment_report(exp)
    json.dumps(rep, allow_nan=False)
    h = rep["headline"]
    assert (h["variant"], h["against"], h["kind"], h["seeds"]) == ("SHQ_100", "SHQ_0@320", "matched run", [0, 1, 2])
    assert h["verdict"] == "helps" and h["decided_by"].endswith("; adaptive: decided at 3 seeds")
    by = {c["variant"]: c for c in rep["comparisons"]}
    assert by["SHQ_300"]["verdict"] == "inconclusive" and by["SHQ_300"]["n"] == 5
    assert by["SHQ_300"]["decided_by"].startswith("interval spans 0 and the margin (±")
    assert by["SHQ_300"]["decided_by"].endswith("; adaptive: stopped undecided at 5 seeds")
    md = report.report_markdown(rep)
    assert ("**Verdict: helps** — SHQ_100 vs SHQ_0@320 (its matched control run: the base with as many updates), on "
            "3 (0–2) seed(s): +0.060 [") in md
    assert "### Seeds added until decided (`study --until-decided`)" in md
    assert "**18 runs** against 25 for a fixed grid of 5 seeds (72%)." in md
    assert "| SHQ_100 vs SHQ_0@320 | 3 (0–2) | +0.060 [" in md and "| yes | decided at 3 seeds" in md
    assert "| SHQ_300 vs SHQ_0@640 | 5 (0–4) |" in md and "| no (stopped) | not decided: stopped at 5 seeds" in md


def test_cross_dataset_verdict_table(tmp_path, helps, capsys):
    """`python -m dualsynth.report A B`: one headline per dataset, plus its adaptive study's other comparisons."""
    adapt = _adaptive_experiment(tmp_path, "adapt")
    target = tmp_path / "verdicts.md"
    assert report.main([str(helps), str(adapt), "--verdict-table", str(target)]) == 0
    table = target.read_text()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == "| dataset (experiment) | comparison | seeds | gain [95 % CI] | verdict | decided by |"
    assert lines[2].startswith("| data-good (`good`) | **BMQ_50 vs BMQ_0** | 3 (0–2) | +0.050 [+0.025, +0.075] | "
                               "helps |")
    assert lines[3].startswith("| data-adapt (`adapt`) | **SHQ_100 vs SHQ_0@320** | 3 (0–2) | +0.060 [")
    assert lines[4].startswith("| data-adapt (`adapt`) | SHQ_300 vs SHQ_0@640 | 5 (0–4) |")
    assert "| inconclusive | interval spans 0" in lines[4] and len(lines) == 5
    # every comparison: BMQ_100 (one seed) too
    reps = [report.experiment_report(e) for e in (helps, adapt)]
    full = report.verdict_table(reps, all_comparisons=True).splitlines()
    assert len(full) == 6 and "| BMQ_100 vs BMQ_0 | 1 (0) | -0.100 n=1, no interval | inconclusive | one seed, no interval |" in full[3]
