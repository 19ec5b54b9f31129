"""One writer per experiment: the experiment lock the batch holds, and the check each notebook makes.

``experiment_lock`` holds ``<experiment>/experiment.lock`` (an flock; re-entrant within a process) while a chain or
study writes an experiment; ``check_experiment_lock`` refuses a stage of an experiment another process holds.
``$DUALSYNTH_BATCH`` (``BATCH_ENV``) names the holder, so the notebooks the batch starts may write, and their run
records wait in ``runs/.pending/`` (``PENDING_RECORDS``).  Re-exported by :mod:`dualsynth.config`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from .io import DataError

__all__ = ["BATCH_ENV", "LOCK_FILE", "PENDING_RECORDS", "ExperimentLocked", "lock_token", "check_experiment_lock",
           "experiment_lock"]


#: Set by the batch (chain / study) while it holds an experiment's lock: ``<host>:<pid>`` of the holder.  A notebook
#: run with it (a kernel the batch started) writes its run record to ``runs/.pending/``, and the batch moves the
#: record into ``runs/`` only when the stage succeeds; a notebook run without it writes ``runs/`` at once.
BATCH_ENV = "DUALSYNTH_BATCH"
LOCK_FILE = "experiment.lock"
PENDING_RECORDS = ".pending"


class ExperimentLocked(DataError):
    """Another process is writing this experiment."""


_HELD_LOCKS: dict[Path, list] = {}  # experiment folder -> [file descriptor, depth]: re-entrant within a process


def lock_token() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _read_lock(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _locked_message(path: Path, info: Mapping[str, Any]) -> str:
    who = (f"process {info.get('pid')} on {info.get('host')} (since {info.get('started')}: {info.get('command')})"
           if info.get("pid") else "another process")
    return (f"experiment {path.parent} is in use by {who}, lock file {path}: two runs writing one experiment would "
            "overwrite each other's records and notebooks. Wait for it to finish, or pass another experiment name")


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
    try:
        import fcntl
    except ImportError:  # pragma: no cover
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


def _acquire_lock(path: Path, command: str | None) -> int:
    import fcntl
    import json
    import socket
    import time
    import warnings

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
                          "unfinished stage is redone or resumed", stacklevel=4)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "token": lock_token(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command or " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        return fd
    raise ExperimentLocked(_locked_message(path, _read_lock(path)))


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
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        try:
            yield path
        finally:
            _HELD_LOCKS[key][1] -= 1
        return
    try:
        import fcntl  # noqa: F401  (POSIX)
    except ImportError:  # pragma: no cover — no flock (Windows): run unlocked rather than not at all
        yield path
        return
    fd = _acquire_lock(path, command)
    _HELD_LOCKS[key] = [fd, 1]
    saved = os.environ.get(BATCH_ENV)
    os.environ[BATCH_ENV] = lock_token()
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop(BATCH_ENV, None)
        else:
            os.environ[BATCH_ENV] = saved
        del _HELD_LOCKS[key]
        with contextlib.suppress(OSError):
            path.unlink()  # before the flock goes: a waiting process then sees a new file (checked by inode)
        os.close(fd)
