"""Synthesis of dual images: sample → decode → split → mask clean-up → files.

The generative model produces dual images (micrograph channel + mask channel).
This module holds the whole path from a trained model to files on disk:
sampling latent codes, decoding them to dual images, splitting the image and
mask channels, cleaning up the mask channel, and writing the pairs out.

Mask clean-up (Volman Stern et al. 2024, Fig. 11)
-------------------------------------------------
The decoded mask channel is a noisy float image (values roughly in [0, 1]) that
is not exactly at the palette grey levels.  It is turned into a class-index
mask in two steps:

1. k-means with k = number of classes on the mask channel values; every cluster
   centre is mapped to the nearest palette grey level (= class).  Two centres
   may map to the same class.
2. Objects (connected components of one class) smaller than ``min_object_px``
   are removed and filled with the neighbouring class.  ``min_object_px`` is
   200 px at 256 × 256 and scales with the patch area
   (:func:`scaled_min_object_px`).

The clean-up functions come first in this file and import neither TensorFlow
nor any model code.
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "CleanupResult",
    "scaled_min_object_px",
    "nearest_level_labels",
    "kmeans_labels",
    "remove_small_objects_fill",
    "clean_mask",
]


# =========================================================================== mask clean-up
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
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {lab.shape}")
    if lab.size == 0:
        raise ValueError("labels are empty")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"labels must be an integer class-index array, got dtype {lab.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if not 2 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in 2..256, got {num_classes}")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels have values outside 0..{num_classes - 1} (min {lo}, max {hi})")
    return lab


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


def remove_small_objects_fill(
    labels, min_object_px: int, num_classes: int, connectivity: int = 1
) -> tuple[np.ndarray, int]:
    """Remove objects smaller than ``min_object_px`` pixels and fill them with the neighbouring class.

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
    _check_min_px(min_object_px)
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    out = lab.astype(np.uint8)
    if min_object_px <= 1:
        return out, 0

    structure = ndimage.generate_binary_structure(2, connectivity)
    ids, comp_class, sizes = _components(lab, int(num_classes), structure)
    n = sizes.size
    small = sizes < min_object_px
    if not small.any():
        return out, 0
    protected = -1
    if small.all():
        protected = int(np.argmax(sizes))  # first largest: lowest class, then scan order

    # union-find over components; size / cls / adj are kept valid for roots only
    parent = list(range(n))
    size = sizes.tolist()
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
        if size[root] < min_object_px:
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


def clean_mask(
    mask_channel,
    grey_levels,
    min_object_px: int,
    seed: int = 0,
    use_kmeans: bool = True,
) -> CleanupResult:
    """Clean a float mask channel into a class-index mask (see the module docstring).

    ``grey_levels``: palette grey levels in [0, 1], strictly increasing, index = class.
    ``use_kmeans=False`` replaces the k-means step by the naive nearest-grey-level labelling.
    """
    raw = _check_channel(mask_channel)
    lv = _check_levels(grey_levels)
    _check_min_px(min_object_px)
    naive = nearest_level_labels(raw, lv)
    clustered = kmeans_labels(raw, lv, seed=seed) if use_kmeans else naive.copy()
    cleaned, removed = remove_small_objects_fill(clustered, min_object_px, lv.size)
    return CleanupResult(
        raw=np.asarray(mask_channel),
        clustered=clustered,
        cleaned=cleaned,
        changed_fraction=float(np.count_nonzero(cleaned != naive) / naive.size),
        removed_objects=removed,
    )


# =========================================================================== sampling / decoding
@dataclass
class SyntheticSample:
    """One generated dual image after splitting and mask clean-up."""

    image: np.ndarray  # uint8 (H, W, C)
    raw: np.ndarray  # float32 (H, W) decoded mask channel
    naive: np.ndarray  # uint8 (H, W) nearest grey level of raw
    clustered: np.ndarray  # uint8 (H, W) after k-means
    cleaned: np.ndarray  # uint8 (H, W) after small-object removal
    changed_fraction: float
    removed_objects: int
    codes: np.ndarray | None = None


def _sorted_levels(palette) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels in increasing order and the class index of each (clean-up needs sorted levels)."""
    levels = palette.grey_unit
    order = np.argsort(levels)
    return levels[order], order.astype(np.uint8)


def decoded_labels(mask_part: np.ndarray, palette, encoding: str = "grey") -> np.ndarray:
    """Naive class labels of a decoded mask part: nearest grey level (``grey``) or arg-max (``onehot``); any batch shape."""
    if encoding == "onehot":
        return np.asarray(mask_part).argmax(-1).astype(np.uint8)
    levels, classes = _sorted_levels(palette)
    flat = np.asarray(mask_part, np.float32)
    return classes[_nearest(flat.reshape(-1), levels).reshape(flat.shape)]


def clean_decoded(image: np.ndarray, mask_part: np.ndarray, palette, min_object_px: int, seed: int = 0,
                  use_kmeans: bool = True, codes: np.ndarray | None = None, encoding: str = "grey") -> SyntheticSample:
    """Clean one decoded mask part into a :class:`SyntheticSample`.

    ``grey``: k-means on the mask channel with the palette's grey levels (any order), then small objects filled.
    ``onehot``: the arg-max class (k-means does not apply), then small objects filled.
    """
    from .dual import mask_as_grey

    if encoding == "onehot":
        naive = decoded_labels(mask_part, palette, encoding)
        cleaned, removed = remove_small_objects_fill(naive, min_object_px, palette.num_classes)
        return SyntheticSample(image=image, raw=mask_as_grey(mask_part, palette, encoding), naive=naive,
                               clustered=naive.copy(), cleaned=cleaned,
                               changed_fraction=float(np.mean(cleaned != naive)), removed_objects=removed, codes=codes)
    levels, classes = _sorted_levels(palette)
    res = clean_mask(mask_part, levels, min_object_px, seed=seed, use_kmeans=use_kmeans)
    naive = nearest_level_labels(mask_part, levels)
    return SyntheticSample(
        image=image,
        raw=np.asarray(mask_part, np.float32),
        naive=classes[naive],
        clustered=classes[res.clustered],
        cleaned=classes[res.cleaned],
        changed_fraction=res.changed_fraction,
        removed_objects=res.removed_objects,
        codes=codes,
    )


def generate_samples(generator, prior, num_samples: int, palette, *, code_shape: tuple[int, int],
                     temperature: float = 1.0, seed: int = 0, batch_size: int = 16, min_object_px: int = 200,
                     use_kmeans: bool = True, progress: bool = True, encoding: str = "grey",
                     image_channels: int | None = None) -> list[SyntheticSample]:
    """Sample code maps from ``prior``, decode them with the VQ-VAE ``generator``, split and clean.

    Batches use seeds ``seed``, ``seed + 1``, … so a pool is reproducible and batches differ.
    """
    from tqdm.auto import tqdm

    from . import pixelcnn, vqvae
    from .dual import split

    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    k_gen = generator.config["num_embeddings"]
    if prior.num_embeddings != k_gen:
        raise ValueError(
            f"the prior models K={prior.num_embeddings} codes but the VQ-VAE has K={k_gen}; "
            f"re-run 03_pixelcnn after 02_vqvae"
        )
    made_by, this_one = getattr(prior, "generator_id", None), getattr(generator, "checkpoint_id", None)
    if made_by and this_one and made_by != this_one:
        from .io import DataError

        folder = Path(getattr(prior, "saved_in", "the prior folder")).parent
        raise DataError(f"the prior in {folder} was trained on the code maps of another VQ-VAE than the one in "
                        f"{getattr(generator, 'checkpoint_dir', 'the generator folder')} (02_vqvae was re-run after "
                        f"03_pixelcnn): re-run 03_pixelcnn after deleting {folder}, or pass a new experiment name")
    h, w = code_shape
    out: list[SyntheticSample] = []
    bar = tqdm(total=num_samples, desc="synthesising", unit="image", disable=not progress)
    try:
        for b, start in enumerate(range(0, num_samples, batch_size)):
            n = min(batch_size, num_samples - start)
            codes = pixelcnn.sample_fast(prior, n, h, w, temperature=temperature, seed=seed + b, batch_size=n)
            images, parts = split(vqvae.decode_codes(generator, codes), image_channels, encoding)
            for i in range(n):
                out.append(clean_decoded(images[i], parts[i], palette, min_object_px, seed=seed + start + i,
                                         use_kmeans=use_kmeans, codes=codes[i], encoding=encoding))
                bar.update(1)
    finally:
        bar.close()
    return out


def write_pool(samples: Sequence[SyntheticSample], out_dir, seed: int = 0, extra: dict | None = None) -> dict:
    """Write a shuffled pool: ``images/``, ``masks/`` (class index), ``raw/`` (mask channel, 8 bit) and ``pool.json``.

    ``pool.json`` is written last and atomically: a pool without it is incomplete and is not used.
    Variants take prefixes of ``items`` (already in shuffled order).
    """
    from pathlib import Path

    from .io import atomic_write_json, write_png

    out_dir = Path(out_dir)
    # an older pool.json must not point at a mix of old and new files while they are rewritten
    (out_dir / "pool.json").unlink(missing_ok=True)
    order = np.random.default_rng(seed).permutation(len(samples))
    items = []
    for rank, idx in enumerate(order):
        s = samples[int(idx)]
        sid = f"syn{rank:05d}"
        write_png(out_dir / "images" / f"{sid}.png", s.image)
        write_png(out_dir / "masks" / f"{sid}.png", s.cleaned)
        write_png(out_dir / "raw" / f"{sid}.png", np.clip(np.round(s.raw * 255), 0, 255).astype(np.uint8))
        items.append({"id": sid, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png", "raw": f"raw/{sid}.png",
                      "changed_fraction": round(float(s.changed_fraction), 6), "removed_objects": int(s.removed_objects),
                      "generated_index": int(idx)})
    pool = {"format": 1, "size": len(items), "seed": int(seed), "items": items, **(extra or {})}
    atomic_write_json(out_dir / "pool.json", pool)
    return pool


def load_pool(synthetic_dir) -> dict:
    """Read ``synthetic/pool.json``; a clear error if 04_synthesis has not finished."""
    from pathlib import Path

    from .io import DataError, read_json

    p = Path(synthetic_dir) / "pool.json"
    if not p.is_file():
        raise DataError(f"{p}: no synthetic pool; run 04_synthesis first (an interrupted run leaves no pool.json)")
    pool = read_json(p)
    if "items" not in pool:
        raise DataError(f"{p}: not a pool file (no 'items'); re-run 04_synthesis")
    return pool
