"""Mask clean-up: a decoded mask part → a class-index mask.

The generative model decodes a mask part that is not exactly a label map: a float
grey channel (``mask_encoding: grey``, the paper's) or one score channel per class
(``onehot``, ours).  It is turned into class indices in up to three steps; the
``cleanup`` method (:func:`clean_labels`) chooses which:

1. **labels** -- ``grey``: k-means with k = number of classes on the channel values,
   each centre mapped to the nearest palette grey level (Volman Stern et al. 2024,
   Fig. 11); ``onehot``: the arg-max class.
2. **transition rims** (``cleanup="thin"``, grey only; ours) -- a decoded edge between two
   classes passes through the grey levels of the classes *between* them, so a thin
   white film on a black matrix comes back with a rim of the intermediate classes.
   Pixels of an intermediate class that lie in a band at most ``rim_px`` wide
   (they do not survive a morphological opening) and touch a darker and a brighter
   class are given to the nearest pixel outside every rim (:func:`reassign_rims`).
3. **small objects** -- connected components of one class smaller than ``min_object_px``
   (200 px at 256 × 256, scaled with the patch area, :func:`scaled_min_object_px`;
   a scalar or one value per class) are filled with the neighbouring class
   (:func:`remove_small_objects_fill`).  ``cleanup="paper"`` judges by size only, as
   the paper; ``cleanup="thin"`` also keeps objects whose extent (bounding-box
   diagonal) reaches ``min_object_len`` -- a long thin film is not a speck even when
   its area is small (default length: twice the side of a square of ``min_object_px``).

``cleanup="none"`` stops after step 1.  Nothing here imports TensorFlow or model code.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .labels import check_labels

__all__ = [
    "CLEANUP_METHODS",
    "CleanupResult",
    "scaled_min_object_px",
    "default_min_object_len",
    "nearest_level_labels",
    "kmeans_labels",
    "reassign_rims",
    "remove_small_objects_fill",
    "clean_mask",
    "clean_labels",
]

CLEANUP_METHODS = ("paper", "thin", "none")


@dataclass
class CleanupResult:
    """Result of :func:`clean_mask`."""

    raw: np.ndarray  # the float mask channel given (H, W)
    clustered: np.ndarray  # uint8 class index after k-means + nearest grey level
    cleaned: np.ndarray  # uint8 class index after small-object removal
    changed_fraction: float  # share of pixels whose class differs between nearest-level(raw) and cleaned
    removed_objects: int  # connected components whose class was changed by the small-object removal


def scaled_min_object_px(patch_size: int, base_px: int = 200, base_size: int = 256) -> int:
    """Minimum object size for a ``patch_size`` × ``patch_size`` patch.

    ``base_px`` pixels at ``base_size`` × ``base_size``, scaled with the patch
    area and rounded: 256 → 200, 512 → 800, 128 → 50.
    """
    for name, v in (("patch_size", patch_size), ("base_size", base_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(base_px, bool) or not isinstance(base_px, (int, np.integer)) or base_px < 0:
        raise ValueError(f"base_px must be a non-negative integer, got {base_px!r}")
    return int(round(base_px * (patch_size / base_size) ** 2))


def _check_channel(mask_channel) -> np.ndarray:
    arr = np.asarray(mask_channel)
    if arr.ndim != 2:
        raise ValueError(f"mask channel must be 2-D (H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("mask channel is empty")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == bool):
        raise ValueError(f"mask channel must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("mask channel contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.0 or hi > 2.0:
        raise ValueError(
            f"mask channel values span [{lo:g}, {hi:g}]; expected roughly [0, 1] "
            "(scale 0..255 channels by 1/255, -1..1 channels by (x + 1) / 2)"
        )
    return arr


def _check_levels(grey_levels) -> np.ndarray:
    lv = np.asarray(grey_levels, dtype=np.float64)
    if lv.ndim != 1:
        raise ValueError(f"grey_levels must be 1-D (one per class), got shape {lv.shape}")
    if not 2 <= lv.size <= 256:
        raise ValueError(f"grey_levels must hold 2 to 256 levels (one per class), got {lv.size}")
    if not np.all(np.isfinite(lv)) or lv.min() < 0.0 or lv.max() > 1.0:
        raise ValueError(f"grey_levels must lie in [0, 1], got {lv.tolist()}")
    if not np.all(np.diff(lv) > 0):
        raise ValueError(
            f"grey_levels must be strictly increasing (sorted, unique) in class order, got {lv.tolist()}"
        )
    return lv


def _nearest(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``levels`` for every value (ties → lower index)."""
    mids = (levels[:-1] + levels[1:]) / 2.0
    return np.searchsorted(mids, values, side="left")


def nearest_level_labels(mask_channel, grey_levels) -> np.ndarray:
    """Naive labelling: every pixel to the class of the nearest grey level (uint8, H × W).

    ``grey_levels`` are in [0, 1], strictly increasing, one per class (index = class).
    """
    arr = _check_channel(mask_channel)
    lv = _check_levels(grey_levels)
    return _nearest(arr, lv).astype(np.uint8)


def kmeans_labels(mask_channel, grey_levels, seed: int = 0, sample_size: int = 16384) -> np.ndarray:
    """k-means labelling of the mask channel (uint8, H × W).

    scikit-learn ``KMeans`` with ``n_clusters = len(grey_levels)`` is fitted on
    (at most ``sample_size``, drawn with ``seed``) pixel values, single-threaded
    (deterministic for a given seed); every pixel is
    assigned to its nearest cluster centre and every centre is mapped to the
    class of its nearest grey level.  Several centres may map to one class.
    """
    # imported here: keeps the module import light
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    arr = _check_channel(mask_channel)
    lv = _check_levels(grey_levels)
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}")
    k = lv.size
    values = arr.ravel()
    rng = np.random.default_rng(seed)
    sample = values if values.size <= sample_size else rng.choice(values, size=sample_size, replace=False)

    distinct = np.unique(sample)
    if distinct.size <= k:
        # k-means cannot find more clusters than distinct values: the values are the centres
        centres = distinct
    else:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed)
        # one thread: a 1-D fit of ~16k values gains nothing from OpenMP and stalls on busy machines
        with threadpool_limits(limits=1):
            km.fit(sample.reshape(-1, 1))
        centres = np.unique(km.cluster_centers_.ravel())
    # nearest centre per pixel (1-D: thresholds at the midpoints of the sorted centres)
    cluster = _nearest(values, centres) if centres.size > 1 else np.zeros(values.size, dtype=np.intp)
    centre_class = _nearest(centres, lv)
    return centre_class[cluster].reshape(arr.shape).astype(np.uint8)


def _check_labels(labels, num_classes) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if not 2 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in 2..256, got {num_classes}")
    return check_labels(labels, num_classes, "labels", ndim=2)


def _components(lab: np.ndarray, num_classes: int, structure: np.ndarray):
    """Global component ids (0..n-1) over all classes, with class and size per component."""
    ids = np.empty(lab.shape, dtype=np.int64)
    comp_class: list[np.ndarray] = []
    offset = 0
    for c in range(num_classes):
        sel = lab == c
        if not sel.any():
            continue
        cl, n = ndimage.label(sel, structure=structure)
        ids[sel] = cl[sel] - 1 + offset
        comp_class.append(np.full(n, c, dtype=np.int64))
        offset += n
    classes = np.concatenate(comp_class)
    sizes = np.bincount(ids.ravel(), minlength=offset)
    return ids, classes, sizes


def _adjacency(ids: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs of touching components (a < b) and the number of touching pixel pairs."""
    pairs = [
        (ids[:, :-1], ids[:, 1:]),
        (ids[:-1, :], ids[1:, :]),
    ]
    if connectivity == 2:
        pairs += [(ids[:-1, :-1], ids[1:, 1:]), (ids[:-1, 1:], ids[1:, :-1])]
    a = np.concatenate([p[0].ravel() for p in pairs])
    b = np.concatenate([p[1].ravel() for p in pairs])
    diff = a != b
    a, b = a[diff], b[diff]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n = int(ids.max()) + 1
    key, counts = np.unique(lo * n + hi, return_counts=True)
    return key // n, key % n, counts


def _check_min_px(min_object_px) -> None:
    if isinstance(min_object_px, bool) or not isinstance(min_object_px, (int, np.integer)):
        raise ValueError(f"min_object_px must be an integer, got {min_object_px!r}")
    if min_object_px < 0:
        raise ValueError(f"min_object_px must be >= 0, got {min_object_px}")


def _per_class_min_px(min_object_px, num_classes: int) -> np.ndarray:
    """``min_object_px`` as one threshold per class (a scalar applies to every class)."""
    if np.ndim(min_object_px) == 0:
        _check_min_px(min_object_px)
        return np.full(num_classes, int(min_object_px), dtype=np.int64)
    values = list(min_object_px)
    if len(values) != num_classes:
        raise ValueError(f"min_object_px per class needs {num_classes} values (one per class), got {len(values)}")
    for v in values:
        _check_min_px(v)
    return np.asarray(values, dtype=np.int64)


def default_min_object_len(min_object_px) -> float:
    """Extent from which an object counts as long, not a speck: twice the side of a square of ``min_object_px``."""
    return 2.0 * float(np.sqrt(np.max(min_object_px)))


def _extents(ids: np.ndarray, n: int) -> np.ndarray:
    """Bounding-box diagonal (px) of each component id 0..n-1."""
    out = np.zeros(n, dtype=np.float64)
    for i, sl in enumerate(ndimage.find_objects(ids + 1, max_label=n)):
        if sl is not None:
            out[i] = float(np.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
    return out


def remove_small_objects_fill(
    labels, min_object_px, num_classes: int, connectivity: int = 1, min_object_len: float = 0.0
) -> tuple[np.ndarray, int]:
    """Remove objects smaller than ``min_object_px`` pixels and fill them with the neighbouring class.

    ``min_object_px``: one threshold for every class, or a sequence of one per class
    (an object of class c is small when its area is below ``min_object_px[c]``).
    ``min_object_len`` > 0 keeps every object whose bounding-box diagonal is at least
    that many pixels, whatever its area: a thin film is long, a speck is not (0: area only,
    the paper's rule).

    Objects are connected components of one class (``connectivity`` 1 = 4-neighbours,
    2 = 8-neighbours).  Small objects are merged, smallest first, into the
    neighbouring class that shares the longest border with them (ties: the class
    whose touching objects are larger, then the lower class index).  The filled
    object joins the neighbouring objects of that class, so sizes only grow and
    no new small object is created; when the merged object is still small it
    is merged again.  If every object of the image is small, the largest one
    (first in class order on ties) is kept and the others are merged.

    Returns ``(cleaned uint8 labels, number of objects whose class was changed)``.
    Deterministic; the result has no holes and, unless the image itself is
    smaller than ``min_object_px``, no object smaller than ``min_object_px``.
    """
    lab = _check_labels(labels, num_classes)
    thr = _per_class_min_px(min_object_px, int(num_classes))
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    if isinstance(min_object_len, bool) or not np.isfinite(min_object_len) or min_object_len < 0:
        raise ValueError(f"min_object_len must be a number >= 0, got {min_object_len!r}")
    out = lab.astype(np.uint8)
    if thr.max() <= 1:
        return out, 0

    structure = ndimage.generate_binary_structure(2, connectivity)
    ids, comp_class, sizes = _components(lab, int(num_classes), structure)
    n = sizes.size
    small = sizes < thr[comp_class]
    long_ = np.zeros(n, dtype=bool)
    if min_object_len > 0 and small.any():
        long_ = _extents(ids, n) >= min_object_len
        small &= ~long_
    if not small.any():
        return out, 0
    protected = -1
    if small.all():
        protected = int(np.argmax(sizes))  # first largest: lowest class, then scan order

    # union-find over components; size / cls / adj are kept valid for roots only
    parent = list(range(n))
    size = sizes.tolist()
    is_long = long_.tolist()  # a long object stays long when something merges into it
    cls = comp_class.tolist()
    adj: list[dict[int, int]] = [{} for _ in range(n)]
    for a, b, w in zip(*(x.tolist() for x in _adjacency(ids, connectivity))):
        adj[a][b] = w
        adj[b][a] = w

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(r1: int, r2: int) -> int:
        """Merge two touching roots of the same class; returns the surviving root."""
        keep, gone = (r1, r2) if len(adj[r1]) >= len(adj[r2]) else (r2, r1)  # move the smaller dict
        parent[gone] = keep
        size[keep] += size[gone]
        is_long[keep] = is_long[keep] or is_long[gone]
        da, dg = adj[keep], adj[gone]
        da.pop(gone, None)
        for z, w in dg.items():
            if z == keep:
                continue
            dz = adj[z]
            del dz[gone]
            dz[keep] = dz.get(keep, 0) + w
            da[z] = da.get(z, 0) + w
        adj[gone] = {}
        return keep

    heap = [(size[i], i) for i in np.flatnonzero(small).tolist() if i != protected]
    heapq.heapify(heap)
    while heap:
        s, x = heapq.heappop(heap)
        if parent[x] != x or size[x] != s:
            continue  # stale entry
        if protected >= 0 and find(protected) == x:
            continue  # the kept largest object (and whatever merged into it)
        nbrs = adj[x]
        if not nbrs:  # the whole image is one object
            continue
        # neighbouring class: longest shared border, then larger touching objects, then lower index
        border: dict[int, int] = {}
        area: dict[int, int] = {}
        for z, w in nbrs.items():
            c = cls[z]
            border[c] = border.get(c, 0) + w
            area[c] = area.get(c, 0) + size[z]
        target = min(border, key=lambda c: (-border[c], -area[c], c))
        # x takes the target class and joins every touching object of that class
        cls[x] = target
        root = x
        for z in [z for z in nbrs if cls[z] == target]:
            root = union(root, z)
        if size[root] < thr[target] and not is_long[root]:
            heapq.heappush(heap, (size[root], root))

    roots = np.asarray(parent)
    while True:  # pointer jumping to the roots
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    final_class = np.asarray(cls, dtype=np.int64)[roots]
    removed = int(np.count_nonzero(final_class != comp_class))
    return final_class[ids].astype(np.uint8), removed


def reassign_rims(labels, num_classes: int, rim_px: int = 1) -> tuple[np.ndarray, int]:
    """Give the transition rims of a grey mask channel to the classes on either side of them.

    ``labels`` are indices in grey-level order (0 = darkest).  A pixel of an
    intermediate class c (neither darkest nor brightest) is a rim pixel when its
    class forms a band narrower than ``2 * rim_px + 1`` there (it does not survive
    a 3 × 3 opening repeated ``rim_px`` times) and both a darker and a brighter
    class lie within ``rim_px`` pixels.  Every rim pixel takes the class of the
    nearest pixel that is not a rim pixel (Euclidean distance).  ``rim_px`` = 0
    or fewer than 3 classes: nothing changes.

    Returns ``(labels uint8, number of pixels reassigned)``.
    """
    lab = _check_labels(labels, num_classes)
    if isinstance(rim_px, bool) or not isinstance(rim_px, (int, np.integer)) or rim_px < 0:
        raise ValueError(f"rim_px must be an integer >= 0, got {rim_px!r}")
    out = lab.astype(np.uint8)
    if rim_px == 0 or num_classes < 3:
        return out, 0
    square = ndimage.generate_binary_structure(2, 2)
    rim = np.zeros(lab.shape, dtype=bool)
    for c in range(1, int(num_classes) - 1):
        sel = lab == c
        if not sel.any():
            continue
        thin = sel & ~ndimage.binary_opening(sel, structure=square, iterations=rim_px)
        if not thin.any():
            continue
        near_dark = ndimage.binary_dilation(lab < c, structure=square, iterations=rim_px)
        near_bright = ndimage.binary_dilation(lab > c, structure=square, iterations=rim_px)
        rim |= thin & near_dark & near_bright
    n = int(np.count_nonzero(rim))
    if n == 0 or n == rim.size:
        return out, 0
    _, (ii, jj) = ndimage.distance_transform_edt(rim, return_indices=True)
    return out[ii, jj], n


def clean_labels(labels, num_classes: int, method: str, min_object_px, *, min_object_len: float | None = None,
                 rim_px: int = 1, rims: bool = True) -> tuple[np.ndarray, int]:
    """Steps 2 and 3 of the module docstring on class labels (grey-level order when ``rims``).

    ``method``: ``"paper"`` (small objects by area), ``"thin"`` (transition rims when ``rims``,
    then small objects by area *and* extent, ``min_object_len`` defaulting to
    :func:`default_min_object_len`) or ``"none"``.  Returns ``(labels uint8, objects changed)``.
    """
    if method not in CLEANUP_METHODS:
        raise ValueError(f"cleanup must be one of {list(CLEANUP_METHODS)}, got {method!r}")
    lab = _check_labels(labels, num_classes)
    if method == "none":
        _per_class_min_px(min_object_px, int(num_classes))  # still validated
        return lab.astype(np.uint8), 0
    if method == "paper":
        return remove_small_objects_fill(lab, min_object_px, num_classes)
    if rims:
        lab, _ = reassign_rims(lab, num_classes, rim_px)
    length = default_min_object_len(min_object_px) if min_object_len is None else float(min_object_len)
    return remove_small_objects_fill(lab, min_object_px, num_classes, min_object_len=length)


def clean_mask(
    mask_channel,
    grey_levels,
    min_object_px,
    seed: int = 0,
    use_kmeans: bool = True,
    cleanup: str = "paper",
    min_object_len: float | None = None,
    rim_px: int = 1,
) -> CleanupResult:
    """Clean a float mask channel into a class-index mask (see the module docstring).

    ``grey_levels``: palette grey levels in [0, 1], strictly increasing, index = class.
    ``use_kmeans=False`` replaces the k-means step by the naive nearest-grey-level labelling.
    ``cleanup``, ``min_object_len``, ``rim_px``: as in :func:`clean_labels`.
    """
    raw = _check_channel(mask_channel)
    lv = _check_levels(grey_levels)
    naive = nearest_level_labels(raw, lv)
    clustered = kmeans_labels(raw, lv, seed=seed) if use_kmeans else naive.copy()
    cleaned, removed = clean_labels(clustered, lv.size, cleanup, min_object_px, min_object_len=min_object_len,
                                    rim_px=rim_px)
    return CleanupResult(
        raw=np.asarray(mask_channel),
        clustered=clustered,
        cleaned=cleaned,
        changed_fraction=float(np.count_nonzero(cleaned != naive) / naive.size),
        removed_objects=removed,
    )
