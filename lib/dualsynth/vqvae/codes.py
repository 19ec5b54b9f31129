"""Batched numpy helpers around a :class:`~dualsynth.vqvae.model.VQVAE`: code maps, decoding, data variance.

No file I/O: arrays in, arrays out.
"""
from __future__ import annotations

import numpy as np

from .model import VQVAE

__all__ = ["data_variance", "encode_dataset", "decode_codes"]


def data_variance(images: np.ndarray, chunk: int = 64) -> float:
    """Variance of all values of ``images`` (float64 accumulation, chunked)."""
    images = np.asarray(images)
    if images.size == 0:
        raise ValueError("data_variance: empty array")
    n = images.shape[0] if images.ndim else 1
    flat = images.reshape(n, -1) if images.ndim else images.reshape(1, 1)
    total = 0.0
    total_sq = 0.0
    count = 0
    mean0 = float(np.mean(flat[: min(chunk, n)], dtype=np.float64))  # shift for stability
    for i in range(0, n, chunk):
        block = flat[i : i + chunk].astype(np.float64) - mean0
        total += float(block.sum())
        total_sq += float(np.square(block).sum())
        count += block.size
    mean = total / count
    return float(max(total_sq / count - mean * mean, 0.0))


def _check_images(images, in_channels: int, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"{what}: expected (N, H, W, C) images, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what}: no images")
    if arr.shape[-1] != in_channels:
        raise ValueError(
            f"{what}: {arr.shape[-1]} channels but the model has in_channels={in_channels} "
            "(micrograph channels + 1 mask channel)"
        )
    if arr.shape[1] % 4 or arr.shape[2] % 4:
        raise ValueError(f"{what}: height and width must be multiples of 4, got {arr.shape[1:3]}")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        raise ValueError(
            f"{what}: integer/bool images (dtype {arr.dtype}); the VQ-VAE expects float32 in [0, 1] "
            "(divide uint8 by 255)"
        )
    return arr.astype(np.float32, copy=False)


def encode_dataset(model: VQVAE, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Code maps of ``images`` (N, H, W, C) float in [0, 1] -> int32 (N, H/d, W/d), ``d`` the model's
    ``downsample``."""
    images = _check_images(images, model.in_channels, "encode_dataset")
    out = [model.encode(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0).astype(np.int32, copy=False)


def decode_codes(model: VQVAE, codes: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Reconstructions (N, dh, dw, C) float32 from code maps (N, h, w) with values in [0, K), ``d`` the model's
    ``downsample``."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"decode_codes: expected (N, h, w) code maps, got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        if not np.all(np.equal(np.mod(codes, 1), 0)):
            raise ValueError("decode_codes: codes must be integers")
    if codes.size and (codes.min() < 0 or codes.max() >= model.num_embeddings):
        raise ValueError(
            f"decode_codes: code values must be in [0, {model.num_embeddings}), "
            f"got [{codes.min()}, {codes.max()}] (the paper numbers codes 1..K; subtract 1)"
        )
    codes = codes.astype(np.int32)
    if len(codes) == 0:
        h, w = codes.shape[1:]
        d = int(model.config["downsample"])
        return np.zeros((0, d * h, d * w, model.in_channels), np.float32)
    out = [model.decode_indices(codes[i : i + batch_size]).numpy() for i in range(0, len(codes), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)
