"""Dual images: a micrograph's C channels plus one mask channel, as one float array.

The generative model learns image and mask *jointly* from a (H, W, C+1) array:
the micrograph scaled to [0, 1] and the mask as its palette grey level scaled to
[0, 1] (e.g. NdFeB: matrix 0, Eta 1/3, oxide 2/3, Nd-rich 1).  ``split`` undoes
this; the mask channel comes back as floats for the clean-up in ``synthesis``.
"""
from __future__ import annotations

import numpy as np

from .palette import Palette

__all__ = ["compose", "split", "compose_batch"]


def compose(image: np.ndarray, mask: np.ndarray, palette: Palette) -> np.ndarray:
    """``uint8 (H, W, C)`` image + class-index mask ``(H, W)`` → ``float32 (H, W, C+1)`` in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    grey = palette.grey_unit[np.asarray(mask, dtype=np.intp)]
    return np.concatenate([image.astype(np.float32) / 255.0, grey[..., None]], axis=-1)


def compose_batch(images: np.ndarray, masks: np.ndarray, palette: Palette) -> np.ndarray:
    """Batched :func:`compose`: ``(N, H, W, C)`` + ``(N, H, W)`` → ``(N, H, W, C+1)``."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if len(images) == 0:
        raise ValueError("no images to compose")
    return np.stack([compose(i, m, palette) for i, m in zip(images, masks)])


def split(dual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``float (…, H, W, C+1)`` → (``uint8`` image ``(…, H, W, C)``, float mask channel ``(…, H, W)``)."""
    dual = np.asarray(dual, dtype=np.float32)
    if dual.ndim < 3 or dual.shape[-1] not in (2, 4):
        raise ValueError(f"a dual image has 2 (grey) or 4 (RGB) channels in the last axis, got shape {dual.shape}")
    image = np.clip(np.round(dual[..., :-1] * 255.0), 0, 255).astype(np.uint8)
    return image, dual[..., -1]
