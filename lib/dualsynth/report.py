"""The results statement of one or more experiments: does synthetic data help, by how much, and why (not).

For an experiment folder (``outputs/<exp>``) :func:`experiment_report` collects the complete U-Net runs (any subset
of variants and seeds), ranks them (:func:`dualsynth.stats.ranked_table`) and states:

* the best variant overall and the variant with synthetic data that gains most over its base set, with the gain in
  Missing Class IoU, its 95 % confidence interval over the seeds both have (or "n=1, no interval") and the p-value
  of the paired Wilcoxon test over the test images, raw and Holm-adjusted over all the variants compared (the
  variant with the largest gain is picked *after* looking at all of them, so its raw p-value alone would be too
  optimistic);
* the per-class gains of that variant and, averaged over all variants with synthetic data, per class — rare
  classes (under ``rare_fraction`` of the real training pixels) flagged;
* the similarity numbers of the synthetic pool (:mod:`dualsynth.quality`) beside their real-vs-real baselines;
* a plain verdict: synthetic data helps when the largest gain is positive, significant (Holm-adjusted
  p < ``alpha``) and its interval over at least 2 seeds lies above 0; *not established* (``verdict`` None) when such
  a gain rests on one seed; otherwise it does not help, with the reasons the numbers give (classes the generator
  under- or over-reproduces, measures far above their baseline, classes that lose most).

``python -m dualsynth.report outputs/quick outputs/quick-nasa_super`` writes ``results/report.md`` and
``report.json`` into each experiment (or into ``--out-dir/<exp>/``) and prints a combined markdown table.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["experiment_report", "compare_runs", "report_markdown", "combined_table", "write_report", "main"]

METRIC = "missing_class_iou"
UNDER, OVER, FAR = 0.5, 1.5, 2.0  # synthetic/real fraction ratios, and a distance ratio, worth naming


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


def _gain_row(runs, ranked, variant: str, classes: Sequence[str]) -> dict[str, Any]:
    """The variant against its base on the seeds both have: scores, gain with its interval, paired p, per class."""
    from .stats import seed_gain

    r = ranked.set_index("variant").loc[variant]
    base = r["base"]
    g = seed_gain(runs, variant, base, METRIC)

    def score(v, col):
        return _num(runs.loc[(runs.variant == v) & runs.seed.isin(g["seeds"]), col].mean())

    per_class = {}
    for c in (c for c in classes if f"mciou_{c}" in runs):
        gc = seed_gain(runs, variant, base, f"mciou_{c}")
        per_class[c] = {"base": score(base, f"mciou_{c}"), "variant": score(variant, f"mciou_{c}"),
                        "gain": _num(gc["mean"]), "ci_low": _num(gc["ci_low"]), "ci_high": _num(gc["ci_high"])}
    return {"variant": variant, "base": base, METRIC: score(variant, METRIC), "base_score": score(base, METRIC),
            "seeds": g["seeds"], "gain": _num(g["mean"]), "gain_n": int(g["n"]), "gain_ci_low": _num(g["ci_low"]),
            "gain_ci_high": _num(g["ci_high"]), "p_value": _num(r.get("paired_p")),
            "p_holm": _num(r.get("paired_p_holm")),
            "significant": isinstance(r.get("significant"), (bool, np.bool_)) and bool(r.get("significant")),
            "per_class": per_class}


def _verdict(dataset: str, g: dict | None, n_syn: int, n_worse: int, n_better: int, reasons: list[str],
             alpha: float, seed_sd: float | None = None, n_tested: int | None = None) -> tuple[bool | None, str]:
    if g is None:
        return None, f"No verdict on {dataset}: no variant with synthetic data has been run beside its base set."
    ci = (f"95 % CI [{g['gain_ci_low']:+.3f}, {g['gain_ci_high']:+.3f}] over {g['gain_n']} seeds"
          if g["gain_ci_low"] is not None else f"n={g['gain_n']} seed, no interval")
    # the Holm family is every variant tested against its base (BMQ_aug too), not only those with synthetic data
    p = (f"p = {g['p_value']:.3g}, Holm-adjusted over {n_tested or n_syn} variants {g['p_holm']:.3g}"
         if g["p_value"] is not None else "no paired test")
    gain = f"{g['variant']} vs {g['base']}: {g['gain']:+.3f} Missing Class IoU ({ci}; paired Wilcoxon {p})"
    candidate = bool(g["gain"] is not None and g["gain"] > 0 and g["significant"])
    counts = (f"{n_better} of {n_syn} variants with synthetic data are significantly better and {n_worse} "
              f"significantly worse than their base (Holm-adjusted p < {alpha})")
    if candidate and g["gain_n"] < 2:
        # the per-image test compares two trained models; it says nothing about how another seed would come out
        spread = (f" (here {seed_sd:.3f}: median standard deviation over seeds of the variants run with several)"
                  if seed_sd is not None else "")
        return None, (f"Not established on {dataset}: {gain}, but on one seed only — the paired test compares "
                      f"these two trained models, and a U-Net's seed-to-seed spread{spread} can be as large as such "
                      "a gain; "
                      f"run {g['variant']} and {g['base']} with more seeds (--seeds 0-2) to decide; {counts}.")
    if candidate and g["gain_ci_low"] is not None and g["gain_ci_low"] > 0:
        return True, f"Synthetic data helps on {dataset}: {gain}; {counts}."
    why = ("Why: " + "; ".join(reasons) + ".") if reasons else ""
    return False, f"Synthetic data does not help on {dataset}: the largest gain is {gain}; {counts}. {why}".strip()


def _reasons(similarity: dict | None, class_gain: dict[str, float], rare: Sequence[str]) -> list[str]:
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
    lost = sorted((v, c) for c, v in class_gain.items() if v is not None and v < 0)
    if lost:
        v, c = lost[0]
        flag = " (rare)" if c in rare else ""
        out.append(f"per class, {c}{flag} loses most when synthetic data is added ({v:+.3f} Missing Class IoU on "
                   f"average over the variants with synthetic data)")
    return out


def experiment_report(experiment_dir: str | os.PathLike, alpha: float = 0.05, rare_fraction: float = 0.10,
                      similarity: dict | None = None, compute_similarity: bool = False,
                      similarity_dirs: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """The results statement of one experiment as a JSON-ready dict (see the module docstring).

    ``similarity``: the numbers to use; otherwise :func:`dualsynth.quality.load_similarity` (also looking in
    ``similarity_dirs``), and with ``compute_similarity`` they are computed when none are stored.
    """
    from . import batch, quality, stats
    from .patching import Manifest

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
    out: dict[str, Any] = {"experiment": exp.name, "path": str(exp), "dataset": dataset, "classes": classes,
                           "real_fractions": real_frac, "generator_tier": tier,
                           "rare_classes": [c for c in classes if real_frac[c] < rare_fraction],
                           "alpha": alpha, "similarity": similarity}
    runs = batch.collect_metrics(exp)
    if runs.empty:
        out.update(runs=0, verdict=None, statement=f"No verdict on {dataset}: no complete U-Net run yet.")
        return _clean(out)
    cols = [c for c in list(batch.METRIC_COLUMNS) + [f"mciou_{n}" for n in classes] if c in runs]
    summary = stats.summarise(runs, cols)
    ranked = stats.ranked_table(summary, runs, exp, METRIC, alpha)
    out["runs"] = int(len(runs))
    out["seeds_per_variant"] = {str(v): sorted(int(s) for s in g.seed) for v, g in runs.groupby("variant")}
    sds = summary[f"{METRIC}_std"].dropna()  # seed-to-seed spread of one variant, where it has ≥ 2 seeds
    out["seed_sd_median"] = _num(sds.median()) if len(sds) else None
    out["seed_sd_variants"] = int(len(sds))
    best = ranked.iloc[0]
    out["best"] = {"variant": best.variant, METRIC: _num(best[METRIC]), "seeds": int(best.seeds),
                   "ci_low": _num(best.ci_low), "ci_high": _num(best.ci_high)}
    with_syn = ranked[ranked.group.isin(["mixed", "synthetic"]) & ranked.get("gain_vs_base").notna()
                      & ranked.get("gain_n").fillna(0).gt(0)] if "gain_n" in ranked else ranked.iloc[:0]
    if "gain_vs_base" not in with_syn:  # only base variants ran: nothing to compare
        with_syn = with_syn.assign(gain_vs_base=np.nan, base=None)
    sig = with_syn.get("significant", None)
    sig = (sig.fillna(False).to_numpy(dtype=bool) if sig is not None else np.zeros(len(with_syn), dtype=bool))
    gains = with_syn.gain_vs_base.to_numpy(dtype=float)
    n_better = int((sig & (gains > 0)).sum())
    n_worse = int((sig & (gains < 0)).sum())
    g = None
    if len(with_syn):
        g = _gain_row(runs, ranked, with_syn.sort_values("gain_vs_base", ascending=False).variant.iloc[0], classes)
    class_gain = {}  # per class, the seed-matched gain averaged over all variants with synthetic data
    for c in (c for c in classes if f"mciou_{c}" in runs):
        d = np.array([stats.seed_gain(runs, v, b, f"mciou_{c}")["mean"] for v, b in zip(with_syn.variant,
                                                                                          with_syn.base)])
        class_gain[c] = _num(np.nanmean(d)) if np.isfinite(d).any() else None
    out.update(largest_gain=g, variants_with_synthetic=int(len(with_syn)), significantly_better=n_better,
               significantly_worse=n_worse, mean_gain_with_synthetic=_num(with_syn.gain_vs_base.mean())
               if len(with_syn) else None, mean_class_gain_with_synthetic=class_gain)
    n_tested = int(ranked["paired_p"].notna().sum()) if "paired_p" in ranked else None
    verdict, text = _verdict(dataset, g, len(with_syn), n_worse, n_better,
                             _reasons(similarity, class_gain, out["rare_classes"]), alpha,
                             out["seed_sd_median"], n_tested)
    out.update(verdict=verdict, statement=text)
    return _clean(out)


def compare_runs(exp_a: str | os.PathLike, variant_a: str, exp_b: str | os.PathLike, variant_b: str,
                 metric: str = METRIC) -> dict[str, Any]:
    """``variant_a`` of experiment ``exp_a`` against ``variant_b`` of ``exp_b`` (e.g. the same variant trained with
    other settings in a forked experiment): the seed-matched gain with its 95 % interval and the paired Wilcoxon
    test over the test images (each averaged over the common seeds).  Both must be scored on the same test set."""
    from . import batch, stats
    from .io import DataError, read_json

    def scores(exp, variant):
        runs = batch.collect_metrics(exp)
        return runs.loc[runs.variant == variant].groupby("seed")[metric].mean()

    a, b = scores(exp_a, variant_a), scores(exp_b, variant_b)
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise DataError(f"no seed with complete runs of both {exp_a}/{variant_a} (seeds {sorted(a.index)}) and "
                        f"{exp_b}/{variant_b} (seeds {sorted(b.index)})")
    files = [Path(e) / "variants" / f"{v}.json" for e, v in ((exp_a, variant_a), (exp_b, variant_b))]
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


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def report_markdown(rep: dict[str, Any]) -> str:
    """The results section of one experiment in markdown."""
    lines = [f"## {rep['dataset']} (`{rep['experiment']}`)", "", rep["statement"], ""]
    if rep.get("runs"):
        seeds = rep["seeds_per_variant"]
        ns = sorted({len(v) for v in seeds.values()})
        lines += [f"{rep['runs']} complete runs of {len(seeds)} variants; seeds per variant: "
                  + ", ".join(f"{n} ({sum(len(v) == n for v in seeds.values())} variants)" for n in ns) + "."
                  + (f" Seed-to-seed standard deviation {rep['seed_sd_median']:.3f} (median over "
                     f"{rep['seed_sd_variants']} variant(s) with several seeds)." if rep.get("seed_sd_median") is not None
                     else ""), ""]
        b = rep["best"]
        ci = f" [{_f(b['ci_low'])}, {_f(b['ci_high'])}]" if b["ci_low"] is not None else " (no interval)"
        lines += [f"Best variant overall: **{b['variant']}**, Missing Class IoU {_f(b[METRIC])}{ci}, "
                  f"n={b['seeds']}.", ""]
        g = rep.get("largest_gain")
        if g:
            ci = (f"[{_f(g['gain_ci_low'], '{:+.3f}')}, {_f(g['gain_ci_high'], '{:+.3f}')}]"
                  if g["gain_ci_low"] is not None else "n=1, no interval")
            lines += [f"Largest gain from synthetic data: **{g['variant']}** {_f(g[METRIC])} vs {g['base']} "
                      f"{_f(g['base_score'])} on seeds {g['seeds']}: {_f(g['gain'], '{:+.3f}')} ({ci}; Wilcoxon p = "
                      f"{_f(g['p_value'], '{:.3g}')}, Holm-adjusted {_f(g.get('p_holm'), '{:.3g}')}). Mean gain over all {rep['variants_with_synthetic']} variants "
                      f"with synthetic data: {_f(rep['mean_gain_with_synthetic'], '{:+.3f}')}.", "",
                      f"| class | real fraction (HQ) | {g['base']} | {g['variant']} | gain [95 % CI] | "
                      "mean gain, all variants with synthetic |", "|---|---|---|---|---|---|"]
            for c in rep["classes"]:
                pc = g["per_class"].get(c, {})
                rare = " (rare)" if c in rep["rare_classes"] else ""
                ci = (f" [{_f(pc.get('ci_low'), '{:+.3f}')}, {_f(pc.get('ci_high'), '{:+.3f}')}]"
                      if pc.get("ci_low") is not None else "")
                lines.append(f"| {c}{rare} | {rep['real_fractions'][c]:.1%} | {_f(pc.get('base'))} | "
                             f"{_f(pc.get('variant'))} | {_f(pc.get('gain'), '{:+.3f}')}{ci} | "
                             f"{_f(rep['mean_class_gain_with_synthetic'].get(c), '{:+.3f}')} |")
            lines.append("")
    sim = rep.get("similarity")
    if sim:
        lines += [f"Similarity of the {sim['n_synthetic']} synthetic to the {sim['n_real']} real training patches "
                  f"(baseline: two halves of the real patches, {sim['n_real_halves'][0]} / {sim['n_real_halves'][1]}):",
                  "", "| measure | synthetic vs real | real vs real |", "|---|---|---|"]
        for key, m in sim["measures"].items():
            lines.append(f"| {key} | {_f(m['synthetic_vs_real'], '{:.4g}')} | {_f(m['real_vs_real'], '{:.4g}')} |")
        fr = sim["class_fractions"]
        lines += ["", "| class | real fraction | synthetic fraction |", "|---|---|---|"]
        lines += [f"| {c} | {fr['real'][c]:.1%} | {fr['synthetic'][c]:.1%} |" for c in fr["real"]]
    else:
        lines.append("No similarity numbers (04_synthesis has not stored them; run with --compute-similarity).")
    return "\n".join(lines) + "\n"


def combined_table(reports: Sequence[dict[str, Any]]) -> str:
    """One markdown row per experiment: best variant, largest gain with CI and p, verdict, similarity ratios."""
    head = ("| dataset | experiment | runs | best variant | largest gain from synthetic [95 % CI] | p (Holm) | helps? | "
            "fraction W1 syn / real | S2 syn / real | KID syn / real |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        g = r.get("largest_gain") or {}
        b = r.get("best") or {}
        ci = (f" [{_f(g.get('gain_ci_low'), '{:+.3f}')}, {_f(g.get('gain_ci_high'), '{:+.3f}')}]"
              if g.get("gain_ci_low") is not None else (f" (n={g['gain_n']})" if g else ""))
        gain = f"{g['variant']} {_f(g.get('gain'), '{:+.3f}')}{ci}" if g else "–"
        m = (r.get("similarity") or {}).get("measures", {})
        sim = [f"{_f(m[k]['synthetic_vs_real'], '{:.3g}')} / {_f(m[k]['real_vs_real'], '{:.3g}')}" if k in m else "–"
               for k in ("class_fraction_w1", "s2_rms", "kid")]
        helps = {True: "yes", False: "no", None: "not established (1 seed)" if g else "–"}[r.get("verdict")]
        best = f"{b['variant']} {_f(b.get(METRIC))}" if b else "–"
        lines.append(f"| {r['dataset']} | {r['experiment']} | {r.get('runs', 0)} | {best} | {gain} | "
                     f"{_f(g.get('p_value'), '{:.3g}')} ({_f(g.get('p_holm'), '{:.3g}')}) | {helps} | " + " | ".join(sim) + " |")
    return "\n".join(lines) + "\n"


def write_report(rep: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``report.md`` and ``report.json`` into ``out_dir``, atomically."""
    from .io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    return (atomic_write_text(out_dir / "report.md", report_markdown(rep)),
            atomic_write_json(out_dir / "report.json", rep))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualsynth.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="*", help="experiment folders, e.g. outputs/quick outputs/quick-nasa_super")
    ap.add_argument("--compare", nargs=2, metavar=("EXP:VARIANT", "EXP:VARIANT"),
                    help="instead: the first run set against the second (seed-matched gain, CI, paired Wilcoxon), "
                         "e.g. outputs/quick-nasa_super-epochs:SHQ_300 outputs/quick-nasa_super-eq640:SHQ_0")
    ap.add_argument("--out-dir", help="write <out-dir>/<experiment>/report.md|json (and similarity.json) instead "
                                      "of <experiment>/results/")
    ap.add_argument("--compute-similarity", action="store_true",
                    help="compute the similarity numbers where none are stored (loads the VQ-VAE; ~20 s at quick)")
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level of the paired tests (Holm)")
    a = ap.parse_args(argv)
    from . import quality
    from .io import DataError

    if a.compare:
        try:
            (ea, _, va), (eb, _, vb) = (x.rpartition(":") for x in a.compare)
            if not (ea and va and eb and vb):
                raise DataError(f"--compare {' '.join(a.compare)}: expected EXPERIMENT_FOLDER:VARIANT twice")
            c = compare_runs(ea, va, eb, vb)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ci = (f"[{c['gain_ci_low']:+.3f}, {c['gain_ci_high']:+.3f}]" if c["gain_ci_low"] is not None
              else f"n={len(c['seeds'])}, no interval")
        p = f"{c['p_value']:.3g}" if c["p_value"] is not None else "–"
        print(f"{c['a']} {c['a_mean']:.3f} vs {c['b']} {c['b_mean']:.3f} on seeds {c['seeds']}: "
              f"{c['gain']:+.3f} {ci}; per seed {', '.join(f'{x:+.3f}' for x in c['per_seed'])}; "
              f"paired Wilcoxon over {c['test_images']} test images p = {p}")
        return 0
    if not a.experiments:
        ap.error("give experiment folders, or --compare EXP:VARIANT EXP:VARIANT")

    reports = []
    for e in a.experiments:
        exp = Path(e)
        out = Path(a.out_dir) / exp.name if a.out_dir else exp / "results"
        sim = quality.load_similarity(exp, [out])
        if sim is None and a.compute_similarity and (exp / "synthetic" / "pool.json").is_file():
            sim = quality.write_similarity(exp, out / "similarity.json")
        rep = experiment_report(exp, alpha=a.alpha, similarity=sim)
        write_report(rep, out)
        reports.append(rep)
    print(combined_table(reports))
    for r in reports:
        print(r["statement"], "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
