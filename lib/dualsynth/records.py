"""Seeds and run records: what a run was made with.

* ``set_seed`` seeds Python, NumPy and TensorFlow (op determinism with ``$DUALSYNTH_DETERMINISTIC=1``).
* ``run_record`` / ``write_run_record``: versions of the stack, the git commit and a stage's parameters, written
  to ``<experiment>/runs/run_<tag>.json`` (``record_tag``, ``run_record_path``) only when the stage succeeded: a run
  the batch started waits in ``runs/.pending/`` until it succeeds (see :mod:`dualsynth.locking`), a notebook run
  by hand writes it from ``stage.finish()``, its last cell (:mod:`dualsynth.notebook_params`).

Re-exported by :mod:`dualsynth.config`.
"""
from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .io import atomic_write_json
from .locking import PENDING_RECORDS
from .paths import project_root

__all__ = ["DETERMINISTIC_ENV", "deterministic_requested", "set_seed", "run_record", "write_run_record",
           "record_tag", "run_record_path"]


#: Set to 1 to run every stage with TensorFlow op determinism (same seed -> same bytes on CPU; slower).
DETERMINISTIC_ENV = "DUALSYNTH_DETERMINISTIC"


def deterministic_requested() -> bool:
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_seed(seed: int, deterministic_ops: bool | None = None) -> None:
    """Seed Python, NumPy and (if loaded) TensorFlow; enable TF op determinism if asked
    (``deterministic_ops``, by default when ``$DUALSYNTH_DETERMINISTIC=1``)."""
    if deterministic_ops is None:
        deterministic_ops = deterministic_requested()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "tensorflow" in sys.modules:
        import tensorflow as tf  # already loaded (checked above); never loaded here just to seed it

        tf.random.set_seed(seed)
        if deterministic_ops:
            tf.config.experimental.enable_op_determinism()


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions of the stack and the git commit, for a run's outputs."""
    versions = {}
    for dist in ("dualsynth", "tensorflow", "tf-keras", "dm-sonnet", "tensorflow-probability",
                 "segmentation-models", "numpy", "scikit-image", "scikit-learn", "albumentations", "papermill"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    rec = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(project_root()) or "unknown",
        "op_determinism": deterministic_requested(),
    }
    if extra:
        rec.update(extra)
    return rec


def write_run_record(folder: str | os.PathLike, stage: str, params: Mapping[str, Any]) -> Path:
    """Write ``<folder>/run_<stage>.json`` with the parameters, versions and commit."""
    return atomic_write_json(Path(folder) / f"run_{stage}.json", run_record({"stage": stage, "params": dict(params)}))


def record_tag(name: str, params: Mapping[str, Any]) -> str:
    """``run_<tag>.json``: the stage, and for a study run (a notebook with ``variant``) its variant and seed."""
    return name if "variant" not in params else f"{name}-{params['variant']}-seed{params['seed']}"


def run_record_path(experiment_path: str | os.PathLike, tag: str, pending: bool = False) -> Path:
    """``runs/run_<tag>.json``, or the pending record ``runs/.pending/run_<tag>.json`` of a run the batch started."""
    runs = Path(experiment_path) / "runs"
    return (runs / PENDING_RECORDS if pending else runs) / f"run_{tag}.json"
