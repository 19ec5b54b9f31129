"""The training folder of one U-Net run: what :func:`dualsynth.unet.train.train_unet` writes and reads back.

``unet_config.json``, ``model.h5`` (best weights), ``history.csv``, ``checkpoint/`` (``epoch_XXXXX/`` weights +
optimizer, ``state.json`` as its commit point) and ``train_summary.json``.  The commit order of an epoch is
:data:`dualsynth.checkpoint.COMMIT_ORDER`: checkpoint + ``state.json`` -> ``history.csv`` -> ``model.h5``; a
resume rewrites the last two from the committed state.  :func:`dualsynth.unet.train.train_unet` calls these
through this module's attributes, so a test can put a kill point on any of them.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from dualsynth.checkpoint import check_config
from dualsynth.io import DataError, atomic_path, atomic_write_json, read_json, read_rows_csv, stale_inputs_message, \
    write_rows_csv

from ._backend import tf
from .model import UNetConfig

__all__ = ["HISTORY_COLUMNS", "CONFIG_FILE", "WEIGHTS_FILE", "HISTORY_FILE", "CHECKPOINT_DIR", "STATE_FILE",
           "SUMMARY_FILE", "write_history_csv", "read_history_csv", "save_best_weights", "delete_checkpoint",
           "save_checkpoint", "check_resumable", "read_state"]

#: Columns of ``history.csv`` and keys of :attr:`TrainResult.history`.
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch",
    "loss",
    "iou_score",
    "f1-score",
    "val_loss",
    "val_iou_score",
    "val_f1-score",
    "lr",
    "seconds",
)

CONFIG_FILE = "unet_config.json"
WEIGHTS_FILE = "model.h5"  # weights only, Keras 2 HDF5 format (by-name loadable)
HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
SUMMARY_FILE = "train_summary.json"

# Config fields that may differ between an interrupted run and its continuation.
_RESUME_MAY_DIFFER = {"epochs", "encoder_weights"}


def write_history_csv(path: Path, history: Mapping[str, Sequence[float]]) -> None:
    n = len(history.get("epoch", []))
    write_rows_csv(path, HISTORY_COLUMNS, [{k: history[k][i] for k in HISTORY_COLUMNS} for i in range(n)],
                   int_columns=("epoch",))


def save_best_weights(out: Path, model: tf.keras.Model) -> None:
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        model.save_weights(str(tmp), save_format="h5")


def delete_checkpoint(out: Path) -> None:
    """Remove ``checkpoint/`` as a whole: renamed aside first (atomic), so a kill never leaves half of it."""
    trash = out / f".{CHECKPOINT_DIR}.deleting"
    if (out / CHECKPOINT_DIR).exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out / CHECKPOINT_DIR, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(out: Path, model: tf.keras.Model, epochs_done: int, state: dict) -> None:
    """``checkpoint/epoch_XXXX/`` (weights + optimizer) then ``checkpoint/state.json`` as commit point."""
    ckdir = out / CHECKPOINT_DIR
    sub = f"epoch_{epochs_done:05d}"
    target = ckdir / sub
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(target / "ckpt"))
    atomic_write_json(ckdir / STATE_FILE, {**state, "checkpoint": sub})
    for old in ckdir.glob("epoch_*"):
        if old.name != sub:
            shutil.rmtree(old, ignore_errors=True)


def read_history_csv(path: Path) -> dict[str, list[float]]:
    rows = read_rows_csv(path, HISTORY_COLUMNS, int_columns=("epoch",))
    return {k: [r[k] for r in rows] for k in HISTORY_COLUMNS}


def check_resumable(out: Path, what: str, config: Mapping[str, Any], fingerprint: str,
                    cfg: UNetConfig, data_fingerprint: str) -> None:
    """Refuse to continue a run folder made with another config (``epochs`` and ``encoder_weights`` may differ)
    or from other data (``ValueError`` / ``DataError``)."""
    defaults = {f.name: f.default for f in dataclasses.fields(UNetConfig)  # keys added later: their default
                if f.default is not dataclasses.MISSING}
    file = out / CHECKPOINT_DIR / STATE_FILE if what == "checkpoint" else out / SUMMARY_FILE
    check_config(f"{out} holds a {what} with another config", "use another out_dir or resume=False",
                 [(file, config, cfg.to_dict())], may_differ=_RESUME_MAY_DIFFER, defaults=defaults)
    if fingerprint != data_fingerprint:
        raise DataError(stale_inputs_message(out, what) + " (or call train_unet with resume=False)")


def read_state(out: Path) -> dict | None:
    f = out / CHECKPOINT_DIR / STATE_FILE
    if not f.is_file():
        return None
    state = read_json(f)
    if not (out / CHECKPOINT_DIR / state["checkpoint"]).is_dir():
        raise FileNotFoundError(f"{f} names checkpoint {state['checkpoint']!r}, which is missing")
    return state
