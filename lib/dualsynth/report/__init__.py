"""The results statement of one or more experiments: does synthetic data help, by how much, and why (not).

For an experiment folder (``outputs/<exp>``) :func:`experiment_report` collects the complete U-Net runs (any subset
of variants and seeds), ranks them (:func:`study_tables`, :func:`dualsynth.stats.ranked_table`) and states:

* the best variant overall and the variant with synthetic data that gains most over its **matched control** — the
  run with as many updates: the base itself when it had as many (every run under 06's ``budget: fixed``), else the
  control run ``<base>@<updates>`` (``study --matched-controls``); without one, over the base, saying that the
  gain then mixes more updates and synthetic data — with the gain's 95 % confidence interval over the seeds both
  have (or "n=1, no interval") and the paired Wilcoxon test over the test images, raw and Holm-adjusted over every
  paired test of the table (the largest gain is picked *after* looking at all of them);
* for each variant with a control run, the split of its gain over the base into "more updates" (control − base)
  and "synthetic data" (variant − control), each with its interval and paired p;
* per-class gains of that variant and, averaged over all variants with synthetic data, per class — rare classes
  (under ``rare_fraction`` of the real training pixels) flagged;
* collapsed runs: a model predicting one class on ≥ 95 % of the test pixels, or scoring at or below the
  majority-class baseline (the most frequent real training class predicted everywhere, on the test masks);
* the similarity numbers of the synthetic pool (:mod:`dualsynth.quality`) beside their real-vs-real baselines;
* the synthetic masks against their micrographs: the image–mask consistency 04 stored (the pre-test judge,
  :func:`dualsynth.quality.consistency`) overall and per class beside the class fraction ratio, each failing class
  said in words, or "not measured" for older experiments;
* a verdict (:func:`dualsynth.stats.decide`): ``helps`` (interval over ≥ 2 seeds above 0 and Holm-significant),
  ``hurts`` (interval below 0), ``does_not_help`` (the interval excludes every gain above ``margin``), otherwise
  ``inconclusive`` — also when the gain rests on one seed or on a collapsed run — stating the smallest gain those
  seeds could have shown (the half-width of the 95 % interval) and about how many seeds a gain of ``margin`` needs;
  with the reasons the numbers give when synthetic data does not help (a class failing the image–mask consistency
  is one).

Every variant with synthetic data gets its own verdict against its matched control or base (``comparisons``, with
``decided_by``); the dataset's **headline** is the one of the largest gain, saying the seeds it rests on.  An
adaptive study's record (``results/adaptive.json``, :mod:`dualsynth.adaptive`) is shown as a table with the runs it
took against a fixed grid.

``python -m dualsynth.report outputs/quick outputs/quick-nasa_super`` writes ``results/report.md`` and
``report.json`` into each experiment (or into ``--out-dir/<exp>/``) and prints a combined markdown table and the
cross-dataset verdict table (:func:`verdict_table`).
The markdown is built by the functions in :data:`SECTIONS`, one per section: a new section is one more function.

Modules: :mod:`.tables` (runs, ranked table, the comparison of one variant, :func:`compare_runs`),
:mod:`.statement` (verdict, reasons, :func:`experiment_report`), :mod:`.consistency` (the image–mask consistency
section), :mod:`.markdown` (the sections, the cross-experiment table, writing the files), :mod:`.html`
(``report.html``: the executed notebooks as pages and the statement, :func:`write_html_report`; ``--html``),
:mod:`.cli`.
"""
from __future__ import annotations

from .cli import main
from .consistency import consistency_table, experiment_consistency
from .html import write_html_report
from .markdown import (SECTIONS, VERDICT_WORDS, combined_table, headline, report_markdown,  # noqa: F401
                       verdict_table, write_report)
from .statement import FAR, OVER, UNDER, experiment_report, reference_lines  # noqa: F401  (re-exported)
from .tables import MARGIN, METRIC, compare_runs, majority_baseline, study_tables  # noqa: F401

__all__ = ["experiment_report", "reference_lines", "study_tables", "majority_baseline", "compare_runs", "report_markdown",
           "combined_table", "verdict_table", "headline", "write_report", "main",
           "SECTIONS", "MARGIN", "experiment_consistency",
           "consistency_table", "write_html_report"]
