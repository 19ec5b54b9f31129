"""VQ-VAE for dual images (micrograph channels + mask channel(s)): the model, its training and its checkpoints.

Architecture after the VQ-VAE of van den Oord et al. (2017) as laid out in DeepMind Sonnet's example, with the
changes of Volman Stern et al. (2024): ``C + M`` input channels, a small codebook (K = 10 by default), a
downsampling factor of 4 (256x256 images -> 64x64 code maps with values ``0..K-1``; the paper counts them
``1..K``; ``downsample=2``, ours, halves it).  Inputs are float32 in [0, 1]; the loss is
``MSE(x_recon, x) / data_variance + vq_loss``.

Modules, by concern:

* :mod:`~dualsynth.vqvae.model` -- :class:`VQVAE` (``__call__``, ``encode``, ``decode_indices``, ``config``) and
  its :class:`Encoder`, :class:`Decoder`, :class:`ResidualStack`; no file I/O.
* :mod:`~dualsynth.vqvae.codes` -- :func:`encode_dataset` / :func:`decode_codes` (batched numpy) and
  :func:`data_variance` (the loss normaliser).
* :mod:`~dualsynth.vqvae.training` -- :func:`train_vqvae` (resumable; last/best checkpoints, the best one chosen
  by the validation error or, as in the paper, by the training reconstruction error: ``checkpoint_on``) and
  :func:`make_train_step`.
* :mod:`~dualsynth.vqvae.history` -- :class:`VQVAEHistory` (``history.csv``, reconstruction snapshots).
* :mod:`~dualsynth.vqvae.checkpoints` -- :func:`load_vqvae`, :func:`checkpoint_step`, :func:`check_trained_on`.
* :mod:`~dualsynth.vqvae.split` -- :func:`generator_split`: which patches the generator trains and validates on.

``dualsynth.vqvae`` was one module before it became a package: every name it defined (public, and the private
ones benchmarks and tests use) is still importable from here.  Setting an attribute here
(``monkeypatch.setattr(vqvae, "decode_codes", f)``) also sets it in the submodules holding the same object.

Import :mod:`dualsynth` before TensorFlow (it sets ``TF_USE_LEGACY_KERAS=1``); importing ``dualsynth.vqvae``
does so itself.
"""
from __future__ import annotations

from .._shim import forward_writes
from . import checkpoints as _checkpoints
from . import codes as _codes
from . import history as _history
from . import model as _model
from . import split as _split
from . import training as _training
from .checkpoints import (_BEST_DIR, _CONFIG_FILE, _HISTORY_FILE, _LAST_DIR, _N_SNAPSHOT_IMAGES,  # noqa: F401
                          _SNAPSHOT_FILE, _TRAINING_FILE, _all_finite, _config_mismatch, _full_config, _latest,
                          _read_config, check_trained_on, checkpoint_rule, checkpoint_step, load_vqvae)
from .codes import _check_images, data_variance, decode_codes, encode_dataset  # noqa: F401
from .history import (HISTORY_COLUMNS, VQVAEHistory, _load_snapshots, _read_history_csv,  # noqa: F401
                      _save_snapshots, _write_history_csv)
from .model import MODEL_DEFAULTS, VQVAE, Decoder, Encoder, ResidualStack  # noqa: F401
from .split import GeneratorSplit, generator_split  # noqa: F401
from .training import (CHECKPOINT_ON, DEAD_CODE_FRACTION, _evaluate, _make_adam, _make_dataset,  # noqa: F401
                       _reconstruct, _variance_fn, _write_scalars, make_train_step, train_vqvae)

__all__ = [
    "ResidualStack",
    "Encoder",
    "Decoder",
    "VQVAE",
    "MODEL_DEFAULTS",
    "VQVAEHistory",
    "HISTORY_COLUMNS",
    "CHECKPOINT_ON",
    "train_vqvae",
    "make_train_step",
    "load_vqvae",
    "checkpoint_step",
    "checkpoint_rule",
    "check_trained_on",
    "encode_dataset",
    "decode_codes",
    "data_variance",
    "GeneratorSplit",
    "generator_split",
]

# monkeypatching through this old path reaches the submodules
forward_writes(__name__, (_model, _codes, _history, _checkpoints, _training, _split))
