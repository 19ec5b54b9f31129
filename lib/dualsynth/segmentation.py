"""U-Net segmentation of micrographs (segmentation-models 1.0.1, Keras 2 / ``tf_keras``).

Set-up after Volman Stern et al. (2024): a segmentation-models U-Net (encoder
``efficientnetb3`` by default) with a softmax head over ``num_classes`` phases,
trained with categorical Dice + focal loss (``dice + focal_weight * focal``),
Adam (lr 1e-3), ``EarlyStopping`` (patience 15) and ``ReduceLROnPlateau``
(patience 5), both watching the validation IoU score (``val_iou_score``,
mode ``max``), batch 2 for training and 1 for validation, up to 200 epochs of
``len(train) // batch_size`` steps.  Every number is a field of
:class:`UNetConfig`.

Conventions (the same in training, :func:`predict` and :func:`load_unet`):

* **Images** are ``uint8`` arrays ``(N, H, W, C)`` (``(N, H, W)`` = grey), ``C``
  = ``in_channels`` (1 or 3).  The model's input is float32 in ``[0, 1]``
  (``uint8 / 255``); :func:`make_dataset` and :func:`predict` do that scaling.
* **Inside the model** a weight-free :class:`InputAdapter` layer maps the
  ``[0, 1]`` input to what the encoder expects: a grey channel is repeated to
  three channels (folded into the affine map), and the encoder's own ImageNet
  preprocessing (``sm.get_preprocessing(encoder)``, e.g. ``torch`` mean/std
  normalisation for EfficientNets, identity on 0..255 for ResNets, BGR + mean
  for VGG) is applied as a fixed per-pixel affine map.  It is applied *always*,
  whatever ``encoder_weights`` is, so a weight file is valid for every
  initialisation and a user calling ``model.predict(images / 255)`` directly
  gets the right answer.  Grey and RGB models have identical weights, so
  weight files are interchangeable between them.
* The model is ``image -> input_adapter -> unet`` where ``unet`` is the plain
  ``sm.Unet`` (see :func:`unet_core`).  Height and width must be multiples of
  32 for training; :func:`predict` pads other sizes (reflection) and crops.
* **Masks** are class-index arrays ``(N, H, W)`` with values ``0..num_classes-1``;
  the datasets one-hot encode them.

``encoder_weights``: ``"imagenet"`` (passed to segmentation-models; needs
internet on first use), ``None`` / ``"none"`` / ``"null"`` (random
initialisation) or the path of a Keras weight file (:func:`load_weights_h5`).
A Keras 2 HDF5 file (``model.save_weights("x.h5")``, or an ImageNet weight
file such as ``efficientnet-b3_..._notop.h5``) is loaded *by weight name*
(``layer/variable``) with shape checks into the whole U-Net: a file from any
dualsynth or plain sm U-Net with the same encoder restores everything (a
different ``num_classes`` only skips ``final_conv``), a classifier file of the
encoder fills the encoder, a file matching nothing raises ``ValueError``.  A
Keras-3-style file (``save_weights("x.weights.h5")``) has no layer names and
is loaded by structure, all or nothing.

Training output (``out_dir``): ``unet_config.json``, ``model.h5`` (the best
epoch's weights, Keras 2 HDF5 weights format as written by
``save_weights("model.h5")`` - not a full saved model; rewritten when the
validation IoU improves), ``history.csv`` (one row per finished epoch;
``epoch`` is 1-based; ``lr`` is the learning rate used *during* that epoch)
``checkpoint/`` (weights + Adam state of the last finished epoch as a
``tf.train.Checkpoint``, with ``state.json``: history, callback states, data
fingerprint) and, once training has ended, ``train_summary.json``.  Calling :func:`train_unet` again on the same ``out_dir``
continues from that checkpoint (after an interruption, or to extend a
finished run to more epochs), so the history has no duplicated epochs.
Keras' own ``BackupAndRestore`` is not used: it deletes its backup when
``fit`` ends, so it cannot extend a finished run, and it does not save the
states of ``EarlyStopping`` / ``ReduceLROnPlateau`` or the history.

Shuffling and augmentation are functions of ``(seed, epoch, position)``, not of
an iterator's state, so a resumed run sees the same batches as an
uninterrupted one.  The encoder's dropout draws from TensorFlow's global RNG
and CPU kernels are not guaranteed to be bit-reproducible, so the losses of a
resumed run agree with an uninterrupted one only approximately.

Import :mod:`dualsynth` before TensorFlow (this module does it when imported
as ``dualsynth.segmentation``).
"""
from __future__ import annotations

import dataclasses
import io as _io
import logging
import math
import os
import random
import shutil
import threading
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS / SM_FRAMEWORK before TF)
from dualsynth.io import (DataError, atomic_path, atomic_write_json, read_json, read_rows_csv, stale_inputs_message,
                          write_rows_csv)
from dualsynth.io import fingerprint as _fingerprint
from dualsynth.metrics import evaluate as _evaluate_masks

import tensorflow as tf  # noqa: E402

with redirect_stdout(_io.StringIO()):  # segmentation-models prints its framework on import
    import segmentation_models as sm  # noqa: E402

__all__ = [
    "UNetConfig",
    "TrainResult",
    "InputAdapter",
    "HISTORY_COLUMNS",
    "MONITOR",
    "build_unet",
    "unet_core",
    "load_weights_h5",
    "make_dataset",
    "build_augmentation",
    "compile_unet",
    "train_unet",
    "predict",
    "predict_proba",
    "evaluate_model",
    "load_unet",
    "load_unet_config",
]

log = logging.getLogger(__name__)

#: Metric that EarlyStopping and ReduceLROnPlateau watch (name as Keras logs it:
#: ``sm.metrics.IOUScore`` is called ``iou_score``; validation prefixes ``val_``).
MONITOR = "val_iou_score"

#: Columns of ``history.csv`` and keys of :attr:`TrainResult.history`.
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch",
    "loss",
    "iou_score",
    "f1-score",
    "val_loss",
    "val_iou_score",
    "val_f1-score",
    "lr",
    "seconds",
)

CONFIG_FILE = "unet_config.json"
WEIGHTS_FILE = "model.h5"  # weights only, Keras 2 HDF5 format (by-name loadable)
HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
SUMMARY_FILE = "train_summary.json"

_NONE_WEIGHTS = {"none", "null", ""}
# Config fields that may differ between an interrupted run and its continuation.
_RESUME_MAY_DIFFER = {"epochs", "encoder_weights"}


# =========================================================================== config
@dataclass
class UNetConfig:
    """Hyper-parameters of one U-Net (defaults: Volman Stern et al. 2024).

    ``reduce_lr_factor`` = 0.5 is our choice (the paper does not state it; the
    Keras default 0.1 drops the rate too fast for patience 5 over 200 epochs).
    ``steps_per_epoch`` ``None`` means ``max(1, len(train) // batch_size)``.
    ``bn_momentum`` ``None`` keeps the encoder's BatchNormalization momentum (0.99); a lower value (e.g. 0.9)
    is needed for short schedules, whose moving statistics otherwise stay near their initial values.
    ``seed`` fixes weight initialisation, shuffling and augmentation.
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
        if not isinstance(self.encoder, str) or self.encoder not in sm.get_available_backbone_names():
            raise ValueError(
                f"UNetConfig.encoder {self.encoder!r} is not a segmentation-models backbone; "
                f"choose one of {sorted(sm.get_available_backbone_names())}"
            )
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
        _resolve_encoder_weights(self.encoder_weights, check_file=False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"UNetConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def _resolve_encoder_weights(value: Any, check_file: bool = True) -> tuple[str, Path | None]:
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


# =========================================================================== model
def _encoder_affine(encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel affine form ``f(x) = x @ M + b`` (x in 0..255, RGB) of the encoder's preprocessing."""
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
    TF globally).  See the module docstring for ``cfg.encoder_weights``.
    """
    kind, path = _resolve_encoder_weights(cfg.encoder_weights)
    if input_size is not None:
        if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 32 \
                or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32 or None, got {input_size!r}")
        hw: tuple[int | None, int | None] = (int(input_size), int(input_size))
    else:
        hw = (None, None)
    if kind == "h5":
        assert path is not None
        _h5_format(path)  # fail before the (slow) build if it is no Keras weight file
    if seed is not None:
        tf.keras.utils.set_random_seed(int(seed))
    matrix, offset = _encoder_affine(cfg.encoder)
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
        assert path is not None
        load_weights_h5(model, path)
    return model


# --------------------------------------------------------------------------- HDF5 weights
def _weight_key(weight_name: str, group_name: str) -> str:
    parts = weight_name.split("/")
    var = parts[-1].split(":")[0]
    layer = parts[-2] if len(parts) >= 2 else group_name
    return f"{layer}/{var}"


def _decode(names: Any) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in np.asarray(names).ravel()]


def _h5_format(path: Path) -> str:
    """``"legacy"`` (Keras 2 HDF5: groups named by layer) or ``"keras3"`` (``*.weights.h5`` object tree)."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file: {e}") from e
    with fh as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return "legacy"
        if "layers" in f or "vars" in f:
            return "keras3"
    raise ValueError(f"{path} is not a Keras HDF5 weight file (neither 'layer_names' nor a 'layers' tree)")


def _read_h5_weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    table: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for lname in _decode(root.attrs["layer_names"]):
            g = root[lname]
            for wname in _decode(g.attrs.get("weight_names", [])):
                key = _weight_key(wname, lname)
                if key not in table:  # first occurrence wins
                    table[key] = np.asarray(g[wname])
    return table


def _load_keras3(model: tf.keras.Model, path: Path) -> dict:
    """Structural load of a Keras-3-style ``*.weights.h5`` into the wrapper or, failing that, its U-Net."""
    import tempfile

    snapshot = model.get_weights()
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        src = path
        if not path.name.endswith(".weights.h5"):  # Keras picks the reader by this suffix
            src = Path(tmp) / "file.weights.h5"
            src.symlink_to(path.resolve())
        targets = [model]
        try:
            targets.append(unet_core(model))
        except ValueError:
            pass
        for target in targets:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    target.load_weights(str(src))
            except Exception as e:  # noqa: BLE001 - any failure means "does not fit"
                model.set_weights(snapshot)
                errors.append(f"{target.name}: {str(e).splitlines()[0][:200]}")
                continue
            n = len(model.weights)
            log.info("loaded %d weights from %s (Keras 3 weights format)", n, path)
            return {"loaded": n, "total": n, "shape_mismatch": [], "missing": [], "complete": True}
    raise ValueError(
        f"{path} is in the Keras 3 '.weights.h5' format, which is matched by model structure, and it does not "
        f"fit this model ({'; '.join(errors)}). Re-save the source model's weights with a name not ending in "
        "'.weights.h5' (e.g. 'unet.h5': HDF5 format, matched by layer name) to load them partially."
    )


def load_weights_h5(model: tf.keras.Model, path: str | os.PathLike, *, strict: bool = False) -> dict:
    """Load a Keras HDF5 weight file into the U-Net of ``model``.

    Keras 2 HDF5 files (``save_weights("x.h5")``, ImageNet weight files) are
    matched *by weight name* (``layer/variable``, e.g. ``stem_conv/kernel``)
    and shape; nothing is assigned unless at least one weight matches, and
    ``strict`` requires every weight of the model to be found.  Keras-3-style
    files (``save_weights("x.weights.h5")``) carry no layer names; they are
    loaded by structure into the whole model (a dualsynth U-Net) or its
    ``unet`` (a plain ``sm.Unet``), all or nothing.
    Returns ``{"loaded", "total", "shape_mismatch", "missing", "complete"}``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if _h5_format(path) == "keras3":
        return _load_keras3(model, path)
    table = _read_h5_weights(path)
    try:
        target = unet_core(model)
    except ValueError:
        target = model
    assign, mismatch, missing, seen = [], [], [], set()
    for w in target.weights:
        key = _weight_key(w.name, "")
        if key in seen:
            raise ValueError(f"model has two weights named {key!r}; cannot load {path} by name")
        seen.add(key)
        if key not in table:
            missing.append(key)
        elif tuple(table[key].shape) != tuple(w.shape):
            mismatch.append(f"{key} {tuple(table[key].shape)} vs {tuple(w.shape)}")
        else:
            assign.append((w, table[key]))
    total = len(target.weights)
    if not assign:
        raise ValueError(
            f"no weight in {path} matches the model ({total} weights, e.g. {sorted(seen)[:3]}); "
            "expected a file saved with model.save_weights(...) from a U-Net with the same encoder "
            "or an ImageNet weight file of the encoder"
        )
    if strict and (mismatch or missing):
        raise ValueError(
            f"{path} does not fit the model: {len(missing)} weights missing (e.g. {missing[:3]}), "
            f"{len(mismatch)} with another shape (e.g. {mismatch[:3]})"
        )
    tf.keras.backend.batch_set_value(assign)
    report = {
        "loaded": len(assign),
        "total": total,
        "shape_mismatch": mismatch,
        "missing": missing,
        "complete": len(assign) == total,
    }
    log.info("loaded %d of %d weights from %s (%d shape mismatches, %d missing)",
             len(assign), total, path, len(mismatch), len(missing))
    return report


# =========================================================================== data
def _check_images(images: Any, in_channels: int | None = None, what: str = "images") -> np.ndarray:
    """``uint8 (N, H, W, C)``; grey ``(N, H, W)`` gets a channel axis, grey -> RGB is repeated."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must have shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if in_channels is not None and arr.shape[-1] != in_channels:
        if in_channels == 3 and arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        else:
            raise ValueError(
                f"{what} have {arr.shape[-1]} channels but the model expects {in_channels}; "
                "convert RGB micrographs to grey first or use in_channels=3"
            )
    return np.ascontiguousarray(arr)


def _check_masks(masks: Any, shape: tuple[int, ...], num_classes: int, what: str = "masks") -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != tuple(shape[:3]):
        raise ValueError(f"{what} must have shape {tuple(shape[:3])} (N, H, W) to match the images, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise TypeError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{what} have values outside 0..{num_classes - 1} (min {lo}, max {hi})")
    return np.ascontiguousarray(arr.astype(np.uint8))


def build_augmentation(in_channels: int, seed: int = 0, *, geometric: bool = False):
    """Albumentations 2.x baseline of the paper (photometric only, masks untouched).

    ``GaussNoise`` (p 0.2), then three ``OneOf`` groups with p 0.9 each:
    ``CLAHE`` / brightness / ``RandomGamma``; ``Sharpen`` / ``Blur`` /
    ``MotionBlur`` / ``GaussianBlur``; contrast / ``HueSaturationValue`` (RGB
    only; grey: contrast alone, p 0.9 * 1/2).  ``geometric=True`` prepends
    flips and 90-degree rotations (not in the paper; applied to the mask too).

    The random state is one NumPy and one Python generator shared by all
    transforms (``Compose.set_random_state``): ``Compose(seed=...)`` would give
    every transform an identically seeded generator of its own, which makes
    the groups' on/off draws identical.
    """
    import albumentations as A

    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    t: list = []
    if geometric:
        t += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    t += [
        A.GaussNoise(std_range=(0.02, 0.08), p=0.2),
        A.OneOf(
            [
                A.CLAHE(clip_limit=(1.0, 4.0), p=1.0),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0),
                A.RandomGamma(gamma_limit=(80, 120), p=1.0),
            ],
            p=0.9,
        ),
        A.OneOf(
            [
                A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=1.0),
                A.Blur(blur_limit=(3, 3), p=1.0),
                A.MotionBlur(blur_limit=(3, 5), p=1.0),
                A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=1.0),
            ],
            p=0.9,
        ),
    ]
    contrast = A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.2, p=1.0)
    if in_channels == 3:
        t.append(A.OneOf([contrast, A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20,
                                                         val_shift_limit=10, p=1.0)], p=0.9))
    else:
        t.append(A.OneOf([contrast], p=0.45))
    pipeline = A.Compose(t)
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def _numpy_augmenter(in_channels: int, seed: int):
    """``f(image, mask, epoch, position) -> (image, mask)``, reproducible per element."""
    pipeline = build_augmentation(in_channels, seed)
    lock = threading.Lock()

    def augment(image: np.ndarray, mask: np.ndarray, epoch, position) -> tuple[np.ndarray, np.ndarray]:
        s = int(np.random.SeedSequence([seed, int(epoch), int(position)]).generate_state(1)[0])
        with lock:  # tf.data may call from several threads; the pipeline holds the RNG
            pipeline.set_random_state(np.random.default_rng(s), random.Random(s))
            out = pipeline(image=image, mask=mask)
        img = np.asarray(out["image"])
        if img.ndim == 2:
            img = img[..., None]
        if img.dtype != np.uint8:
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return img.reshape(image.shape), np.asarray(out["mask"], np.uint8).reshape(mask.shape)

    return augment


def make_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool = False,
    seed: int = 0,
    repeat: bool = False,
    steps_per_epoch: int | None = None,
    first_epoch: int = 0,
    in_channels: int | None = None,
) -> tf.data.Dataset:
    """``tf.data`` of ``(image float32 [0,1] (B,H,W,C), one-hot mask float32 (B,H,W,num_classes))``.

    One epoch is one pass over the data in an order fixed by ``(seed, epoch)``
    (``shuffle``), with the last batch possibly smaller; ``steps_per_epoch``
    instead makes an epoch exactly that many full batches, drawn from as many
    shuffled passes as needed (the rest of the last pass is dropped; with
    fewer images than ``batch_size`` a batch repeats images).  ``repeat``
    gives epochs ``first_epoch, first_epoch + 1, ...`` without end, otherwise
    only epoch ``first_epoch``.  ``augment`` runs :func:`build_augmentation`
    on the uint8 image and mask (``tf.numpy_function``), seeded by ``(seed,
    epoch, position in the epoch)``, before scaling.  The arrays are held in
    memory as uint8 tensors and converted per batch, so no ``cache()`` (a
    cached float/one-hot copy would be 4 + 4*num_classes times larger).
    """
    imgs = _check_images(images, in_channels)
    n = imgs.shape[0]
    msk = _check_masks(masks, imgs.shape, int(num_classes))
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if steps_per_epoch is not None:
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        passes = max(1, math.ceil(steps_per_epoch * batch_size / n))
    else:
        passes = 1
    seed = int(seed)
    h, w, c = imgs.shape[1:]
    img_t = tf.constant(imgs)
    mask_t = tf.constant(msk)
    aug_fn = _numpy_augmenter(c, seed) if augment else None
    autotune = tf.data.AUTOTUNE

    def one_pass(epoch, p):
        idx = tf.range(n, dtype=tf.int64)
        if shuffle:
            s = tf.stack([tf.constant(seed, tf.int64), epoch * 1024 + p])
            idx = tf.random.experimental.stateless_shuffle(idx, seed=s)
        return tf.data.Dataset.from_tensor_slices(idx)

    def one_epoch(epoch):
        ds = tf.data.Dataset.range(passes).flat_map(lambda p: one_pass(epoch, p)).enumerate()

        def load(position, i):
            image = tf.gather(img_t, i)
            mask = tf.gather(mask_t, i)
            if aug_fn is not None:
                image, mask = tf.numpy_function(aug_fn, [image, mask, epoch, position], [tf.uint8, tf.uint8],
                                                stateful=False)
                image.set_shape((h, w, c))
                mask.set_shape((h, w))
            return image, mask

        if aug_fn is not None:
            ds = ds.map(load, num_parallel_calls=autotune, deterministic=True)
        else:
            ds = ds.map(load)
        ds = ds.batch(batch_size)
        if steps_per_epoch is not None:
            ds = ds.take(steps_per_epoch)
        return ds

    first_epoch = int(first_epoch)
    epochs = tf.data.Dataset.counter(first_epoch) if repeat else tf.data.Dataset.range(first_epoch, first_epoch + 1)
    ds = epochs.flat_map(one_epoch)

    def to_model(image, mask):
        x = tf.cast(image, tf.float32) / 255.0
        y = tf.one_hot(tf.cast(mask, tf.int32), int(num_classes), dtype=tf.float32)
        return x, y

    return ds.map(to_model, num_parallel_calls=autotune).prefetch(autotune)


# =========================================================================== training
@dataclass
class TrainResult:
    """Outcome of :func:`train_unet`.

    ``history``: column -> list over *all* finished epochs (also those of
    earlier, resumed sessions); ``epochs_run`` = their number; ``best_epoch``
    (1-based) = epoch of the best ``val_iou_score`` whose weights the model
    holds; ``seconds`` = wall time of this call; ``resumed_from`` = epochs
    already done when this call started.
    """

    model: tf.keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    seconds: float
    best_val_iou_score: float | None = None
    stopped_early: bool = False
    resumed_from: int = 0
    out_dir: Path | None = None
    config: UNetConfig | None = None


def _make_loss(cfg: UNetConfig):
    dice = sm.losses.DiceLoss()
    if cfg.focal_weight == 0:
        return dice
    focal = sm.losses.CategoricalFocalLoss()
    return dice + (focal if cfg.focal_weight == 1 else focal * cfg.focal_weight)


def compile_unet(model: tf.keras.Model, cfg: UNetConfig) -> tf.keras.Model:
    """Adam(cfg.learning_rate), Dice + focal_weight * focal, IoU and F1 at threshold 0.5."""
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss=_make_loss(cfg),
        metrics=[sm.metrics.IOUScore(threshold=0.5), sm.metrics.FScore(threshold=0.5)],
    )
    return model


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _json_float(v: Any) -> float | None:
    return float(v) if _finite(v) else None


class _NanGuard(tf.keras.callbacks.Callback):
    """Like ``TerminateOnNaN``, and remembers the failure for the other callbacks."""

    def __init__(self):
        super().__init__()
        self.failed = False
        self.where = ""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            self.failed = True
            self.where = self.where or f"batch {batch}"
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            self.failed = True
            self.model.stop_training = True
        if self.failed:
            self.where = f"epoch {epoch + 1}, {self.where or 'end'}"


class _ResumableReduceLR(tf.keras.callbacks.ReduceLROnPlateau):
    def __init__(self, guard: _NanGuard, state: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._guard = guard
        self._resume = dict(state) if state else None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume:
            self.wait = int(self._resume["wait"])
            self.cooldown_counter = int(self._resume["cooldown_counter"])
            if self._resume.get("best") is not None:
                self.best = float(self._resume["best"])

    def on_epoch_end(self, epoch, logs=None):
        if not self._guard.failed:
            super().on_epoch_end(epoch, logs)

    def state(self) -> dict:
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter),
                "best": _json_float(self.best)}


class _ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    def __init__(self, guard: _NanGuard, state: Mapping[str, Any] | None = None,
                 best_weights: list | None = None, **kwargs):
        super().__init__(**kwargs)
        self._guard = guard
        self._resume = dict(state) if state else None
        self._resume_weights = best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume:
            self.wait = int(self._resume["wait"])
            self.best_epoch = int(self._resume["best_epoch"])
            if self._resume.get("best") is not None:
                self.best = float(self._resume["best"])
            self.best_weights = self._resume_weights

    def on_epoch_end(self, epoch, logs=None):
        if not self._guard.failed:
            super().on_epoch_end(epoch, logs)

    def state(self) -> dict:
        return {"wait": int(self.wait), "best_epoch": int(self.best_epoch), "best": _json_float(self.best)}


class _Recorder(tf.keras.callbacks.Callback):
    """History rows, last good weights, best weights file, checkpoint, history.csv."""

    def __init__(self, guard, es, rlr, history, out: Path | None, meta: dict, initial_weights):
        super().__init__()
        self.guard, self.es, self.rlr = guard, es, rlr
        self.history = history
        self.out = out
        self.meta = meta
        self.last_good = initial_weights
        self.stopped_early = False

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._lr = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed:
            return
        logs = logs or {}
        row = {"epoch": epoch + 1, "lr": self._lr, "seconds": time.perf_counter() - self._t0}
        for k in HISTORY_COLUMNS:
            if k not in row:
                row[k] = float(logs[k]) if k in logs else float("nan")
        for k, v in row.items():
            self.history.setdefault(k, []).append(v)
        self.last_good = self.model.get_weights()
        self.stopped_early = bool(self.model.stop_training)
        if self.out is None:
            return
        # Order: checkpoint + state.json (the commit point) -> model.h5 -> history.csv.  A resume rewrites
        # model.h5 (when the committed epoch is the best) and history.csv from the committed state.
        _save_checkpoint(self.out, self.model, epoch + 1, {
            **self.meta,
            "epochs_done": epoch + 1,
            "stopped_early": self.stopped_early,
            "best_epoch": self.es.best_epoch + 1,
            "early_stopping": self.es.state(),
            "reduce_lr": self.rlr.state(),
            "next_lr": float(tf.keras.backend.get_value(self.model.optimizer.learning_rate)),
            "history": self.history,
        })
        if self.es.best_epoch == epoch:
            _save_best_weights(self.out, self.model)
        _write_history_csv(self.out / HISTORY_FILE, self.history)


class _TqdmEpochs(tf.keras.callbacks.Callback):
    def __init__(self, total: int, initial: int, desc: str):
        super().__init__()
        self.total, self.initial, self.desc = total, initial, desc
        self.bar = None

    def on_train_begin(self, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.initial, desc=self.desc, unit="epoch")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}",
                                 val_iou=f"{logs.get(MONITOR, float('nan')):.4f}", refresh=False)
            self.bar.update(1)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _write_history_csv(path: Path, history: Mapping[str, Sequence[float]]) -> None:
    n = len(history.get("epoch", []))
    write_rows_csv(path, HISTORY_COLUMNS, [{k: history[k][i] for k in HISTORY_COLUMNS} for i in range(n)],
                   int_columns=("epoch",))


def _save_best_weights(out: Path, model: tf.keras.Model) -> None:
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        model.save_weights(str(tmp), save_format="h5")


def _delete_checkpoint(out: Path) -> None:
    """Remove ``checkpoint/`` as a whole: renamed aside first (atomic), so a kill never leaves half of it."""
    trash = out / f".{CHECKPOINT_DIR}.deleting"
    if (out / CHECKPOINT_DIR).exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out / CHECKPOINT_DIR, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _save_checkpoint(out: Path, model: tf.keras.Model, epochs_done: int, state: dict) -> None:
    """``checkpoint/epoch_XXXX/`` (weights + optimizer) then ``checkpoint/state.json`` as commit point."""
    ckdir = out / CHECKPOINT_DIR
    sub = f"epoch_{epochs_done:05d}"
    target = ckdir / sub
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(target / "ckpt"))
    atomic_write_json(ckdir / STATE_FILE, {**state, "checkpoint": sub})
    for old in ckdir.glob("epoch_*"):
        if old.name != sub:
            shutil.rmtree(old, ignore_errors=True)


def _read_history_csv(path: Path) -> dict[str, list[float]]:
    rows = read_rows_csv(path, HISTORY_COLUMNS, int_columns=("epoch",))
    return {k: [r[k] for r in rows] for k in HISTORY_COLUMNS}


def _check_resumable(out: Path, what: str, config: Mapping[str, Any], fingerprint: str,
                     cfg: UNetConfig, data_fingerprint: str) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(UNetConfig)}  # keys added later: their default
    diff = [k for k, v in cfg.to_dict().items()
            if k not in _RESUME_MAY_DIFFER and config.get(k, defaults.get(k)) != v]
    if diff:
        changes = ", ".join(f"{k}: {config.get(k)!r} -> {getattr(cfg, k)!r}" for k in diff)
        raise ValueError(f"{out} holds a {what} with another config ({changes}); use another out_dir or resume=False")
    if fingerprint != data_fingerprint:
        raise DataError(stale_inputs_message(out, what) + " (or call train_unet with resume=False)")


def _read_state(out: Path) -> dict | None:
    f = out / CHECKPOINT_DIR / STATE_FILE
    if not f.is_file():
        return None
    state = read_json(f)
    if not (out / CHECKPOINT_DIR / state["checkpoint"]).is_dir():
        raise FileNotFoundError(f"{f} names checkpoint {state['checkpoint']!r}, which is missing")
    return state


def _check_xy(data: Any, cfg: UNetConfig, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (images, masks)")
    x = _check_images(data[0], cfg.in_channels, f"{what} images")
    y = _check_masks(data[1], x.shape, cfg.num_classes, f"{what} masks")
    if x.shape[1] % 32 or x.shape[2] % 32:
        raise ValueError(f"{what} images are {x.shape[1]}x{x.shape[2]}; the U-Net needs height and width "
                         "that are multiples of 32 (cut patches of such a size)")
    return x, y


def train_unet(
    cfg: UNetConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    verbose: int = 0,
    resume: bool = True,
    keep_checkpoint: bool = True,
) -> TrainResult:
    """Train a U-Net as in the paper; resumable through ``out_dir``.

    ``train`` / ``val``: ``(uint8 images (N,H,W[,C]), class-index masks (N,H,W))``.
    Callbacks: NaN guard (as ``TerminateOnNaN``), ``ReduceLROnPlateau`` and
    ``EarlyStopping(restore_best_weights=True)`` on ``val_iou_score`` (mode
    max), history/checkpoint recorder, tqdm bar over epochs (``progress``).
    The returned model holds the best epoch's weights.  The model is built
    with ``tf.keras.utils.set_random_seed(cfg.seed)`` (reseeds Python, NumPy
    and TF globally).

    With ``out_dir`` and ``resume`` (default), an existing checkpoint there is
    continued: up to ``cfg.epochs`` epochs in total (a run that stopped early
    stays finished); its config may differ only in ``epochs`` and
    ``encoder_weights`` and the data must be identical, else ``ValueError``.
    ``resume=False`` discards an existing checkpoint and earlier results.
    ``keep_checkpoint=False`` deletes ``checkpoint/`` after a successful run
    (saves disk: weights + Adam state are ~3x the weight file); calling again
    then returns the finished run (best weights + history, no training) if it
    has ``cfg.epochs`` epochs or stopped early, and raises ``ValueError`` if it
    would have to be extended.  ``train_summary.json`` (written at the end of
    a successful run) records the outcome.

    A NaN/inf loss stops training and raises ``FloatingPointError``; the model
    then holds the weights of the last finished epoch (the initial ones if
    none), ``out_dir`` keeps the last good checkpoint, and the exception's
    ``result`` attribute is the partial :class:`TrainResult`.
    """
    t_start = time.perf_counter()
    x_tr, y_tr = _check_xy(train, cfg, "train")
    x_va, y_va = _check_xy(val, cfg, "val")
    steps = cfg.steps_per_epoch or max(1, x_tr.shape[0] // cfg.batch_size)
    fingerprint = _fingerprint(x_tr, y_tr, x_va, y_va)
    out = Path(out_dir) if out_dir is not None else None

    state = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume or (out / f".{CHECKPOINT_DIR}.deleting").exists():
            _delete_checkpoint(out)  # also finishes a deletion that was interrupted
        if resume:
            state = _read_state(out)
        if state is None and resume and (out / HISTORY_FILE).exists():
            summary_file = out / SUMMARY_FILE
            if not (summary_file.is_file() and (out / WEIGHTS_FILE).is_file()):
                raise ValueError(
                    f"{out} holds results of an earlier run ({HISTORY_FILE}) but no {CHECKPOINT_DIR}/ to resume "
                    "from; pass resume=False to overwrite them or use another out_dir"
                )
            summary = read_json(summary_file)
            _check_resumable(out, "finished run", summary["config"], summary["fingerprint"], cfg, fingerprint)
            if not (summary["stopped_early"] or summary["epochs_run"] >= cfg.epochs):
                raise ValueError(
                    f"{out} holds a run of {summary['epochs_run']} epochs whose checkpoint was deleted "
                    f"(keep_checkpoint=False): it cannot be extended to {cfg.epochs} epochs; pass resume=False "
                    "to train again or use another out_dir"
                )
            return _finished_result(out, cfg, summary, t_start)
        if state is None:  # history.csv first: it marks a run that has results
            for stale in (out / HISTORY_FILE, out / SUMMARY_FILE, out / WEIGHTS_FILE):
                stale.unlink(missing_ok=True)
    if state is not None:
        _check_resumable(out, "checkpoint", state["config"], state["fingerprint"], cfg, fingerprint)

    initial_epoch = int(state["epochs_done"]) if state else 0
    history: dict[str, list[float]] = {k: list(v) for k, v in state["history"].items()} if state else {}
    build_cfg = dataclasses.replace(cfg, encoder_weights=None) if state else cfg
    model = compile_unet(build_unet(build_cfg, seed=cfg.seed), cfg)
    if out is not None:
        atomic_write_json(out / CONFIG_FILE, cfg.to_dict())

    best_weights = None
    if state:
        model.optimizer.build(model.trainable_variables)
        status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
            str(out / CHECKPOINT_DIR / state["checkpoint"] / "ckpt"))
        status.assert_existing_objects_matched()
        model.optimizer.learning_rate.assign(float(state["next_lr"]))
        if int(state["best_epoch"]) == initial_epoch:
            # the committed epoch is the best one: its weights are the checkpoint's (model.h5 may not have
            # been written before a kill)
            _save_best_weights(out, model)
            best_weights = model.get_weights()
        elif (out / WEIGHTS_FILE).is_file():
            current = model.get_weights()
            load_weights_h5(model, out / WEIGHTS_FILE, strict=True)
            best_weights = model.get_weights()
            model.set_weights(current)
        _write_history_csv(out / HISTORY_FILE, history)  # a kill may have come before it was written

    finished = state is not None and (state["stopped_early"] or initial_epoch >= cfg.epochs)
    guard = _NanGuard()
    rlr = _ResumableReduceLR(guard, state["reduce_lr"] if state else None, monitor=MONITOR, mode="max",
                             factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, verbose=verbose)
    es = _ResumableEarlyStopping(guard, state["early_stopping"] if state else None, best_weights,
                                 monitor=MONITOR, mode="max", patience=cfg.early_stopping_patience,
                                 restore_best_weights=True, verbose=verbose)
    meta = {"config": cfg.to_dict(), "fingerprint": fingerprint, "steps_per_epoch": steps}
    recorder = _Recorder(guard, es, rlr, history, out, meta, model.get_weights())
    callbacks: list = [guard, rlr, es, recorder]
    if progress:
        callbacks.append(_TqdmEpochs(cfg.epochs, initial_epoch, f"U-Net {cfg.encoder}"))

    if not finished:
        train_ds = make_dataset(x_tr, y_tr, cfg.num_classes, cfg.batch_size, shuffle=True, augment=cfg.augment,
                                seed=cfg.seed, repeat=True, steps_per_epoch=steps, first_epoch=initial_epoch)
        val_ds = make_dataset(x_va, y_va, cfg.num_classes, cfg.val_batch_size, shuffle=False)
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
        stopped_early = recorder.stopped_early and len(history.get("epoch", [])) < cfg.epochs
    else:
        stopped_early = bool(state["stopped_early"])
        if best_weights is not None:
            model.set_weights(best_weights)

    epochs_run = len(history.get("epoch", []))
    vals = history.get(MONITOR, [])
    finite = [(v, i) for i, v in enumerate(vals) if _finite(v)]
    best_i = max(finite, key=lambda t: (t[0], -t[1]))[1] if finite else (epochs_run - 1)
    result = TrainResult(
        model=model,
        history=history,
        epochs_run=epochs_run,
        best_epoch=best_i + 1 if epochs_run else 0,
        seconds=time.perf_counter() - t_start,
        best_val_iou_score=float(vals[best_i]) if finite else None,
        stopped_early=stopped_early,
        resumed_from=initial_epoch,
        out_dir=out,
        config=cfg,
    )
    if guard.failed:
        model.set_weights(recorder.last_good)
        kept = f"the weights of epoch {epochs_run}" if epochs_run else "its initial weights"
        err = FloatingPointError(
            f"U-Net training diverged: the loss became NaN/inf at {guard.where}; the model keeps {kept}. "
            "Lower learning_rate or check the data."
        )
        err.result = result  # type: ignore[attr-defined]
        raise err
    if out is not None:
        atomic_write_json(out / SUMMARY_FILE, {
            "config": cfg.to_dict(), "fingerprint": fingerprint, "epochs_run": epochs_run,
            "best_epoch": result.best_epoch, "best_val_iou_score": result.best_val_iou_score,
            "stopped_early": stopped_early,
        })
        if not keep_checkpoint:
            _delete_checkpoint(out)
    return result


def _finished_result(out: Path, cfg: UNetConfig, summary: Mapping[str, Any], t_start: float) -> TrainResult:
    """A finished run without checkpoint: its best weights and history, no training."""
    model = build_unet(dataclasses.replace(cfg, encoder_weights=None))
    load_weights_h5(model, out / WEIGHTS_FILE, strict=True)
    compile_unet(model, cfg)
    history = _read_history_csv(out / HISTORY_FILE)
    return TrainResult(
        model=model,
        history=history,
        epochs_run=len(history["epoch"]),
        best_epoch=int(summary["best_epoch"]),
        seconds=time.perf_counter() - t_start,
        best_val_iou_score=summary.get("best_val_iou_score"),
        stopped_early=bool(summary["stopped_early"]),
        resumed_from=len(history["epoch"]),
        out_dir=out,
        config=cfg,
    )


# =========================================================================== inference
def _model_channels(model: tf.keras.Model) -> int:
    return int(model.input_shape[-1])


def predict_proba(model: tf.keras.Model, images: np.ndarray, batch_size: int = 8,
                  in_channels: int | None = None) -> np.ndarray:
    """Softmax probabilities float32 ``(N, H, W, num_classes)`` (batched; any H, W)."""
    want = in_channels or _model_channels(model)
    if want != _model_channels(model):
        raise ValueError(f"in_channels={in_channels} but the model takes {_model_channels(model)} channels")
    imgs = _check_images(images, want)
    n, h, w, _ = imgs.shape
    fixed = model.input_shape[1:3]
    if fixed[0] is not None:
        if (h, w) != tuple(fixed):
            raise ValueError(f"the model was built for {fixed[0]}x{fixed[1]} inputs, images are {h}x{w}")
        ph = pw = 0
    else:
        ph, pw = (-h) % 32, (-w) % 32
    out = None
    for s in range(0, n, max(1, int(batch_size))):
        x = imgs[s:s + batch_size]
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        p = np.asarray(model.predict_on_batch(x.astype(np.float32) / 255.0))[:, :h, :w]
        if out is None:
            out = np.empty((n, h, w, p.shape[-1]), np.float32)
        out[s:s + len(x)] = p
    assert out is not None
    return out


def predict(model: tf.keras.Model, images: np.ndarray, batch_size: int = 8,
            in_channels: int | None = None) -> np.ndarray:
    """Class-index masks uint8 ``(N, H, W)`` (argmax of :func:`predict_proba`)."""
    return predict_proba(model, images, batch_size, in_channels).argmax(axis=-1).astype(np.uint8)


def evaluate_model(model: tf.keras.Model, images: np.ndarray, masks: np.ndarray, num_classes: int,
                   class_names: Sequence[str] | None = None, batch_size: int = 8) -> dict:
    """:func:`predict` then :func:`dualsynth.metrics.evaluate` (Missing Class IoU, mIoU, ...)."""
    imgs = _check_images(images, _model_channels(model))
    gts = _check_masks(masks, imgs.shape, int(num_classes))
    preds = predict(model, imgs, batch_size)
    return _evaluate_masks(gts, preds, int(num_classes), class_names)


def load_unet_config(out_dir: str | os.PathLike) -> UNetConfig:
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {out_dir}: not a U-Net training folder")
    return UNetConfig.from_dict(read_json(path))


def load_unet(out_dir: str | os.PathLike, input_size: int | None = None) -> tf.keras.Model:
    """Rebuild the model of a :func:`train_unet` folder and load its best weights (no download)."""
    cfg = dataclasses.replace(load_unet_config(out_dir), encoder_weights=None)
    weights = Path(out_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {out_dir} (training has not finished an epoch)")
    model = build_unet(cfg, input_size)
    load_weights_h5(model, weights, strict=True)
    return model
