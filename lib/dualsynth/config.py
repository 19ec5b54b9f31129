"""Parameters, data descriptions, experiment folders, seeds and run records.

* ``load_yaml`` reads a params/data YAML with errors that name the file.
* ``DataConfig`` is a data YAML (``params/data/*.yaml``): palette, where the
  micrographs come from, and how many patches each tier gets.
* ``validate_params`` is the one check each notebook calls on its parameters.
* ``experiment_dir`` gives ``outputs/<experiment>/`` and makes sure it is writable.
* ``run_record`` records versions and the git commit of a run.
"""
from __future__ import annotations

import os
import platform
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

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
    "large_images": {"kind", "images", "test_images", "mask_encoding", "lq_masks"},
}
_DATA_KEYS = {"name", "description", "modality", "channels", "classes", "source", "tiers", "citation", "license"}


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
    if channels not in (1, 3):
        raise ParamError(f"{path}: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    try:
        palette = Palette.from_dict(raw["classes"], source=str(path))
    except PaletteError as e:
        raise ParamError(str(e)) from e
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


def experiment_name_ok(name: str) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name))


def experiment_dir(outputs_dir: str | os.PathLike, experiment: str, *subdirs: str) -> Path:
    """``<outputs_dir>/<experiment>/<subdirs…>``, created and checked writable."""
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


# --------------------------------------------------------------------------- per-notebook rules
def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


_COMMON_RULES: dict[str, tuple] = {
    "experiment": (str, experiment_name_ok, "a folder name of letters, digits, '_', '-', '.'"),
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
        "variants": (str, None, "'all' or a comma list of variant names / groups (base, mixed, synthetic, augment)"),
        "save_figures": (bool, None, "True or False"),
    },
    "06_unet_training": {
        **_COMMON_RULES,
        "variant": (str, None, "a variant name, e.g. BMQ_50 (see params/variants/), or a matched control run "
                    "<base>@<updates>, e.g. SHQ_0@320"),
        "encoder": (str, None, "a segmentation-models encoder, e.g. efficientnetb3"),
        "encoder_weights": ((str, type(None)), None, "'imagenet', None (null) or the path of a local .h5 file"),
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
    and record the run (parameters, versions, git commit) in ``<experiment>/runs/``."""
    if name not in NOTEBOOK_RULES:
        raise ParamError(f"unknown stage {name!r}; stages are {sorted(NOTEBOOK_RULES)}")
    rules = NOTEBOOK_RULES[name]
    params = validate_params({k: namespace[k] for k in rules if k in namespace}, rules, where=f"parameters of {name}")
    problems = [msg for check in NOTEBOOK_CHECKS.get(name, []) if (msg := check(params))]
    if problems:
        raise ParamError(f"bad parameters of {name}:\n  " + "\n  ".join(problems))
    exp = experiment_dir(params["outputs_dir"], params["experiment"])
    set_seed(params["seed"])
    # one record per run: the study runs 06 many times (variant × seed) in parallel
    tag = name if "variant" not in params else f"{name}-{params['variant']}-seed{params['seed']}"
    write_run_record(exp / "runs", tag, params)
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
