"""One checkpointing routine for the resumable training loops: the VQ-VAE (:func:`dualsynth.vqvae.train_vqvae`),
the prior (:func:`dualsynth.prior.fit_prior`) and the U-Net (:func:`dualsynth.unet.train_unet`).

A run folder holds what a loop commits at each evaluation (a *step*: an optimizer step, or an epoch):

* **last** -- the training state to resume from (model, optimizer, step); writing it is the commit point;
* **history** -- ``history.csv``, one row per committed step, rewritten whole;
* **best** -- the weights of the best row so far.

:meth:`RunFolder.commit` writes them in one fixed order, :data:`COMMIT_ORDER` = last → history → best, each
atomically (a temporary file or folder, then a rename; the TensorFlow checkpoint managers update their index file
the same way).  A kill between two of them leaves a state :meth:`RunFolder.repair` puts right on resume:

* killed while writing last: the previous commit stands; the files after it were not touched;
* after last, before history: the restored step has no row; the caller re-evaluates it (its training means since
  the previous row are lost: NaN);
* after history, before best: the restored step is the best row but best holds an older step; best is saved again
  from the restored weights;
* history rows after last (folders written by the prior's old order history → last → best): dropped, and the file
  rewritten without them (:meth:`RunFolder.resume`).

Last goes first so that history and best can always be rebuilt from it, and history before best so that best
is decided by the row that was written: a repaired row (NaN training means) never names a best that the history
cannot show.  Opening a folder (:meth:`RunFolder.open`) refuses other inputs (the fingerprint in ``inputs.json``,
:func:`dualsynth.io.guard_inputs`) and another configuration (:func:`check_config`: names the file and every key
that differs).  A non-finite value stops training before anything is written (:meth:`RunFolder.commit`,
:meth:`RunFolder.stop`).

What differs between the three loops -- how a state or weights file is written, what a row holds -- comes in as
small functions (``save_last``, ``save_best``, ...); the routine holds no TensorFlow.  ``folder=None`` keeps the
history in memory only (a run without checkpoints), with the same NaN guard.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import io as _io

__all__ = ["COMMIT_ORDER", "ConfigMismatch", "TrainingDiverged", "RunFolder", "config_differences", "check_config"]

#: The order in which :meth:`RunFolder.commit` writes a step's files.
COMMIT_ORDER: tuple[str, ...] = ("last", "history", "best")

Row = dict

_ABSENT = object()


class ConfigMismatch(ValueError):
    """A run folder made with another configuration; the message names the file and each differing key."""


class TrainingDiverged(FloatingPointError):
    """A non-finite loss, metric or weight: training stopped and that state was not committed."""


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(value, default=_io._json_default))


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def config_differences(file: str | Path, saved: Mapping[str, Any], current: Mapping[str, Any], *,
                       may_differ: Sequence[str] = (), defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``"key: <file> has X, this run Y"`` for each key of ``current`` (but ``may_differ``) whose value differs
    from ``saved``; a key missing from ``saved`` (written before the key existed) counts as ``defaults[key]``."""
    saved, current, defaults = _plain(dict(saved)), _plain(dict(current)), _plain(dict(defaults or {}))
    out = []
    for key, now in current.items():
        if key in may_differ:
            continue
        then = saved.get(key, defaults.get(key, _ABSENT))
        if then != now:
            out.append(f"{key}: {file} has {'no such key' if then is _ABSENT else repr(then)}, this run {now!r}")
    return out


def check_config(head: str, advice: str, comparisons: Sequence[tuple[str | Path, Mapping, Mapping]], *,
                 may_differ: Sequence[str] = (), defaults: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigMismatch` ``"<head>: <differences>; <advice>"`` if any ``(file, saved, current)``
    differs (:func:`config_differences`)."""
    problems = [p for file, saved, current in comparisons
                for p in config_differences(file, saved, current, may_differ=may_differ, defaults=defaults)]
    if problems:
        raise ConfigMismatch(f"{head}: " + "; ".join(problems) + f"; {advice}")


class RunFolder:
    """One resumable run: committed state (last), history and best weights, written in :data:`COMMIT_ORDER`.

    Args:
        folder: the run folder, or None (nothing is written; rows are kept in memory).
        who: the training function, first word of error messages.
        step_key: the row key that numbers commits (``"step"``, ``"epoch"``).
        score, mode: the row key that decides the best row and whether lower (``"min"``) or higher is better;
            None: the caller says at each commit (``improved=``).
        finite: row keys that must be finite for a commit.
        save_last(step), save_best(step): write the training state / the best weights (each atomically).
        write_history(path, rows), read_history(path) -> rows: the history file's format.
        best_saved_at() -> step | None: the step the saved best holds (None: none saved); not given: unknown, so
            a repair saves best again whenever the restored step is the best one.
        last_name() -> str: the last good checkpoint, for messages (default: the folder).
        reset() -> str: put the last good state back in memory and say so (for :meth:`stop`).
        history_file: the history's file name in ``folder``.
    """

    def __init__(self, folder: str | Path | None, *, who: str, step_key: str = "step", score: str | None = None,
                 mode: str = "min", finite: Sequence[str] = (), save_last: Callable[[int], Any] | None = None,
                 save_best: Callable[[int], Any] | None = None,
                 write_history: Callable[[Path, list[Row]], Any] | None = None,
                 read_history: Callable[[Path], list[Row]] | None = None,
                 best_saved_at: Callable[[], int | None] | None = None,
                 last_name: Callable[[], Any] | None = None, reset: Callable[[], str] | None = None,
                 history_file: str = "history.csv"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and None in (save_last, save_best, write_history, read_history):
            raise ValueError("a RunFolder with a folder needs save_last, save_best, write_history and read_history")
        self.who, self.step_key, self.score, self.mode, self.finite = who, step_key, score, mode, tuple(finite)
        self._save_last, self._save_best = save_last, save_best
        self._write_history, self._read_history = write_history, read_history
        self._best_saved_at, self._last_name, self._reset = best_saved_at, last_name, reset
        self.history_path = None if self.folder is None else self.folder / history_file
        self.rows: list[Row] = []  # changed in place: callers may hold the list
        self.best: Row | None = None
        self.step = 0  # the committed step (0: none)
        self.committed = False

    # ------------------------------------------------------------------ open and resume
    def open(self, digest: str, what: str, resuming: bool, *, head: str = "", advice: str = "",
             config: Sequence[tuple[str | Path, Mapping, Mapping]] = (), may_differ: Sequence[str] = (),
             defaults: Mapping[str, Any] | None = None) -> None:
        """Refuse a folder made from other inputs (:func:`dualsynth.io.guard_inputs`: ``DataError``; a fresh run
        records ``digest``), then one made with another configuration (:func:`check_config`)."""
        _io.guard_inputs(self.folder, digest, what, resuming=resuming)
        if resuming:
            check_config(head, advice, config, may_differ=may_differ, defaults=defaults)

    def resume(self, step: int, rows: Sequence[Row] | None = None) -> list[Row]:
        """The run was restored to ``step``: keep the history rows up to it (``rows``, or the history file's) and
        rewrite the file if it does not list exactly those steps.  Returns the rows."""
        if self.folder is None:
            raise ValueError(f"{self.who}: nothing to resume without a run folder")
        self.step, self.committed = int(step), True
        on_disk = None
        if self.history_path.is_file():
            try:
                on_disk = self._read_history(self.history_path)
            except _io.DataError:
                if rows is None:
                    raise  # the history is only in this file: say which file is broken
        source = on_disk if rows is None else rows
        self.rows[:] = [dict(r) for r in (source or ()) if int(r[self.step_key]) <= self.step]
        self.best = None
        for r in self.rows:
            if self._improves(r):
                self.best = r
        if [int(r[self.step_key]) for r in on_disk or ()] != self._steps():
            if self.rows or on_disk:
                self._write_history(self.history_path, self.rows)
        return self.rows

    def repair(self, reevaluate: Callable[[int], Row] | None = None, best_step: int | None = None) -> None:
        """After :meth:`resume`: give the restored step its missing row (``reevaluate(step)``, written to the
        history), then save best again if the restored step is the best one (``best_step``, default: by
        ``score``) and the saved best holds another."""
        if not self.committed or self.step == 0:
            return
        if self.step not in self._steps():
            if reevaluate is None:
                raise ValueError(f"{self.who}: {self.history_path} has no row for the restored {self.step_key} "
                                 f"{self.step} and this run cannot re-evaluate it")
            row = dict(reevaluate(self.step))
            self.rows.append(row)
            if self._improves(row):
                self.best = row
            self._write_history(self.history_path, self.rows)
        if best_step is None:
            best_step = None if self.best is None else int(self.best[self.step_key])
        if best_step == self.step:
            if self._best_saved_at is None or self._best_saved_at() != self.step:
                self._save_best(self.step)

    # ------------------------------------------------------------------ commit
    def commit(self, step: int, row: Row, *, improved: bool | None = None,
               finite: Sequence[str] | None = None) -> bool:
        """Record ``row`` as ``step`` and write last → history → best (best only if the row improves: by
        ``score``, or ``improved``).  A non-finite value of ``finite`` (default: the folder's) stops training
        first (:meth:`stop`), with nothing written.  Returns whether the row is the new best."""
        step = int(step)
        bad = [k for k in (self.finite if finite is None else finite) if not _finite(row[k])]
        if bad:
            raise self.stop(f"non-finite {', '.join(f'{k} ({row[k]!r})' for k in bad)} at {self.step_key} {step}")
        row = {**row, self.step_key: step}
        self.rows[:] = [r for r in self.rows if int(r[self.step_key]) != step]
        self.rows.append(row)
        if improved is None:
            improved = self._improves(row)
        if improved:
            self.best = row
        if self.folder is not None:
            self._save_last(step)
            self.step, self.committed = step, True
            self._write_history(self.history_path, self.rows)
            if improved:
                self._save_best(step)
        return bool(improved)

    def stop(self, detail: str) -> TrainingDiverged:
        """The error to raise when training meets a non-finite value (``detail``: what and where); the last good
        state is put back in memory first (``reset``).  Nothing is written."""
        note = self._reset() if self._reset is not None else ""
        if self.folder is None:
            kept = "There is no checkpoint folder"
        elif not self.committed:
            kept = f"No checkpoint was committed in {self.folder} yet"
        else:
            last = self._last_name() if self._last_name is not None else self.folder
            kept = f"The last good checkpoint {last} ({self.step_key} {self.step}) is kept"
        return TrainingDiverged(f"{self.who}: {detail}; training stopped, that state was not saved. {kept}"
                                + (f"; {note}" if note else "") + "; lower learning_rate (or check the data) and "
                                "run again")

    # ------------------------------------------------------------------ helpers
    def _steps(self) -> list[int]:
        return [int(r[self.step_key]) for r in self.rows]

    def _improves(self, row: Row) -> bool:
        if self.score is None or not _finite(row[self.score]):
            return False
        if self.best is None:
            return True
        new, old = float(row[self.score]), float(self.best[self.score])
        return new < old if self.mode == "min" else new > old
