"""Every figure of the workflow.  Functions return a matplotlib Figure; ``save_figure`` writes PNG (+ PDF).

The data and generator figures (01–04) are here; the study's (07) are in :mod:`.plots_study` and the shared basics in
:mod:`.plots_base`, both re-exported, so ``plots.<name>`` is the one import path."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch as LegendPatch
from matplotlib.patches import Rectangle

from .dual import mask_as_grey, split
from .palette import Palette
from .plots_base import palette_legend, save_figure, show_image  # noqa: F401  (re-exported)

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


# --------------------------------------------------------------------------- generative model figures
def _grey_mask(channel: np.ndarray) -> np.ndarray:
    return (np.clip(channel, 0, 1) * 255).astype(np.uint8)[..., None]


def plot_history(history: Mapping[str, Sequence[float]], x: str, columns: Sequence[str], title: str = "",
                 logy: bool = True, best_x: float | None = None) -> plt.Figure:
    """Training curves (e.g. paper Fig. 8): one line per column against ``x``; optional marker of the best step."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = np.asarray(history[x], dtype=float)
    for c in columns:
        if c in history and len(history[c]):
            ax.plot(xs, np.asarray(history[c], dtype=float), label=c, marker="." if len(xs) < 40 else None)
    if best_x is not None:
        ax.axvline(best_x, color="k", ls=":", lw=1, label=f"best ({x} {int(best_x)})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_reconstructions(inputs: np.ndarray, snapshots: Mapping[int, np.ndarray], max_images: int = 3,
                         image_channels: int | None = None, palette: Palette | None = None,
                         encoding: str = "grey") -> plt.Figure:
    """Dual images and their reconstructions at several training steps (paper Fig. 7).

    Each row: input micrograph, input mask (as grey levels), then micrograph / mask at every snapshot step.
    ``image_channels`` and ``palette`` are needed for one-hot encoded masks.
    """
    def parts(x):
        img, m = split(x, image_channels, encoding)
        return img, (mask_as_grey(m, palette, encoding) if encoding == "onehot" else m)

    steps = sorted(snapshots)
    n = min(max_images, len(inputs))
    cols = 2 + 2 * len(steps)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.8 * n + 0.3), squeeze=False)
    for i in range(n):
        img, m = parts(inputs[i])
        show_image(axes[i, 0], img, "input" if i == 0 else None)
        show_image(axes[i, 1], _grey_mask(m), "input mask" if i == 0 else None)
        for j, s in enumerate(steps):
            img, m = parts(snapshots[s][i])
            show_image(axes[i, 2 + 2 * j], img, f"step {s}" if i == 0 else None)
            show_image(axes[i, 3 + 2 * j], _grey_mask(m), "mask" if i == 0 else None)
    fig.tight_layout()
    return fig


def plot_code_maps(images: np.ndarray, masks: np.ndarray, codes: np.ndarray, palette: Palette, num_embeddings: int,
                   max_images: int = 3) -> plt.Figure:
    """Micrograph | mask | code map side by side (paper Fig. 9)."""
    n = min(max_images, len(images))
    fig, axes = plt.subplots(n, 3, figsize=(8, 2.7 * n), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_embeddings <= 10 else "tab20", num_embeddings)
    for i in range(n):
        show_image(axes[i, 0], images[i], "micrograph" if i == 0 else None)
        show_image(axes[i, 1], palette.index_to_rgb(masks[i]), "mask" if i == 0 else None)
        im = axes[i, 2].imshow(codes[i], cmap=cmap, vmin=-0.5, vmax=num_embeddings - 0.5, interpolation="nearest")
        axes[i, 2].set_xticks([])
        axes[i, 2].set_yticks([])
        if i == 0:
            axes[i, 2].set_title(f"code map {codes.shape[1]}×{codes.shape[2]}", fontsize=9)
        fig.colorbar(im, ax=axes[i, 2], ticks=range(num_embeddings), fraction=0.046)
    fig.tight_layout()
    return fig


def plot_code_samples(real: np.ndarray, sampled: np.ndarray, num_embeddings: int, max_maps: int = 4) -> plt.Figure:
    """Real code maps (top) against code maps sampled from the prior (bottom)."""
    n = min(max_maps, len(real), len(sampled))
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 4.8), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_embeddings <= 10 else "tab20", num_embeddings)
    for j in range(n):
        for i, (arr, lab) in enumerate(((real, "real"), (sampled, "sampled"))):
            axes[i, j].imshow(arr[j], cmap=cmap, vmin=-0.5, vmax=num_embeddings - 0.5, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(lab)
    fig.tight_layout()
    return fig


def plot_sample_grid(images: np.ndarray, masks: np.ndarray, palette: Palette, max_pairs: int = 8, title: str = "",
                     raw: Sequence[np.ndarray] | None = None) -> plt.Figure:
    """Synthetic micrograph + mask pairs (paper Fig. 10): pairs in columns, micrograph above its mask.

    ``raw``: the decoded mask channels before clean-up (float ``(H, W)`` in [0, 1], as the paper shows them),
    drawn as grey images between the micrograph and the cleaned mask.
    """
    n = min(max_pairs, len(images))
    rows = 2 if raw is None else 3
    fig, axes = plt.subplots(rows, n, figsize=(2.0 * n, 2.15 * rows), squeeze=False)
    for j in range(n):
        show_image(axes[0, j], images[j])
        if raw is not None:
            show_image(axes[1, j], _grey_mask(raw[j]))
        show_image(axes[rows - 1, j], palette.index_to_rgb(masks[j]))
    if raw is not None:
        for r, lab in enumerate(("micrograph", "raw mask", "cleaned mask")):
            axes[r, 0].set_ylabel(lab, fontsize=8)
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_cleanup_steps(image: np.ndarray, raw: np.ndarray, naive: np.ndarray, clustered: np.ndarray, cleaned: np.ndarray,
                       palette: Palette, labels_title: str = "k-means", cleaned_title: str = "small objects filled",
                       naive_title: str = "nearest grey level") -> plt.Figure:
    """Mask clean-up (paper Fig. 11): decoded mask channel → nearest level → k-means → small objects removed."""
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    show_image(axes[0], image, "decoded micrograph")
    show_image(axes[1], _grey_mask(raw), "decoded mask channel")
    show_image(axes[2], palette.index_to_rgb(naive), naive_title)
    show_image(axes[3], palette.index_to_rgb(clustered), labels_title)
    changed = float(np.mean(cleaned != naive))
    show_image(axes[4], palette.index_to_rgb(cleaned), f"{cleaned_title} ({changed:.1%} changed)")
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_consistency(record: Mapping, title: str = "") -> plt.Figure:
    """Per class: the judge's IoU on synthetic / on real (consistency) and the class fraction synthetic / real.

    ``record`` is :func:`dualsynth.quality.consistency`'s result.  The shaded band is where a class passes
    (``fail_below`` … 1 / ``fail_below``, 0.8 … 1.25 by default).
    """
    per = record["per_class"]
    names = list(per)
    x = np.arange(len(names))
    iou = [per[n]["ratio"] if per[n]["ratio"] is not None else np.nan for n in names]
    frac = [per[n]["fraction_ratio"] if per[n]["fraction_ratio"] is not None else np.nan for n in names]
    fig, ax = plt.subplots(figsize=(2.0 + 1.4 * len(names), 3.4))
    lo = float(record.get("fail_below", 0.8))
    ax.axhspan(lo, 1 / lo, color="0.9", zorder=0)
    ax.axhline(1.0, color="0.4", lw=0.8, zorder=1)
    ax.bar(x - 0.2, iou, 0.4, label="IoU synthetic / real (judge)")
    ax.bar(x + 0.2, frac, 0.4, label="class fraction synthetic / real")
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel("ratio")
    overall = record.get("consistency")
    head = f"consistency {overall:.2f}" if overall is not None else "consistency n/a"
    if record.get("consistency_balanced") is not None:
        head += f", balanced {record['consistency_balanced']:.2f}"
    ax.set_title(f"{title} — {head}" if title else head, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_pretest(images: np.ndarray, masks: np.ndarray, preds: np.ndarray, scores: Sequence[float], palette: Palette,
                 max_rows: int = 3, raw_masks: np.ndarray | None = None,
                 raw_scores: Sequence[float] | None = None) -> plt.Figure:
    """Pre-test (paper Fig. 12): a model trained on real data segments synthetic micrographs; compare with their masks.

    ``scores``: the prediction's Missing Class IoU against the cleaned masks ``masks``.  ``raw_masks`` (labels of the
    decoded mask channel before clean-up, which the paper compared with) and ``raw_scores`` add a column.
    """
    n = min(max_rows, len(images))
    cols = 3 if raw_masks is None else 4
    fig, axes = plt.subplots(n, cols, figsize=(2.5 * cols, 2.6 * n), squeeze=False)
    for i in range(n):
        show_image(axes[i, 0], images[i], "synthetic micrograph" if i == 0 else None)
        if raw_masks is not None:
            head = "raw mask" if i == 0 else ""
            show_image(axes[i, 1], palette.index_to_rgb(raw_masks[i]),
                       f"{head} (MCIoU {raw_scores[i]:.1%})" if raw_scores is not None else head or None)
        show_image(axes[i, cols - 2], palette.index_to_rgb(masks[i]), "cleaned mask" if i == 0 else None)
        show_image(axes[i, cols - 1], palette.index_to_rgb(preds[i]), f"U-Net prediction — MCIoU {scores[i]:.1%}")
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# --------------------------------------------------------------------------- study figures
def plot_variant_sizes(table) -> plt.Figure:
    """Stacked bars of real and synthetic training images per variant (a pandas DataFrame indexed by variant)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(table) + 1.5), 3.4))
    x = np.arange(len(table))
    ax.bar(x, table["real train"], label="real", color="#377eb8")
    ax.bar(x, table["synthetic train"], bottom=table["real train"], label="synthetic", color="#ff7f00")
    ax.set_xticks(x, table.index, rotation=90, fontsize=7)
    ax.set_ylabel("training images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_predictions(images: np.ndarray, gts: np.ndarray, preds: np.ndarray, palette: Palette,
                     per_image: Sequence[Mapping[str, Any]] | None = None, max_rows: int = 3, title: str = "",
                     order: str = "worst-best") -> plt.Figure:
    """Prediction overlays (paper Figs. 18/21): micrograph, ground truth, prediction, errors.

    With ``per_image`` scores the rows show the worst, median and best test image by Missing Class IoU.
    """
    n = len(images)
    idx = list(range(min(max_rows, n)))
    if per_image is not None and n > 0:
        ranked = sorted(range(n), key=lambda i: per_image[i]["missing_class_iou"])
        picks = [ranked[0], ranked[len(ranked) // 2], ranked[-1]] if n >= 3 else ranked
        idx = list(dict.fromkeys(picks))[:max_rows]
    fig, axes = plt.subplots(len(idx), 4, figsize=(10, 2.6 * len(idx) + 0.4), squeeze=False)
    for r, i in enumerate(idx):
        score = f" — MCIoU {per_image[i]['missing_class_iou']:.1%}" if per_image is not None else ""
        show_image(axes[r, 0], images[i], f"test image {i}{score}")
        show_image(axes[r, 1], palette.index_to_rgb(gts[i]), "ground truth")
        show_image(axes[r, 2], palette.index_to_rgb(preds[i]), "prediction")
        err = gts[i] != preds[i]
        over = images[i] if images[i].shape[-1] == 3 else np.repeat(images[i], 3, axis=-1)
        over = over.copy()
        over[err] = (255, 0, 255)
        show_image(axes[r, 3], over, f"errors (magenta): {err.mean():.1%}")
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


from .plots_study import (  # noqa: E402,F401  (re-exported: the study's figures)
    TIER_LINE_COLORS,
    _errbar,
    plot_metric_vs_percent,
    plot_per_class,
    plot_similarity,
    missing_class_example,
    _label_grid,
    plot_missing_class_example,
    choose_variants,
    plot_per_image_scatter,
    plot_per_image_histogram,
    pick_images,
    plot_prediction_comparison,
)
