"""The basics every figure module uses: saving a figure atomically, showing an image, a palette legend."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch as LegendPatch

from .io import atomic_path
from .palette import Palette

__all__ = ["save_figure", "show_image", "palette_legend"]


def save_figure(fig: plt.Figure, path: str | os.PathLike, pdf: bool = False, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG (and PDF when ``pdf``), atomically."""
    path = Path(path).with_suffix(".png")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    if pdf:
        with atomic_path(path.with_suffix(".pdf"), suffix=".pdf") as tmp:
            fig.savefig(tmp, bbox_inches="tight", format="pdf")
    return path


def show_image(ax: plt.Axes, image: np.ndarray, title: str | None = None) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def palette_legend(palette: Palette) -> list[LegendPatch]:
    return [LegendPatch(facecolor=np.array(c) / 255, edgecolor="k", label=n) for n, c in zip(palette.names, palette.colors)]
