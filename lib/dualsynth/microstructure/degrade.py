"""Step 4 of the generator: the LQ mask, a model of a segmentation model's labelling errors on any index mask."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..labels import check_labels
from .noise import _select_lowest, _smooth_noise, _smoothstep

__all__ = ["degrade_mask"]


def degrade_mask(
    mask_hq: np.ndarray,
    seed: int,
    error_rate: float = 0.06,
    num_classes: int = 4,
    *,
    background: int | None = None,
    large_regions_per_mpx: float = 1.0,
    large_region_min_px: int = 40,
    large_region_max_share: float = 0.3,
    dilation_share: float = 0.55,
    boundary_share: float = 0.32,
    spurious_share: float = 0.13,
    max_dilation_px: float = 3.0,
    spurious_radius: tuple[int, int] = (1, 3),
) -> np.ndarray:
    """Simulate the labelling errors of a segmentation model on an index mask.

    Error model (applied in this order, on a copy of ``mask_hq``; one function per step, all drawing from one
    generator in this order):

    1. **Large wrong regions** (:func:`_relabel_large_regions`) - a Poisson number (mean
       ``large_regions_per_mpx`` per megapixel, so "occasionally one" on small
       masks) of whole connected objects of a non-background class get another
       class (e.g. an eta blob labelled matrix, an oxide labelled eta). Each is
       at most ``large_region_max_share`` of the error budget.
    2. **Over-segmentation at edges** (:func:`_grow_into_background`) - in smoothly varying random places,
       non-background objects grow into the background by 1..``max_dilation_px``.
    3. **Wrong boundary labels** (:func:`_relabel_boundary_pixels`) - pixels on class boundaries take the label of
       a neighbour (in small clusters).
    4. **Spurious objects** (:func:`_add_spurious_objects`) - tiny blobs (radius ``spurious_radius``) of a wrong
       class inside the background.

    The remaining error budget ``error_rate * size`` (after step 1) is split
    between steps 2-4 by the ``*_share`` weights; every step picks exactly its
    share of candidate pixels, so the disagreement with ``mask_hq`` is close to
    ``error_rate`` (lower only if a mask has too few candidate pixels, e.g. no
    boundaries at all).

    Parameters
    ----------
    mask_hq : 2-D integer array with values in ``0 .. num_classes - 1``.
    seed : integer seed (deterministic output).
    error_rate : target fraction of changed pixels.
    num_classes : number of classes (>= 2).
    background : class treated as background; default: the most frequent class.

    Returns
    -------
    uint8 array (same shape) if ``num_classes <= 256``, else int32.
    """
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2")
    if not 0.0 <= error_rate < 0.5:
        raise ValueError("error_rate must be in [0, 0.5)")
    mask_hq = check_labels(mask_hq, num_classes, "mask_hq", ndim=2, allow_float=True, allow_empty=True)
    out_dtype = np.uint8 if num_classes <= 256 else np.int32
    hq = mask_hq.astype(out_dtype)
    lq = hq.copy()
    if hq.size == 0 or error_rate == 0:
        return lq
    # one generator for all steps, drawn from in this order: the steps below keep the order of the draws, so a
    # seed gives the same LQ mask as it always did (the embedded default's masks stay byte-identical)
    rng = np.random.default_rng(seed)
    counts = np.bincount(hq.ravel(), minlength=num_classes)
    bg = int(np.argmax(counts)) if background is None else int(background)
    fg_classes = [c for c in np.flatnonzero(counts) if c != bg]
    target = int(round(error_rate * hq.size))

    _relabel_large_regions(rng, hq, lq, counts, fg_classes, target, large_regions_per_mpx, large_region_min_px,
                           large_region_max_share)  # 1.
    remaining = max(0, target - _n_changed(hq, lq))
    tot_share = dilation_share + boundary_share + spurious_share
    if remaining == 0 or tot_share <= 0:
        return lq
    if fg_classes:  # 2.
        _grow_into_background(rng, hq, lq, bg, int(round(remaining * dilation_share / tot_share)), max_dilation_px)
    _relabel_boundary_pixels(rng, hq, lq, int(round(remaining * boundary_share / tot_share)))  # 3.
    wrong_classes = fg_classes if fg_classes else [k for k in range(num_classes) if k != bg]
    _add_spurious_objects(rng, hq, lq, bg, wrong_classes, target, spurious_radius)  # 4.
    return lq


def _n_changed(hq: np.ndarray, lq: np.ndarray) -> int:
    return int(np.count_nonzero(lq != hq))


def _relabel_large_regions(rng, hq, lq, counts, fg_classes, target, per_mpx, min_px, max_share) -> None:
    """Step 1: a Poisson number (mean ``per_mpx`` per megapixel) of whole connected objects of a non-background
    class, each of ``min_px`` up to ``max(min_px, max_share * target)`` pixels, take another class (in ``lq``)."""
    n_large = rng.poisson(per_mpx * hq.size / 1e6)
    if n_large == 0 or not fg_classes:
        return
    cap = max(min_px, max_share * target)
    cands = []  # (class, labels, label ids small and large enough)
    for c in fg_classes:
        lab, n = ndi.label(hq == c)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        ok = np.flatnonzero((sizes >= min_px) & (sizes <= cap)) + 1
        if ok.size:
            cands.append((c, lab, ok))
    for _ in range(n_large):
        if not cands:
            break
        c, lab, ok = cands[rng.integers(0, len(cands))]
        lid = ok[rng.integers(0, ok.size)]
        lq[lab == lid] = _other_class(rng, c, counts)


def _other_class(rng, c: int, counts: np.ndarray) -> int:
    """A class other than ``c``, at random among those present in the mask (more realistic confusions), or among
    all the others when ``c`` is the only one."""
    choices = [k for k in range(len(counts)) if k != c]
    pref = [k for k in choices if counts[k] > 0]
    pool = pref if pref else choices
    return int(pool[rng.integers(0, len(pool))])


def _grow_into_background(rng, hq, lq, bg: int, budget: int, max_dilation_px: float) -> None:
    """Step 2, over-segmentation: in smoothly varying places, non-background objects grow into the background by
    1..``max_dilation_px`` pixels; exactly ``budget`` pixels (fewer if there are not as many candidates)."""
    if budget <= 0:
        return
    H, W = hq.shape
    fg = hq != bg
    dist, (iy, ix) = ndi.distance_transform_edt(~fg, return_indices=True)
    radius = 1.0 + (max_dilation_px - 1.0) * _smoothstep(0.5 + 0.35 * _smooth_noise(rng, (H, W), 10.0))
    cand = (~fg) & (dist <= radius) & (lq == hq)
    place = _smooth_noise(rng, (H, W), 18.0)
    sel = _select_lowest(-place, cand, budget)
    lq[sel] = hq[iy[sel], ix[sel]]


def _relabel_boundary_pixels(rng, hq, lq, budget: int) -> None:
    """Step 3: ``budget`` still-correct pixels on class boundaries (in ``lq``) take a neighbour's label, in small
    clusters (priority: fine noise plus white noise)."""
    if budget <= 0:
        return
    H, W = hq.shape
    mx = ndi.maximum_filter(lq, size=3)
    mn = ndi.minimum_filter(lq, size=3)
    cand = ((mx != lq) | (mn != lq)) & (lq == hq)
    if not cand.any():
        return
    pick_max = np.where((mx != lq) & (mn != lq), rng.random((H, W)) < 0.5, mx != lq)
    repl = np.where(pick_max, mx, mn)
    prio = _smooth_noise(rng, (H, W), 3.0) + 0.8 * rng.standard_normal((H, W), dtype=np.float32)
    sel = _select_lowest(-prio, cand, budget)
    lq[sel] = repl[sel]


def _blob_stamps(spurious_radius: tuple[int, int]) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Discs of each radius in ``spurious_radius`` (inclusive, at least 1): ``(r, dy, dx, distance)`` of their
    pixels."""
    r_lo, r_hi = int(spurious_radius[0]), int(spurious_radius[1])
    stamps = []
    for r in range(max(1, r_lo), max(r_lo, r_hi) + 1):
        oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
        rr = np.hypot(oy, ox)
        keep = rr <= r + 0.3
        stamps.append((r, oy[keep], ox[keep], rr[keep]))
    return stamps


def _add_spurious_objects(rng, hq, lq, bg: int, wrong_classes, target: int, spurious_radius) -> None:
    """Step 4: tiny irregular blobs of a wrong class inside the background until ``lq`` differs from ``hq`` in
    about ``target`` pixels (up to 4 rounds; blobs painted in random order, cut at the budget)."""
    H, W = hq.shape
    stamps = _blob_stamps(spurious_radius)
    for _round in range(4):
        need = target - _n_changed(hq, lq)
        if need <= max(10, 0.002 * target):
            break
        free = np.flatnonzero(((hq == bg) & (lq == hq)).ravel())
        if free.size == 0:
            break
        mean_area = np.mean([len(s[1]) for s in stamps]) * 0.8
        n_blobs = max(1, int(need / mean_area))
        centres = free[rng.integers(0, free.size, n_blobs)]
        cy, cx = centres // W, centres % W
        which = rng.integers(0, len(stamps), n_blobs)
        cls = np.asarray(wrong_classes)[rng.integers(0, len(wrong_classes), n_blobs)]
        order = rng.permutation(n_blobs)
        painted = 0
        for si, (r, oy, ox, rr) in enumerate(stamps):
            b = order[which[order] == si]
            if b.size == 0:
                continue
            # irregular blobs: randomly drop rim pixels
            yy = cy[b, None] + oy[None, :]
            xx = cx[b, None] + ox[None, :]
            keep = (rr[None, :] <= r - 0.5) | (rng.random(yy.shape) < 0.6)
            keep &= (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            cc = np.broadcast_to(cls[b, None], yy.shape)
            yk, xk, ck = yy[keep], xx[keep], cc[keep]
            ok = hq[yk, xk] == bg
            # limit to the budget (blobs are painted in random order)
            room = need - painted
            if room <= 0:
                break
            yk, xk, ck = yk[ok][:room], xk[ok][:room], ck[ok][:room]
            lq[yk, xk] = ck
            painted += yk.size
        if painted == 0:
            break
