"""The numbers of the report: runs, summary and ranked table of an experiment, the comparison of one variant with
its matched control (or base), the split of its gain, and one run set against another experiment's."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import quality, results, stats
from ..io import DataError, read_json, read_mask
from ..patching import Manifest
from ..stats import seed_gain
from ..variants import VariantError, parse_run

METRIC = "missing_class_iou"
MARGIN = 0.02  # default margin: "does not help" = the 95 % interval excludes every gain above it


def _num(x) -> float | None:
    """A JSON-safe float (None for missing / NaN)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return _num(o)
    return o


def _real_fractions(manifest, tier: str) -> dict[str, float]:
    fr = np.array([manifest.data["patches"][e["id"]]["fractions_hq"] for e in manifest.entries(tier, "train")])
    return dict(zip(manifest.class_names, fr.mean(0).tolist()))


# --------------------------------------------------------------------------- the tables 07 and the report share
def majority_baseline(manifest, real_fractions: dict[str, float]) -> dict[str, Any] | None:
    """Missing Class IoU of predicting the most frequent real training class everywhere, on the experiment's test
    masks (:func:`dualsynth.stats.majority_baseline`); None without test images."""
    pairs = manifest.files("test", "test")
    if not pairs:
        return None
    masks = np.stack([read_mask(m, manifest.palette, "index") for _, m in pairs])
    names = list(manifest.class_names)
    cls = max(names, key=lambda c: real_fractions[c])
    return {"class": cls, METRIC: stats.majority_baseline(masks, names.index(cls), len(names)),
            "test_images": len(pairs)}


def study_tables(experiment_dir: str | os.PathLike, alpha: float = 0.05, warn: bool = False):
    """``(runs, summary, ranked, baseline)`` of an experiment: the complete runs (collapsed ones flagged, with a
    ``UserWarning`` naming them if ``warn``), the per-variant summary over seeds, the ranked table with gains,
    matched controls and paired tests (:func:`dualsynth.stats.ranked_table`), and the majority-class baseline.
    ``summary`` and ``ranked`` are None when there is no complete run."""
    exp = Path(experiment_dir)
    manifest = Manifest.load(exp / "patches")
    baseline = majority_baseline(manifest, _real_fractions(manifest, quality._generator_tier(exp)))
    runs = results.collect_metrics(exp)
    if runs.empty:
        return runs, None, None, baseline
    runs = stats.flag_collapsed(runs, baseline[METRIC] if baseline else None)
    bad = runs[runs.collapsed]
    if warn and len(bad):
        warnings.warn(f"{len(bad)} run(s) collapsed (a verdict resting on one is inconclusive): "
                      + "; ".join(f"{r.variant} seed {r.seed}: {r.collapse_reason}" for r in bad.itertuples()),
                      stacklevel=2)
    cols = [c for c in list(results.METRIC_COLUMNS) + [f"mciou_{n}" for n in manifest.class_names] if c in runs]
    summary = stats.summarise(runs, cols)
    return runs, summary, stats.ranked_table(summary, runs, exp, METRIC, alpha), baseline


# --------------------------------------------------------------------------- the comparison of one variant
def _true(x) -> bool:
    return isinstance(x, (bool, np.bool_)) and bool(x)


def _headline(r) -> dict[str, Any]:
    """What a variant with synthetic data is judged against: its matched control when it has one, else its base."""
    kind = r.get("control_kind")
    if kind in ("equal updates", "matched run") and _num(r.get("gain_synthetic")) is not None:
        return {"against": r["control"], "kind": kind, "gain": _num(r["gain_synthetic"]),
                "n": int(_num(r.get("gain_synthetic_n")) or 0), "p": _num(r.get("gain_synthetic_p")),
                "p_holm": _num(r.get("gain_synthetic_p_holm")), "significant": _true(r.get("gain_synthetic_significant"))}
    words = {"missing": "base, more updates", "unknown": "base, updates unknown",
             "synthetic only": "base, synthetic only"}
    return {"against": r["base"], "kind": words.get(kind, "base"), "gain": _num(r.get("gain_vs_base")),
            "n": int(_num(r.get("gain_n")) or 0),
        "p": _num(r.get("paired_p")),
        "p_holm": _num(r.get("paired_p_holm")), "significant": _true(r.get("significant"))}


def _part(runs, a: str, b: str, metric: str = METRIC) -> dict[str, Any]:
    g = seed_gain(runs, a, b, metric)
    return {"gain": _num(g["mean"]), "n": int(g["n"]), "ci_low": _num(g["ci_low"]), "ci_high": _num(g["ci_high"]),
            "sd": _num(g["std"]), "half_width": _num(g["half_width"]), "seeds": g["seeds"]}


def _gain_row(runs, ranked, variant: str, classes: Sequence[str]) -> dict[str, Any]:
    """The variant against its matched control (or base) on the seeds both have: scores, gain with its interval,
    paired p, per class, the collapsed runs it rests on, and the split of its gain over the base."""
    r = ranked[ranked.variant == variant].iloc[0].to_dict()
    h = _headline(r)
    against, base = h["against"], r["base"]
    g = _part(runs, variant, against)

    def score(v, col):
        return _num(runs.loc[(runs.variant == v) & runs.seed.isin(g["seeds"]), col].mean())

    per_class = {}
    for c in (c for c in classes if f"mciou_{c}" in runs):
        gc = _part(runs, variant, against, f"mciou_{c}")
        per_class[c] = {"against": score(against, f"mciou_{c}"), "variant": score(variant, f"mciou_{c}"),
                        "gain": gc["gain"], "ci_low": gc["ci_low"], "ci_high": gc["ci_high"]}
    used = runs[runs.variant.isin([variant, against]) & runs.seed.isin(g["seeds"])]
    collapsed = [f"{x.variant} seed {x.seed} ({x.collapse_reason})" for x in used.itertuples()
                 if getattr(x, "collapsed", False)]
    out = {"variant": variant, "base": base, "against": against, "against_kind": h["kind"],
           METRIC: score(variant, METRIC), "against_score": score(against, METRIC), "seeds": g["seeds"],
           "gain": g["gain"], "gain_n": g["n"], "gain_ci_low": g["ci_low"], "gain_ci_high": g["ci_high"],
           "gain_sd": g["sd"], "gain_half_width": g["half_width"], "p_value": h["p"], "p_holm": h["p_holm"],
           "significant": h["significant"], "per_class": per_class, "collapsed": collapsed, "split": None}
    if h["kind"] == "matched run":
        out["split"] = _split(runs, r)
    return out


def _split(runs, r) -> dict[str, Any]:
    """The gain of a variant over its base split at its matched control run, each part with interval and p."""
    base, control, variant = r["base"], r["control"], r["variant"]
    have_base = bool((runs.variant == base).any())
    return {"variant": variant, "control": control, "base": base, "updates": _num(r.get("updates")),
            "total": {**_part(runs, variant, base), "p": _num(r.get("paired_p"))} if have_base else None,
            "more_updates": ({**_part(runs, control, base), "p": _num(r.get("gain_updates_p")),
                              "p_holm": _num(r.get("gain_updates_p_holm"))} if have_base else None),
            "synthetic_data": {**_part(runs, variant, control), "p": _num(r.get("gain_synthetic_p")),
                               "p_holm": _num(r.get("gain_synthetic_p_holm"))}}



def compare_runs(exp_a: str | os.PathLike, variant_a: str, exp_b: str | os.PathLike, variant_b: str,
                 metric: str = METRIC) -> dict[str, Any]:
    """``variant_a`` of experiment ``exp_a`` against ``variant_b`` of ``exp_b`` (e.g. the same variant trained with
    other settings in a forked experiment): the seed-matched gain with its 95 % interval and the paired Wilcoxon
    test over the test images (each averaged over the common seeds).  Both must be scored on the same test set."""
    def scores(exp, variant):
        runs = results.collect_metrics(exp)
        return runs.loc[runs.variant == variant].groupby("seed")[metric].mean()

    a, b = scores(exp_a, variant_a), scores(exp_b, variant_b)
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise DataError(f"no seed with complete runs of both {exp_a}/{variant_a} (seeds {sorted(a.index)}) and "
                        f"{exp_b}/{variant_b} (seeds {sorted(b.index)})")
    try:  # a control run (SHQ_0@320) is scored on its base's test files
        data = [parse_run(v).variant.name for v in (variant_a, variant_b)]
    except VariantError as e:
        raise DataError(str(e)) from None
    files = [Path(e) / "variants" / f"{v}.json" for e, v in zip((exp_a, exp_b), data)]
    tests = [[t.get("id") for t in read_json(f)["test"]] for f in files if f.is_file()]
    pa, pb = stats._per_image(exp_a, variant_a, seeds), stats._per_image(exp_b, variant_b, seeds)
    if (len(tests) == 2 and tests[0] != tests[1]) or any(len(pa[s]) != len(pb[s]) for s in seeds):
        raise DataError(f"{exp_a}/{variant_a} and {exp_b}/{variant_b} are scored on different test sets "
                        f"({len(pa[seeds[0]])} vs {len(pb[seeds[0]])} images): their scores cannot be paired")
    g = stats.mean_ci([float(a[s] - b[s]) for s in seeds])
    t = stats.paired_test(np.mean([pa[s] for s in seeds], axis=0), np.mean([pb[s] for s in seeds], axis=0))
    return {"a": f"{exp_a}:{variant_a}", "b": f"{exp_b}:{variant_b}", "seeds": [int(s) for s in seeds],
            "a_mean": _num(a[seeds].mean()), "b_mean": _num(b[seeds].mean()), "gain": _num(g["mean"]),
            "gain_ci_low": _num(g["ci_low"]), "gain_ci_high": _num(g["ci_high"]),
            "per_seed": [_num(a[s] - b[s]) for s in seeds], "p_value": _num(t["p_value"]), "test_images": t["n"]}

