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
    from .dual import mask_as_grey, split

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


TIER_LINE_COLORS = {"SHQ": "#1b9e77", "SLQ": "#d95f02", "BLQ": "#7570b3", "BMQ": "#e7298a",
                    "SyntLQ": "#66a61e", "SyntMQ": "#a6761d"}


def _errbar(ax, x, y, lo, hi, **kw):
    y = np.asarray(y, float)
    if lo is not None and np.isfinite(np.asarray(lo, float)).any():
        yerr = np.vstack([y - np.asarray(lo, float), np.asarray(hi, float) - y])
        yerr = np.where(np.isfinite(yerr), yerr, 0)
        ax.errorbar(x, y, yerr=yerr, capsize=3, **kw)
    else:
        ax.plot(x, y, **kw)


def plot_metric_vs_percent(summary, metric: str, label: str | None = None, big_train: int = 48,
                           ax: plt.Axes | None = None, legend: bool = True,
                           marks: Mapping[str, str] | None = None,
                           references: Mapping[str, float] | None = None) -> plt.Figure:
    """A metric against % synthetic (paper Figs. 15–17).

    ``references``: label → value drawn as thin black horizontal lines with their label (e.g. the dataset's
    ceiling and the majority-class baseline), so every score reads against what the data allows.

    Mixed variants as lines per base tier, the base models (0 %) as horizontal lines of the same colour,
    synthetic-only variants as dotted lines with their image counts on a top axis, BMQ_aug as a grey line.
    ``summary``: a DataFrame from :func:`dualsynth.stats.summarise` (columns ``metric``, ``metric_ci_low/high``);
    error bars are its confidence intervals over seeds (none with one seed).  ``marks``: variant → a symbol drawn
    above its point (e.g. from :func:`dualsynth.stats.significance_marks`: significantly better / worse than its
    base in the paired test).
    """
    fig = ax.figure if ax is not None else plt.figure(figsize=(7.2, 4.2))
    ax = ax or fig.add_subplot(111)
    lo_col, hi_col = f"{metric}_ci_low", f"{metric}_ci_high"
    percents = sorted(int(p) for p in summary.loc[summary.group.isin(["mixed", "synthetic", "pretrain"]), "percent"].unique())
    for tier in ("SHQ", "SLQ", "BLQ", "BMQ"):
        col = TIER_LINE_COLORS[tier]
        base = summary[(summary.group == "base") & (summary.tier == tier)]
        if len(base):
            ax.axhline(float(base[metric].iloc[0]), color=col, ls="--", lw=1, alpha=0.8)
        mixed = summary[(summary.group == "mixed") & (summary.tier == tier)].sort_values("percent")
        if len(mixed):
            _errbar(ax, mixed.percent, mixed[metric], mixed.get(lo_col), mixed.get(hi_col), color=col, marker="o",
                    label=f"{tier} + synthetic (dashed: {tier} alone)")
        pt = summary[(summary.group == "pretrain") & (summary.tier == tier)].sort_values("percent")
        if len(pt):  # PT_<tier>_<p>: pretrained on p % synthetic, then fine-tuned on the real tier
            _errbar(ax, pt.percent, pt[metric], pt.get(lo_col), pt.get(hi_col), color=col, marker="^", ls="-.",
                    label=f"synthetic pretraining → {tier} fine-tuning")
    for name, tier in (("SyntLQ", "BLQ"), ("SyntMQ", "BMQ")):
        syn = summary[(summary.group == "synthetic") & (summary.variant.str.startswith(name))].sort_values("percent")
        if len(syn):
            _errbar(ax, syn.percent, syn[metric], syn.get(lo_col), syn.get(hi_col), color=TIER_LINE_COLORS[name],
                    marker="s", ls=":", label=f"{name}: synthetic only")
    aug = summary[summary.group == "augment"]
    if len(aug):
        ax.axhline(float(aug[metric].iloc[0]), color="0.4", ls="-.", lw=1, label="BMQ + augmentation")
    shown = summary[summary.variant.isin(list(marks or {})) & summary.group.isin(["mixed", "synthetic", "pretrain"])]
    for r in shown.itertuples():
        hi = getattr(r, hi_col, float("nan")) if hi_col in summary else float("nan")
        y = hi if np.isfinite(hi) else getattr(r, metric)
        ax.annotate(marks[r.variant], (r.percent, y), textcoords="offset points", xytext=(0, 3), ha="center",
                    fontsize=11, fontweight="bold", color=TIER_LINE_COLORS.get(r.variant.split("_")[0], "k"))
    if len(shown):
        ax.plot([], [], ls="none", marker="$*$", color="k",
                label="* / v: significantly better / worse than its base (paired Wilcoxon, Holm)")
    for i, (ref_label, value) in enumerate((references or {}).items()):
        if value is not None and np.isfinite(value):
            ax.axhline(float(value), color="k", lw=0.8, ls=(0, (1, 2)) if i else "-", alpha=0.6)
            ax.annotate(f"{ref_label} {value:.2f}", (0.995, float(value)), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7, color="0.25")
    ax.set_xlabel("synthetic images added [% of the base training set]")
    ax.set_ylabel(label or metric)
    if percents:
        ax.set_xticks(percents)
        top = ax.secondary_xaxis("top")
        top.set_xticks(percents, [str(int(round(p * big_train / 100))) for p in percents])
        top.set_xlabel("synthetic-only training images", fontsize=8)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_per_class(summary, class_names: Sequence[str], big_train: int = 48) -> plt.Figure:
    """Per-class Missing Class IoU against % synthetic, one panel per class (paper Fig. 19)."""
    n = len(class_names)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for i, name in enumerate(class_names):
        ax = axes[i // cols, i % cols]
        plot_metric_vs_percent(summary, f"mciou_{name}", label=f"{name}: Missing Class IoU", big_train=big_train,
                               ax=ax, legend=(i == 0))
        ax.set_title(name, fontsize=10)
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].axis("off")
    fig.tight_layout()
    return fig


def plot_similarity(sim: Mapping[str, Any], title: str = "") -> plt.Figure:
    """Synthetic vs real per class: mean two-point correlation S2(r) (top) and per-patch fraction histograms
    (bottom).  ``sim``: a dict from :func:`dualsynth.quality.similarity_report`."""
    names = list(sim["class_names"])
    cur = sim["curves"]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.6), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[0, i]
        ax.plot(cur["r"], cur["s2_real"][name], "k-", label="real")
        ax.plot(cur["r"], cur["s2_synthetic"][name], "C3--", label="synthetic")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("r [px]", fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[1, i]
        real, syn = np.asarray(cur["fractions_real"][name]), np.asarray(cur["fractions_synthetic"][name])
        bins = np.linspace(0, max(real.max(), syn.max(), 1e-3), 16)
        ax.hist(real, bins=bins, density=True, color="k", alpha=0.35, label="real")
        ax.hist(syn, bins=bins, density=True, histtype="step", color="C3", lw=1.5, label="synthetic")
        ax.set_xlabel("fraction per patch", fontsize=8)
    axes[0, 0].set_ylabel("S2(r)")
    axes[1, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or f"synthetic ({sim['n_synthetic']}) vs real ({sim['n_real']}) patches", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- per-image figures (paper Figs. 14, 18, 20)
def missing_class_example() -> dict[str, np.ndarray]:
    """The 6 × 6 worked example of the Missing Class IoU (paper Fig. 14), four classes 0..3.

    ``gt`` holds classes 0, 1 and 2 (class 3 is missing); ``pred_wrong`` puts class 3 on three pixels (a class
    absent from the ground truth, predicted: mIoU counts its IoU as 0, Missing Class IoU does not average it, its
    pixels lower the IoU of their true class); ``pred_absent`` predicts no class 3 either (mIoU counts it as 1).
    """
    gt = np.array([[0, 0, 0, 0, 1, 1],
                   [0, 0, 0, 0, 1, 1],
                   [0, 0, 2, 2, 0, 0],
                   [0, 0, 2, 2, 0, 0],
                   [0, 0, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0]], np.uint8)
    absent = gt.copy()
    absent[2, 2] = 0  # one pixel of class 2 missed
    absent[5, 2] = 1  # one matrix pixel taken for class 1
    wrong = absent.copy()
    wrong[0, 0] = wrong[4, 4] = wrong[4, 5] = 3  # class 3 predicted although the ground truth has none
    return {"gt": gt, "pred_absent": absent, "pred_wrong": wrong}


def _label_grid(ax: plt.Axes, labels: np.ndarray, palette: Palette, title: str) -> None:
    show_image(ax, palette.index_to_rgb(labels), title)
    for (y, x), v in np.ndenumerate(labels):
        bright = float(np.mean(palette.colors[int(v)])) > 140
        ax.text(x, y, str(int(v)), ha="center", va="center", fontsize=8, color="k" if bright else "w")


def plot_missing_class_example(palette: Palette | None = None) -> plt.Figure:
    """Paper Fig. 14: Missing Class IoU against mIoU on a 6 × 6 example, computed by :mod:`dualsynth.metrics`.

    Two predictions of the same ground truth (class 3 absent from it): one that does not predict class 3 either
    and one that does on three pixels.  The table beside each gives IoU per class and both scores.
    """
    from . import metrics
    from .palette import NDFEB_PALETTE

    palette = palette or NDFEB_PALETTE
    k = palette.num_classes
    ex = missing_class_example()
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.6), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    for r, (key, what) in enumerate((("pred_absent", "class 3 absent from both"),
                                     ("pred_wrong", "class 3 predicted, absent from the ground truth"))):
        gt, pred = ex["gt"], ex[key]
        _label_grid(axes[r, 0], gt, palette, "ground truth G")
        _label_grid(axes[r, 1], pred, palette, "prediction P")
        cm = metrics.confusion_matrix(gt, pred, k)
        iou = metrics.iou_per_class(gt, pred, k)
        rows = []
        for c in range(k):
            inter, union = int(cm[c, c]), int(cm[c, :].sum() + cm[:, c].sum() - cm[c, c])
            in_g = bool(cm[c, :].sum())
            val = "— (1 in mIoU)" if np.isnan(iou[c]) else f"{iou[c]:.3f}"
            rows.append([f"{c} {palette.names[c]}", f"{inter}/{union}", val, "yes" if in_g else "no"])
        ax = axes[r, 2]
        ax.axis("off")
        tab = ax.table(cellText=rows, colLabels=["class", "|G∩P| / |G∪P|", "IoU", "in G"], loc="upper center",
                       cellLoc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.scale(1, 1.3)
        ax.text(0.5, 0.18, f"mIoU = {metrics.miou(gt, pred, k):.3f}  (all {k} classes)\n"
                f"Missing Class IoU = {metrics.missing_class_iou(gt, pred, k):.3f}  (classes in G)",
                ha="center", va="center", fontsize=9, transform=ax.transAxes)
        ax.set_title(what, fontsize=9)
    fig.suptitle("Missing Class IoU vs mIoU (cf. paper Fig. 14)", fontsize=10)
    fig.tight_layout()
    return fig


def choose_variants(available: Sequence[str], wanted: Sequence[str], ranking: Sequence[str] = (),
                    fallback_n: int = 2, need_all: bool = True) -> tuple[list[str], bool]:
    """Which variants a per-image figure shows: ``wanted`` if they were run (all of them with ``need_all``, else
    those that were), otherwise the first ``fallback_n`` of ``ranking`` (e.g. the mixed variants, best first).
    Returns ``(names, fell_back)``."""
    have = [w for w in wanted if w in set(available)]
    if have and (len(have) == len(wanted) or not need_all):
        return have, False
    return [v for v in ranking if v in set(available)][:fallback_n], True


def plot_per_image_scatter(per_image: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "") -> plt.Figure:
    """Paper Fig. 20: per test image, mIoU (x) against Missing Class IoU (y), one colour per variant.

    ``per_image``: variant → its ``metrics.json`` ``per_image`` rows (``miou``, ``missing_class_iou``).  Points
    below the diagonal are images where mIoU is the higher score (a class absent from both counts 1 in mIoU).
    """
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    for i, (name, rows) in enumerate(per_image.items()):
        x = [r["miou"] for r in rows]
        y = [r["missing_class_iou"] for r in rows]
        ax.scatter(x, y, s=22, alpha=0.75, color=f"C{i}", label=f"{name} ({len(rows)} images)")
    lo = min([0.5] + [min(min(r["miou"], r["missing_class_iou"]) for r in rows)
                      for rows in per_image.values() if len(rows)])
    ax.plot([lo, 1], [lo, 1], color="0.5", lw=0.8, ls="--")
    ax.set_xlim(lo - 0.02, 1.01)
    ax.set_ylim(lo - 0.02, 1.01)
    ax.set_xlabel("mIoU per test image")
    ax.set_ylabel("Missing Class IoU per test image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "per-image mIoU vs Missing Class IoU (cf. paper Fig. 20)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_per_image_histogram(per_image: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "miou",
                             label: str = "mIoU", bins: int = 12, title: str = "") -> plt.Figure:
    """Histogram of a per-image score over the test images, one outline per variant (the paper suggests looking
    at the per-image mIoU distribution rather than its mean alone)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    vals = {n: np.asarray([r[metric] for r in rows], float) for n, rows in per_image.items()}
    lo = min([0.5] + [float(v.min()) for v in vals.values() if v.size])
    edges = np.linspace(np.floor(lo * 20) / 20, 1.0, bins + 1)
    for i, (name, v) in enumerate(vals.items()):
        ax.hist(v, bins=edges, histtype="step", lw=1.8, color=f"C{i}",
                label=f"{name}: mean {v.mean():.3f}, median {np.median(v):.3f}" if v.size else name)
    ax.set_xlabel(f"{label} per test image")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"per-image {label}", fontsize=9)
    fig.tight_layout()
    return fig


def pick_images(per_image: Mapping[str, Sequence[Mapping[str, Any]]], n: int = 5,
                metric: str = "missing_class_iou") -> list[int]:
    """``n`` test images spread over the range of the variants' mean per-image ``metric`` (worst … best)."""
    scores = np.mean([[r[metric] for r in rows] for rows in per_image.values()], axis=0)
    order = np.argsort(scores, kind="stable")
    if len(order) <= n:
        return order.tolist()
    at = np.round(np.linspace(0, len(order) - 1, n)).astype(int)
    return order[at].tolist()


def plot_prediction_comparison(images: np.ndarray, gts: np.ndarray, preds: Mapping[str, np.ndarray],
                               palette: Palette, per_image: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                               indices: Sequence[int] | None = None, n: int = 5, title: str = "") -> plt.Figure:
    """Paper Fig. 18's layout: the same test images (rows) as micrograph, ground truth and each variant's
    prediction (columns, e.g. BMQ_0, BMQ_150, BMQ_300), each prediction titled with its Missing Class IoU."""
    names = list(preds)
    if indices is None:
        indices = pick_images(per_image, n) if per_image else list(range(min(n, len(images))))
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.3 * cols, 2.35 * len(indices) + 0.5), squeeze=False)
    for r, i in enumerate(indices):
        show_image(axes[r, 0], images[i], f"test image {i}")
        show_image(axes[r, 1], palette.index_to_rgb(gts[i]), "ground truth")
        for j, name in enumerate(names):
            score = f" — {per_image[name][i]['missing_class_iou']:.1%}" if per_image else ""
            show_image(axes[r, 2 + j], palette.index_to_rgb(preds[name][i]), f"{name}{score}")
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=palette.num_classes, fontsize=8, frameon=False)
    fig.suptitle(title or "predictions on the same test images (cf. paper Fig. 18; Missing Class IoU per image)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
