"""The parts of a training recipe that are computed from the data or the step count, not learned.

* :class:`WarmupCosine` - ``UNetConfig.lr_schedule = "cosine"``: the rate rises linearly from 0 over the first
  ``warmup_fraction`` of the updates, then follows a half cosine to 0 at the last update.  It is a function of
  the optimizer's step counter, which the checkpoint keeps, so a resumed run continues the same curve.
* :func:`input_stats` - ``UNetConfig.normalise = "patches"``: per-channel mean and standard deviation (0..255) of
  the training images; the model's input adapter then z-scores with them instead of the encoder's ImageNet
  statistics (which mean nothing to a network initialised at random, and shift a dark SEM image far from 0).
* :func:`class_weights` - ``UNetConfig.class_weighting = "sqrt_inverse"``: per-class loss weights proportional
  to ``1 / sqrt(pixel share)`` in the training masks, scaled to mean 1, so a class on 1 % of the pixels weighs
  ~9× one on 75 % (the square root keeps a class seen on a handful of pixels from dominating).  Classes absent
  from the training masks get weight 0: there is nothing to learn for them.
"""
from __future__ import annotations

import math

import numpy as np

from ._backend import tf

__all__ = ["WarmupCosine", "input_stats", "class_weights", "LR_SCHEDULES", "CLASS_WEIGHTINGS", "NORMALISATIONS"]

LR_SCHEDULES = ("plateau", "cosine")
CLASS_WEIGHTINGS = ("none", "sqrt_inverse")
NORMALISATIONS = ("encoder", "patches")


class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then a half cosine down to 0 at ``total_steps``."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0):
        super().__init__()
        if total_steps < 1 or warmup_steps < 0 or warmup_steps >= total_steps + 1:
            raise ValueError(f"WarmupCosine needs 0 <= warmup_steps <= total_steps and total_steps >= 1, got "
                             f"{warmup_steps}, {total_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        warm = float(max(self.warmup_steps, 1))
        rising = peak * (step + 1.0) / warm
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        falling = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def input_stats(images: np.ndarray) -> list[list[float]]:
    """``[mean (3), std (3)]`` of ``uint8`` images ``(N, H, W[, C])`` on 0..255, grey repeated to three channels.

    A channel with (near) no variation gets std 1, so the z-score stays finite.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"input_stats needs uint8 images (N, H, W[, 1|3]), got shape {x.shape}")
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std < 1e-3, 1.0, std)
    if x.shape[-1] == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return [[float(v) for v in mean], [float(v) for v in std]]


def class_weights(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weights ``(num_classes,)`` ∝ ``1 / sqrt(share)`` in ``masks``, mean 1 over the classes present."""
    counts = np.bincount(np.asarray(masks, np.int64).ravel(), minlength=num_classes)[:num_classes].astype(float)
    if counts.sum() == 0:
        raise ValueError("class_weights: the training masks are empty")
    share = counts / counts.sum()
    w = np.zeros(num_classes)
    present = share > 0
    w[present] = 1.0 / np.sqrt(share[present])
    w[present] /= w[present].mean()
    return w.astype(np.float32)
