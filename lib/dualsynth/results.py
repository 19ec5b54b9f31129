"""The results of the study: one row per finished U-Net run, and ``results/metrics.csv``.

``collect_metrics`` reads every complete ``unet/<run>/seed<k>/metrics.json`` of an experiment into a table;
``write_metrics_csv`` rebuilds ``results/metrics.csv`` from them.  The record's fields — which make it complete,
which columns the table takes — are defined once, in :mod:`dualsynth.unet.record` (06 writes it with the same
module).  The report and notebook 07 read results through this module, without importing the papermill/Dask runner
(:mod:`dualsynth.batch`, which re-exports both).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .io import DataError, write_csv
from .study import _stale_check, predicted_share, recorded_updates
from .unet.record import SCORE_COLUMNS, TABLE_FIELDS, read_complete

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["METRIC_COLUMNS", "collect_metrics", "write_metrics_csv"]

#: The scores of a run that every row of the table holds (:data:`dualsynth.unet.record.SCORE_COLUMNS`).
METRIC_COLUMNS = SCORE_COLUMNS


def collect_metrics(experiment_path: str | os.PathLike, stale: str = "drop") -> "pd.DataFrame":
    """One row per COMPLETE run found under ``unet/*/seed*/metrics.json`` (incomplete or corrupt files are skipped;
    complete: :func:`dualsynth.unet.record.record_complete`).

    The columns: :data:`~dualsynth.unet.record.TABLE_FIELDS` (None where an old record lacks one), ``updates``
    (the run's update budget, :func:`dualsynth.study.recorded_updates`), for ``PT_`` runs ``updates_pretrain`` /
    ``updates_finetune``, for runs copied in by ``study --adopt-from`` ``adopted_from`` (where each was trained),
    ``pred_max_share`` / ``pred_max_class`` (the largest share of test pixels predicted as
    one class, from the confusion matrix), the scores (:data:`METRIC_COLUMNS`) and ``mciou_<class>`` per class.

    A run trained on other data than its variant file now lists (04/05 re-run after it; see :func:`study_runs`)
    is left out with a warning naming it (``stale="drop"``), refused (``"error"``) or kept (``"keep"``).
    """
    import pandas as pd  # lazy: pandas only where a table is built (the batch imports this module too)

    if stale not in ("drop", "error", "keep"):
        raise ValueError(f"stale must be drop, error or keep, got {stale!r}")
    exp = Path(experiment_path)
    is_stale = _stale_check(exp)
    rows, left_out = [], []
    for f in sorted(exp.glob("unet/*/seed*/metrics.json")):
        m = read_complete(f)
        if m is None:
            continue
        if stale != "keep" and is_stale(str(m.get("variant")), m):
            left_out.append(str(f.parent))
            continue
        row = {k: m.get(k) for k in TABLE_FIELDS}
        row["updates"] = recorded_updates(m, f.parent)  # the run's update budget (matched controls compare it)
        row.update({k: m[k] for k in ("updates_pretrain", "updates_finetune") if k in m})  # PT_ runs: per stage
        if m.get("adopted_from"):  # copied in by study --adopt-from: the folder where it was trained
            row["adopted_from"] = m["adopted_from"]
        row["pred_max_share"], row["pred_max_class"] = predicted_share(m)  # a collapsed model predicts one class
        row.update({k: m[k] for k in METRIC_COLUMNS})
        for name, val in (m.get("per_class") or {}).items():
            row[f"mciou_{name}"] = val
        rows.append(row)
    if left_out:
        msg = (f"{len(left_out)} finished run(s) in {exp / 'unet'} were trained on other data than "
               f"{exp / 'variants'} now lists (04_synthesis or 05_datasets was re-run since), e.g. {left_out[0]}")
        if stale == "error":
            raise DataError(msg)
        warnings.warn(msg + "; they are left out: re-run 06 for them", stacklevel=2)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["group", "tier", "percent", "variant", "seed"], kind="stable").reset_index(drop=True)
    return df


def write_metrics_csv(experiment_path: str | os.PathLike) -> Path:
    """Rebuild ``results/metrics.csv`` from the per-run files (never appended), atomically."""
    exp = Path(experiment_path)
    return write_csv(collect_metrics(exp), exp / "results" / "metrics.csv")
