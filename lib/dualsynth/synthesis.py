"""Synthesis of dual images: sample → decode → split → mask clean-up → files.

The generative model produces dual images (micrograph channels + mask part).
This module holds the path from a trained model to files on disk: sampling
code maps (optionally conditioned on target class fractions), decoding them to
dual images, splitting the image channels from the mask part, cleaning the mask
(:mod:`dualsynth.maskclean`, re-exported here) and writing the pairs out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence
from dataclasses import dataclass

import numpy as np

from .dual import mask_as_grey, split
from .io import DataError, atomic_write_json, read_image, read_json, read_mask, write_png

# ``prior``, ``pixelcnn`` and ``vqvae`` load TensorFlow (seconds): imported where a prior or generator is used, so
# that importing this module (quality and the report read pools through it) stays light
from .maskclean import (  # noqa: F401  (re-exported: the clean-up used to live here)
    CLEANUP_METHODS,
    CleanupResult,
    _nearest,
    _per_class_min_px,
    clean_labels,
    clean_mask,
    default_min_object_len,
    kmeans_labels,
    nearest_level_labels,
    reassign_rims,
    remove_small_objects_fill,
    scaled_min_object_px,
)

__all__ = [
    "CleanupResult",
    "scaled_min_object_px",
    "nearest_level_labels",
    "kmeans_labels",
    "remove_small_objects_fill",
    "clean_mask",
    "SyntheticSample",
    "decoded_labels",
    "clean_decoded",
    "generate_samples",
    "write_pool",
    "load_pool",
]


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
    condition: np.ndarray | None = None  # the class fractions a conditioned prior was asked for


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


def clean_decoded(image: np.ndarray, mask_part: np.ndarray, palette, min_object_px, seed: int = 0,
                  use_kmeans: bool = True, codes: np.ndarray | None = None, encoding: str = "grey",
                  cleanup: str = "paper", min_object_len: float | None = None, rim_px: int = 1) -> SyntheticSample:
    """Clean one decoded mask part into a :class:`SyntheticSample`.

    ``grey``: k-means on the mask channel with the palette's grey levels (any order), then ``cleanup``.
    ``onehot``: the arg-max class (k-means and the rim step do not apply), then ``cleanup``.
    ``min_object_px``: a scalar or one value per class (palette order).  ``cleanup``,
    ``min_object_len``, ``rim_px``: see :func:`dualsynth.maskclean.clean_labels`.
    """
    if encoding == "onehot":
        naive = decoded_labels(mask_part, palette, encoding)
        cleaned, removed = clean_labels(naive, palette.num_classes, cleanup, min_object_px,
                                        min_object_len=min_object_len, rim_px=rim_px, rims=False)
        return SyntheticSample(image=image, raw=mask_as_grey(mask_part, palette, encoding), naive=naive,
                               clustered=naive.copy(), cleaned=cleaned,
                               changed_fraction=float(np.mean(cleaned != naive)), removed_objects=removed, codes=codes)
    levels, classes = _sorted_levels(palette)
    if np.ndim(min_object_px) > 0:  # per class: put the thresholds in grey-level order like the labels
        min_object_px = _per_class_min_px(min_object_px, palette.num_classes)[classes].tolist()
    res = clean_mask(mask_part, levels, min_object_px, seed=seed, use_kmeans=use_kmeans, cleanup=cleanup,
                     min_object_len=min_object_len, rim_px=rim_px)
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


def fmt(value, spec: str = ".2f") -> str:
    """A number for a printed summary, or "n/a" for None (e.g. a consistency the judge could not measure)."""
    return "n/a" if value is None else format(value, spec)


def cleanup_titles(encoding: str, cleanup: str, use_kmeans: bool = True) -> dict[str, str]:
    """Panel titles of :func:`dualsynth.plots.plot_cleanup_steps` for this encoding and clean-up method."""
    if encoding == "onehot":
        labels = naive = "arg-max class"
    else:
        naive, labels = "nearest grey level", ("k-means" if use_kmeans else "nearest grey level")
    cleaned = {"paper": "small objects filled", "thin": "rims reassigned, small short objects filled",
               "none": "no clean-up"}[cleanup]
    return {"naive_title": naive, "labels_title": labels, "cleaned_title": cleaned}


class ConditionSource:
    """Target class fractions for a prior conditioned on them (03 ``condition: class_fractions``).

    Draws, for sample ``i`` of the pool, the fractions of a real training map (``rare_boost`` > 0 favours maps
    rich in rare classes); the draw for a sample depends only on ``seed`` and its index, so a curated pool's
    extra rounds get new targets.  For an unconditional prior it is inactive and :meth:`draw` returns ``None``.
    """

    def __init__(self, train_fractions: np.ndarray | None, rare_boost: float = 0.0, seed: int = 0):
        self.train_fractions = train_fractions
        self.rare_boost = float(rare_boost)
        self.seed = int(seed)

    @property
    def active(self) -> bool:
        return self.train_fractions is not None

    @classmethod
    def for_prior(cls, prior, pixelcnn_dir, rare_boost: float = 0.0, seed: int = 0,
                  max_fraction_error: float | None = None) -> "ConditionSource":
        """The source for ``prior``: the training maps' fractions from ``<pixelcnn_dir>/conditions.npz``.

        ``rare_boost`` > 0 and ``max_fraction_error`` (not None, ≥ 0) need a conditioned prior: refused otherwise.
        """
        if not int(getattr(prior, "num_conditions", 0) or 0):
            needs = [f"rare_boost={rare_boost}"] if rare_boost else []
            if max_fraction_error is not None and max_fraction_error >= 0:
                needs.append(f"max_fraction_error={max_fraction_error}")
            if needs:
                raise ValueError(f"{' and '.join(needs)} need(s) a prior conditioned on class fractions, but "
                                 f"{Path(pixelcnn_dir) / 'prior'} is not: re-run 03_pixelcnn with prior: gated and "
                                 f"condition: class_fractions, or set rare_boost=0 and max_fraction_error=-1")
            return cls(None, rare_boost, seed)
        from . import prior as prior_pkg  # (TensorFlow: see the note at the imports)

        path = Path(pixelcnn_dir) / "conditions.npz"
        train = prior_pkg.load_conditions(path).train
        if train.shape[1] != prior.num_conditions:
            raise DataError(f"{path}: holds fractions of {train.shape[1]} classes but the prior is conditioned on "
                            f"{prior.num_conditions}: re-run 03_pixelcnn")
        return cls(train, rare_boost, seed)

    def draw(self, n: int, start_index: int = 0) -> np.ndarray | None:
        if not self.active:
            return None
        from . import prior as prior_pkg  # (TensorFlow: see the note at the imports)

        return prior_pkg.draw_conditions(self.train_fractions, n, rare_boost=self.rare_boost,
                                         seed=self.seed * 1_000_003 + start_index)

    def describe(self) -> str:
        if not self.active:
            return "unconditional"
        return f"conditioned on class fractions of {len(self.train_fractions)} real maps (rare_boost {self.rare_boost})"


def check_generator_pair(generator, prior) -> None:
    """Refuse a prior made for another VQ-VAE (other K, or trained on another checkpoint's code maps)."""
    k_gen = generator.config["num_embeddings"]
    if prior.num_embeddings != k_gen:
        raise ValueError(
            f"the prior models K={prior.num_embeddings} codes but the VQ-VAE has K={k_gen}; "
            f"re-run 03_pixelcnn after 02_vqvae"
        )
    made_by, this_one = getattr(prior, "generator_id", None), getattr(generator, "checkpoint_id", None)
    if made_by and this_one and made_by != this_one:
        folder = Path(getattr(prior, "saved_in", "the prior folder")).parent
        raise DataError(f"the prior in {folder} was trained on the code maps of another VQ-VAE than the one in "
                        f"{getattr(generator, 'checkpoint_dir', 'the generator folder')} (02_vqvae was re-run after "
                        f"03_pixelcnn): re-run 03_pixelcnn after deleting {folder}, or pass a new experiment name")


def batch_seed(seed: int, first_index: int) -> int:
    """Sampling seed of a batch whose first sample has global index ``first_index`` (distinct per index)."""
    return int(seed) + 7919 * int(first_index)


def generate_samples(generator, prior, num_samples: int, palette, *, code_shape: tuple[int, int],
                     temperature: float = 1.0, seed: int = 0, batch_size: int = 16, min_object_px=200,
                     use_kmeans: bool = True, progress: bool = True, encoding: str = "grey",
                     image_channels: int | None = None, cleanup: str = "paper", min_object_len: float | None = None,
                     rim_px: int = 1, conditions: np.ndarray | None = None, start_index: int = 0,
                     desc: str = "synthesising") -> list[SyntheticSample]:
    """Sample code maps from ``prior``, decode them with the VQ-VAE ``generator``, split and clean.

    Batches use seeds ``seed``, ``seed + 1``, … so a pool is reproducible and batches differ.
    ``conditions`` (num_samples, C): target class fractions, one row per sample, for a prior trained
    with ``num_conditions = C`` (see :mod:`dualsynth.prior`); ``None`` for an unconditional prior.
    ``start_index`` is the global index of the first sample: a batch's sampling seed is
    :func:`batch_seed` of ``seed`` and the global index of its first sample, so calls that continue each other
    (``start_index`` = the samples drawn so far, e.g. the rounds of a curated pool) never reuse a seed, whatever
    their sizes and ``batch_size``.
    """
    from tqdm.auto import tqdm

    from . import pixelcnn, vqvae  # (TensorFlow: see the note at the imports)

    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    check_generator_pair(generator, prior)
    needs = int(getattr(prior, "num_conditions", 0) or 0)
    if needs and conditions is None:
        raise ValueError(f"the prior is conditioned on {needs} class fractions: pass conditions (num_samples, {needs})")
    if conditions is not None:
        conditions = np.asarray(conditions, np.float32)
        if not needs:
            raise ValueError("conditions were given but the prior is not conditioned (03_pixelcnn condition: none)")
        if conditions.shape != (num_samples, needs):
            raise ValueError(f"conditions must have shape ({num_samples}, {needs}), got {conditions.shape}")
    if start_index < 0:
        raise ValueError(f"start_index must be >= 0, got {start_index}")
    h, w = code_shape
    out: list[SyntheticSample] = []
    bar = tqdm(total=num_samples, desc=desc, unit="image", disable=not progress)
    try:
        for b, start in enumerate(range(0, num_samples, batch_size)):
            n = min(batch_size, num_samples - start)
            kw = {} if conditions is None else {"condition": conditions[start:start + n]}
            codes = pixelcnn.sample_fast(prior, n, h, w, temperature=temperature,
                                         seed=batch_seed(seed, start_index + start), batch_size=n, **kw)
            images, parts = split(vqvae.decode_codes(generator, codes), image_channels, encoding)
            for i in range(n):
                out.append(clean_decoded(images[i], parts[i], palette, min_object_px,
                                         seed=seed + start_index + start + i, use_kmeans=use_kmeans, codes=codes[i],
                                         encoding=encoding, cleanup=cleanup, min_object_len=min_object_len,
                                         rim_px=rim_px))
                if conditions is not None:
                    out[-1].condition = conditions[start + i]
                bar.update(1)
    finally:
        bar.close()
    return out


def write_pool(samples: Sequence[SyntheticSample], out_dir, seed: int = 0, extra: dict | None = None) -> dict:
    """Write a shuffled pool: ``images/``, ``masks/`` (class index), ``raw/`` (mask channel, 8 bit) and ``pool.json``.

    ``pool.json`` is written last and atomically: a pool without it is incomplete and is not used.
    Variants take prefixes of ``items`` (already in shuffled order).
    """
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
    p = Path(synthetic_dir) / "pool.json"
    if not p.is_file():
        raise DataError(f"{p}: no synthetic pool; run 04_synthesis first (an interrupted run leaves no pool.json)")
    pool = read_json(p)
    if "items" not in pool:
        raise DataError(f"{p}: not a pool file (no 'items'); re-run 04_synthesis")
    return pool


def load_pool_arrays(synthetic_dir, manifest) -> tuple[np.ndarray, np.ndarray]:
    """The pool's micrographs and cleaned label masks as arrays ``(N, H, W, C)``, ``(N, H, W)``; a clear error if
    the pool is missing or empty."""
    syn_dir = Path(synthetic_dir)
    pool = load_pool(syn_dir)
    if not pool["items"]:
        raise DataError(f"{syn_dir / 'pool.json'}: the synthetic pool is empty (04_synthesis kept no pair)")
    images = np.stack([read_image(syn_dir / it["image"], channels=manifest.channels) for it in pool["items"]])
    masks = np.stack([read_mask(syn_dir / it["mask"], manifest.palette, "index") for it in pool["items"]])
    return images, masks
