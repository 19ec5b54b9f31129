import numpy as np
import pandas as pd
import pytest

from dualsynth import stats
from dualsynth.stats import mean_ci, paired_test, summarise


def test_mean_ci_known_values():
    # mean 2, sample std 1, n 3: half width = t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    s = mean_ci([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["n"] == 3
    assert s["half_width"] == pytest.approx(2.484138, rel=1e-5)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), rel=1e-5)
    one = mean_ci([0.7])
    assert one["mean"] == 0.7 and np.isnan(one["half_width"])
    assert mean_ci([None, np.nan])["n"] == 0


def test_summarise_groups_seeds():
    df = pd.DataFrame({"variant": ["A", "A", "B"], "seed": [0, 1, 0], "group": ["base", "base", "mixed"],
                       "missing_class_iou": [0.8, 0.9, 0.5]})
    s = summarise(df, ["missing_class_iou"]).set_index("variant")
    assert s.loc["A", "missing_class_iou"] == pytest.approx(0.85)
    assert s.loc["A", "missing_class_iou_n"] == 2 and s.loc["B", "missing_class_iou_n"] == 1
    assert s.loc["A", "missing_class_iou_ci_low"] < 0.85 < s.loc["A", "missing_class_iou_ci_high"]


def test_paired_test_detects_shift(rng):
    base = rng.uniform(0.6, 0.9, 27)
    better = base + 0.03 + rng.normal(0, 0.005, 27)
    r = paired_test(better, base)
    assert r["mean_diff"] == pytest.approx(0.03, abs=0.005) and r["p_value"] < 1e-4
    same = paired_test(base, base)
    assert np.isnan(same["p_value"]) and same["mean_diff"] == 0
    noise = paired_test(base + rng.normal(0, 0.01, 27), base)
    assert noise["p_value"] > 0.001
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1, 2], [1])


def test_seed_gain_pairs_seeds_and_marks():
    from dualsynth.stats import seed_gain, significance_marks

    runs = pd.DataFrame({"variant": ["B"] * 3 + ["V"] * 4, "seed": [0, 1, 2, 0, 1, 2, 3],
                         "m": [0.5, 0.6, 0.7, 0.52, 0.63, 0.74, 0.99]})
    g = seed_gain(runs, "V", "B", "m")  # seed 3 has no base run: left out
    assert g["seeds"] == [0, 1, 2] and g["n"] == 3
    assert g["mean"] == pytest.approx(0.03) and g["std"] == pytest.approx(0.01)
    assert g["half_width"] == pytest.approx(4.302653 * 0.01 / np.sqrt(3), rel=1e-5)
    one = seed_gain(runs[runs.seed == 0], "V", "B", "m")
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.02) and np.isnan(one["ci_low"])
    ranked = pd.DataFrame({"variant": ["V", "W", "X", "B"], "gain_vs_base": [0.03, -0.05, 0.01, np.nan],
                           "significant": [True, True, False, np.nan]})
    assert significance_marks(ranked) == {"V": "*", "W": "v"}


def test_holm_known_values_and_nan_outside_the_family():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06; NaN is not counted
    adj = stats.holm([0.04, 0.01, float("nan"), 0.03])
    assert adj[[0, 1, 3]] == pytest.approx([0.06, 0.03, 0.06]) and np.isnan(adj[2])
    assert stats.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1
    assert stats.holm([]).shape == (0,)


@pytest.mark.parametrize("gain,lo,hi,n,sig,collapsed,want", [
    (0.05, 0.02, 0.08, 3, True, False, "helps"),
    (0.05, 0.02, 0.08, 3, False, False, "inconclusive"),  # interval above 0, per-image test not significant
    (0.05, 0.02, 0.08, 3, True, True, "inconclusive"),  # rests on a collapsed run
    (-0.05, -0.08, -0.02, 3, False, False, "hurts"),
    (0.002, -0.01, 0.015, 3, False, False, "does_not_help"),  # every gain above the margin 0.02 excluded
    (0.002, -0.01, 0.025, 3, False, False, "inconclusive"),
    # above 0 but not Holm-confirmed: below the margin it is "does not help" (no gain worth having), past it
    # "inconclusive"; with the paired test it is "helps" (README, the verdict table)
    (0.01, 0.005, 0.015, 3, False, False, "does_not_help"),
    (0.04, 0.005, 0.075, 3, False, False, "inconclusive"),
    (0.01, 0.005, 0.015, 3, True, False, "helps"),
    (0.063, -0.87, 0.99, 2, False, False, "inconclusive"),
    (0.08, None, None, 1, True, False, "inconclusive"),  # one seed: no interval
])
def test_decide_three_verdicts_and_does_not_help(gain, lo, hi, n, sig, collapsed, want):
    assert stats.decide(gain, lo, hi, n, sig, margin=0.02, collapsed=collapsed) == want


def test_seeds_needed_for_a_margin():
    # sd 0.03, margin 0.02: t(0.975, n-1) · 0.03 / √n ≤ 0.02 first at n = 12 (2.201 · 0.03 / 3.464 = 0.01906;
    # n = 11: 2.228 · 0.03 / 3.317 = 0.02015)
    assert stats.seeds_needed(0.03, 0.02) == 12
    assert stats.seeds_needed(0.001, 0.02) == 2
    assert stats.seeds_needed(1.0, 0.02) is None  # more than 100
    assert stats.seeds_needed(float("nan"), 0.02) is None


def test_majority_baseline_is_the_metric_of_a_constant_prediction(rng):
    from dualsynth.metrics import evaluate

    masks = rng.integers(0, 3, (5, 16, 16))
    masks[0] = 0  # an image of the majority class only scores 1
    want = evaluate(masks, np.zeros_like(masks), 3)["missing_class_iou"]
    assert stats.majority_baseline(masks, 0, 3) == pytest.approx(want)
    by_hand = np.mean([1.0] + [(m == 0).mean() / len(np.unique(m)) for m in masks[1:]])
    assert stats.majority_baseline(masks, 0, 3) == pytest.approx(by_hand)


def test_flag_collapsed_by_share_and_by_baseline():
    runs = pd.DataFrame({"variant": ["A", "B", "C", "D"], "seed": [0, 0, 0, 0],
                         "missing_class_iou": [0.7, 0.7, 0.40, 0.41], "pred_max_share": [0.95, 0.949, 0.5, None],
                         "pred_max_class": ["matrix", "matrix", "pores", None]})
    out = stats.flag_collapsed(runs, baseline=0.40)
    assert out.collapsed.tolist() == [True, False, True, False]
    assert out.collapse_reason[0] == "predicts matrix on 95% of the test pixels"
    assert out.collapse_reason[2] == "Missing Class IoU 0.400 ≤ the majority-class baseline 0.400"
    assert stats.flag_collapsed(runs).collapsed.tolist() == [True, False, False, False]  # no baseline: share only


def test_base_and_matched_control_names_come_from_variants():
    from dualsynth.variants import VariantError

    assert stats.base_of("SHQ_100") == "SHQ_0" and stats.base_of("SyntLQ_50") == "BLQ_0"
    assert stats.base_of("SHQ_0") is None and stats.base_of("SHQ_0@320") is None
    with pytest.raises(VariantError, match="a matched control run trains a base variant"):
        stats.base_of("SHQ_100@320")
    updates = {"SHQ_0": 160, "SHQ_100": 320, "SHQ_50": 160, "SyntMQ_50": 240, "BMQ_0": 480}
    assert stats.matched_control_of("SHQ_100", "SHQ_0", updates, ["SHQ_0@320"]) == ("SHQ_0@320", "matched run")
    assert stats.matched_control_of("SHQ_100", "SHQ_0", updates, []) == (None, "missing")
    assert stats.matched_control_of("SHQ_50", "SHQ_0", updates, []) == ("SHQ_0", "equal updates")
    assert stats.matched_control_of("SHQ_300", "SHQ_0", updates, []) == (None, "unknown")
    # synthetic only: none of the base's images, so no control run to ask for
    assert stats.matched_control_of("SyntMQ_50", "BMQ_0", updates, ["BMQ_0@240"]) == (None, "synthetic only")
