"""Seeds, confidence intervals and paired comparisons between variants (NumPy/SciPy, no TensorFlow)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["mean_ci", "summarise", "paired_test", "holm", "seed_gain", "significance_marks", "ranked_table"]


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
    """The real base set a variant is compared with: ``<tier>_0`` (``BLQ_0``/``BMQ_0`` for SyntLQ/SyntMQ)."""
    from .variants import parse_variant

    v = parse_variant(variant)
    return None if v.group == "base" else f"{v.tier}_0"


def _per_image(experiment_path, variant: str, seeds) -> dict[int, list[float]]:
    from .variants import load_run_metrics

    out = {}
    for s in seeds:
        m = load_run_metrics(experiment_path, variant, int(s))
        if m is not None:
            out[int(s)] = [r["missing_class_iou"] for r in m["per_image"]]
    return out


def ranked_table(summary, runs, experiment_path, metric: str = "missing_class_iou", alpha: float = 0.05):
    """Variants ranked by mean ``metric`` with CI, the gain over the base set and a paired Wilcoxon test.

    The gain and its interval (``gain_n``, ``gain_ci_low/high``) are over the seeds the variant and its base both
    have (:func:`seed_gain`); without a common seed the gain is the difference of the means.

    The paired test pairs test images, each image's score averaged over the seeds both variants have.  Its
    p-value is ``paired_p``; ``paired_p_holm`` is Holm-adjusted over all the variants tested here, and
    ``significant`` means ``paired_p_holm < alpha`` (the family-wise error stays at ``alpha`` however many
    variants are compared).
    """
    import pandas as pd

    rows = []
    for _, r in summary.iterrows():
        name = r["variant"]
        base = base_of(name)
        row = {"variant": name, "group": r["group"], "real": r.get("num_real_train"),
               "synthetic": r.get("num_synthetic_train"), "seeds": int(r[f"{metric}_n"]),
               metric: r[metric], "ci_low": r[f"{metric}_ci_low"], "ci_high": r[f"{metric}_ci_high"],
               "miou": r.get("miou"), "accuracy": r.get("accuracy"), "base": base}
        if base is not None and base in set(summary["variant"]):
            row["gain_vs_base"] = r[metric] - float(summary.loc[summary.variant == base, metric].iloc[0])
            seeds = sorted(set(runs.loc[runs.variant == name, "seed"]) & set(runs.loc[runs.variant == base, "seed"]))
            a, b = _per_image(experiment_path, name, seeds), _per_image(experiment_path, base, seeds)
            common = [s for s in seeds if s in a and s in b and len(a[s]) == len(b[s])]
            if common:
                # pairs are test images: each image's score averaged over the common seeds (seeds are not
                # independent samples of the test set, so they are not pooled as extra pairs)
                t = paired_test(np.mean([a[s] for s in common], axis=0), np.mean([b[s] for s in common], axis=0))
                row["paired_p"] = t["p_value"]
            g = seed_gain(runs, name, base, metric)
            row.update({"gain_n": g["n"], "gain_ci_low": g["ci_low"], "gain_ci_high": g["ci_high"]})
            if g["n"]:  # on the seeds both have, like the paired test (equal to the difference of means otherwise)
                row["gain_vs_base"] = g["mean"]
        rows.append(row)
    df = pd.DataFrame(rows)
    if "paired_p" in df:
        df["paired_p_holm"] = holm(df["paired_p"].to_numpy(dtype=float))
        df["significant"] = (df["paired_p_holm"] < alpha).where(df["paired_p"].notna())
    return df.sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)


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
