"""PixelCNN priors over maps of discrete VQ-VAE codes: models, training, sampling, conditions.

A prior models ``p(z) = prod_{i,j} p(z[i, j] | z at earlier raster positions)`` for
an integer code map ``z`` of shape (H, W) with values ``0 .. K-1`` -- optionally
also given a global condition vector ``h`` per map (the class fractions of its
mask): ``p(z | h)``.

Modules, by concern:

* :mod:`~dualsynth.prior.model` -- :class:`PixelCNN` (plain, masked convolutions,
  has a blind spot) and :class:`GatedPixelCNN` (vertical + horizontal stacks, no
  blind spot, optional class-fraction conditioning), :func:`make_prior`,
  :func:`receptive_field`; their building blocks (causal convolutions, residual
  and gated layers) are in :mod:`~dualsynth.prior.layers`.
* :mod:`~dualsynth.prior.training` -- :func:`train_prior`, the checkpointed and
  resumable :func:`fit_prior`, :func:`evaluate_nll`, :func:`save_prior` /
  :func:`load_prior` (with the recovery of an interrupted folder swap).
* :mod:`~dualsynth.prior.sampling` -- :func:`sample_naive` (reference) and the
  fast exact :func:`sample_fast` (Gumbel-max with position-seeded noise, so both
  give the same codes); its engines are in :mod:`~dualsynth.prior.engines`.
* :mod:`~dualsynth.prior.conditioning` -- checking, saving/loading and drawing
  condition vectors (:func:`draw_conditions`), no TensorFlow.

``dualsynth.pixelcnn`` is the older single-module name; it re-exports all of this.
Import ``dualsynth`` before TensorFlow (it sets ``TF_USE_LEGACY_KERAS=1``).
"""
from __future__ import annotations

from .conditioning import (RARE_FRACTION, ConditionSet, check_condition, draw_conditions, load_conditions,
                           rare_classes, save_conditions)
from .model import (DEFAULT_FIRST_KERNEL, DEFAULT_GATED, DEFAULT_GATED_HIDDEN, DEFAULT_GATED_LAYERS,
                    DEFAULT_KERNEL, DEFAULT_PLAIN, DEFAULT_PLAIN_BLOCKS, DEFAULT_PLAIN_HIDDEN, DEFAULT_PLAIN_LAYERS,
                    PRIOR_KINDS, GatedPixelCNN, PixelCNN, ReceptiveField, current_config, make_prior,
                    receptive_field)
from .sampling import DEFAULT_SAMPLE_BATCH, FAST_METHODS, sample_fast, sample_naive
from .training import TrainHistory, evaluate_nll, fit_prior, load_prior, nats_to_bits, save_prior, train_prior

__all__ = [
    "DEFAULT_PLAIN",
    "DEFAULT_GATED",
    "PRIOR_KINDS",
    "ReceptiveField",
    "PixelCNN",
    "GatedPixelCNN",
    "make_prior",
    "receptive_field",
    "current_config",
    "TrainHistory",
    "train_prior",
    "fit_prior",
    "evaluate_nll",
    "nats_to_bits",
    "save_prior",
    "load_prior",
    "sample_naive",
    "sample_fast",
    "RARE_FRACTION",
    "ConditionSet",
    "check_condition",
    "save_conditions",
    "load_conditions",
    "rare_classes",
    "draw_conditions",
]
