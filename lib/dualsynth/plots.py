"""Every figure of the workflow.  Functions return a matplotlib Figure; ``save_figure`` writes PNG (+ PDF)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch as LegendPatch
from matplotlib.patches import Rectangle

from .io import atomic_path
from .palette import Palette

__all__ = [
    "save_figure",
    "show_image",
    "plot_source_overview",
    "plot_patch_grid",
    "plot_hq_vs_lq",
    "plot_class_fractions",
    "palette_legend",
]

TIER_COLORS = {"test": "#e41a1c", "small": "#4daf4a", "big": "#377eb8", "unused": "#999999", "dropped": "#000000"}


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


def plot_source_overview(image: np.ndarray, mask_hq: np.ndarray, mask_lq: np.ndarray | None, palette: Palette,
                         crop: int | None = 768, title: str = "") -> plt.Figure:
    """Image, HQ mask, LQ mask and where they differ (a crop, so texture is visible)."""
    h, w = mask_hq.shape
    if crop and (h > crop or w > crop):
        y0, x0 = (h - min(crop, h)) // 2, (w - min(crop, w)) // 2
        sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        image, mask_hq = image[sl], mask_hq[sl]
        mask_lq = None if mask_lq is None else mask_lq[sl]
    n = 4 if mask_lq is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.9))
    show_image(axes[0], image, "micrograph")
    show_image(axes[1], palette.index_to_rgb(mask_hq), "HQ mask (exact)")
    if mask_lq is not None:
        err = float(np.mean(mask_lq != mask_hq))
        show_image(axes[2], palette.index_to_rgb(mask_lq), "LQ mask (model-made)")
        diff = np.zeros(mask_hq.shape + (3,), np.uint8)
        diff[mask_lq != mask_hq] = (255, 255, 0)
        show_image(axes[3], diff, f"HQ ≠ LQ: {err:.1%} of pixels")
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_patch_grid(image: np.ndarray, manifest: Mapping[str, Any], source: str = "main") -> plt.Figure:
    """The large image with its patch grid; each patch outlined by its role (test / small / big / unused / dropped)."""
    ps = int(manifest["patch_size"])
    small = {e["id"] for sp in manifest["tiers"]["SHQ"].values() for e in sp}
    big = {e["id"] for sp in manifest["tiers"]["BLQ"].values() for e in sp}
    test = {e["id"] for e in manifest["test"]}
    fig, ax = plt.subplots(figsize=(9, 9 * image.shape[0] / image.shape[1] + 0.6))
    show_image(ax, image, f"{source}: {image.shape[1]}×{image.shape[0]} px, {ps} px patches")
    for pid, rec in manifest["patches"].items():
        if rec["source"] != source:
            continue
        role = ("dropped" if rec["drop_reason"] else "test" if pid in test else "small" if pid in small
                else "big" if pid in big else "unused")
        ax.add_patch(Rectangle((rec["x"] + 2, rec["y"] + 2), ps - 4, ps - 4, fill=False, lw=1.6, ec=TIER_COLORS[role]))
    labels = {"test": "test (HQ)", "small": "SHQ/SLQ (⊂ BLQ/BMQ)", "big": "BLQ/BMQ only", "unused": "unused",
              "dropped": "dropped (one class)"}
    ax.legend(handles=[LegendPatch(fill=False, ec=TIER_COLORS[k], lw=2, label=v) for k, v in labels.items()],
              loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=5, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_hq_vs_lq(images: Sequence[np.ndarray], masks_hq: Sequence[np.ndarray], masks_lq: Sequence[np.ndarray],
                  palette: Palette, ids: Sequence[str] | None = None) -> plt.Figure:
    """Rows of patches: micrograph, HQ mask, LQ mask, disagreement."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    for i in range(n):
        tag = f"{ids[i]}: " if ids is not None else ""
        show_image(axes[i, 0], images[i], f"{tag}micrograph")
        show_image(axes[i, 1], palette.index_to_rgb(masks_hq[i]), "HQ")
        show_image(axes[i, 2], palette.index_to_rgb(masks_lq[i]), "LQ")
        d = masks_hq[i] != masks_lq[i]
        show_image(axes[i, 3], np.where(d[..., None], np.uint8([255, 255, 0]), np.uint8([0, 0, 0])), f"differ: {d.mean():.1%}")
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_class_fractions(fractions: Mapping[str, Sequence[float]], class_names: Sequence[str], title: str = "",
                         log: bool = False) -> plt.Figure:
    """Grouped bars: one group per class, one bar per set (e.g. splits, or real vs synthetic)."""
    sets = [k for k, v in fractions.items() if len(v)]
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(sets))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(class_names), 3.4))
    for j, s in enumerate(sets):
        ax.bar(x + (j - (len(sets) - 1) / 2) * width, np.asarray(fractions[s]) * 100, width, label=s)
    ax.set_xticks(x, class_names)
    ax.set_ylabel("pixels [%]")
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
