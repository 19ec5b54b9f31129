"""Seeds, confidence intervals and paired comparisons between variants (NumPy/SciPy, no TensorFlow).

Also: the matched control of a variant (the run with as many updates, :func:`matched_control_of`) and the split of
its gain over the base into "more updates" and "synthetic data" (:func:`ranked_table`); collapsed models
(:func:`flag_collapsed`, :func:`majority_baseline`); the verdict on a gain (:func:`decide`, :func:`seeds_needed`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from .metrics import evaluate
from .variants import control_name, load_run_metrics, parse_run

__all__ = ["mean_ci", "summarise", "paired_test", "holm", "seed_gain", "significance_marks", "ranked_table",
           "matched_control_of", "holm_family_size", "majority_baseline", "flag_collapsed", "decide",
           "seeds_needed", "VERDICTS", "COLLAPSE_SHARE"]

#: a run predicting one class on at least this share of the test pixels has collapsed
COLLAPSE_SHARE = 0.95
#: the values of :func:`decide`
VERDICTS = ("helps", "hurts", "does_not_help", "inconclusive")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation, n and the t-based confidence interval of the mean.

    With one value the interval is undefined (NaN half-width): a single run says nothing about its spread.
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "ci_low": float("nan"), "ci_high": float("nan"),
                "half_width": float("nan")}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": float("nan"), "n": 1, "ci_low": float("nan"), "ci_high": float("nan"),
                "half_width": float("nan")}
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}


def summarise(df, metrics: Sequence[str], by: str = "variant", confidence: float = 0.95):
    """One row per ``by`` value: for each metric its mean, std, n and CI bounds over the rows (seeds)."""
    import pandas as pd

    keep = [c for c in ("group", "tier", "percent", "augment", "num_real_train", "num_synthetic_train") if c in df]
    rows = []
    for key, g in df.groupby(by, sort=False):
        row = {by: key, **{c: g[c].iloc[0] for c in keep}}
        for m in metrics:
            s = mean_ci(g[m].tolist(), confidence)
            row.update({m: s["mean"], f"{m}_std": s["std"], f"{m}_n": s["n"], f"{m}_ci_low": s["ci_low"],
                        f"{m}_ci_high": s["ci_high"]})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Wilcoxon signed-rank test of paired scores (e.g. per test image, variant vs its base).

    Returns the mean difference (a - b), the statistic and the two-sided p-value (NaN when all differences are 0
    or fewer than 2 pairs remain).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    out = {"mean_diff": float(d.mean()) if len(d) else float("nan"), "n": int(len(d)),
           "statistic": float("nan"), "p_value": float("nan")}
    if len(d) >= 2 and np.any(d != 0):
        res = sps.wilcoxon(a[ok], b[ok], zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order; NaN stays NaN and is not counted in the family).

    Comparing many variants with their base and then looking at the best one needs a correction for the number
    of comparisons: adjusted p < alpha controls the chance of *any* false "significant" at alpha.  (Written
    here because it is five lines; statsmodels' ``multipletests(method="holm")`` gives the same values.)
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adj, 1.0)
    return out


def base_of(variant: str) -> str | None:
    """The real base set a variant is compared with: ``<tier>_0`` (``BLQ_0``/``BMQ_0`` for SyntLQ/SyntMQ); None for
    a base variant and for a matched control run (``SHQ_0@320``: it is compared on its variants' rows)."""
    r = parse_run(variant)
    return None if r.control or r.variant.group == "base" else f"{r.variant.tier}_0"


def _variant_updates(runs) -> dict[str, int | None]:
    """Variant → its update budget (the value most of its runs recorded; None when unknown)."""
    if "updates" not in runs:
        return {}
    out: dict[str, int | None] = {}
    for v, g in runs.groupby("variant"):
        u = g["updates"].dropna()
        out[str(v)] = int(u.mode().iloc[0]) if len(u) else None
    return out


def matched_control_of(variant: str, base: str | None, updates: Mapping[str, int | None],
                       available) -> tuple[str | None, str]:
    """The run a variant with synthetic data is compared with at equal updates, and how it was found.

    ``(base, "equal updates")`` when the base had as many updates (every run under ``budget: fixed``);
    ``("<base>@<updates>", "matched run")`` when that control run is among ``available``; ``(None, "missing")``
    when it is not; ``(None, "unknown")`` when the variant's update count is not recorded.  A synthetic-only variant
    (``SyntLQ_<p>``) with another number of updates than its real base gets ``(None, "synthetic only")``: it holds
    none of the base's images, so there is no "base with more updates" to split its difference at, and the study
    plans no control run for it (:func:`dualsynth.study.plan_study`); it is compared with its base as it is.
    """
    u = updates.get(variant)
    if base is None or u is None:
        return None, "unknown"
    if updates.get(base) == u:
        return base, "equal updates"
    if parse_run(variant).variant.group == "synthetic":
        return None, "synthetic only"
    control = control_name(base, u)
    return (control, "matched run") if control in set(available) else (None, "missing")


def majority_baseline(test_masks, majority_class: int, num_classes: int) -> float:
    """Missing Class IoU of a model predicting ``majority_class`` (the most frequent training class) on every pixel
    of the test masks ``(N, H, W)``: per image, that class's pixel share over the number of classes present."""
    masks = np.asarray(test_masks)
    return float(evaluate(masks, np.full_like(masks, int(majority_class)), int(num_classes))["missing_class_iou"])


def flag_collapsed(runs, baseline: float | None = None, share: float = COLLAPSE_SHARE,
                   metric: str = "missing_class_iou"):
    """``runs`` with ``collapsed`` (bool) and ``collapse_reason``: the model predicts one class on ≥ ``share`` of the
    test pixels (``pred_max_share``, from the confusion matrix), or its ``metric`` is at or below the
    majority-class ``baseline`` (:func:`majority_baseline`; None: not checked)."""
    runs = runs.copy()
    reasons = []
    for r in runs.to_dict("records"):
        why = []
        frac = r.get("pred_max_share")
        if frac is not None and np.isfinite(frac) and frac >= share:
            why.append(f"predicts {r.get('pred_max_class')} on {frac:.0%} of the test pixels")
        score = r.get(metric)
        if baseline is not None and score is not None and np.isfinite(score) and score <= baseline + 1e-12:
            why.append(f"Missing Class IoU {score:.3f} ≤ the majority-class baseline {baseline:.3f}")
        reasons.append("; ".join(why) or None)
    runs["collapse_reason"] = reasons
    runs["collapsed"] = [bool(x) for x in reasons]
    return runs


def seeds_needed(sd: float, margin: float, confidence: float = 0.95, most: int = 100) -> int | None:
    """The fewest seeds whose interval half-width ``t(n-1) · sd / √n`` is at most ``margin`` (None: more than
    ``most``): how many seeds would show a gain of ``margin`` as an interval above 0, at this seed-to-seed spread."""
    if not (np.isfinite(sd) and margin > 0):
        return None
    for n in range(2, most + 1):
        if sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n) <= margin:
            return n
    return None


def decide(gain: float | None, ci_low: float | None, ci_high: float | None, n: int, significant: bool,
           margin: float, collapsed: bool = False) -> str:
    """The verdict on a gain with its 95 % interval over ``n`` seeds (one of :data:`VERDICTS`).

    ``helps``: the interval lies above 0 and the paired test is significant (Holm-adjusted); ``hurts``: the
    interval lies below 0; ``does_not_help``: the interval excludes every gain above ``margin`` (it may include
    small ones, and may lie above 0 when the paired test does not confirm it); otherwise — one seed (no
    interval), an interval reaching past both 0 and ``margin``, or a comparison resting on a collapsed run —
    ``inconclusive``.
    """
    ok = gain is not None and ci_low is not None and ci_high is not None and n >= 2
    if collapsed or not ok:
        return "inconclusive"
    if ci_low > 0 and significant:
        return "helps"
    if ci_high < 0:
        return "hurts"
    # An interval inside (0, margin] that the Holm-adjusted paired test does not confirm lands here on purpose: the
    # seeds bound every gain by the margin, the smallest gain worth having, which is exactly what "does not help"
    # claims (the statement adds that the interval lies above 0).  "Inconclusive" would hide a settled answer, and
    # "helps" needs the paired test; the README's verdict table says the same.
    if ci_high <= margin:
        return "does_not_help"
    return "inconclusive"


def _per_image(experiment_path, variant: str, seeds) -> dict[int, list[float]]:
    out = {}
    for s in seeds:
        m = load_run_metrics(experiment_path, variant, int(s))
        if m is not None:
            out[int(s)] = [r["missing_class_iou"] for r in m["per_image"]]
    return out


def _paired_p(experiment_path, runs, a: str, b: str) -> float | None:
    """Paired Wilcoxon p of ``a`` against ``b`` over the test images, each image's score averaged over the seeds
    both have (seeds are not independent samples of the test set, so they are not pooled as extra pairs)."""
    seeds = sorted(set(runs.loc[runs.variant == a, "seed"]) & set(runs.loc[runs.variant == b, "seed"]))
    pa, pb = _per_image(experiment_path, a, seeds), _per_image(experiment_path, b, seeds)
    common = [s for s in seeds if s in pa and s in pb and len(pa[s]) == len(pb[s])]
    if not common:
        return None
    return paired_test(np.mean([pa[s] for s in common], axis=0), np.mean([pb[s] for s in common], axis=0))["p_value"]


def _gain_cols(prefix: str, g: Mapping[str, Any], p: float | None) -> dict[str, Any]:
    return {prefix: g["mean"], f"{prefix}_n": g["n"], f"{prefix}_ci_low": g["ci_low"],
            f"{prefix}_ci_high": g["ci_high"], f"{prefix}_p": np.nan if p is None else p}


def ranked_table(summary, runs, experiment_path, metric: str = "missing_class_iou", alpha: float = 0.05):
    """Variants ranked by mean ``metric`` with CI, the gain over the base set, its split at equal updates, and
    paired Wilcoxon tests.

    The gain and its interval (``gain_n``, ``gain_ci_low/high``) are over the seeds the variant and its base both
    have (:func:`seed_gain`); without a common seed the gain is the difference of the means.  The paired test pairs
    test images, each image's score averaged over the seeds both variants have (``paired_p``).

    Each variant with synthetic data (mixed, synthetic-only, and ``PT_`` pretrain-then-fine-tune: base ``<tier>_0``,
    control ``<tier>_0@<pretraining + fine-tuning updates>``) also gets its matched ``control`` (:func:`matched_control_of`,
    ``control_kind``) and the split of its gain: ``gain_updates`` = control − base ("more updates") and
    ``gain_synthetic`` = variant − control ("synthetic data"), each over the seeds its two runs share, with ``_n``,
    ``_ci_low`` / ``_ci_high`` (95 % over seeds) and a paired ``_p``.  With equal updates the control is the base:
    ``gain_synthetic`` is the gain over the base and ``gain_updates`` is 0.  When all three have the same seeds
    the two parts add up to ``gain_vs_base``.

    Every paired test of the table — each variant against its base, each variant against its matched control run,
    each control run against its base — is one Holm family: ``paired_p_holm``, ``gain_synthetic_p_holm``,
    ``gain_updates_p_holm``; ``significant`` / ``gain_synthetic_significant`` mean the adjusted p < ``alpha``.
    Under ``budget: fixed`` (no control runs) the family is every variant against its base, as before.
    With ``collapsed`` in ``runs`` (:func:`flag_collapsed`) each variant gets ``collapsed`` (how many of its runs)
    and ``collapsed_seeds``.
    """
    import pandas as pd

    names = set(summary["variant"])
    updates = _variant_updates(runs)
    rows = []
    for _, r in summary.iterrows():
        name = r["variant"]
        base = base_of(name)
        row = {"variant": name, "group": r["group"], "real": r.get("num_real_train"),
               "synthetic": r.get("num_synthetic_train"), "seeds": int(r[f"{metric}_n"]),
               metric: r[metric], "ci_low": r[f"{metric}_ci_low"], "ci_high": r[f"{metric}_ci_high"],
               "miou": r.get("miou"), "accuracy": r.get("accuracy"), "base": base, "updates": updates.get(name)}
        if "collapsed" in runs:
            bad = sorted(int(s) for s in runs.loc[(runs.variant == name) & runs.collapsed.astype(bool), "seed"])
            row.update(collapsed=len(bad), collapsed_seeds=",".join(map(str, bad)))
        if base is not None and base in names:
            row["gain_vs_base"] = r[metric] - float(summary.loc[summary.variant == base, metric].iloc[0])
            p = _paired_p(experiment_path, runs, name, base)
            if p is not None:
                row["paired_p"] = p
            g = seed_gain(runs, name, base, metric)
            row.update({"gain_n": g["n"], "gain_ci_low": g["ci_low"], "gain_ci_high": g["ci_high"]})
            if g["n"]:  # on the seeds both have, like the paired test (equal to the difference of means otherwise)
                row["gain_vs_base"] = g["mean"]
        if r["group"] in ("mixed", "synthetic", "pretrain"):  # every variant with synthetic data
            control, kind = matched_control_of(name, base, updates, names)
            row.update(control=control, control_kind=kind)
            if kind == "equal updates" and "gain_vs_base" in row:
                row.update(gain_updates=0.0, gain_synthetic=row["gain_vs_base"], gain_synthetic_n=row["gain_n"],
                           gain_synthetic_ci_low=row["gain_ci_low"], gain_synthetic_ci_high=row["gain_ci_high"],
                           gain_synthetic_p=row.get("paired_p", np.nan))
            elif kind == "matched run":
                row.update(_gain_cols("gain_synthetic", seed_gain(runs, name, control, metric),
                                      _paired_p(experiment_path, runs, name, control)))
                if base in names:
                    row.update(_gain_cols("gain_updates", seed_gain(runs, control, base, metric),
                                          _paired_p(experiment_path, runs, control, base)))
        rows.append(row)
    df = pd.DataFrame(rows)
    _holm_family(df, alpha)
    return df.sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)


def _family_tests(df) -> tuple[list[tuple[str, Any, float]], dict[str, Any]]:
    """The paired tests of a ranked table as ``(column, row index, p)``, and the row holding each control's test."""
    tests: list[tuple[str, Any, float]] = []
    first_of_control: dict[str, Any] = {}  # a control shared by two variants is one test against the base
    for i, r in df.iterrows():
        if np.isfinite(r.get("paired_p", np.nan)):
            tests.append(("paired_p", i, r["paired_p"]))
        if r.get("control_kind") == "matched run":
            if np.isfinite(r.get("gain_synthetic_p", np.nan)):
                tests.append(("gain_synthetic_p", i, r["gain_synthetic_p"]))
            if np.isfinite(r.get("gain_updates_p", np.nan)) and r["control"] not in first_of_control:
                first_of_control[r["control"]] = i
                tests.append(("gain_updates_p", i, r["gain_updates_p"]))
    return tests, first_of_control


def holm_family_size(ranked) -> int:
    """How many paired tests the Holm adjustment of :func:`ranked_table` counted."""
    return len(_family_tests(ranked)[0])


def _holm_family(df, alpha: float) -> None:
    """Holm-adjust every paired test of the ranked table as one family, in place (see :func:`ranked_table`)."""
    tests, first_of_control = _family_tests(df)
    for col in ("paired_p", "gain_synthetic_p", "gain_updates_p"):
        if col in df:
            df[f"{col}_holm"] = np.nan
    for (col, i, _), adjusted in zip(tests, holm([p for _, _, p in tests])):
        df.loc[i, f"{col}_holm"] = adjusted
    for i, r in df.iterrows():
        if r.get("control") in first_of_control:  # the rows sharing a control share its test
            df.loc[i, "gain_updates_p_holm"] = df.loc[first_of_control[r["control"]], "gain_updates_p_holm"]
        if r.get("control_kind") == "equal updates" and "paired_p_holm" in df:  # the same test as against the base
            df.loc[i, "gain_synthetic_p_holm"] = r["paired_p_holm"]
    if "paired_p" in df:
        df["significant"] = (df["paired_p_holm"] < alpha).where(df["paired_p"].notna())
    if "gain_synthetic_p_holm" in df:
        df["gain_synthetic_significant"] = (df["gain_synthetic_p_holm"] < alpha).where(
            df["gain_synthetic_p_holm"].notna())


def seed_gain(runs, variant: str, base: str, metric: str = "missing_class_iou", confidence: float = 0.95) -> dict:
    """Gain of ``variant`` over ``base`` per seed both have (variant − base, same seed), with :func:`mean_ci`.

    ``n`` is the number of common seeds; with one seed the interval is NaN (say n=1, no interval).
    """
    a = runs.loc[runs.variant == variant].groupby("seed")[metric].mean()
    b = runs.loc[runs.variant == base].groupby("seed")[metric].mean()
    common = sorted(set(a.index) & set(b.index))
    return {**mean_ci([float(a[s] - b[s]) for s in common], confidence), "seeds": [int(s) for s in common]}


def significance_marks(ranked, up: str = "*", down: str = "v") -> dict[str, str]:
    """Variant → mark for a significant paired difference from its base: ``up`` if better, ``down`` if worse."""
    if "significant" not in ranked:
        return {}
    sig = ranked[ranked["significant"].fillna(False).astype(bool)]
    return {str(r.variant): (up if r.gain_vs_base > 0 else down) for r in sig.itertuples()}


def pick_variants(spec: str, summary, metric: str = "missing_class_iou") -> list[str]:
    """Names from a comma list; ``best`` / ``worst`` pick by mean ``metric``; unknown names are dropped."""
    known = list(summary["variant"])
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in ("best", "worst") and len(summary):
            s = summary.sort_values(metric, ascending=(part == "worst"))
            out.append(str(s["variant"].iloc[0]))
        elif part in known:
            out.append(part)
    return list(dict.fromkeys(out))
