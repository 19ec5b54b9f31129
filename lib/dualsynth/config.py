"""Parameters, data descriptions, experiment folders, seeds and run records — the one import path for all of them.

This module holds no code of its own; it re-exports, so ``from dualsynth.config import X`` and
``config.start_stage(...)`` (every notebook's first cell) keep working.  Where each thing lives:

* :mod:`dualsynth.paths`: ``ParamError``, ``project_root``, ``resolve_path``, ``resolve_outputs``, ``load_yaml``,
  ``experiment_dir`` (``outputs/<experiment>/``, created and checked writable), ``experiment_name_ok``.
* :mod:`dualsynth.dataconfig`: the data YAML (``params/data/*.yaml``): ``DataConfig``, ``TierSpec``,
  ``load_data_config``.
* :mod:`dualsynth.notebook_params`: **each notebook's parameter rules** (``NOTEBOOK_RULES``, ``NOTEBOOK_CHECKS``),
  ``validate_params``, ``start_stage`` / ``Stage`` (the one check each notebook calls), ``set_tf_threads``.
* :mod:`dualsynth.records`: ``set_seed``, ``run_record`` / ``write_run_record`` (versions and git commit of a run),
  ``record_tag``, ``run_record_path``.
* :mod:`dualsynth.locking`: one writer per experiment: ``experiment_lock`` (the batch), ``hold_experiment`` /
  ``release_experiment`` (a notebook run by hand, through ``start_stage`` and ``stage.finish()``),
  ``check_experiment_lock``, ``ExperimentLocked``, ``BATCH_ENV``.
"""
from __future__ import annotations

from .dataconfig import DataConfig, TierSpec, load_data_config
from .locking import (
    BATCH_ENV,
    LOCK_FILE,
    PENDING_RECORDS,
    ExperimentLocked,
    check_experiment_lock,
    experiment_lock,
    hold_experiment,
    lock_token,
    release_experiment,
)
from .notebook_params import NOTEBOOK_CHECKS, NOTEBOOK_RULES, Stage, set_tf_threads, start_stage, validate_params
from .paths import (
    MAX_EXPERIMENT_NAME,
    ParamError,
    experiment_dir,
    experiment_name_ok,
    load_yaml,
    project_root,
    resolve_outputs,
    resolve_path,
)
from .records import (
    DETERMINISTIC_ENV,
    deterministic_requested,
    record_tag,
    run_record,
    run_record_path,
    set_seed,
    write_run_record,
)

__all__ = [
    "ParamError",
    "project_root",
    "resolve_path",
    "resolve_outputs",
    "load_yaml",
    "DataConfig",
    "TierSpec",
    "load_data_config",
    "validate_params",
    "experiment_dir",
    "set_seed",
    "run_record",
    "write_run_record",
    "record_tag",
    "run_record_path",
    "experiment_lock",
    "check_experiment_lock",
    "ExperimentLocked",
    # also re-exported (used by the batch, the notebooks and the tests)
    "NOTEBOOK_RULES",
    "NOTEBOOK_CHECKS",
    "Stage",
    "start_stage",
    "set_tf_threads",
    "MAX_EXPERIMENT_NAME",
    "experiment_name_ok",
    "DETERMINISTIC_ENV",
    "deterministic_requested",
    "BATCH_ENV",
    "LOCK_FILE",
    "PENDING_RECORDS",
    "lock_token",
    "hold_experiment",
    "release_experiment",
]
