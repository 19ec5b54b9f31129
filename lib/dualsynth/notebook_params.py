"""Notebook parameters: each notebook's rules (:data:`NOTEBOOK_RULES`), and the stage start that checks them.

To add or change a notebook parameter, edit :data:`NOTEBOOK_RULES` below (one entry per name in the notebook's
``parameters`` cell; a test checks that the two agree) and, for a check across parameters, :data:`NOTEBOOK_CHECKS`.

* ``validate_params`` checks parameters against rules, reporting every problem at once.
* ``start_stage`` is the one call each notebook makes on its parameters: validate, create the experiment folder,
  lock the experiment (or, run by the batch, check the batch's lock), seed.  The :class:`Stage` it returns knows the
  stage's folders, saves its figures when ``save_figures`` is set (``stage.figures(...)``, ``stage.save_figure``)
  and, from the notebook's last cell, ``stage.finish()`` records the run and frees the experiment.
* ``set_tf_threads`` limits TensorFlow's threads (06, under the batch).

**Run records and the lock, by hand and by the batch.**  Run by the batch (``$DUALSYNTH_BATCH`` set: a chain or
study holds ``experiment.lock``), ``start_stage`` checks that lock and writes the run record to ``runs/.pending/``,
which the batch moves into ``runs/`` only when papermill reports the notebook succeeded.  Run by hand (Jupyter, or
papermill called directly), ``start_stage`` takes ``experiment.lock`` itself
(:func:`dualsynth.locking.hold_experiment`; held until ``stage.finish()`` or the kernel exits) and writes nothing to
``runs/``: ``stage.finish()`` writes ``runs/run_<tag>.json`` once the notebook has reached its end.  Either way a
failed or interrupted run leaves the last good run's record as it was.

Re-exported by :mod:`dualsynth.config`.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .locking import BATCH_ENV, check_experiment_lock, hold_experiment, release_experiment
from .paths import MAX_EXPERIMENT_NAME, ParamError, experiment_dir, experiment_name_ok
from .records import record_tag, run_record_path, set_seed, write_run_record

__all__ = ["validate_params", "NOTEBOOK_RULES", "NOTEBOOK_CHECKS", "Stage", "start_stage", "set_tf_threads"]


# --------------------------------------------------------------------------- checking parameters against rules
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
        "checkpoint_on": (str, lambda v: v in ("val", "train"),
                          "val (lowest validation reconstruction error) or train (the paper's: lowest training error)"),
        "checkpoint_every": (int, _non_negative, "0 (every eval_every steps) or a number of steps ≥ 1"),
        "generator_val_patches": (int, _non_negative,
                                  "0 (the tier's own train/val split) or the number of pooled patches held out (paper: 6)"),
        "encoder_final_relu": (bool, None, "True (Sonnet's encoder, the paper preset) or False"),
        # the values of dualsynth.vqvae.model.DOWNSAMPLES (not imported here: it would load TensorFlow)
        "downsample": (int, lambda v: v in (2, 4), "4 (a code per 4 x 4 pixels, the paper's) or 2 (per 2 x 2)"),
        "rare_class_weight": ((int, float), lambda v: 0 <= v <= 2,
                              "a number in [0, 2]: 0 (unweighted loss) or the power of the class weights (0.5: "
                              "square root of the inverse pixel share)"),
        "rare_class_below": ((int, float), lambda v: 0 < v <= 1,
                             "a share in (0, 1]: the class weights apply only when the rarest class covers less than "
                             "this share of the training pixels (1: always)"),
        "rare_class_weight_on": (str, lambda v: v in ("mask", "all"),
                                 "mask (the class weights weigh the mask channels' error, the micrograph's stays "
                                 "unweighted) or all (every channel)"),
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
        "prior_maps": (str, lambda v: v in ("train", "all"),
                       "train (the generator's validation maps held out) or all (the paper's: every BMQ code map)"),
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
        "match_fractions": (bool, None, "True (keep the samples whose mean class fractions match the real training "
                            "masks) or False"),
        "pool_candidates": ((int, float), lambda v: math.isfinite(v) and v >= 1, "a number ≥ 1: with match_fractions, accepted samples "
                            "drawn per pool place"),
        "rare_boost": ((int, float), _non_negative, "0 (target fractions as in the real maps) or a number > 0"),
        "pretest": (bool, None, "True or False"),
        "pretest_encoder": (str, None, "plain or a segmentation-models encoder name, e.g. efficientnetb0"),
        "pretest_epochs": (int, _positive, "an integer ≥ 1"),
        "pretest_unet": (dict, lambda v: all(isinstance(k, str) for k in v),
                         "a mapping of U-Net settings for the judge, e.g. {base_filters: 16, batch_size: 8} ({} for "
                         "the defaults)"),
        "pretest_model": ((str, type(None)), None,
                          "None (train the judge) or a U-Net training folder / local .h5 weight file (the paper's pre-test)"),
        "check_judge": (bool, None, "True (a pool curated with min_consistency is measured by a second judge that did "
                        "not pick it) or False"),
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
    # lazy: an import cycle (unet.budget -> variants -> config -> this module); TensorFlow-free
    from .unet.budget import budget_problems

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
    """What a notebook needs after checking its parameters: the values, its folders, its figure saver, its end.

    ``by_batch``: started by a chain or study (its record waits in ``runs/.pending/``; the batch holds the lock);
    otherwise run by hand (this process holds the lock until :meth:`finish`)."""

    name: str
    params: dict[str, Any]
    experiment_dir: Path
    by_batch: bool = False
    figure_dir: Path | None = None
    figure_pdf: bool = False
    finished: bool = field(default=False, compare=False)

    def folder(self, *parts: str) -> Path:
        return experiment_dir(self.experiment_dir.parent, self.experiment_dir.name, *parts)

    def figures(self, *parts: str | os.PathLike, pdf: bool = False) -> Path:
        """Where :meth:`save_figure` puts this stage's figures: ``folder(*parts)`` of the experiment (or one path
        inside it, e.g. 06's run folder), created; ``pdf``: also a PDF of each.  Returns the folder."""
        if len(parts) == 1 and Path(parts[0]).is_absolute():
            folder = Path(parts[0])
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = self.folder(*(str(p) for p in parts))
        self.figure_dir, self.figure_pdf = folder, pdf
        return folder

    def save_figure(self, fig: Any, name: str, pdf: bool | None = None) -> None:
        """Save ``fig`` as ``<figure folder>/<name>.png`` (and ``.pdf``: ``pdf``, by default as set in
        :meth:`figures`) when the notebook's ``save_figures`` is True; otherwise nothing.  Returns nothing, so a cell
        ending with it shows no value."""
        if not self.params.get("save_figures", True):
            return
        if self.figure_dir is None:
            raise RuntimeError(f"{self.name}: call stage.figures(<folder>) before stage.save_figure")
        from .plots_base import save_figure  # lazy: matplotlib, which the batch and the Dask workers do not need

        save_figure(fig, self.figure_dir / name, pdf=self.figure_pdf if pdf is None else pdf)

    @property
    def record_path(self) -> Path:
        """``runs/run_<tag>.json``: where this run's record goes when it succeeds."""
        return run_record_path(self.experiment_dir, record_tag(self.name, self.params))

    def finish(self) -> None:
        """The notebook's last cell: the stage reached its end.  Run by hand, write the run record
        ``runs/run_<tag>.json`` (parameters, versions, git commit) and free the experiment's lock; run by the batch,
        nothing (the batch moves the pending record into ``runs/`` when papermill reports success).  A second call
        does nothing."""
        if self.by_batch or self.finished:
            return
        write_run_record(self.record_path.parent, record_tag(self.name, self.params), self.params)
        release_experiment(self.experiment_dir)
        self.finished = True
        print(f"{self.name} done: run recorded in {self.record_path}; experiment {self.experiment_dir.name} free")


def start_stage(name: str, namespace: Mapping[str, Any]) -> Stage:
    """Validate a notebook's parameters (taken from ``namespace``), create its experiment folder, seed RNGs.

    Run by the batch (``$DUALSYNTH_BATCH``): refuse an experiment another process has locked
    (:func:`~dualsynth.locking.check_experiment_lock`) and record the run (parameters, versions, git commit) in
    ``runs/.pending/``, moved into ``runs/`` by the batch when the stage succeeds.  Run by hand: take the
    experiment's lock for this process (:func:`~dualsynth.locking.hold_experiment`; another holder is refused
    with :class:`~dualsynth.locking.ExperimentLocked`); the record is written by ``stage.finish()``, the
    notebook's last cell (:meth:`Stage.finish`)."""
    if name not in NOTEBOOK_RULES:
        raise ParamError(f"unknown stage {name!r}; stages are {sorted(NOTEBOOK_RULES)}")
    rules = NOTEBOOK_RULES[name]
    params = validate_params({k: namespace[k] for k in rules if k in namespace}, rules, where=f"parameters of {name}")
    problems = [msg for check in NOTEBOOK_CHECKS.get(name, []) if (msg := check(params))]
    if problems:
        raise ParamError(f"bad parameters of {name}:\n  " + "\n  ".join(problems))
    exp = experiment_dir(params["outputs_dir"], params["experiment"])
    by_batch = bool(os.environ.get(BATCH_ENV))
    if by_batch:
        check_experiment_lock(exp)  # another chain or study is writing this experiment
    else:
        hold_experiment(exp, name)  # for the life of the stage: until stage.finish() or the kernel exits
    set_seed(params["seed"])
    if by_batch:
        # one record per run: the study runs 06 many times (variant × seed) in parallel.  It waits in runs/.pending/
        # until the stage succeeds (a failed re-run keeps the last good run's record)
        write_run_record(run_record_path(exp, "x", pending=True).parent, record_tag(name, params), params)
    return Stage(name, params, exp, by_batch=by_batch)


def set_tf_threads(threads: int) -> None:
    """Limit TensorFlow's intra-/inter-op threads (0 keeps TensorFlow's default).

    Must run before TensorFlow executes its first op; the batch sets it so parallel runs share the cores.
    """
    if threads <= 0:
        return
    import tensorflow as tf  # lazy: TensorFlow only where a notebook trains (config is imported everywhere)

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
    except RuntimeError as e:  # already initialised: keep going with the default, but say so
        warnings.warn(f"tf_threads={threads} not applied: {e}", stacklevel=2)
