"""The study's figures (07): scores against the share of synthetic images (Figs. 15–17), per class (Fig. 19),
similarity, the Missing Class IoU example (Fig. 14), per-image scatter and histogram (Fig. 20), predictions of
several variants on the same images (Fig. 18).  ``dualsynth.plots`` re-exports every name."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from . import metrics
from .palette import NDFEB_PALETTE, Palette
from .plots_base import palette_legend, show_image


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
