"""Parameters, data descriptions, experiment folders, seeds and run records.

* ``load_yaml`` reads a params/data YAML with errors that name the file.
* ``DataConfig`` is a data YAML (``params/data/*.yaml``): palette, where the
  micrographs come from, and how many patches each tier gets.
* ``validate_params`` is the one check each notebook calls on its parameters.
* ``experiment_dir`` gives ``outputs/<experiment>/`` and makes sure it is writable.
* ``run_record`` records versions and the git commit of a run.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import yaml

from .io import DataError, atomic_write_json
from .palette import Palette, PaletteError

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
]


class ParamError(ValueError):
    """A parameter or parameter file is wrong; the message names it and what to do."""


def project_root() -> Path:
    """The project folder (holding ``pyproject.toml``), or ``$DUALSYNTH_ROOT``."""
    env = os.environ.get("DUALSYNTH_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "lib" / "dualsynth").is_dir():
            return parent
    cwd = Path.cwd().resolve()
    for parent in (cwd, *cwd.parents):
        if (parent / "pyproject.toml").is_file():
            return parent
    return cwd


def resolve_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """Absolute paths stay; relative ones are taken from ``base`` (default: the project root)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    return (Path(base) if base is not None else project_root()) / p


def resolve_outputs(outputs_dir: str | os.PathLike) -> Path:
    """The outputs folder: ``$DUALSYNTH_OUTPUTS`` replaces the default ``outputs`` (the test suite uses this to run
    the notebooks with their defaults into a temporary folder); any other value is resolved as a path."""
    env = os.environ.get("DUALSYNTH_OUTPUTS")
    if env and str(outputs_dir) == "outputs":
        return Path(env).resolve()
    return resolve_path(outputs_dir)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = resolve_path(path)
    if not path.is_file():
        raise ParamError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamError(f"{path}: must hold a mapping of names to values, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- data YAML
@dataclass(frozen=True)
class TierSpec:
    """How many patches each tier gets (the paper: SHQ/SLQ 16/5, BLQ/BMQ 48/12, test 7 + 20)."""

    small: tuple[int, int] = (16, 5)
    big: tuple[int, int] = (48, 12)
    test_main: int = 7  # test patches cut from the training image(s) (paper: 7 SHQ test patches)
    test_extra: int = 20  # test patches from held-out images (paper: 20 from other images)

    def __post_init__(self) -> None:
        for name in ("small", "big"):
            v = getattr(self, name)
            if len(v) != 2 or min(v) < 1:
                raise ParamError(f"tiers.{name} must be [train, val] with both ≥ 1, got {list(v)}")
        if sum(self.big) < sum(self.small):
            raise ParamError(f"tiers.big {list(self.big)} must hold at least as many patches as tiers.small {list(self.small)}")
        if self.big[0] < self.small[0] or self.big[1] < self.small[1]:
            raise ParamError("tiers.big train/val must each be ≥ tiers.small train/val (the small set is part of the big one)")
        if self.test_main < 0 or self.test_extra < 0 or self.test_main + self.test_extra < 1:
            raise ParamError("tiers.test_main + tiers.test_extra must be ≥ 1 (test images are needed)")


_SOURCE_KINDS = {
    "generated": {"kind", "generator", "seed", "width", "height", "grain_diameter_px", "scale_with_patch", "extra_test_seed"},
    "pairs": {"kind", "images", "masks", "masks_lq", "mask_encoding", "glob", "test_image_fraction", "lq_masks"},
}
_DATA_KEYS = {"name", "description", "modality", "channels", "classes", "source", "tiers", "citation", "license"}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, (float, np.floating)) and np.isfinite(v))


#: The type of each source value, with what a good value is: (check, hint)
_SOURCE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "generator": (lambda v: isinstance(v, str), "a generator name (ndfeb)"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    "extra_test_seed": (lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    "width": (lambda v: _is_int(v) and v >= 8, "an integer number of pixels ≥ 8"),
    "height": (lambda v: _is_int(v) and v >= 8, "an integer number of pixels ≥ 8"),
    "grain_diameter_px": (lambda v: _is_number(v) and v > 0, "a number of pixels > 0"),
    "scale_with_patch": (lambda v: isinstance(v, bool), "true or false"),
    "images": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "masks": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "masks_lq": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "glob": (lambda v: isinstance(v, str) and v != "", "a file pattern such as '*.png'"),
    "mask_encoding": (lambda v: v in ("auto", "index", "grey", "rgb"), "auto, index, grey or rgb"),
    "test_image_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1), e.g. 0.25"),
}


def _check_data_types(path: Path, raw: Mapping[str, Any], source: Mapping[str, Any], tiers: Mapping[str, Any]) -> None:
    """Name the file and the key of a value of the wrong type (a bare TypeError/ValueError names neither)."""
    for key, v in source.items():
        if key in _SOURCE_TYPES and not _SOURCE_TYPES[key][0](v):
            raise ParamError(f"{path}: source.{key} must be {_SOURCE_TYPES[key][1]}, got {v!r}")
    for key in ("small", "big"):
        if key in tiers:
            v = tiers[key]
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)):
                raise ParamError(f"{path}: tiers.{key} must be [train, val], two integers ≥ 1 (e.g. [16, 5]), "
                                 f"got {v!r}")
    for key in ("test_main", "test_extra"):
        if key in tiers and not (_is_int(tiers[key]) and tiers[key] >= 0):
            raise ParamError(f"{path}: tiers.{key} must be an integer ≥ 0, got {tiers[key]!r}")
    for key in ("name", "description"):
        if key in raw and not (isinstance(raw[key], (str, type(None))) or _is_int(raw[key])):
            raise ParamError(f"{path}: {key} must be a text, got {raw[key]!r}")


@dataclass(frozen=True)
class DataConfig:
    name: str
    channels: int
    palette: Palette
    source: dict[str, Any]
    tiers: TierSpec = field(default_factory=TierSpec)
    description: str = ""
    path: Path | None = None

    @property
    def kind(self) -> str:
        return str(self.source["kind"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "channels": self.channels,
            "classes": self.palette.to_dict(),
            "source": self.source,
            "tiers": {"small": list(self.tiers.small), "big": list(self.tiers.big),
                      "test_main": self.tiers.test_main, "test_extra": self.tiers.test_extra},
            "path": str(self.path) if self.path else None,
        }


def load_data_config(path: str | os.PathLike) -> DataConfig:
    """Read and validate a data YAML (``params/data/*.yaml``); relative data paths are taken from the project root."""
    path = resolve_path(path)
    raw = load_yaml(path)
    unknown = set(raw) - _DATA_KEYS
    if unknown:
        raise ParamError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_DATA_KEYS)}")
    for key in ("name", "channels", "classes", "source"):
        if key not in raw:
            raise ParamError(f"{path}: missing required key {key!r}")
    channels = raw["channels"]
    if not _is_int(channels) or channels not in (1, 3):
        raise ParamError(f"{path}: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    try:
        palette = Palette.from_dict(raw["classes"], source=str(path))
    except PaletteError as e:
        raise ParamError(str(e)) from e
    for key in ("source", "tiers"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ParamError(f"{path}: {key} must be a mapping of keys to values, got {raw[key]!r}")
    source = dict(raw["source"] or {})
    kind = source.get("kind")
    if kind not in _SOURCE_KINDS:
        raise ParamError(f"{path}: source.kind must be one of {sorted(_SOURCE_KINDS)}, got {kind!r}")
    bad = set(source) - _SOURCE_KINDS[kind]
    if bad:
        raise ParamError(f"{path}: source keys {sorted(bad)} are not known for kind {kind!r}; allowed: {sorted(_SOURCE_KINDS[kind])}")
    lq = source.get("lq_masks", "degrade")
    if kind != "generated" and lq not in ("degrade", "hq", "folder"):
        raise ParamError(f"{path}: source.lq_masks must be degrade, hq or folder, got {lq!r}")
    tiers_raw = dict(raw.get("tiers") or {})
    bad = set(tiers_raw) - {"small", "big", "test_main", "test_extra"}
    if bad:
        raise ParamError(f"{path}: unknown tiers keys {sorted(bad)}")
    _check_data_types(path, raw, source, tiers_raw)
    missing = sorted({"images", "masks"} - set(source)) if kind == "pairs" else []
    if missing:
        raise ParamError(f"{path}: source of kind 'pairs' needs {' and '.join(f'source.{k}' for k in missing)} "
                         "(folders of images and of their masks, paired by file name)")
    try:
        tiers = TierSpec(
            small=tuple(tiers_raw.get("small", (16, 5))),
            big=tuple(tiers_raw.get("big", (48, 12))),
            test_main=int(tiers_raw.get("test_main", 7)),
            test_extra=int(tiers_raw.get("test_extra", 20)),
        )
    except ParamError as e:
        raise ParamError(f"{path}: {e}") from e
    return DataConfig(
        name=str(raw["name"]),
        channels=int(channels),
        palette=palette,
        source=source,
        tiers=tiers,
        description=str(raw.get("description", "")),
        path=path,
    )


# --------------------------------------------------------------------------- notebook parameters
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def validate_params(params: Mapping[str, Any], rules: Mapping[str, tuple], where: str = "parameters") -> dict[str, Any]:
    """Check notebook parameters against ``rules`` once, at the start of a notebook.

    ``rules`` maps a parameter name to ``(types, check, hint)`` where ``check``
    is a callable returning True for a good value (or None) and ``hint`` says
    what a good value is.  All problems are reported together.
    """
    problems = []
    for name, (types, check, hint) in rules.items():
        if name not in params:
            problems.append(f"{name}: missing")
            continue
        value = params[name]
        if types is not None:
            allowed = _as_tuple(types)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                problems.append(f"{name}={value!r}: wrong type {type(value).__name__}; expected {hint}")
                continue
        if check is not None and not check(value):
            problems.append(f"{name}={value!r}: {hint}")
    if problems:
        raise ParamError(f"bad {where}:\n  " + "\n  ".join(problems))
    return dict(params)


def _as_tuple(t: Any) -> tuple:
    return t if isinstance(t, tuple) else (t,)


#: Longest experiment name: it becomes a folder name (file systems allow 255 bytes; forks and locks add suffixes).
MAX_EXPERIMENT_NAME = 100


def experiment_name_ok(name: str) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and len(name) <= MAX_EXPERIMENT_NAME


def experiment_dir(outputs_dir: str | os.PathLike, experiment: str, *subdirs: str) -> Path:
    """``<outputs_dir>/<experiment>/<subdirs…>``, created and checked writable."""
    if isinstance(experiment, str) and len(experiment) > MAX_EXPERIMENT_NAME:
        raise ParamError(f"experiment name of {len(experiment)} characters ({experiment[:20]}…): use at most "
                         f"{MAX_EXPERIMENT_NAME} (it becomes a folder name)")
    if not experiment_name_ok(experiment):
        raise ParamError(f"experiment={experiment!r}: use letters, digits, '_', '-' or '.' (it becomes a folder name)")
    path = resolve_outputs(outputs_dir) / experiment
    for s in subdirs:
        path = path / s
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output folder {path}: {e.strerror or e}; choose another outputs_dir") from e
    if not os.access(path, os.W_OK):
        raise DataError(f"output folder {path} is not writable; choose another outputs_dir")
    return path


# --------------------------------------------------------------------------- seeds and records
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
        import tensorflow as tf

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
    from importlib import metadata

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


# --------------------------------------------------------------------------- one writer per experiment
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


# --------------------------------------------------------------------------- per-notebook rules
def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


_COMMON_RULES: dict[str, tuple] = {
    "experiment": (str, experiment_name_ok,
                   f"a folder name of letters, digits, '_', '-', '.', at most {MAX_EXPERIMENT_NAME} characters"),
    "outputs_dir": (str, None, "a folder path (relative paths are taken from the project root)"),
    "seed": (int, _non_negative, "an integer ≥ 0"),
}

#: Parameter rules of each notebook; the keys are exactly the notebook's parameters cell (a test checks this).
NOTEBOOK_RULES: dict[str, dict[str, tuple]] = {
    "01_patching": {
        **_COMMON_RULES,
        "data_config": (str, None, "the path of a data YAML (params/data/*.yaml)"),
        "patch_size": (int, lambda v: v >= 8 and v % 4 == 0, "an integer ≥ 8 divisible by 4"),
        "max_majority_fraction": ((int, float), lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
        "save_figures": (bool, None, "True or False"),
    },
    "02_vqvae": {
        **_COMMON_RULES,
        "train_tier": (str, lambda v: v in ("SHQ", "SLQ", "BLQ", "BMQ"), "one of SHQ, SLQ, BLQ, BMQ"),
        "mask_encoding": (str, lambda v: v in ("grey", "onehot"), "grey (the paper's) or onehot"),
        "num_embeddings": (int, lambda v: v >= 2, "K, an integer ≥ 2"),
        "embedding_dim": (int, _positive, "D, an integer ≥ 1"),
        "num_hiddens": (int, lambda v: v >= 2 and v % 2 == 0, "an even integer ≥ 2"),
        "num_residual_hiddens": (int, _positive, "an integer ≥ 1"),
        "num_residual_layers": (int, _non_negative, "an integer ≥ 0"),
        "use_ema": (bool, None, "True (VectorQuantizerEMA) or False (VectorQuantizer)"),
        "commitment_cost": ((int, float), _non_negative, "a number ≥ 0"),
        "steps": (int, _positive, "the number of updates, ≥ 1"),
        "batch_size": (int, _positive, "an integer ≥ 1"),
        "learning_rate": ((int, float), _positive, "a number > 0"),
        "eval_every": (int, _positive, "an integer ≥ 1"),
        "snapshot_steps": (list, lambda v: all(isinstance(s, int) and s >= 0 for s in v), "a list of steps ≥ 0"),
        "save_figures": (bool, None, "True or False"),
    },
    "03_pixelcnn": {
        **_COMMON_RULES,
        "prior": (str, lambda v: v in ("pixelcnn", "gated"), "pixelcnn or gated"),
        "hidden": (int, _positive, "an integer ≥ 1"),
        "num_layers": (int, _positive, "an integer ≥ 1"),
        "steps": (int, _positive, "the number of updates, ≥ 1"),
        "batch_size": (int, _positive, "an integer ≥ 1"),
        "learning_rate": ((int, float), _positive, "a number > 0"),
        "eval_every": (int, _positive, "an integer ≥ 1"),
        "patience": (int, _non_negative, "0 (no early stopping) or the number of evaluations without improvement"),
        "augment_dihedral": (bool, None, "True or False"),
        "condition": (str, lambda v: v in ("none", "class_fractions"),
                      "none or class_fractions (condition the gated prior on each map's class fractions)"),
        "num_preview": (int, _non_negative, "an integer ≥ 0"),
        "temperature": ((int, float), _positive, "a number > 0"),
        "save_figures": (bool, None, "True or False"),
    },
    "04_synthesis": {
        **_COMMON_RULES,
        "pool_size": (int, _positive, "an integer ≥ 1 (300 % of 48 = 144 for the paper's variants)"),
        "temperature": ((int, float), _positive, "a number > 0"),
        "sample_batch": (int, _positive, "an integer ≥ 1"),
        "min_object_px": (int, lambda v: v >= -1, "-1 (200 px scaled with patch area) or a pixel count ≥ 0"),
        "use_kmeans": (bool, None, "True or False"),
        "cleanup": (str, lambda v: v in ("paper", "thin", "none"),
                    "paper (small objects by area), thin (rims reassigned, long thin objects kept) or none"),
        "min_object_len": ((int, float), lambda v: v == -1 or v >= 0,
                           "-1 (twice the side of a square of min_object_px) or a length in pixels ≥ 0"),
        "rim_px": (int, _non_negative, "an integer ≥ 0 (0: no rim step)"),
        "min_consistency": ((int, float), lambda v: 0 <= v <= 10, "0 (keep every sample) or a per-image consistency > 0"),
        "max_fraction_error": ((int, float), lambda v: v == -1 or 0 <= v <= 1,
                               "-1 (off) or a total-variation distance in [0, 1] between a sample's mask class "
                               "fractions and its target (needs a prior conditioned on class fractions)"),
        "max_curation_rounds": (int, _positive, "an integer ≥ 1"),
        "rare_boost": ((int, float), _non_negative, "0 (target fractions as in the real maps) or a number > 0"),
        "pretest": (bool, None, "True or False"),
        "pretest_encoder": (str, None, "a segmentation-models encoder name, e.g. efficientnetb0"),
        "pretest_epochs": (int, _positive, "an integer ≥ 1"),
        "save_figures": (bool, None, "True or False"),
    },
    "05_datasets": {
        **_COMMON_RULES,
        "variants": (str, None, "'all' or a comma list of variant names / groups (base, mixed, synthetic, augment, "
                     "pretrain)"),
        "save_figures": (bool, None, "True or False"),
    },
    "06_unet_training": {
        **_COMMON_RULES,
        "variant": (str, None, "a variant name, e.g. BMQ_50 or PT_SHQ_100 (see params/variants/), or a matched "
                    "control run <base>@<updates>, e.g. SHQ_0@320"),
        "encoder": (str, None, "plain (the small plain U-Net) or a segmentation-models encoder, e.g. efficientnetb3"),
        "encoder_weights": ((str, type(None)), None, "'imagenet', None (null) or the path of a local .h5 file"),
        "base_filters": (int, _positive, "an integer ≥ 1 (width of the plain U-Net's first level)"),
        "lr_schedule": (str, lambda v: v in ("plateau", "cosine"),
                        "plateau (the paper's ReduceLROnPlateau) or cosine (warm-up, then cosine to 0)"),
        "warmup_fraction": ((int, float), lambda v: 0 <= v < 1, "a fraction in [0, 1) of the updates"),
        "class_weighting": (str, lambda v: v in ("none", "sqrt_inverse"),
                            "none or sqrt_inverse (loss weights ∝ 1/sqrt(class share) in the training masks)"),
        "normalise": (str, lambda v: v in ("encoder", "patches"),
                      "encoder (its ImageNet statistics) or patches (z-scores from the training images)"),
        "epochs": (int, _positive, "an integer ≥ 1"),
        "batch_size": (int, _positive, "an integer ≥ 1"),
        "val_batch_size": (int, _positive, "an integer ≥ 1"),
        "learning_rate": ((int, float), _positive, "a number > 0"),
        "early_stopping_patience": (int, _positive, "an integer ≥ 1"),
        "reduce_lr_patience": (int, _positive, "an integer ≥ 1"),
        "budget": (str, lambda v: v in ("fixed", "epochs"),
                   "fixed (epochs × steps_per_epoch updates for every run) or epochs (the paper's: steps per epoch "
                   "= training images // batch_size)"),
        "steps_per_epoch": (int, _non_negative, "0 (training images / batch size, the paper's) or a fixed number"),
        "bn_momentum": ((float, type(None)), lambda v: v is None or 0 <= v < 1,
                        "None (the encoder's 0.99) or a momentum in [0, 1), e.g. 0.9 for short schedules"),
        "mixed_precision": (bool, None, "True (float16 compute, for GPUs) or False (float32, the default)"),
        "tf_threads": (int, _non_negative, "0 (TensorFlow's default) or the number of threads"),
        "save_figures": (bool, None, "True or False"),
    },
    "07_results_plots": {
        **_COMMON_RULES,
        "overlay_variants": (str, None, "a comma list of variants (or best / worst) to show prediction overlays for"),
        "margin": ((int, float), _non_negative, "a gain ≥ 0 of Missing Class IoU: 'does not help' needs the 95 % "
                   "interval to exclude gains above it (e.g. 0.02)"),
        "save_figures": (bool, None, "True or False"),
    },
}


def _unet_budget(p: Mapping[str, Any]) -> str | None:
    from .unet.budget import budget_problems  # TensorFlow-free

    return "\n  ".join(budget_problems(p["budget"], p["steps_per_epoch"], p["epochs"], p["variant"])) or None


#: Checks across parameters of one notebook: each returns a problem (str) or None.
NOTEBOOK_CHECKS: dict[str, list[Callable[[Mapping[str, Any]], str | None]]] = {
    "03_pixelcnn": [
        lambda p: ("condition='class_fractions' needs prior='gated' (the plain PixelCNN takes no condition)"
                   if p["condition"] != "none" and p["prior"] != "gated" else None),
    ],
    "06_unet_training": [_unet_budget],
    "04_synthesis": [
        lambda p: ("min_consistency > 0 needs pretest=True (the pre-test U-Net judges each synthetic pair)"
                   if p["min_consistency"] > 0 and not p["pretest"] else None),
    ],
}


@dataclass
class Stage:
    """What a notebook needs after checking its parameters: the values and its folders."""

    name: str
    params: dict[str, Any]
    experiment_dir: Path

    def folder(self, *parts: str) -> Path:
        return experiment_dir(self.experiment_dir.parent, self.experiment_dir.name, *parts)


def start_stage(name: str, namespace: Mapping[str, Any]) -> Stage:
    """Validate a notebook's parameters (taken from ``namespace``), create its experiment folder, seed RNGs,
    and record the run (parameters, versions, git commit) in ``<experiment>/runs/`` (run by the batch: in
    ``runs/.pending/``, moved into ``runs/`` when the stage succeeds).  Refuses an experiment another process has
    locked (:func:`experiment_lock`)."""
    if name not in NOTEBOOK_RULES:
        raise ParamError(f"unknown stage {name!r}; stages are {sorted(NOTEBOOK_RULES)}")
    rules = NOTEBOOK_RULES[name]
    params = validate_params({k: namespace[k] for k in rules if k in namespace}, rules, where=f"parameters of {name}")
    problems = [msg for check in NOTEBOOK_CHECKS.get(name, []) if (msg := check(params))]
    if problems:
        raise ParamError(f"bad parameters of {name}:\n  " + "\n  ".join(problems))
    exp = experiment_dir(params["outputs_dir"], params["experiment"])
    check_experiment_lock(exp)  # another chain or study is writing this experiment
    set_seed(params["seed"])
    # one record per run: the study runs 06 many times (variant × seed) in parallel.  Run by the batch, the record
    # waits in runs/.pending/ until the stage succeeds (a failed re-run keeps the last good run's record)
    pending = bool(os.environ.get(BATCH_ENV))
    write_run_record(run_record_path(exp, "x", pending).parent, record_tag(name, params), params)
    return Stage(name, params, exp)


def set_tf_threads(threads: int) -> None:
    """Limit TensorFlow's intra-/inter-op threads (0 keeps TensorFlow's default).

    Must run before TensorFlow executes its first op; the batch sets it so parallel runs share the cores.
    """
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
    except RuntimeError as e:  # already initialised: keep going with the default, but say so
        import warnings

        warnings.warn(f"tf_threads={threads} not applied: {e}", stacklevel=2)
