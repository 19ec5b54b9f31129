"""One writer per experiment: the experiment lock the batch holds, the one a notebook run by hand holds, and the
check each notebook the batch starts makes.

``experiment_lock`` holds ``<experiment>/experiment.lock`` (an flock; re-entrant within a process) while a chain or
study writes an experiment; ``check_experiment_lock`` refuses a stage of an experiment another process holds.
``$DUALSYNTH_BATCH`` (``BATCH_ENV``) names the holder, so the notebooks the batch starts may write, and their run
records wait in ``runs/.pending/`` (``PENDING_RECORDS``).  A notebook run by hand (no ``$DUALSYNTH_BATCH``: in
Jupyter, or papermill called directly) takes the same lock itself for the life of its stage
(``hold_experiment``, from ``config.start_stage``) and frees it when the stage finishes (``release_experiment``,
from ``stage.finish()`` in the notebook's last cell) or its kernel process exits.  Re-exported by
:mod:`dualsynth.config`.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from .io import DataError

try:
    import fcntl
except ImportError:  # pragma: no cover — no flock (Windows): experiments are not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = ["BATCH_ENV", "LOCK_FILE", "PENDING_RECORDS", "ExperimentLocked", "lock_token", "check_experiment_lock",
           "experiment_lock", "hold_experiment", "release_experiment"]


#: Set by the batch (chain / study) while it holds an experiment's lock: ``<host>:<pid>`` of the holder.  A notebook
#: run with it (a kernel the batch started) writes its run record to ``runs/.pending/``, and the batch moves the
#: record into ``runs/`` only when the stage succeeds; a notebook run without it writes ``runs/`` at once.
BATCH_ENV = "DUALSYNTH_BATCH"
LOCK_FILE = "experiment.lock"
PENDING_RECORDS = ".pending"


class ExperimentLocked(DataError):
    """Another process is writing this experiment."""


_HELD_LOCKS: dict[Path, list] = {}  # experiment folder -> [file descriptor, depth]: re-entrant within a process
_HAND_HELD: dict[Path, int] = {}  # experiment folder -> pid: the lock a notebook run by hand holds (one depth unit)


def lock_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _locked_message(path: Path, info: Mapping[str, Any]) -> str:
    who = (f"process {info.get('pid')} on {info.get('host')} (since {info.get('started')}: {info.get('command')})"
           if info.get("pid") else "another process")
    hint = ""
    if info.get("by_hand"):  # a Jupyter kernel keeps the lock after its notebook stopped with an error
        hint = (f" (if that notebook stopped with an error, run it again to its end, or shut down its kernel, "
                f"process {info.get('pid')}: its lock goes with it)")
    return (f"experiment {path.parent} is in use by {who}, lock file {path}: two runs writing one experiment would "
            f"overwrite each other's records and notebooks. Wait for it to finish{hint}, or pass another experiment "
            "name")


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _lock_held_elsewhere(path: Path) -> bool:
    """Whether a live process holds the lock ``path`` (an flock; the kernel releases it when its holder dies)."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def check_experiment_lock(experiment_path: str | os.PathLike) -> None:
    """Refuse to write an experiment whose lock another process holds (its own batch's lock is fine)."""
    path = Path(experiment_path) / LOCK_FILE
    if not path.exists() or Path(experiment_path).resolve() in _HELD_LOCKS:
        return
    info = _read_lock(path)
    if info.get("token") and info.get("token") == os.environ.get(BATCH_ENV):
        return
    if _lock_held_elsewhere(path):
        raise ExperimentLocked(_locked_message(path, info))


def _acquire_lock(path: Path, command: str | None, by_hand: bool = False) -> int:
    for attempt in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            if attempt < 3:  # a notebook's check_experiment_lock may hold it for a moment
                time.sleep(0.05)
                continue
            raise ExperimentLocked(_locked_message(path, _read_lock(path))) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder released (deleted) it while we waited: take the new file
            os.close(fd)
            continue
        old = _read_lock(path)
        if old.get("pid"):
            state = "is no longer running" if not _pid_alive(old["pid"]) else "no longer holds it"
            warnings.warn(f"{path}: taking over a stale lock of process {old.get('pid')} on {old.get('host')} "
                          f"(since {old.get('started')}: {old.get('command')}), which {state} (killed?); its "
                          "unfinished stage is redone or resumed", stacklevel=5)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "token": lock_token(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command or " ".join(sys.argv)}
        if by_hand:
            info["by_hand"] = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        return fd
    raise ExperimentLocked(_locked_message(path, _read_lock(path)))


def _take(key: Path, path: Path, command: str | None, by_hand: bool = False) -> bool:
    """One more hold of the lock of experiment ``key`` by this process; True when it was taken now (not re-entered)."""
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        return False
    _HELD_LOCKS[key] = [_acquire_lock(path, command, by_hand), 1]
    return True


def _drop(key: Path, path: Path) -> None:
    """One hold less; the last one removes the lock file and frees the flock."""
    held = _HELD_LOCKS.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD_LOCKS[key]
    with contextlib.suppress(OSError):
        path.unlink()  # before the flock goes: a waiting process then sees a new file (checked by inode)
    os.close(held[0])


@contextlib.contextmanager
def experiment_lock(experiment_path: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``<experiment>/experiment.lock`` while the batch writes the experiment (re-entrant within a process).

    A second process is refused with :class:`ExperimentLocked` naming the holder; a lock left by a process that
    died (the file remains, its flock is gone) is taken over with a warning.  While held, ``$DUALSYNTH_BATCH`` names
    the holder, so the notebooks the batch starts may write (see :func:`check_experiment_lock`).
    """
    exp = Path(experiment_path)
    key = exp.resolve()
    path = exp / LOCK_FILE
    if fcntl is None:  # pragma: no cover — no flock (Windows): run unlocked rather than not at all
        yield path
        return
    if not _take(key, path, command):
        try:
            yield path
        finally:
            _drop(key, path)
        return
    saved = os.environ.get(BATCH_ENV)
    os.environ[BATCH_ENV] = lock_token()
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop(BATCH_ENV, None)
        else:
            os.environ[BATCH_ENV] = saved
        _drop(key, path)


# --------------------------------------------------------------------------- a notebook run by hand
def hold_experiment(experiment_path: str | os.PathLike, stage: str) -> None:
    """Hold ``<experiment>/experiment.lock`` for a notebook run by hand (``config.start_stage`` without the batch),
    until :func:`release_experiment` (``stage.finish()``, the notebook's last cell) or until this process — the
    Jupyter kernel — exits.

    Another process holding the experiment (a chain, a study, a notebook in another kernel) is refused at once with
    :class:`ExperimentLocked` naming it (never a wait).  Running the notebook again in the same kernel keeps the
    lock it holds; a stage of another experiment in the same kernel frees the first one's (that stage was left
    unfinished: a kernel runs one notebook).  A lock the batch of this process holds is used as it is.
    """
    exp = Path(experiment_path)
    key = exp.resolve()
    if fcntl is None or _HAND_HELD.get(key) == os.getpid():  # the notebook re-run in this kernel: keep the lock
        return
    for other in list(_HAND_HELD):
        release_experiment(other)
    _take(key, exp / LOCK_FILE, f"notebook {stage} run by hand", by_hand=True)
    _HAND_HELD[key] = os.getpid()


def release_experiment(experiment_path: str | os.PathLike | None = None) -> bool:
    """Free the lock :func:`hold_experiment` took (``None``: every such lock of this process); True if one was held."""
    keys = list(_HAND_HELD) if experiment_path is None else [Path(experiment_path).resolve()]
    freed = False
    for key in keys:
        if _HAND_HELD.get(key) != os.getpid():  # not held, or a forked child's copy of its parent's: not ours to free
            _HAND_HELD.pop(key, None)
            continue
        del _HAND_HELD[key]
        _drop(key, key / LOCK_FILE)
        freed = True
    return freed


@atexit.register
def _release_at_exit() -> None:  # the kernel exits: its flock goes anyway; the file goes too, so no stale-lock warning
    with contextlib.suppress(Exception):
        release_experiment()
