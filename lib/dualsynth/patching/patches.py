"""Cutting a large image into a grid of patches and dropping the ones that hold (almost) one class."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..config import ParamError
from ..io import DataError

if TYPE_CHECKING:
    from .sources import SourceImage

__all__ = ["PatchingError", "Patch", "class_fractions", "grid_positions", "cut_patches", "filter_patches"]


class PatchingError(DataError):
    """The data cannot be cut into the requested patches/tiers."""


@dataclass
class Patch:
    id: str
    source: str
    row: int
    col: int
    y: int
    x: int
    image: np.ndarray
    mask_hq: np.ndarray
    mask_lq: np.ndarray | None
    role: str = "train"
    drop_reason: str | None = None


def class_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, mask.size)


def grid_positions(height: int, width: int, patch_size: int, source: str = "image") -> list[tuple[int, int, int, int]]:
    """Non-overlapping grid, anchored top-left: ``(row, col, y, x)`` for each patch.

    A 2752 × 2208 image at 256 px gives 10 × 8 = 80 patches (the right and
    bottom remainders are not used).
    """
    if patch_size < 8:
        raise ParamError(f"patch_size={patch_size}: must be at least 8 (and divisible by 4 for the VQ-VAE)")
    if height < patch_size or width < patch_size:
        raise PatchingError(
            f"{source}: image is {width}×{height} px (W×H), smaller than one {patch_size}×{patch_size} patch; "
            f"use a smaller patch_size or a larger image"
        )
    rows, cols = height // patch_size, width // patch_size
    return [(r, c, r * patch_size, c * patch_size) for r in range(rows) for c in range(cols)]


def cut_patches(src: "SourceImage", patch_size: int) -> list[Patch]:
    out = []
    for r, c, y, x in grid_positions(*src.mask_hq.shape, patch_size, source=src.path or src.name):
        sl = (slice(y, y + patch_size), slice(x, x + patch_size))
        out.append(
            Patch(
                id=f"{src.name}_r{r:02d}_c{c:02d}",
                source=src.name,
                row=r,
                col=c,
                y=y,
                x=x,
                image=src.image[sl],
                mask_hq=src.mask_hq[sl],
                mask_lq=None if src.mask_lq is None else src.mask_lq[sl],
                role=src.role,
            )
        )
    return out


def filter_patches(patches: Sequence[Patch], num_classes: int, max_majority_fraction: float = 0.995) -> list[Patch]:
    """Mark patches whose most frequent class covers more than ``max_majority_fraction`` as dropped.

    (The paper dropped patches holding only the matrix phase.)  Returns the kept patches.
    """
    if not (0.0 < max_majority_fraction <= 1.0):
        raise ParamError(f"max_majority_fraction={max_majority_fraction}: must be in (0, 1]")
    kept = []
    for p in patches:
        frac = class_fractions(p.mask_hq, num_classes)
        if frac.max() > max_majority_fraction or (max_majority_fraction == 1.0 and frac.max() >= 1.0):
            p.drop_reason = f"majority class covers {frac.max():.1%} > {max_majority_fraction:.1%}"
        else:
            kept.append(p)
    return kept
