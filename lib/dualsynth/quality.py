"""How close synthetic dual images are to real ones: numbers, each with a real-vs-real baseline.

Measures (pure functions on arrays; images ``(N, H, W[, C])``, masks ``(N, H, W)`` int class ids):

* **class-fraction distance** (:func:`fraction_distance`): for every class the 1-D Wasserstein distance between
  the per-patch fractions of that class in set A and in set B (``scipy.stats.wasserstein_distance``), and its mean
  over classes.  Zero when the two sets have the same distribution of per-patch fractions.
* **two-point correlation** (:func:`two_point_correlation`): S2_c(r) = probability that two pixels a distance r
  apart are both of class c.  Computed with FFTs **zero-padded, not periodic** (patches are not periodic): the
  autocorrelation of the class indicator at each displacement is divided by the number of pixel pairs that
  displacement has inside the patch, so S2_c(0) is exactly the class fraction and no pair wraps around.
  Displacements up to ``r_max`` in each axis are averaged over rings of equal integer radius.
  :func:`s2_distance` is the root-mean-square difference between the patch-averaged curves of two sets (r = 0 …
  r_max), per class and its mean over classes.
* **KID** (:func:`kid`): kernel inception distance — the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, averaged over random subsets — on features of a network trained here
  (:func:`vqvae_features`: the VQ-VAE encoder's output on the dual image, global-average-pooled), since ImageNet /
  MicroNet weights cannot be downloaded.
* **image–mask consistency** (:func:`consistency`): does a synthetic mask agree with its own micrograph as well
  as a real mask agrees with its micrograph?  A judge -- a segmentation model trained on real data (the
  pre-test U-Net, :mod:`dualsynth.pretest`) -- segments the synthetic micrographs and real held-out images.
  Per class c present in the real reference masks, IoU_c is taken from the confusion matrix summed over all
  images (pooled, not per image).  ``consistency`` = Σ_c IoU_c(synthetic masks vs the judge on synthetic
  micrographs) / Σ_c IoU_c(real masks vs the judge on real images), every such class weighted equally (a rare
  phase counts as much as the matrix: the IoUs are summed, not weighted by pixels).  A class the synthetic pool
  does not contain contributes 0 to the numerator -- unlike a per-image Missing Class IoU, where an absent class
  is simply not averaged, so leaving a hard class out of the masks *raises* that score.  Dropping a class from the
  synthetic masks loses its whole IoU term; it can still raise consistency a little when the judge already
  labelled almost all of that class as another one (the other class's IoU then grows), which is why the fraction
  ratios are always reported beside it.  A class the judge cannot segment on real data (IoU ≈ 0) adds nothing to
  the denominator, and on the synthetic side only what the judge finds of it.  Per class:
  IoU ratio synthetic / real, and the fraction ratio (synthetic / real training masks), always reported together.
* **balanced consistency** (:func:`balanced_consistency`, ``consistency_balanced`` in the record): the same sum
  with each class's term capped at its real IoU and scaled by its fraction agreement,
  Σ_c min(IoU_c(syn), IoU_c(real)) · min(f_c(syn) / f_c(real), f_c(real) / f_c(syn)) / Σ_c IoU_c(real), so ≤ 1
  (a class absent from the real training masks has agreement 1 if the synthetic masks lack it too, else 0).
  The plain ratio lets a class that the synthetic masks make *easier* than real (a matrix without the hard phase
  inside it: IoU above its real one) hide a class that is shrunk or missing; here no class can make up for
  another, and a class's own term never rises when the class is shrunk below its real fraction (removing pixels of
  it that the judge does not see raises its IoU by less than its fraction falls; removing pixels the judge does see
  lowers both) — dropping it sets that term to 0.  The overall value can still rise when the removed pixels go to
  a class below its cap.  Weighting by the real IoU keeps the plain ratio's weights: a class counts as much as the
  judge can tell about it — a class it cannot segment on real data counts nothing here, so dropping it costs
  nothing (its fraction ratio stands beside it).  With every class at or below its real IoU and its real fraction
  exactly matched, the two measures agree.  ``balanced_consistency(per_class, fractions=False)`` is the *capped*
  consistency (no fraction factor), for small real reference sets whose fractions are noisy.
* **boundary disagreement** (:func:`boundary_disagreement`): a pixel classifier (random forest on the pixel's
  value and ``skimage.feature.multiscale_basic_features``: intensity, edges, texture at 4 scales) is fitted on real
  patches and re-segments a micrograph; the measure is the share of mask-boundary pixels
  (``skimage.segmentation.find_boundaries``, both sides of every edge) whose mask label differs from the
  re-segmentation.  It asks whether the mask's edges sit where the micrograph's edges are.

Baselines (:func:`similarity_report`): the real patches are split at random into two disjoint halves A and B.
For the distances, ``real_vs_real`` = d(A, B) and ``synthetic_vs_real`` = d(S, B), where S are random subsets of
the synthetic set with |A| patches (averaged over ``repeats`` draws), so both sides have the same sample size and
the same finite-sample noise.  W1 and S2 average both sides over ``splits`` (20) halvings: with one, the
baseline of a few dozen patches moved several-fold with the seed.  KID is unbiased in the sample size, so all
synthetic patches are used; KID and the boundary measure use the first halving.  The re-segmenting classifier
is fitted on A; ``real_vs_real`` is its boundary disagreement on B and ``synthetic_vs_real`` on the synthetic set.
A synthetic set as good as real data gives values near the baseline.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.signal import fftconvolve
from scipy.stats import wasserstein_distance

from . import dual
from .io import atomic_write_json, read_json
from .labels import check_labels
from .metrics import _iou_from_confusion, confusion_matrix, iou_per_class
from .patching import Manifest
from .synthesis import load_pool_arrays

__all__ = [
    "per_patch_fractions",
    "balanced_consistency",
    "fraction_distance",
    "two_point_correlation",
    "s2_distance",
    "kid",
    "fit_pixel_classifier",
    "boundary_disagreement",
    "vqvae_features",
    "consistency",
    "per_image_consistency",
    "similarity_report",
    "similarity_table",
    "experiment_similarity",
    "write_similarity",
    "load_similarity",
]

SIMILARITY_FORMAT = 1
#: Random halvings of the real patches W1's and S2's two sides are averaged over (:func:`similarity_report`).
SIMILARITY_SPLITS = 20


def _masks(masks, what: str = "masks") -> np.ndarray:
    return check_labels(masks, None, what, ndim=3)


def per_patch_fractions(masks, num_classes: int) -> np.ndarray:
    """``(N, K)``: the fraction of each class in each mask."""
    m = check_labels(masks, num_classes, "masks", ndim=3, outside="{what} hold class ids {lo}…{hi}, outside 0…{last}")
    counts = np.stack([np.bincount(x.ravel(), minlength=num_classes) for x in m])
    return counts / float(m.shape[1] * m.shape[2])


def fraction_distance(masks_a, masks_b, num_classes: int) -> dict[str, Any]:
    """Per class the 1-D Wasserstein distance between the per-patch fraction distributions; ``mean`` over classes."""
    fa, fb = per_patch_fractions(masks_a, num_classes), per_patch_fractions(masks_b, num_classes)
    per = [float(wasserstein_distance(fa[:, c], fb[:, c])) for c in range(num_classes)]
    return {"mean": float(np.mean(per)), "per_class": per}


def two_point_correlation(masks, num_classes: int, r_max: int | None = None,
                          chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged two-point correlation of every class in every mask (zero-padded, non-periodic).

    Returns ``r`` (0 … r_max) and ``S2`` of shape ``(N, K, r_max + 1)``; ``S2[:, c, 0]`` is the class fraction.
    ``r_max`` defaults to a quarter of the smaller patch side (every displacement then has at least 9/16 of the
    patch's pixel pairs).
    """
    m = _masks(masks)
    n, h, w = m.shape
    r_max = int(min(h, w) // 4 if r_max is None else r_max)
    if not 0 <= r_max < min(h, w):
        raise ValueError(f"r_max must be in [0, {min(h, w) - 1}], got {r_max}")
    dy, dx = np.mgrid[-r_max:r_max + 1, -r_max:r_max + 1]
    pairs = (h - np.abs(dy)) * (w - np.abs(dx))  # pixel pairs with this displacement inside the patch
    ring = np.rint(np.hypot(dy, dx)).astype(int).ravel()
    keep = ring <= r_max
    ring_n = np.bincount(ring[keep], minlength=r_max + 1)
    cy, cx = h - 1, w - 1  # zero displacement in the 'full' correlation
    out = np.empty((n, num_classes, r_max + 1))
    for c in range(num_classes):
        for s in range(0, n, chunk):
            ind = (m[s:s + chunk] == c).astype(np.float64)
            corr = fftconvolve(ind, ind[:, ::-1, ::-1], mode="full", axes=(1, 2))
            win = corr[:, cy - r_max:cy + r_max + 1, cx - r_max:cx + r_max + 1] / pairs
            win = np.clip(win, 0.0, 1.0).reshape(len(ind), -1)[:, keep]  # FFT round-off
            out[s:s + chunk, c] = np.stack([np.bincount(ring[keep], weights=v, minlength=r_max + 1) for v in win]) / ring_n
    return np.arange(r_max + 1), out


def s2_distance(s2_a: np.ndarray, s2_b: np.ndarray) -> dict[str, Any]:
    """RMS difference (over r) of the patch-averaged S2 curves of two sets ``(N, K, R)``, per class and ``mean``."""
    d = np.sqrt(np.mean((np.asarray(s2_a).mean(0) - np.asarray(s2_b).mean(0)) ** 2, axis=-1))
    return {"mean": float(d.mean()), "per_class": [float(v) for v in d]}


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(features_a, features_b, subset_size: int = 100, num_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """Kernel inception distance: unbiased MMD² with k(x, y) = (x·y/d + 1)³, mean and std over random subsets.

    Each subset draws ``min(subset_size, len(a), len(b))`` rows of each set without replacement.  The expected
    value is 0 for two samples of the same distribution (individual estimates can be slightly negative).
    """
    from sklearn.metrics.pairwise import polynomial_kernel

    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs (N, d) features of equal d, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    kern = dict(degree=3, gamma=1.0 / a.shape[1], coef0=1.0)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        vals.append(_mmd2_unbiased(polynomial_kernel(x, **kern), polynomial_kernel(y, **kern),
                                   polynomial_kernel(x, y, **kern)))
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "subset_size": int(m)}


def _pixel_features(image: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    raw = np.asarray(image)
    img = raw.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if np.issubdtype(raw.dtype, np.integer):  # by dtype, not by value: a dark uint8 patch is scaled like the rest
        img = img / float(np.iinfo(raw.dtype).max)
    # the pixel's own value and intensity / edges / texture at 4 scales (σ = 1 … 8 px)
    return np.concatenate([img, multiscale_basic_features(img, channel_axis=-1, sigma_min=1, sigma_max=8,
                                                          num_sigma=4)], axis=-1)


def fit_pixel_classifier(images, masks, max_pixels_per_class: int = 2500, seed: int = 0):
    """A random forest on per-pixel multiscale features (intensity, edges, texture), fitted on real patches.

    Up to ``max_pixels_per_class`` pixels of each class are drawn, so rare classes are learnt too.
    """
    from sklearn.ensemble import RandomForestClassifier

    m = _masks(masks)
    rng = np.random.default_rng(seed)
    feats = np.stack([_pixel_features(i) for i in images])  # (N, H, W, F)
    X, y = [], []
    for c in np.unique(m):
        idx = np.flatnonzero(m.ravel() == c)
        idx = rng.choice(idx, min(len(idx), max_pixels_per_class), replace=False)
        X.append(feats.reshape(-1, feats.shape[-1])[idx])
        y.append(np.full(len(idx), c))
    clf = RandomForestClassifier(n_estimators=25, max_depth=14, n_jobs=1, random_state=seed)
    return clf.fit(np.concatenate(X), np.concatenate(y))


def boundary_disagreement(classifier, images, masks) -> dict[str, float]:
    """Share of mask-boundary pixels (both sides of every class edge) whose label differs from the classifier's
    re-segmentation of the micrograph (``boundary``), and the same share over the other pixels (``interior``)."""
    from skimage.segmentation import find_boundaries

    m = _masks(masks)
    if len(images) != len(m):
        raise ValueError(f"{len(images)} images but {len(m)} masks")
    wrong_b = n_b = wrong_i = n_i = 0
    for img, mk in zip(images, m):
        f = _pixel_features(img)
        pred = classifier.predict(f.reshape(-1, f.shape[-1])).reshape(mk.shape)
        edge = find_boundaries(mk, mode="thick")
        err = pred != mk
        wrong_b, n_b = wrong_b + int(err[edge].sum()), n_b + int(edge.sum())
        wrong_i, n_i = wrong_i + int(err[~edge].sum()), n_i + int((~edge).sum())
    return {"boundary": wrong_b / n_b if n_b else float("nan"), "interior": wrong_i / n_i if n_i else float("nan")}


def vqvae_features(model, palette, encoding: str = "grey", batch_size: int = 16) -> Callable:
    """A features function ``(images uint8, masks) → (N, num_hiddens)``: the VQ-VAE encoder's output on the dual
    image (micrograph + mask, as the generator saw it), global-average-pooled."""
    def features(images, masks) -> np.ndarray:
        x = dual.compose_batch(np.asarray(images), np.asarray(masks), palette, encoding).astype(np.float32)
        out = [np.asarray(model.encoder(x[i:i + batch_size])).mean(axis=(1, 2)) for i in range(0, len(x), batch_size)]
        return np.concatenate(out)

    return features


def _pooled_iou(masks: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU per class from the confusion matrix summed over all images; NaN where a class is in neither."""
    return _iou_from_confusion(sum(confusion_matrix(m, p, num_classes) for m, p in zip(masks, preds)))


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 and np.isfinite(a) and np.isfinite(b) else None


def _agreement(f_syn: float, f_real: float) -> float:
    """min(f_syn / f_real, f_real / f_syn): 1 at equal fractions (absent from both included), 0 for a class only one
    side has."""
    if f_real <= 0 or f_syn <= 0:
        return 1.0 if f_real <= 0 and f_syn <= 0 else 0.0
    return float(min(f_syn / f_real, f_real / f_syn))


_BALANCED_KEYS = ("iou_synthetic", "iou_real", "fraction_synthetic", "fraction_real")


def balanced_consistency(per_class: Mapping[str, Mapping[str, Any]], fractions: bool = True) -> float | None:
    """Σ_c min(IoU_syn, IoU_real) · fraction agreement / Σ_c IoU_real over the classes of ``per_class`` (the
    ``per_class`` entry of :func:`consistency`; see the module docstring).  ``fractions=False``: without the fraction
    factor (the *capped* consistency: each class's IoU capped at its real one, nothing else).

    None when it cannot be computed: no class, the judge scores 0 on every class of the real images, or a class
    entry lacks one of its four numbers or has one that is not a finite number ≥ 0."""
    num = den = 0.0
    for pc in per_class.values():
        try:
            syn, real, f_syn, f_real = (float(pc[k]) for k in _BALANCED_KEYS)
        except (KeyError, TypeError, ValueError):
            return None
        if not all(np.isfinite(v) and v >= 0 for v in (syn, real, f_syn, f_real)):
            return None
        num += min(syn, real) * (_agreement(f_syn, f_real) if fractions else 1.0)
        den += real
    return float(num / den) if den > 0 else None


def consistency(syn_masks, syn_preds, real_masks, real_preds, num_classes: int,
                class_names: Sequence[str] | None = None, real_train_masks=None,
                fail_below: float = 0.8) -> dict[str, Any]:
    """Image–mask consistency of a synthetic set against a real reference (see the module docstring).

    ``syn_masks`` / ``syn_preds``: the synthetic masks and the judge's segmentation of their micrographs;
    ``real_masks`` / ``real_preds``: real held-out masks and the judge's segmentation of their images;
    ``real_train_masks``: masks for the fraction ratio (default ``real_masks``).  A class *fails* when its IoU
    ratio or its fraction ratio is below ``fail_below`` (or its fraction ratio above 1 / ``fail_below``).
    """
    sm, sp = _masks(syn_masks, "synthetic masks"), _masks(syn_preds, "synthetic predictions")
    rm, rp = _masks(real_masks, "real masks"), _masks(real_preds, "real predictions")
    for a, b, what in ((sm, sp, "synthetic"), (rm, rp, "real")):
        if a.shape != b.shape:
            raise ValueError(f"{what} masks {a.shape} and predictions {b.shape} differ in shape")
    for arr, what in ((sm, "synthetic masks"), (sp, "synthetic predictions"), (rm, "real masks"),
                      (rp, "real predictions")):
        check_labels(arr, num_classes, what)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    train = rm if real_train_masks is None else _masks(real_train_masks, "real training masks")
    present = np.bincount(rm.ravel(), minlength=num_classes)[:num_classes] > 0
    iou_syn = np.nan_to_num(_pooled_iou(sm, sp, num_classes), nan=0.0)  # a class nowhere in the pool: 0
    iou_real = np.nan_to_num(_pooled_iou(rm, rp, num_classes), nan=0.0)
    f_syn = per_patch_fractions(sm, num_classes).mean(0)
    f_real = per_patch_fractions(train, num_classes).mean(0)
    per_class, failing = {}, []
    for c in range(num_classes):
        if not present[c]:
            continue
        r, fr = _ratio(iou_syn[c], iou_real[c]), _ratio(f_syn[c], f_real[c])
        per_class[names[c]] = {"iou_synthetic": float(iou_syn[c]), "iou_real": float(iou_real[c]),
                               "ratio": r, "fraction_synthetic": float(f_syn[c]), "fraction_real": float(f_real[c]),
                               "fraction_ratio": fr}
        if (r is not None and r < fail_below) or (fr is None or fr < fail_below or fr > 1 / fail_below):
            failing.append(names[c])
    num, den = float(iou_syn[present].sum()), float(iou_real[present].sum())
    return {
        "consistency": _ratio(num, den),
        "consistency_balanced": balanced_consistency(per_class),
        "consistency_capped": balanced_consistency(per_class, fractions=False),
        "iou_sum_synthetic": num,
        "iou_sum_real": den,
        "classes": [names[c] for c in range(num_classes) if present[c]],
        "per_class": per_class,
        "failing_classes": failing,
        "fail_below": fail_below,
        "num_synthetic": int(sm.shape[0]),
        "num_real": int(rm.shape[0]),
    }


def per_image_consistency(syn_masks, syn_preds, num_classes: int, reference: float) -> np.ndarray:
    """Per synthetic image: mean IoU over the classes in its mask or its prediction, divided by ``reference``.

    ``reference`` is the judge's score on real held-out images (e.g. the mean over the classes of
    :func:`consistency`'s ``iou_real``); used to curate a pool (``min_consistency`` in 04).
    """
    if not reference > 0:
        raise ValueError(f"reference score must be > 0, got {reference!r}: the pre-test judge (synthetic/pretest_unet) "
                         f"agrees with no real test mask; train it longer (pretest_epochs)")
    sm, sp = _masks(syn_masks, "synthetic masks"), _masks(syn_preds, "synthetic predictions")
    if sm.shape != sp.shape:
        raise ValueError(f"synthetic masks {sm.shape} and predictions {sp.shape} differ in shape")
    return np.array([np.nanmean(iou_per_class(m, p, num_classes)) / reference for m, p in zip(sm, sp)])


def _pair(syn: float, real: float) -> dict[str, float]:
    return {"synthetic_vs_real": float(syn), "real_vs_real": float(real)}


def similarity_report(real_images, real_masks, synth_images, synth_masks, num_classes: int,
                      features_fn: Callable | None = None, seed: int = 0, class_names: Sequence[str] | None = None,
                      repeats: int = 20, r_max: int | None = None, boundary: bool = True,
                      splits: int = SIMILARITY_SPLITS) -> dict[str, Any]:
    """Every measure for synthetic vs real, each with its real-vs-real baseline (see the module docstring).

    JSON-serialisable.  ``features_fn(images, masks) → (N, d)`` enables KID (e.g. :func:`vqvae_features`).
    ``splits``: random halvings A/B of the real patches that W1 and S2 average over, both sides (d(A, B) and
    d(S, B)); the first is also KID's and the boundary measure's.  One halving of a few dozen patches gives a
    baseline that varies several-fold with the seed (README, *How much a second pool …*).
    """
    if not (isinstance(splits, int) and splits >= 1):
        raise ValueError(f"splits must be an integer >= 1, got {splits!r}")
    rm, sm = _masks(real_masks, "real masks"), _masks(synth_masks, "synthetic masks")
    real_images, synth_images = np.asarray(real_images), np.asarray(synth_images)
    if len(rm) < 4:
        raise ValueError(f"need at least 4 real patches for two halves, got {len(rm)}")
    for what, im, mk in (("real", real_images, rm), ("synthetic", synth_images, sm)):
        if len(im) != len(mk):
            raise ValueError(f"{len(im)} {what} images but {len(mk)} {what} masks")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rm))
    a, b = perm[: len(rm) // 2], perm[len(rm) // 2:]
    draws = [rng.choice(len(sm), min(len(a), len(sm)), replace=False) for _ in range(repeats)]
    more = np.random.default_rng([seed, 1])  # the further halvings: the first split and the draws stay as before
    halves = [(a, b)] + [(q[: len(a)], q[len(a):]) for q in (more.permutation(len(rm)) for _ in range(splits - 1))]

    def averaged(dist: Callable, real_all, syn) -> dict[str, Any]:
        reals = [dist(real_all[ha], real_all[hb]) for ha, hb in halves]
        runs = [dist(syn[d], real_all[hb]) for _, hb in halves for d in draws]
        syn_per = np.mean([r["per_class"] for r in runs], axis=0)
        real_per = np.mean([r["per_class"] for r in reals], axis=0)
        return {**_pair(np.mean([r["mean"] for r in runs]), np.mean([r["mean"] for r in reals])),
                "per_class": {n: _pair(s, r) for n, s, r in zip(names, syn_per, real_per)}, "splits": splits}

    measures: dict[str, Any] = {}
    measures["class_fraction_w1"] = {
        **averaged(lambda x, y: fraction_distance(x, y, num_classes), rm, sm),
        "what": "1-D Wasserstein distance between per-patch class-fraction distributions, mean over classes"}
    r, s2_real = two_point_correlation(rm, num_classes, r_max)
    _, s2_syn = two_point_correlation(sm, num_classes, r_max)
    measures["s2_rms"] = {**averaged(s2_distance, s2_real, s2_syn),
                          "what": f"RMS difference of mean two-point correlation curves S2(r), r = 0…{r[-1]} px "
                                  "(zero-padded, non-periodic), mean over classes"}
    if features_fn is not None:
        f_real, f_syn = np.asarray(features_fn(real_images, rm)), np.asarray(features_fn(synth_images, sm))
        # subsets of half a half: with the whole halves every real-vs-real subset would be the same pair of sets
        # and its spread 0, not comparable with the synthetic one
        m = max(2, min(len(a), len(b)) // 2)
        k_real = kid(f_real[a], f_real[b], subset_size=m, seed=seed)
        k_syn = kid(f_syn, f_real[b], subset_size=m, seed=seed)
        measures["kid"] = {**_pair(k_syn["mean"], k_real["mean"]), "synthetic_vs_real_std": k_syn["std"],
                           "real_vs_real_std": k_real["std"], "subset_size": m, "features": f_real.shape[1],
                           "what": "KID (unbiased MMD², cubic polynomial kernel) on globally pooled VQ-VAE encoder "
                                   "features of the dual image"}
    if boundary:
        clf = fit_pixel_classifier(real_images[a], rm[a], seed=seed)
        on_real, on_syn = boundary_disagreement(clf, real_images[b], rm[b]), boundary_disagreement(clf, synth_images, sm)
        measures["boundary_disagreement"] = {
            **_pair(on_syn["boundary"], on_real["boundary"]),
            "interior": _pair(on_syn["interior"], on_real["interior"]),
            "what": "share of mask-boundary pixels whose label differs from a re-segmentation of the micrograph "
                    "(random forest on multiscale pixel features fitted on real half A; baseline: real half B)"}
    fr, fs = per_patch_fractions(rm, num_classes), per_patch_fractions(sm, num_classes)
    return {
        "format": SIMILARITY_FORMAT, "seed": int(seed), "class_names": names,
        "n_real": int(len(rm)), "n_real_halves": [int(len(a)), int(len(b))], "n_synthetic": int(len(sm)),
        "measures": measures,
        "class_fractions": {"real": dict(zip(names, fr.mean(0).tolist())),
                            "synthetic": dict(zip(names, fs.mean(0).tolist()))},
        "curves": {"r": r.tolist(),
                   "s2_real": {n: s2_real[:, c].mean(0).tolist() for c, n in enumerate(names)},
                   "s2_synthetic": {n: s2_syn[:, c].mean(0).tolist() for c, n in enumerate(names)},
                   "fractions_real": {n: fr[:, c].round(6).tolist() for c, n in enumerate(names)},
                   "fractions_synthetic": {n: fs[:, c].round(6).tolist() for c, n in enumerate(names)}},
    }


def similarity_table(report: Mapping[str, Any]):
    """One row per measure (and per class where there is one): synthetic vs real, real vs real, their ratio."""
    import pandas as pd

    rows = []
    for key, m in report["measures"].items():
        rows.append({"measure": key, "class": "all", "synthetic_vs_real": m["synthetic_vs_real"],
                     "real_vs_real": m["real_vs_real"]})
        for name, v in (m.get("per_class") or {}).items():
            rows.append({"measure": key, "class": name, **v})
    df = pd.DataFrame(rows)
    df["ratio"] = df.synthetic_vs_real / df.real_vs_real.where(df.real_vs_real > 1e-12)  # none for a baseline ≤ 0
    return df


def _generator_tier(exp: Path) -> str:
    s = exp / "vqvae" / "summary.json"
    return read_json(s).get("train_tier", "BMQ") if s.is_file() else "BMQ"


def experiment_similarity(experiment_dir: str | os.PathLike, seed: int = 0, generator=None,
                          features: bool = True, **kwargs) -> dict[str, Any]:
    """:func:`similarity_report` for an experiment folder: the training patches of the generator's tier (from
    ``vqvae/summary.json``, BMQ by default) against the synthetic pool; KID on the experiment's VQ-VAE encoder
    (``generator`` if given, else the ``best`` checkpoint) when ``features``."""
    exp = Path(experiment_dir)
    manifest = Manifest.load(exp / "patches")
    tier = _generator_tier(exp)
    real_images, real_masks = manifest.load_arrays(tier, "train")
    syn_images, syn_masks = load_pool_arrays(exp / "synthetic", manifest)
    features_fn = None
    if features:
        encoding = read_json(exp / "vqvae" / "summary.json").get("mask_encoding", "grey")
        if generator is None:
            from .vqvae import load_vqvae  # (TensorFlow and Sonnet: only when the encoder is asked for)

            generator = load_vqvae(exp / "vqvae" / "checkpoint", which="best")
        features_fn = vqvae_features(generator, manifest.palette, encoding)
    rep = similarity_report(real_images, real_masks, syn_images, syn_masks, manifest.palette.num_classes,
                            features_fn=features_fn, seed=seed, class_names=manifest.class_names, **kwargs)
    rep["real"] = f"{tier} train"
    return rep


def write_similarity(experiment_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                     **kwargs) -> dict[str, Any]:
    """Compute :func:`experiment_similarity` and write it atomically (default ``results/similarity.json``)."""
    rep = experiment_similarity(experiment_dir, **kwargs)
    atomic_write_json(Path(out_path) if out_path else Path(experiment_dir) / "results" / "similarity.json", rep)
    return rep


def load_similarity(experiment_dir: str | os.PathLike, extra_dirs: Sequence[str | os.PathLike] = ()) -> dict | None:
    """The similarity numbers of an experiment: ``synthetic/quality.json["similarity"]`` (written by 04), else
    ``results/similarity.json`` (or ``similarity.json`` in one of ``extra_dirs``); None if none exists.

    A file older than the pool (``synthetic/pool.json``; 04 killed after writing a new pool) is ignored."""
    exp = Path(experiment_dir)
    pool = exp / "synthetic" / "pool.json"
    pool_time = pool.stat().st_mtime_ns if pool.is_file() else 0

    def current(p: Path) -> bool:
        return p.is_file() and p.stat().st_mtime_ns >= pool_time

    q = exp / "synthetic" / "quality.json"
    if current(q) and "similarity" in (data := read_json(q)):
        return data["similarity"]
    for p in [exp / "results" / "similarity.json", *(Path(d) / "similarity.json" for d in extra_dirs)]:
        if current(p):
            return read_json(p)
    return None
