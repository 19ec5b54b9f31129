"""Helpers of the generator: smooth Gaussian random fields, exact-count pixel selection, mask previews."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .params import CLASS_COLORS

__all__ = ["colorize_mask"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ~``scale`` px.

    Large scales are computed on a coarse grid and interpolated (cheap).
    """
    h, w = shape
    scale = max(float(scale), 0.5)
    f = max(1, int(scale / 3.0))
    sh, sw = h // f + 3, w // f + 3
    white = rng.standard_normal((sh, sw), dtype=np.float32)
    g = ndi.gaussian_filter(white, scale / f, mode="wrap")
    if f > 1:
        g = _upsample_linear(g, f, h, w)
    g = g[:h, :w]
    g -= g.mean()
    s = g.std()
    if s > 0:
        g /= s
    return np.ascontiguousarray(g, dtype=np.float32)


def _upsample_linear(g: np.ndarray, f: int, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of ``g`` by an integer factor ``f``, cropped to (h, w).

    Sample ``j`` of the output lies at ``j / f`` in input coordinates (corner
    aligned), so both passes are single broadcast operations (no gathers).
    Needs ``(g.shape[0] - 1) * f >= h`` and ``(g.shape[1] - 1) * f >= w``.
    """
    wm = (np.arange(f, dtype=np.float32) / f)
    vm = 1.0 - wm
    rows = (g[:-1, None, :] * vm[None, :, None] + g[1:, None, :] * wm[None, :, None])
    rows = rows.reshape(-1, g.shape[1])[:h]
    out = rows[:, :-1, None] * vm + rows[:, 1:, None] * wm
    return out.reshape(h, -1)[:, :w]


def _select_lowest(score: np.ndarray, allowed: np.ndarray | None, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` pixels with the lowest ``score`` among ``allowed``."""
    out = np.zeros(score.shape, dtype=bool)
    flat_out = out.ravel()
    if allowed is None:
        idx = np.arange(score.size)
    else:
        idx = np.flatnonzero(allowed)
    k = int(min(max(k, 0), idx.size))
    if k == 0:
        return out
    vals = score.ravel()[idx]
    if k < idx.size:
        part = np.argpartition(vals, k - 1)[:k]
        flat_out[idx[part]] = True
    else:
        flat_out[idx] = True
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def colorize_mask(mask: np.ndarray, colors: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 rendering of an index mask (for previews)."""
    colors = CLASS_COLORS if colors is None else np.asarray(colors, dtype=np.uint8)
    if mask.max(initial=0) >= len(colors):
        rng = np.random.default_rng(12345)
        extra = rng.integers(0, 256, (int(mask.max()) + 1 - len(colors), 3), dtype=np.uint8)
        colors = np.concatenate([colors, extra])
    return colors[mask]
