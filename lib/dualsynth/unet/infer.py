"""Inference with a trained U-Net: probabilities, class masks, scores, and loading a training folder."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dualsynth.io import read_json
from dualsynth.metrics import evaluate as _evaluate_masks

from ._backend import tf
from .data import check_images, check_masks
from .files import CONFIG_FILE, WEIGHTS_FILE
from .model import UNetConfig, build_unet
from .weights import load_weights_h5

__all__ = ["predict_proba", "predict", "evaluate_model", "load_unet_config", "load_unet"]


def _model_channels(model: tf.keras.Model) -> int:
    return int(model.input_shape[-1])


def predict_proba(model: tf.keras.Model, images: np.ndarray, batch_size: int = 8,
                  in_channels: int | None = None) -> np.ndarray:
    """Softmax probabilities float32 ``(N, H, W, num_classes)`` (batched; any H, W)."""
    want = in_channels or _model_channels(model)
    if want != _model_channels(model):
        raise ValueError(f"in_channels={in_channels} but the model takes {_model_channels(model)} channels")
    imgs = check_images(images, want)
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
    imgs = check_images(images, _model_channels(model))
    gts = check_masks(masks, imgs.shape, int(num_classes))
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
