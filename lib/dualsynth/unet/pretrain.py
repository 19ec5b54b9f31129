"""Pretrain on synthetic, then fine-tune on real: the two-stage schedule of the ``PT_<tier>_<p>`` variants.

:func:`train_pretrain_finetune` calls :func:`~dualsynth.unet.train.train_unet` twice:

1. **Pretraining** on the synthetic images alone (the variant file's ``pretrain`` list: p % of the tier's training
   size, the same pool prefix as the mixed variant ``<tier>_<p>``), in ``<out_dir>/pretrain/``, with the run's
   config except ``steps_per_epoch`` (the budget of a plain run on those images,
   :func:`dualsynth.unet.budget.run_budget`: under ``fixed`` the same ``epochs × steps_per_epoch`` as every run,
   under ``epochs`` ``epochs × max(1, synthetic images // batch_size)``).  Early stopping and the best checkpoint
   watch the **real** validation set, as in every run, so stage 2 starts from the pretrained weights that segment
   real images best.
2. **Fine-tuning** on the real base training set with exactly the base run's config and budget, in ``out_dir``
   itself (its ``model.h5``, ``history.csv``, ``train_summary.json`` are the run's, as for any variant), starting
   from stage 1's best weights: the whole U-Net (encoder, decoder, head, BatchNorm statistics) is loaded by name
   from ``pretrain/model.h5`` through ``encoder_weights`` (:func:`dualsynth.unet.model.build_unet`), with a fresh
   Adam optimiser, learning rate and callbacks — stage 2 is the base run with another initialisation, so
   ``PT_<tier>_<p>`` vs ``<tier>_0`` differs by the pretraining only.  A setting computed from the training set
   (class weights, input normalisation) is computed per stage from that stage's images.

Resumable stage by stage: each stage is an ordinary resumable ``train_unet`` folder.  A run killed in stage 1
continues stage 1; killed in stage 2 it finds stage 1 finished (its summary and best weights, no training) and
continues stage 2 from its checkpoint.  Updates are counted per stage by :class:`~dualsynth.unet.budget.RunBudget`
(``record``: ``updates_pretrain``, ``updates_finetune``, ``updates`` = their sum).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import WEIGHTS_FILE
from .model import UNetConfig
from .train import TrainResult, train_unet

__all__ = ["PRETRAIN_DIR", "PretrainResult", "pretrain_config", "finetune_config", "train_pretrain_finetune",
           "train_run"]

#: stage 1's folder inside the run's folder
PRETRAIN_DIR = "pretrain"


@dataclass
class PretrainResult:
    """Both stages of a ``PT_`` run.  ``model``, ``history``, ``epochs_run``, ``best_epoch`` and ``stopped_early``
    are the fine-tuning stage's (the run's model, as for any variant); ``seconds`` is the training time of both
    stages over every session."""

    pretrain: TrainResult
    finetune: TrainResult
    seconds: float

    @property
    def model(self):
        return self.finetune.model

    @property
    def history(self) -> dict[str, list[float]]:
        return self.finetune.history

    @property
    def epochs_run(self) -> int:
        return self.finetune.epochs_run

    @property
    def best_epoch(self) -> int:
        return self.finetune.best_epoch

    @property
    def stopped_early(self) -> bool:
        return self.finetune.stopped_early


def pretrain_config(cfg: UNetConfig, steps_per_epoch: int | None) -> UNetConfig:
    """Stage 1's config: ``cfg`` with the pretraining budget's ``steps_per_epoch`` (``None``: the synthetic set
    decides, under ``budget: epochs``)."""
    return dataclasses.replace(cfg, steps_per_epoch=steps_per_epoch)


def finetune_config(cfg: UNetConfig, out_dir: str | os.PathLike) -> UNetConfig:
    """Stage 2's config: ``cfg`` (the base run's) initialised from stage 1's best weights."""
    return dataclasses.replace(cfg, encoder_weights=str(Path(out_dir) / PRETRAIN_DIR / WEIGHTS_FILE))


def train_pretrain_finetune(
    cfg: UNetConfig,
    pretrain: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    out_dir: str | os.PathLike,
    *,
    pretrain_steps_per_epoch: int | None,
    progress: bool = True,
    verbose: int = 0,
    resume: bool = True,
    keep_checkpoint: bool = True,
) -> PretrainResult:
    """Pretrain on ``pretrain`` (synthetic images, masks), then fine-tune on ``train`` (real), both validated on
    ``val`` (real); see the module docstring.

    ``cfg`` is the base run's config (its ``steps_per_epoch`` and ``epochs`` are the fine-tuning budget);
    ``pretrain_steps_per_epoch`` is the pretraining stage's (``RunBudget.pretrain.config_steps``; ``None``: one
    pass of the synthetic set per epoch).  ``resume``, ``keep_checkpoint``, ``progress``, ``verbose`` apply to both
    stages as in :func:`~dualsynth.unet.train.train_unet`; ``resume=False`` retrains both.  A NaN loss in either
    stage raises ``FloatingPointError`` as there.
    """
    out = Path(out_dir)
    kw = dict(progress=progress, verbose=verbose, resume=resume, keep_checkpoint=keep_checkpoint)
    first = train_unet(pretrain_config(cfg, pretrain_steps_per_epoch), pretrain, val, out / PRETRAIN_DIR, **kw)
    second = train_unet(finetune_config(cfg, out), train, val, out, **kw)
    return PretrainResult(first, second, first.seconds + second.seconds)  # both stages, every session


def train_run(cfg: UNetConfig, train, val, out_dir: str | os.PathLike, *, pretrain=None,
              pretrain_steps_per_epoch: int | None = None, **kw) -> TrainResult | PretrainResult:
    """One run of 06: :func:`train_pretrain_finetune` when ``pretrain`` (a ``PT_`` variant's synthetic images and
    masks) is given, else :func:`~dualsynth.unet.train.train_unet`.  ``kw``: ``progress``, ``verbose``,
    ``resume``, ``keep_checkpoint``."""
    if pretrain is None:
        return train_unet(cfg, train, val, out_dir, **kw)
    return train_pretrain_finetune(cfg, pretrain, train, val, out_dir,
                                   pretrain_steps_per_epoch=pretrain_steps_per_epoch, **kw)
