"""Where things are, and reading a parameter file.

* ``ParamError``: a parameter or parameter file is wrong (the message names it and what to do).
* ``project_root`` / ``resolve_path`` / ``resolve_outputs``: the project folder, paths relative to it, the outputs
  folder (``$DUALSYNTH_OUTPUTS``).
* ``load_yaml`` reads a params/data YAML with errors that name the file.
* ``experiment_dir`` gives ``outputs/<experiment>/`` and makes sure it is writable; ``experiment_name_ok`` says
  whether a name can be one.

Re-exported by :mod:`dualsynth.config`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .io import DataError

__all__ = ["ParamError", "project_root", "resolve_path", "resolve_outputs", "load_yaml", "MAX_EXPERIMENT_NAME",
           "experiment_name_ok", "experiment_dir"]


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



# --------------------------------------------------------------------------- experiment folders
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
