"""The U-Net: its configuration (:class:`UNetConfig`), the input adapter and :func:`build_unet`.

See the package docstring (:mod:`dualsynth.unet`) for the conventions (input scaling, the adapter, weights).
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._backend import sm, tf
from .plain import PLAIN, plain_unet
from .recipe import CLASS_WEIGHTINGS, LR_SCHEDULES, NORMALISATIONS

__all__ = [
    "UNetConfig", "UnknownSettings", "InputAdapter", "resolve_encoder_weights", "encoder_affine", "input_affine", "unet_core",
    "build_unet",
]

_NONE_WEIGHTS = {"none", "null", ""}


class UnknownSettings(ValueError):
    """:meth:`UNetConfig.from_params` with ``strict=True`` was given keys that are no U-Net setting; ``unknown``
    and ``allowed`` hold them (sorted), the message names both."""

    def __init__(self, unknown: Sequence[str], allowed: Sequence[str]):
        self.unknown, self.allowed = sorted(unknown), sorted(allowed)
        super().__init__(f"unknown U-Net setting(s) {self.unknown}; allowed: {self.allowed}")


@dataclass
class UNetConfig:
    """Hyper-parameters of one U-Net (defaults: Volman Stern et al. 2024).

    ``reduce_lr_factor`` = 0.5 is our choice (the paper does not state it; the
    Keras default 0.1 drops the rate too fast for patience 5 over 200 epochs).
    ``steps_per_epoch`` ``None`` means ``max(1, len(train) // batch_size)``.
    ``bn_momentum`` ``None`` keeps the encoder's BatchNormalization momentum (0.99); a lower value (e.g. 0.9)
    is needed for short schedules, whose moving statistics otherwise stay near their initial values.
    ``seed`` fixes weight initialisation, shuffling and augmentation.
    ``encoder`` ``"plain"`` is the small plain U-Net of :mod:`.plain` (``base_filters`` wide; every other
    value is a segmentation-models backbone).  ``lr_schedule``: ``"plateau"`` (the paper's ReduceLROnPlateau) or
    ``"cosine"`` (:class:`~.recipe.WarmupCosine` over all updates, ``warmup_fraction`` of them rising; no
    plateau reduction).  ``class_weighting``: ``"none"`` or ``"sqrt_inverse"`` (:func:`~.recipe.class_weights`
    on the Dice and cross-entropy terms).  ``normalise``: ``"encoder"`` (the encoder's ImageNet preprocessing;
    for ``plain`` x/127.5 - 1) or ``"patches"`` (z-scores with ``input_stats`` = [mean, std] of the training
    images, which :func:`~.train.train_unet` fills in).
    ``mixed_precision`` builds the model under the Keras ``mixed_float16`` policy (float16 compute, float32
    weights, loss scaling, softmax and outputs in float32): for GPUs with tensor cores; off by default, and slower
    on CPUs (see BENCHMARKS.md).
    """

    num_classes: int
    in_channels: int = 3
    encoder: str = "efficientnetb3"
    encoder_weights: str | None = None
    epochs: int = 200
    batch_size: int = 2
    val_batch_size: int = 1
    learning_rate: float = 1e-3
    early_stopping_patience: int = 15
    reduce_lr_patience: int = 5
    reduce_lr_factor: float = 0.5
    focal_weight: float = 1.0
    augment: bool = False
    seed: int = 0
    steps_per_epoch: int | None = None
    bn_momentum: float | None = None
    mixed_precision: bool = False
    base_filters: int = 16
    lr_schedule: str = "plateau"
    warmup_fraction: float = 0.05
    class_weighting: str = "none"
    normalise: str = "encoder"
    input_stats: list | None = None

    def __post_init__(self) -> None:
        def _int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"UNetConfig.{name} must be an integer >= {lo}, got {v!r}")
            setattr(self, name, int(v))

        _int("num_classes", 2)
        _int("epochs", 1)
        _int("batch_size", 1)
        _int("val_batch_size", 1)
        _int("early_stopping_patience", 0)
        _int("reduce_lr_patience", 0)
        _int("seed", 0)
        if self.steps_per_epoch is not None:
            _int("steps_per_epoch", 1)
        if self.in_channels not in (1, 3) or isinstance(self.in_channels, bool):
            raise ValueError(f"UNetConfig.in_channels must be 1 (grey) or 3 (RGB), got {self.in_channels!r}")
        self.in_channels = int(self.in_channels)
        if not isinstance(self.encoder, str) or (self.encoder != PLAIN
                                                 and self.encoder not in sm.get_available_backbone_names()):
            raise ValueError(
                f"UNetConfig.encoder {self.encoder!r} is neither {PLAIN!r} nor a segmentation-models backbone; "
                f"choose {PLAIN!r} or one of {sorted(sm.get_available_backbone_names())}"
            )
        _int("base_filters", 1)
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("class_weighting", CLASS_WEIGHTINGS),
                              ("normalise", NORMALISATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"UNetConfig.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        wf = float(self.warmup_fraction)
        if not (0.0 <= wf < 1.0):
            raise ValueError(f"UNetConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        self.warmup_fraction = wf
        if self.input_stats is not None:
            st = np.asarray(self.input_stats, np.float64)
            if st.shape != (2, 3) or not np.all(np.isfinite(st)) or np.any(st[1] <= 0):
                raise ValueError("UNetConfig.input_stats must be [mean (3 values), std (3 positive values)], "
                                 f"got {self.input_stats!r}")
            self.input_stats = [[float(v) for v in row] for row in st]
        lr = float(self.learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"UNetConfig.learning_rate must be a positive number, got {self.learning_rate!r}")
        self.learning_rate = lr
        f = float(self.reduce_lr_factor)
        if not (0.0 < f < 1.0):
            raise ValueError(f"UNetConfig.reduce_lr_factor must be in (0, 1), got {self.reduce_lr_factor!r}")
        self.reduce_lr_factor = f
        w = float(self.focal_weight)
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"UNetConfig.focal_weight must be a finite number >= 0, got {self.focal_weight!r}")
        self.focal_weight = w
        self.augment = bool(self.augment)
        self.mixed_precision = bool(self.mixed_precision)
        if self.bn_momentum is not None:
            m = float(self.bn_momentum)
            if not (0.0 <= m < 1.0):
                raise ValueError(f"UNetConfig.bn_momentum must be in [0, 1) or None, got {self.bn_momentum!r}")
            self.bn_momentum = m
        if isinstance(self.encoder_weights, os.PathLike):
            self.encoder_weights = os.fspath(self.encoder_weights)
        resolve_encoder_weights(self.encoder_weights, check_file=False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, strict: bool = False, **fixed: Any) -> "UNetConfig":
        """A config from notebook / preset parameters: the keys that are fields are taken, others ignored
        (``experiment``, ``budget``, ...); ``fixed`` (e.g. ``num_classes``, ``seed``) wins over ``params``.

        ``strict=True``: ``params`` holds U-Net settings only (e.g. 04's ``pretest_unet``), and a key that is no
        field raises :class:`UnknownSettings` (a ``ValueError``) naming it and the settings allowed (the fields
        not in ``fixed``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if strict:
            unknown = set(params) - known
            if unknown:
                raise UnknownSettings(unknown, known - set(fixed))
        return cls(**{**{k: v for k, v in params.items() if k in known}, **fixed})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"UNetConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_encoder_weights(value: Any, check_file: bool = True) -> tuple[str, Path | None]:
    """``("imagenet"|"none"|"h5", path or None)``; raises for anything else."""
    if value is None:
        return "none", None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"encoder_weights must be a string or None, got {type(value).__name__}")
    low = value.strip().lower()
    if low in _NONE_WEIGHTS:
        return "none", None
    if low == "imagenet":
        return "imagenet", None
    path = Path(value).expanduser()
    if low.endswith((".h5", ".hdf5")) or "/" in value or os.sep in value or path.exists():
        if check_file and not path.is_file():
            raise FileNotFoundError(f"encoder_weights file not found: {path}")
        return "h5", path
    raise ValueError(
        f"encoder_weights={value!r} is not understood; allowed: 'imagenet', None / 'none' / 'null' "
        "(random initialisation) or the path of a Keras HDF5 weight file (*.h5, *.hdf5)"
    )


def input_affine(cfg: UNetConfig) -> tuple[np.ndarray, np.ndarray]:
    """The input adapter's affine map (x in 0..255, RGB) for ``cfg``'s ``normalise`` and encoder."""
    if cfg.normalise == "patches":
        if cfg.input_stats is None:
            raise ValueError("UNetConfig.normalise='patches' needs input_stats (train_unet computes them from "
                             "the training images; a saved unet_config.json holds them)")
        mean, std = (np.asarray(v, np.float64) for v in cfg.input_stats)
        return np.diag(1.0 / std), -mean / std
    return encoder_affine(cfg.encoder)


def encoder_affine(encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel affine form ``f(x) = x @ M + b`` (x in 0..255, RGB) of the encoder's preprocessing."""
    if encoder == PLAIN:
        return np.eye(3) / 127.5, -np.ones(3)
    fn = sm.get_preprocessing(encoder)
    probe = np.zeros((1, 1, 4, 3), np.float32)
    for c in range(3):
        probe[0, 0, c + 1, c] = 255.0
    out = np.asarray(fn(probe.copy()), np.float64).reshape(4, 3)
    offset = out[0]
    matrix = (out[1:] - offset) / 255.0  # row c: effect of input channel c
    test = np.random.default_rng(0).uniform(0, 255, (1, 3, 5, 3)).astype(np.float32)
    got = np.asarray(fn(test.copy()), np.float64)
    want = test.astype(np.float64) @ matrix + offset
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-3):
        raise ValueError(f"preprocessing of encoder {encoder!r} is not a per-pixel affine map; not supported")
    return matrix, offset


class InputAdapter(tf.keras.layers.Layer):
    """``[0, 1]`` image with 1 or 3 channels -> the 3-channel input the encoder expects.

    Computes ``(255 * x) @ matrix + offset`` (grey: the grey value repeated to
    RGB first, folded into the matrix).  No trainable weights.
    """

    def __init__(self, in_channels: int, matrix: Sequence[Sequence[float]], offset: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.matrix = [[float(v) for v in row] for row in matrix]
        self.offset = [float(v) for v in offset]
        m = np.asarray(self.matrix, np.float64) * 255.0
        if self.in_channels == 1:
            m = m.sum(axis=0, keepdims=True)
        self._m = m.astype(np.float32)
        self._b = np.asarray(self.offset, np.float32)

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        m = tf.constant(self._m, dtype=x.dtype)
        b = tf.constant(self._b, dtype=x.dtype)
        return tf.einsum("...c,cd->...d", x, m) + b

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([3])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(in_channels=self.in_channels, matrix=self.matrix, offset=self.offset)
        return cfg


def unet_core(model: tf.keras.Model) -> tf.keras.Model:
    """The plain ``sm.Unet`` inside a model built by :func:`build_unet`."""
    return model.get_layer("unet")


def build_unet(cfg: UNetConfig, input_size: int | None = None, *, seed: int | None = None) -> tf.keras.Model:
    """``image (H, W, in_channels) in [0,1] -> InputAdapter -> sm.Unet -> softmax (H, W, num_classes)``.

    ``input_size`` ``None`` gives a model for any H, W that are multiples of 32.
    ``seed`` (if given) calls ``tf.keras.utils.set_random_seed`` first, which
    makes the random initialisation reproducible (and reseeds Python, NumPy and
    TF globally).  See :mod:`dualsynth.unet` for ``cfg.encoder_weights``.
    """
    kind, path = resolve_encoder_weights(cfg.encoder_weights)
    if input_size is not None:
        if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 32 \
                or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32 or None, got {input_size!r}")
        hw: tuple[int | None, int | None] = (int(input_size), int(input_size))
    else:
        hw = (None, None)
    if kind == "h5":
        from .weights import h5_format

        assert path is not None
        h5_format(path)  # fail before the (slow) build if it is no Keras weight file
    if seed is not None:
        tf.keras.utils.set_random_seed(int(seed))
    matrix, offset = input_affine(cfg)
    if cfg.mixed_precision:
        previous_policy = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            return _build_unet(cfg, hw, kind, path, matrix, offset)
        finally:
            tf.keras.mixed_precision.set_global_policy(previous_policy)
    return _build_unet(cfg, hw, kind, path, matrix, offset)


def _build_unet(cfg: UNetConfig, hw: tuple, kind: str, path: Path | None, matrix, offset) -> tf.keras.Model:
    mixed = cfg.mixed_precision
    if cfg.encoder == PLAIN:
        if kind == "imagenet":
            raise ValueError("the plain U-Net has no ImageNet weights; use encoder_weights None or a local .h5")
        base = plain_unet(cfg.num_classes, cfg.base_filters, activation="linear" if mixed else "softmax")
    else:
        base = sm.Unet(
            cfg.encoder,
            input_shape=(*hw, 3),
            classes=cfg.num_classes,
            activation="linear" if mixed else "softmax",  # mixed: the softmax below, in float32
            encoder_weights="imagenet" if kind == "imagenet" else None,
        )
    if cfg.bn_momentum is not None:
        # Keras' BatchNormalization keeps 0.99 of its moving statistics per step: after a few hundred steps
        # (a short CPU schedule) they are still close to their initial values, and inference-mode predictions
        # collapse to the majority class.  A lower momentum lets them follow the data within a few dozen steps.
        for layer in base.submodules:
            if isinstance(layer, tf.keras.layers.BatchNormalization):
                layer.momentum = cfg.bn_momentum
    core = tf.keras.Model(base.inputs, base.outputs, name="unet")
    image = tf.keras.Input(shape=(*hw, cfg.in_channels), name="image")
    x = InputAdapter(cfg.in_channels, matrix, offset, name="input_adapter", dtype="float32")(image)
    y = core(x)
    if mixed:
        y = tf.keras.layers.Activation("softmax", dtype="float32", name="softmax_float32")(y)
    model = tf.keras.Model(image, y, name=f"unet_{cfg.encoder}")
    if kind == "h5":
        from .weights import load_weights_h5

        assert path is not None
        load_weights_h5(model, path)
    return model
