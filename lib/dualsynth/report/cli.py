"""``python -m dualsynth.report``: reports of several experiments and one combined table, or one run set against
another (``--compare``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .. import quality
from ..io import DataError, atomic_write_text
from .html import write_html_report
from .markdown import combined_table, verdict_table, write_report
from .statement import experiment_report
from .tables import MARGIN, compare_runs

def _description() -> str:
    doc = sys.modules[__package__].__doc__ or ""
    return doc.split("\n\n")[0]


def _html_reports(experiments: Sequence[str], out_dir: str | None) -> int:
    """``--html``: one report.html per experiment, its path printed last (``make run`` ends with it)."""
    for e in experiments:
        exp = Path(e)
        out = Path(out_dir) / exp.name if out_dir else exp
        statement = out / "report.md" if out_dir and (out / "report.md").is_file() else None
        try:
            path = write_html_report(exp, out, statement=statement)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"report: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualsynth.report", description=_description())
    ap.add_argument("experiments", nargs="*", help="experiment folders, e.g. outputs/quick outputs/quick-nasa_super")
    ap.add_argument("--compare", nargs=2, metavar=("EXP:VARIANT", "EXP:VARIANT"),
                    help="instead: the first run set against the second (seed-matched gain, CI, paired Wilcoxon), "
                         "e.g. outputs/quick-nasa_super-epochs:SHQ_300 outputs/quick-nasa_super-eq640:SHQ_0")
    ap.add_argument("--out-dir", help="write <out-dir>/<experiment>/report.md|json (and similarity.json) instead "
                                      "of <experiment>/results/")
    ap.add_argument("--compute-similarity", action="store_true",
                    help="compute the similarity numbers where none are stored (loads the VQ-VAE; ~20 s at quick)")
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level of the paired tests (Holm)")
    ap.add_argument("--margin", type=float, default=MARGIN,
                    help="smallest gain worth having (Missing Class IoU, default %(default)s): 'does not help' needs "
                         "the 95 %% interval over seeds to exclude every gain above it")
    ap.add_argument("--all-comparisons", action="store_true",
                    help="list every variant with synthetic data in the verdict table (default: each dataset's "
                         "headline and the comparisons of its adaptive study)")
    ap.add_argument("--verdict-table", metavar="FILE", help="also write the cross-dataset verdict table (markdown) here")
    ap.add_argument("--html", action="store_true",
                    help="instead: write <experiment>/report.html (or <out-dir>/<experiment>/report.html) — the "
                         "executed notebooks as pages under report/ and the results statement already written "
                         "(results/report.md) — and print its path")
    a = ap.parse_args(argv)
    if a.html and a.compare:
        ap.error("--html writes an experiment's report.html; give experiment folders, not --compare")
    if a.margin < 0:
        ap.error(f"--margin {a.margin}: a gain ≥ 0, e.g. 0.02")
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
    if a.html:
        return _html_reports(a.experiments, a.out_dir)

    reports = []
    for e in a.experiments:
        exp = Path(e)
        out = Path(a.out_dir) / exp.name if a.out_dir else exp / "results"
        sim = quality.load_similarity(exp, [out])
        if sim is None and a.compute_similarity and (exp / "synthetic" / "pool.json").is_file():
            sim = quality.write_similarity(exp, out / "similarity.json")
        rep = experiment_report(exp, alpha=a.alpha, similarity=sim, margin=a.margin)
        write_report(rep, out)
        reports.append(rep)
    print(combined_table(reports))
    verdicts = verdict_table(reports, a.all_comparisons)
    print("One verdict per dataset (headline in bold: against the matched control where there is one):\n")
    print(verdicts)
    if a.verdict_table:
        atomic_write_text(a.verdict_table, verdicts)
    for r in reports:
        print(r["statement"], "\n")
    return 0
