"""Resampling large source images before they are cut (data YAML ``source.scale``).

A 1600 × 1200 optical micrograph cut into 128 px patches shows part of one grain per patch; ``scale: 0.5`` halves
width and height first, so a patch shows four times the microstructure.  Micrographs are resampled by **area
averaging** (Pillow's box filter: each output pixel is the mean of the input pixels it covers, weighted by the part
of each that it covers), which keeps the mean grey level and does not alias fine texture; masks by **nearest
neighbour**, so every output pixel holds a class of the input mask and no label is invented where classes meet.
The output size is the input size times ``scale``, rounded to the nearest pixel, the same for an image and its masks.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["scaled_shape", "rescale_image", "rescale_mask"]


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(height, width)`` after scaling: each side times ``scale``, rounded half up, at least 1 px."""
    return max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """A ``uint8 (H, W, C)`` micrograph resampled by area averaging, each channel alone.

    Each channel is resampled as 32-bit float (Pillow's mode ``F``) and rounded once at the end: Pillow's 8-bit
    path rounds after each of its two passes, up to one grey level off the block mean and biased upwards."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"rescale_image needs a uint8 (H, W, C) array, got {image.dtype} {image.shape}")
    h, w = scaled_shape(image.shape[0], image.shape[1], scale)
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((w, h), Image.Resampling.BOX))
                for c in range(image.shape[2])]  # float32 (H, W): Pillow's mode F
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def rescale_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """A ``uint8 (H, W)`` class-index mask resampled by nearest neighbour (no new labels)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"rescale_mask needs a uint8 (H, W) array, got {mask.dtype} {mask.shape}")
    h, w = scaled_shape(mask.shape[0], mask.shape[1], scale)
    return np.array(Image.fromarray(np.ascontiguousarray(mask)).resize((w, h), Image.Resampling.NEAREST))
