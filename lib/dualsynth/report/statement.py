"""The statement of one experiment: the verdict, the reasons synthetic data does not help, and
:func:`experiment_report`, which assembles the JSON-ready report dict the markdown is rendered from."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import ceiling, quality, stats
from ..adaptive import load_record  # reads results/adaptive.json (study --until-decided)
from ..io import DataError, read_json
from ..patching import Manifest
from ..stats import decide, seeds_needed
from .consistency import consistency_reason, experiment_consistency
from .tables import (MARGIN, METRIC, _clean, _gain_row, _headline, _num, _part, _real_fractions, _split,
                     majority_baseline, study_tables)

UNDER, OVER, FAR = 0.5, 1.5, 2.0  # synthetic/real fraction ratios, and a distance ratio, worth naming


# --------------------------------------------------------------------------- verdict and reasons
def _verdict(dataset: str, g: dict | None, n_syn: int, n_worse: int, n_better: int, reasons: list[str],
             alpha: float, margin: float, seed_sd: float | None = None,
             n_tested: int | None = None, family: str = "variants") -> tuple[str | None, str]:
    if g is None:
        return None, f"No verdict on {dataset}: no variant with synthetic data has been run beside its base set."
    ci = (f"95 % CI [{g['gain_ci_low']:+.3f}, {g['gain_ci_high']:+.3f}] over {g['gain_n']} seeds"
          if g["gain_ci_low"] is not None else f"n={g['gain_n']} seed, no interval")
    p = (f"p = {g['p_value']:.3g}, Holm-adjusted over {n_tested or n_syn} {family} {g['p_holm']:.3g}"
         if g["p_value"] is not None and g["p_holm"] is not None else "no paired test")
    against = {"matched run": f"{g['against']} (its matched control: the base with as many updates)",
               "equal updates": f"{g['against']} (as many updates)",
               "base, more updates": f"{g['against']} (which had fewer updates and no matched control run: the gain "
                                     "mixes more updates and synthetic data; add `study --matched-controls`)",
               "base, synthetic only": f"{g['against']} (its real base set, with another number of updates: a "
                                       "synthetic-only variant holds none of the base's images, so no matched control "
                                       "run separates the updates from the data)",
               }.get(g["against_kind"], g["against"])
    gain = f"{g['variant']} vs {against}: {g['gain']:+.3f} Missing Class IoU ({ci}; paired Wilcoxon {p})"
    counts = (f"{n_better} of {n_syn} variants with synthetic data are significantly better and {n_worse} "
              f"significantly worse than their matched control or base (Holm-adjusted p < {alpha})")
    why = ("Why: " + "; ".join(reasons) + ".") if reasons else ""
    v = decide(g["gain"], g["gain_ci_low"], g["gain_ci_high"], g["gain_n"], g["significant"], margin,
               bool(g["collapsed"]))
    if v == "helps":
        return v, f"Synthetic data helps on {dataset}: {gain}; {counts}."
    if v == "hurts":
        return v, f"Synthetic data hurts on {dataset}: even the largest gain, {gain}, lies below 0; {counts}. {why}".strip()
    if v == "does_not_help":
        small = ("" if g["gain_ci_low"] <= 0 else " (it lies above 0, but the paired test is not significant after "
                 "Holm, and any gain it allows is smaller than the margin)")
        return v, (f"Synthetic data does not help on {dataset}: the largest gain is {gain}; its interval excludes "
                   f"every gain above the margin of {margin:+.3f}{small}; {counts}. {why}").strip()
    if g["collapsed"]:
        detail = (f"it rests on collapsed run(s) — {'; '.join(g['collapsed'])} — whose scores say nothing about "
                  "synthetic data")
    elif g["gain_n"] < 2:
        # the per-image test compares two trained models; it says nothing about how another seed would come out
        spread = (f" (here {seed_sd:.3f}: median standard deviation over seeds of the variants run with several)"
                  if seed_sd is not None else "")
        need = seeds_needed(math.sqrt(2) * seed_sd, margin) if seed_sd is not None else None
        detail = (f"it rests on one seed only — the paired test compares these two trained models, and a U-Net's "
                  f"seed-to-seed spread{spread} can be as large as such a gain; run {g['variant']} and "
                  f"{g['against']} with more seeds (--seeds 0-2) to decide"
                  + (f" (a gain of {margin:+.3f} needs about {need} seeds at that spread)" if need else ""))
    else:
        need = seeds_needed(g["gain_sd"], margin) if g["gain_sd"] is not None else None
        detail = (f"these {g['gain_n']} seeds could only have shown a gain larger than ±{g['gain_half_width']:.3f} "
                  f"(the half-width of the 95 % interval over seeds)"
                  + (f"; a gain of {margin:+.3f} needs about {need} seeds at this spread" if need
                     else f"; at this spread even 100 seeds would not resolve a gain of {margin:+.3f}")
                  + ("" if g["gain_ci_low"] is None or g["gain_ci_low"] <= 0
                     else f"; the interval lies above 0 but the paired test is not significant after Holm"))
    return v, f"Inconclusive on {dataset}: the largest gain is {gain}; {detail}; {counts}. {why}".strip()


def _reasons(similarity: dict | None, class_gain: dict[str, float], rare: Sequence[str],
             consistency: dict | None = None) -> list[str]:
    out = []
    if similarity:
        sf, rf = similarity["class_fractions"]["synthetic"], similarity["class_fractions"]["real"]
        under = [f"{c} ({sf[c]:.1%} of synthetic pixels vs {rf[c]:.1%} real)" for c in rf if sf[c] < UNDER * rf[c]]
        over = [f"{c} ({sf[c]:.1%} vs {rf[c]:.1%})" for c in rf if sf[c] > OVER * rf[c] and rf[c] > 0]
        if under:
            out.append("the generator under-reproduces " + ", ".join(under))
        if over:
            out.append("over-reproduces " + ", ".join(over))
        far = []
        for key, m in similarity["measures"].items():
            s, r = m["synthetic_vs_real"], m["real_vs_real"]
            if r is not None and s is not None and (s > FAR * r if r > 0 else s > abs(r) + 1e-9):
                far.append(f"{key} {s:.3g} vs real-vs-real {r:.3g}")
        if far:
            out.append("synthetic is farther from real than real from real: " + ", ".join(far))
    if (why := consistency_reason(consistency)) is not None:
        out.append(why)
    lost = sorted((v, c) for c, v in class_gain.items() if v is not None and v < 0)
    if lost:
        v, c = lost[0]
        flag = " (rare)" if c in rare else ""
        out.append(f"per class, {c}{flag} loses most when synthetic data is added ({v:+.3f} Missing Class IoU on "
                   f"average over the variants with synthetic data)")
    return out


def reference_lines(experiment_dir: str | os.PathLike, summary=None) -> dict[str, float]:
    """``{"ceiling": …, "majority baseline": …}`` (those that exist) for 07's Missing Class IoU figure."""
    exp = Path(experiment_dir)
    out: dict[str, float] = {}
    found = ceiling.lookup(exp)
    if found:
        out["ceiling"] = float(found[METRIC])
    manifest = Manifest.load(exp / "patches")
    base = majority_baseline(manifest, _real_fractions(manifest, quality._generator_tier(exp)))
    if base:
        out["majority baseline"] = float(base[METRIC])
    return out


def _ceiling(exp: Path, runs, summary) -> dict[str, Any] | None:
    """The dataset's ceiling (:mod:`dualsynth.ceiling`) and each base variant's mean score as a fraction of it."""
    recipe = None
    for folder in sorted((exp / "unet").glob("*_0/seed*")):  # the recipe of a base run of this study
        try:
            recipe = read_json(folder / "unet_config.json")
            break
        except (DataError, OSError):
            continue
    found = ceiling.lookup(exp, recipe)
    if not found:
        return None
    top = found[METRIC]
    bases = summary[summary.group == "base"] if "group" in summary else summary.iloc[0:0]
    return {"value": _num(top), "updates": found["updates"], "seeds": found["seeds"],
            "same_recipe": found.get("same_recipe"), "recipe_differs": found.get("recipe_differs", []),
            "encoder": found["recipe"].get("encoder"),
            "file": os.path.relpath(ceiling.ceiling_file(found["dataset"]), ceiling.project_root()),
            "per_class": found.get("per_class_iou_dataset"),
            "bases": {str(r.variant): {"score": _num(r[METRIC]), "share": _num(r[METRIC] / top) if top else None}
                      for _, r in bases.iterrows()}}


def _budget_note(rows) -> str | None:
    """How the variants with synthetic data were matched in updates (one sentence), or None without any."""
    kinds = {k: [r["variant"] for r in rows if r.get("control_kind") == k]
             for k in ("equal updates", "matched run", "missing", "synthetic only", "unknown")}
    parts = []
    if kinds["equal updates"]:
        updates = sorted({int(r["updates"]) for r in rows if r.get("control_kind") == "equal updates"})
        parts.append(f"{len(kinds['equal updates'])} variant(s) with synthetic data had as many updates as their base "
                     f"({', '.join(map(str, updates))}): the base itself is their matched control (as always under "
                     "budget fixed)")
    if kinds["matched run"]:
        parts.append(f"{len(kinds['matched run'])} variant(s) had another number of updates than their base and are "
                     "compared with their matched control run <base>@<updates> (study --matched-controls)")
    if kinds["missing"]:
        parts.append(f"{len(kinds['missing'])} variant(s) had another number of updates than their base and no "
                     "matched control run "
                     f"({', '.join(kinds['missing'][:5])}): their gain over the base mixes more updates and synthetic "
                     "data; run `python -m dualsynth.batch study … --matched-controls` with the same settings")
    if kinds["synthetic only"]:
        parts.append(f"{len(kinds['synthetic only'])} synthetic-only variant(s) had another number of updates than "
                     f"their real base ({', '.join(kinds['synthetic only'][:5])}) and are compared with it as they "
                     "are: they hold none of the base's images, so there is no matched control run to split their "
                     "difference at (`--matched-controls` adds none for them)")
    if kinds["unknown"]:
        parts.append(f"{len(kinds['unknown'])} variant(s) have no recorded update count (compared with their base)")
    return ("; ".join(parts) + ".") if parts else None


# --------------------------------------------------------------------------- the report of one experiment
def experiment_report(experiment_dir: str | os.PathLike, alpha: float = 0.05, rare_fraction: float = 0.10,
                      similarity: dict | None = None, compute_similarity: bool = False,
                      similarity_dirs: Sequence[str | os.PathLike] = (), margin: float = MARGIN) -> dict[str, Any]:
    """The results statement of one experiment as a JSON-ready dict (see the module docstring).

    ``similarity``: the numbers to use; otherwise :func:`dualsynth.quality.load_similarity` (also looking in
    ``similarity_dirs``), and with ``compute_similarity`` they are computed when none are stored.  ``margin``: the
    smallest gain worth having; "does not help" needs the interval to exclude every gain above it.
    """
    exp = Path(experiment_dir)
    manifest = Manifest.load(exp / "patches")
    classes = list(manifest.class_names)
    dataset = manifest.data["data"].get("name", exp.name)
    tier = quality._generator_tier(exp)
    real_frac = _real_fractions(manifest, tier)
    if similarity is None:
        similarity = quality.load_similarity(exp, similarity_dirs)
    if similarity is None and compute_similarity and (exp / "synthetic" / "pool.json").is_file():
        similarity = quality.experiment_similarity(exp)
    runs, summary, ranked, baseline = study_tables(exp, alpha)
    out: dict[str, Any] = {"experiment": exp.name, "path": str(exp), "dataset": dataset, "classes": classes,
                           "real_fractions": real_frac, "generator_tier": tier,
                           "rare_classes": [c for c in classes if real_frac[c] < rare_fraction],
                           "alpha": alpha, "margin": margin, "similarity": similarity,
                           "consistency": experiment_consistency(exp), "majority_baseline": baseline,
                           "adaptive": load_record(exp), "comparisons": [], "headline": None}
    if runs.empty:
        out.update(runs=0, verdict=None, statement=f"No verdict on {dataset}: no complete U-Net run yet.")
        return _clean(out)
    out["runs"] = int(len(runs))
    out["ceiling"] = _ceiling(exp, runs, summary)
    out["seeds_per_variant"] = {str(v): sorted(int(s) for s in g.seed) for v, g in runs.groupby("variant")}
    out["collapsed_runs"] = [{"run": r.variant, "seed": int(r.seed), "reason": r.collapse_reason}
                             for r in runs[runs.collapsed].itertuples()]
    sds = summary[f"{METRIC}_std"].dropna()  # seed-to-seed spread of one variant, where it has ≥ 2 seeds
    out["seed_sd_median"] = _num(sds.median()) if len(sds) else None
    out["seed_sd_variants"] = int(len(sds))
    variants_only = ranked[ranked.group != "control"]
    best = (variants_only if len(variants_only) else ranked).iloc[0]
    out["best"] = {"variant": best.variant, METRIC: _num(best[METRIC]), "seeds": int(best.seeds),
                   "ci_low": _num(best.ci_low), "ci_high": _num(best.ci_high)}
    rows = [r for r in ranked.to_dict("records") if r["group"] in ("mixed", "synthetic", "pretrain")]
    heads = {r["variant"]: _headline(r) for r in rows}
    with_syn = [r for r in rows if heads[r["variant"]]["gain"] is not None and heads[r["variant"]]["n"] > 0]
    n_better = sum(heads[r["variant"]]["significant"] and heads[r["variant"]]["gain"] > 0 for r in with_syn)
    n_worse = sum(heads[r["variant"]]["significant"] and heads[r["variant"]]["gain"] < 0 for r in with_syn)
    g = None
    if with_syn:
        g = _gain_row(runs, ranked, max(with_syn, key=lambda r: heads[r["variant"]]["gain"])["variant"], classes)
    class_gain = {}  # per class, the seed-matched gain against the matched control (or base), averaged over variants
    for c in (c for c in classes if f"mciou_{c}" in runs):
        d = np.array([stats.seed_gain(runs, r["variant"], heads[r["variant"]]["against"], f"mciou_{c}")["mean"]
                      for r in with_syn])
        class_gain[c] = _num(np.nanmean(d)) if np.isfinite(d).any() else None
    splits = [_split(runs, r) for r in rows if r.get("control_kind") == "matched run"]
    out.update(largest_gain=g, variants_with_synthetic=len(with_syn), significantly_better=int(n_better),
               significantly_worse=int(n_worse),
               mean_gain_with_synthetic=_num(np.mean([heads[r["variant"]]["gain"] for r in with_syn]))
               if with_syn else None, mean_class_gain_with_synthetic=class_gain, splits=splits,
               budget_note=_budget_note(rows))
    family_size = stats.holm_family_size(ranked)
    family = "paired tests" if splits else "variants"
    verdict, text = _verdict(dataset, g, len(with_syn), n_worse, n_better,
                             _reasons(similarity, class_gain, out["rare_classes"], out["consistency"]), alpha, margin,
                             out["seed_sd_median"], family_size or None, family)
    out.update(verdict=verdict, statement=text)
    adaptive = {c["variant"]: c for c in (out["adaptive"] or {}).get("comparisons", [])}
    out["comparisons"] = [_comparison(runs, r, heads[r["variant"]], margin, alpha, adaptive.get(r["variant"]))
                          for r in with_syn]
    out["headline"] = next((c for c in out["comparisons"] if g and c["variant"] == g["variant"]), None)
    return _clean(out)


# --------------------------------------------------------------------------- one verdict per comparison
def _comparison(runs, r: dict, head: dict, margin: float, alpha: float, adaptive: dict | None) -> dict[str, Any]:
    """One variant with synthetic data against its matched control (or base): the seeds the gain rests on, the gain
    with its 95 % interval, the verdict (:func:`dualsynth.stats.decide`, Holm-significance from the ranked table)
    and what decided it (``decided_by``), with its adaptive-study entry when there is one."""
    variant, against = r["variant"], head["against"]
    g = _part(runs, variant, against)
    used = runs[runs.variant.isin([variant, against]) & runs.seed.isin(g["seeds"])]
    collapsed = bool(used["collapsed"].astype(bool).any()) if "collapsed" in used else False
    verdict = decide(g["gain"], g["ci_low"], g["ci_high"], g["n"], head["significant"], margin, collapsed)
    c = {"variant": variant, "against": against, "kind": head["kind"], "seeds": g["seeds"], "n": g["n"],
         "gain": g["gain"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "half_width": g["half_width"],
         "p_holm": head["p_holm"], "significant": head["significant"], "collapsed": collapsed, "verdict": verdict,
         "adaptive": ({k: adaptive.get(k) for k in ("seeds", "decided", "stopped", "futile", "why")}
                      if adaptive else None)}
    c["decided_by"] = _decided_by(c, margin, alpha)
    return c


def _decided_by(c: dict, margin: float, alpha: float) -> str:
    """What settled a comparison's verdict, in a few words (and where its adaptive study stopped)."""
    v, p = c["verdict"], c["p_holm"]
    ptxt = f"Holm p {p:.3g}" if p is not None else "no paired test"
    if v == "helps":
        out = f"interval above 0, {ptxt} < {alpha}"
    elif v == "hurts":
        out = "interval below 0"
    elif v == "does_not_help":
        out = f"interval below the margin {margin:+.3f}"
    elif c["collapsed"]:
        out = "rests on a collapsed run"
    elif c["n"] < 2:
        out = "one seed, no interval"
    elif c["ci_low"] > 0:
        out = f"interval above 0 but {ptxt} ≥ {alpha}"
    else:
        out = f"interval spans 0 and the margin (±{c['half_width']:.3f} detectable)"
    ad = c.get("adaptive")
    if ad:
        n = len(ad.get("seeds") or [])
        out += (f"; adaptive: decided at {n} seeds" if ad.get("decided") else
                f"; adaptive: stopped for futility at {n} seeds" if ad.get("futile") else
                f"; adaptive: stopped undecided at {n} seeds" if ad.get("stopped") else
                f"; adaptive: still adding seeds ({n} so far)")
    return out

