"""``report.md``: one function per section (:data:`SECTIONS`), the cross-experiment table, and writing the files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_write_json, atomic_write_text
from .consistency import consistency_cell, consistency_lines
from .tables import METRIC

VERDICT_WORDS = {"helps": "helps", "hurts": "hurts", "does_not_help": "does not help", "inconclusive": "inconclusive"}


# --------------------------------------------------------------------------- markdown, one function per section
def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ci(d: dict | None, lo: str = "ci_low", hi: str = "ci_high", n: str = "n") -> str:
    """``[low, high], n=3`` or ``n=1, no interval`` (``n`` None: the interval alone)."""
    count = d.get(n) if d and n else None
    if not d or d.get(lo) is None:
        return f"n={count if count is not None else 1}, no interval"
    return f"[{_f(d[lo], '{:+.3f}')}, {_f(d[hi], '{:+.3f}')}]" + (f", n={count}" if count is not None else "")


#: how a comparison's ``kind`` reads in a headline
AGAINST_WORDS = {"matched run": "its matched control run: the base with as many updates",
                 "equal updates": "its base, which had as many updates",
                 "base, more updates": "its base, which had fewer updates and no matched control run",
                 "base, synthetic only": "its real base; a synthetic-only variant has no matched control",
                 "base, updates unknown": "its base; update counts not recorded", "base": "its base"}


def _seeds(seeds: Sequence[int]) -> str:
    """``5 (0–4)``, ``3 (0, 2, 5)``, ``1 (3)``."""
    s = sorted(int(x) for x in seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{len(s)} ({s[0]}–{s[-1]})"
    return f"{len(s)} ({', '.join(map(str, s))})"


def _gain_ci(c: dict) -> str:
    return f"{_f(c.get('gain'), '{:+.3f}')} {_ci(c, n=None)}"


def headline(rep: dict[str, Any]) -> str | None:
    """The dataset's verdict in one line: the comparison it rests on (against the matched control where there is
    one), on how many seeds, the gain with its interval, and what decided it."""
    h = rep.get("headline")
    if not h:
        return None
    return (f"**Verdict: {VERDICT_WORDS.get(h['verdict'], '–')}** — {h['variant']} vs {h['against']} "
            f"({AGAINST_WORDS.get(h['kind'], h['kind'])}), on {_seeds(h['seeds'])} seed(s): {_gain_ci(h)}; "
            f"decided by: {h['decided_by']}.")


def _md_statement(rep: dict[str, Any]) -> list[str]:
    head = headline(rep)
    return [f"## {rep['dataset']} (`{rep['experiment']}`)", ""] + ([head, ""] if head else []) + [rep["statement"], ""]


def _md_adaptive(rep: dict[str, Any]) -> list[str]:
    """The adaptive study's record (``results/adaptive.json``): per comparison the seeds used and whether it was
    decided, and the runs it took against a fixed grid."""
    a = rep.get("adaptive")
    if not a:
        return []
    share = f" ({a['share_of_grid']:.0%})" if a.get("share_of_grid") is not None else ""
    lines = ["### Seeds added until decided (`study --until-decided`)", "",
             f"Started from seeds {a['start_seeds']}, at most {a['max_seeds']} per comparison; a comparison is decided "
             "when the 95 % interval of its per-seed gains excludes 0"
             + ("; with `--futility` one also stops, undecided, when at its spread so far the maximum number of "
                "seeds could not decide it. " if a.get("futility") else ". ")
             + f"**{a['runs']} runs** against {a['fixed_grid_runs']} for a fixed grid of {a['max_seeds']} seeds{share}"
             + ("." if a.get("complete") else f"; not finished: {len(a.get('pending') or [])} run(s) still to add."),
             "", "| comparison | seeds | gain [95 % CI] | decided | why |", "|---|---|---|---|---|"]
    for c in a["comparisons"]:
        decided = "yes" if c["decided"] else ("no (futile)" if c.get("futile") else
                                               "no (stopped)" if c["stopped"] else "not yet")
        lines.append(f"| {c['variant']} vs {c['against']} | {_seeds(c['seeds'])} | {_gain_ci(c)} | {decided} | "
                     f"{c['why']} |")
    return lines + [""]


def _md_runs(rep: dict[str, Any]) -> list[str]:
    seeds = rep["seeds_per_variant"]
    ns = sorted({len(v) for v in seeds.values()})
    b = rep["best"]
    ci = f" [{_f(b['ci_low'])}, {_f(b['ci_high'])}]" if b["ci_low"] is not None else " (no interval)"
    return [f"{rep['runs']} complete runs of {len(seeds)} variants; seeds per variant: "
            + ", ".join(f"{n} ({sum(len(v) == n for v in seeds.values())} variants)" for n in ns) + "."
            + (f" Seed-to-seed standard deviation {rep['seed_sd_median']:.3f} (median over "
               f"{rep['seed_sd_variants']} variant(s) with several seeds)." if rep.get("seed_sd_median") is not None
               else ""), "",
            f"Best variant overall: **{b['variant']}**, Missing Class IoU {_f(b[METRIC])}{ci}, n={b['seeds']}.", ""]


def _md_largest_gain(rep: dict[str, Any]) -> list[str]:
    g = rep.get("largest_gain")
    if not g:
        return []
    lines = [f"Largest gain from synthetic data: **{g['variant']}** {_f(g[METRIC])} vs {g['against']} "
             f"({g['against_kind']}) {_f(g['against_score'])} on seeds {g['seeds']}: {_f(g['gain'], '{:+.3f}')} "
             f"({_ci(g, 'gain_ci_low', 'gain_ci_high', 'gain_n')}; Wilcoxon p = {_f(g['p_value'], '{:.3g}')}, Holm-adjusted "
             f"{_f(g.get('p_holm'), '{:.3g}')}). Mean gain over all {rep['variants_with_synthetic']} variants with "
             f"synthetic data: {_f(rep['mean_gain_with_synthetic'], '{:+.3f}')}. Verdict: "
             f"**{VERDICT_WORDS.get(rep['verdict'], '–')}** (margin {rep['margin']:+.3f}).", "",
             f"| class | real fraction (HQ) | {g['against']} | {g['variant']} | gain [95 % CI] | "
             "mean gain, all variants with synthetic |", "|---|---|---|---|---|---|"]
    for c in rep["classes"]:
        pc = g["per_class"].get(c, {})
        rare = " (rare)" if c in rep["rare_classes"] else ""
        ci = f" {_ci(pc, n=None)}" if pc.get("ci_low") is not None else ""
        lines.append(f"| {c}{rare} | {rep['real_fractions'][c]:.1%} | {_f(pc.get('against'))} | "
                     f"{_f(pc.get('variant'))} | {_f(pc.get('gain'), '{:+.3f}')}{ci} | "
                     f"{_f(rep['mean_class_gain_with_synthetic'].get(c), '{:+.3f}')} |")
    return lines + [""]


def _md_budget(rep: dict[str, Any]) -> list[str]:
    lines = [f"Update budget: {rep['budget_note']}", ""] if rep.get("budget_note") else []
    if rep.get("splits"):
        lines += ["Each gain over the base split at its matched control (seed-matched; 95 % CI over seeds; paired "
                  "Wilcoxon p over the test images, Holm-adjusted over every paired test):", "",
                  "| variant | updates | gain over base | more updates: control − base | synthetic data: variant − "
                  "control |", "|---|---|---|---|---|"]
        for s in rep["splits"]:
            def cell(d, test=True):
                if not d:
                    return "–"
                p = f", p = {_f(d.get('p'), '{:.3g}')} (Holm {_f(d.get('p_holm'), '{:.3g}')})" if test else ""
                return f"{_f(d['gain'], '{:+.3f}')} ({_ci(d)}){p}"
            total = cell(s["total"], test=False)
            lines.append(f"| {s['variant']} vs {s['base']} | {_f(s['updates'], '{:.0f}')} ({s['control']}) | "
                         f"{total} | {cell(s['more_updates'])} | {cell(s['synthetic_data'])} |")
        lines.append("")
    return lines


def _md_collapse(rep: dict[str, Any]) -> list[str]:
    b = rep.get("majority_baseline")
    lines = [f"Majority-class baseline: predicting {b['class']} everywhere scores Missing Class IoU "
             f"{b[METRIC]:.3f} on the {b['test_images']} test images." if b else ""]
    bad = rep.get("collapsed_runs") or []
    if bad:
        lines[0] += (f" **{len(bad)} collapsed run(s)** (one class on ≥ 95 % of the test pixels, or at or below the "
                     "baseline); a verdict resting on one is inconclusive:")
        lines += [""] + [f"- {x['run']} seed {x['seed']}: {x['reason']}" for x in bad]
    c = rep.get("ceiling")
    if c:
        shares = ", ".join(f"{v} {d['score']:.3f} ({d['share']:.0%})" for v, d in c["bases"].items()
                           if d.get("share") is not None)
        differs = c.get("recipe_differs") or []
        recipe = (f" — measured with other settings ({', '.join(differs)})" if c.get("same_recipe") is False
                  else "")
        lines += [""] if len(lines) > 1 else []  # not inside the collapsed-runs list
        lines.append(f"Ceiling: the study's U-Net recipe trained to convergence on the real BMQ set "
                     f"({c['updates']} updates, seeds {c['seeds']}, `{c['file']}`) scores {c['value']:.3f}"
                     f"{recipe}. Base variants as a share of it: {shares or '–'}.")
    return lines + [""] if any(lines) else []


def _md_similarity(rep: dict[str, Any]) -> list[str]:
    sim = rep.get("similarity")
    if not sim:
        return ["No similarity numbers (04_synthesis has not stored them; run with --compute-similarity)."]
    lines = [f"Similarity of the {sim['n_synthetic']} synthetic to the {sim['n_real']} real training patches "
             f"(baseline: two halves of the real patches, {sim['n_real_halves'][0]} / {sim['n_real_halves'][1]}):",
             "", "| measure | synthetic vs real | real vs real |", "|---|---|---|"]
    for key, m in sim["measures"].items():
        lines.append(f"| {key} | {_f(m['synthetic_vs_real'], '{:.4g}')} | {_f(m['real_vs_real'], '{:.4g}')} |")
    fr = sim["class_fractions"]
    lines += ["", "| class | real fraction | synthetic fraction |", "|---|---|---|"]
    return lines + [f"| {c} | {fr['real'][c]:.1%} | {fr['synthetic'][c]:.1%} |" for c in fr["real"]]


def _md_consistency(rep: dict[str, Any]) -> list[str]:
    return [""] + consistency_lines(rep.get("consistency"))


#: the sections of ``report.md`` in order: each takes the report dict and returns its lines (add one to extend)
SECTIONS: list[Callable[[dict[str, Any]], list[str]]] = [_md_statement, _md_runs, _md_largest_gain, _md_budget,
                                                         _md_adaptive, _md_collapse, _md_similarity, _md_consistency]
_NEEDS_RUNS = {_md_runs, _md_largest_gain, _md_budget, _md_adaptive, _md_collapse}


def report_markdown(rep: dict[str, Any]) -> str:
    """The results section of one experiment in markdown (the :data:`SECTIONS` in order)."""
    lines: list[str] = []
    for section in SECTIONS:
        if section in _NEEDS_RUNS and not rep.get("runs"):
            continue
        lines += section(rep)
    return "\n".join(lines) + "\n"


def combined_table(reports: Sequence[dict[str, Any]]) -> str:
    """One markdown row per experiment: best variant, largest gain with CI and p, verdict, similarity ratios, and the
    image–mask consistency with its failing classes."""
    head = ("| dataset | experiment | runs | best variant | largest gain from synthetic [95 % CI] | p (Holm) | verdict | "
            "fraction W1 syn / real | S2 syn / real | KID syn / real | image–mask consistency |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        g = r.get("largest_gain") or {}
        b = r.get("best") or {}
        ci = (f" [{_f(g.get('gain_ci_low'), '{:+.3f}')}, {_f(g.get('gain_ci_high'), '{:+.3f}')}]"
              if g.get("gain_ci_low") is not None else (f" (n={g['gain_n']})" if g else ""))
        gain = f"{g['variant']} vs {g['against']} {_f(g.get('gain'), '{:+.3f}')}{ci}" if g else "–"
        m = (r.get("similarity") or {}).get("measures", {})
        sim = [f"{_f(m[k]['synthetic_vs_real'], '{:.3g}')} / {_f(m[k]['real_vs_real'], '{:.3g}')}" if k in m else "–"
               for k in ("class_fraction_w1", "s2_rms", "kid")]
        verdict = VERDICT_WORDS.get(r.get("verdict"), "–")
        if r.get("verdict") == "inconclusive" and g:
            verdict += (f" (±{g['gain_half_width']:.3f} detectable)" if g.get("gain_half_width") is not None
                        else " (1 seed)" if g.get("gain_n", 0) < 2 else "")
        best = f"{b['variant']} {_f(b.get(METRIC))}" if b else "–"
        lines.append(f"| {r['dataset']} | {r['experiment']} | {r.get('runs', 0)} | {best} | {gain} | "
                     f"{_f(g.get('p_value'), '{:.3g}')} ({_f(g.get('p_holm'), '{:.3g}')}) | {verdict} | "
                     + " | ".join(sim) + f" | {consistency_cell(r.get('consistency'))} |")
    return "\n".join(lines) + "\n"


def verdict_table(reports: Sequence[dict[str, Any]], all_comparisons: bool = False) -> str:
    """The cross-dataset verdict table (markdown, for the README): per experiment its headline comparison first
    (against the matched control where there is one), then the other comparisons of its adaptive study (every
    comparison with ``all_comparisons``): seeds, gain [95 % CI], verdict and what decided it."""
    head = "| dataset (experiment) | comparison | seeds | gain [95 % CI] | verdict | decided by |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in reports:
        where = f"{r['dataset']} (`{r['experiment']}`)"
        comps = r.get("comparisons") or []
        h = r.get("headline")
        if not h:
            why = "no run" if not r.get("runs") else "no comparison"
            lines.append(f"| {where} | – | – | – | no verdict | {why} |")
            continue
        studied = {c["variant"] for c in (r.get("adaptive") or {}).get("comparisons", [])}
        rows = [(h, "**")] + [(c, "") for c in comps if c["variant"] != h["variant"]
                              and (all_comparisons or c["variant"] in studied)]
        for c, bold in rows:  # the headline in bold
            lines.append(f"| {where} | {bold}{c['variant']} vs {c['against']}{bold} | {_seeds(c['seeds'])} | "
                         f"{_gain_ci(c)} | {VERDICT_WORDS.get(c['verdict'], '–')} | {c['decided_by']} |")
    return "\n".join(lines) + "\n"


def write_report(rep: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``report.md`` and ``report.json`` into ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    return (atomic_write_text(out_dir / "report.md", report_markdown(rep)),
            atomic_write_json(out_dir / "report.json", rep))
