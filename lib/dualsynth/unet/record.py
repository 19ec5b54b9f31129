"""A U-Net run's record, ``unet/<run>/seed<k>/metrics.json``: its fields, built, written and checked in one place.

Notebook 06 builds the record with :func:`metrics_record` and writes it last with :func:`write_metrics`; the study
skips a run whose record is complete (:func:`metrics_complete`, via :func:`dualsynth.study.study_runs`) and the
results table reads :data:`TABLE_FIELDS` and :data:`SCORE_COLUMNS` of every complete record
(:func:`dualsynth.results.collect_metrics`).  A record is **complete** when it says so (``complete: true``) and
holds every field of :data:`REQUIRED_FIELDS` — the run's name, its seed and its four scores, which every version of
06 wrote; fields added later (``budget``, ``updates``, ``data_variant``, ``inputs_fingerprint``) may be missing
from old runs and are read with a default.

TensorFlow-free, no Dask, no pandas: the batch and the report import it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..io import DataError, atomic_write_json, read_json

__all__ = ["SCORE_COLUMNS", "TABLE_FIELDS", "REQUIRED_FIELDS", "RECORD_FIELDS", "METRICS_FILE", "metrics_record",
           "write_metrics", "record_complete", "metrics_complete", "read_complete"]

METRICS_FILE = "metrics.json"

#: The scores of a run that every row of the results table holds (:func:`dualsynth.metrics.evaluate`).
SCORE_COLUMNS = ("accuracy", "miou", "miou_dataset", "missing_class_iou")

#: What a run was: the fields the results table takes from each record besides the scores (None when an old
#: record lacks one).
TABLE_FIELDS = ("variant", "seed", "group", "tier", "percent", "augment", "num_real_train", "num_synthetic_train",
                "num_test", "encoder", "epochs_run", "best_epoch", "train_seconds", "budget")

#: A record holding all of these, with ``complete`` true, is a finished run: the study skips it, the table lists it.
REQUIRED_FIELDS = ("complete", "variant", "seed") + SCORE_COLUMNS

#: Every field :func:`metrics_record` writes (a ``PT_`` run adds the per-stage budget fields of
#: :meth:`dualsynth.unet.budget.RunBudget.record`).
RECORD_FIELDS = (TABLE_FIELDS + ("data_variant", "updates", "steps_per_epoch", "updates_run") + SCORE_COLUMNS
                 + ("per_class", "per_class_iou_dataset", "per_image", "num_images", "num_classes", "class_names",
                    "confusion", "complete", "inputs_fingerprint"))


def metrics_record(run: Any, variant_data: Mapping[str, Any], plan: Any, result: Any, scores: Mapping[str, Any], *,
                   seed: int, encoder: str, budget: str, inputs_fingerprint: str) -> dict[str, Any]:
    """The ``metrics.json`` record of one finished run (06's last cell).

    ``run``: the run's :class:`~dualsynth.variants.RunName` (a variant, or a matched control ``<base>@<updates>``,
    recorded in group ``control``); ``variant_data``: the variant file it trained on (``variants/<variant>.json``);
    ``plan``: its :class:`~dualsynth.unet.budget.RunBudget`; ``result``: the
    :class:`~dualsynth.unet.train.TrainResult` (or, for a ``PT_`` run, the
    :class:`~dualsynth.unet.pretrain.PretrainResult`); ``scores``: :func:`dualsynth.metrics.evaluate` on the test
    set; ``inputs_fingerprint``: :func:`dualsynth.variants.inputs_fingerprint` of ``variant_data`` (the study skips
    the run only while its data is unchanged).
    """
    spec = run.variant
    pretrain = getattr(result, "pretrain", None)  # a PT_ run: its pretraining stage
    record = {
        "variant": run.name, "seed": int(seed), "group": "control" if run.control else spec.group,
        "tier": spec.tier, "percent": spec.percent, "data_variant": spec.name, "budget": budget,
        **plan.record(result.epochs_run, None if pretrain is None else pretrain.epochs_run),  # updates used
        "augment": spec.augment, "num_real_train": variant_data["num_real_train"],
        "num_synthetic_train": variant_data["num_synthetic_train"], "num_test": scores["num_images"],
        "encoder": encoder, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "train_seconds": result.seconds, **scores, "complete": True, "inputs_fingerprint": inputs_fingerprint,
    }
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:  # scores from elsewhere than metrics.evaluate, or a plan without its budget fields
        raise ValueError(f"run {run.name}: the metrics record lacks {missing}")
    return record


def write_metrics(run_folder: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``<run_folder>/metrics.json`` atomically — the run's last write: the study trusts only a complete
    record.  A record that is not complete (:func:`record_complete`) is refused."""
    if not record_complete(record):
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        raise ValueError(f"{run_folder}: not a complete run record (missing {missing or 'complete: true'})")
    return atomic_write_json(Path(run_folder) / METRICS_FILE, dict(record))


def record_complete(record: Any) -> bool:
    """Whether a parsed record is a finished run: ``complete`` true and every field of :data:`REQUIRED_FIELDS`."""
    return (isinstance(record, Mapping) and bool(record.get("complete"))
            and all(k in record for k in REQUIRED_FIELDS))


def read_complete(path: str | os.PathLike) -> dict[str, Any] | None:
    """A run's record if it exists, parses and is complete; else None (missing, corrupt, unfinished)."""
    try:
        record = read_json(path)
    except (DataError, OSError):
        return None
    return record if record_complete(record) else None


def metrics_complete(path: str | os.PathLike) -> bool:
    """True when a run's ``metrics.json`` exists, parses and is complete (the study's resume test)."""
    return read_complete(path) is not None
