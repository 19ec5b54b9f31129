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
