"""Cutting large micrographs into patches, filtering, quality tiers and splits.

The paper's recipe (Volman Stern et al. 2024, Table 1): one 2752 × 2208 image
cut into a 10 × 8 grid of 256 px patches; patches that hold (almost) only the
majority class are dropped; a few patches are relabelled by an expert (HQ),
the rest keep the model-made low-quality (LQ) mask.  From these:

=====  ==========================  ===================  ==================
tier   patches                     masks                train / val
=====  ==========================  ===================  ==================
SHQ    the small set               HQ                   16 / 5
SLQ    the same small set          LQ                   16 / 5
BLQ    big set ⊇ small set          LQ                   48 / 12
BMQ    the same big set            HQ on the small set, 48 / 12
                                   LQ elsewhere
=====  ==========================  ===================  ==================

Test patches are real and HQ only: ``test_main`` from the training image(s)
(never in any tier) plus ``test_extra`` from held-out images.  The small
set's train/val patches are inside the big set's train/val patches, so BMQ is
exactly BLQ with the small set's masks replaced by HQ ones.

``prepare_dataset`` runs the whole recipe for a data YAML and writes
``patches/`` with ``manifest.json``; ``Manifest`` reads it back for later stages.

Modules, one concern each: :mod:`.sources` (reading or generating the large images, pairing images with masks,
:class:`SourceImage`), :mod:`.scaling` (``source.scale``: area averaging for images, nearest neighbour for masks),
:mod:`.patches` (the grid, :class:`Patch`, filtering), :mod:`.tiers` (test set, small/big sets, tiers),
:mod:`.manifest` (patch files, ``manifest.json``, :class:`Manifest`); :func:`prepare_dataset` here runs them in
order.  Every name is importable from ``dualsynth.patching`` as before the split.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import DataConfig, ParamError
from ..io import DataError
from .manifest import MANIFEST_FORMAT, Manifest, source_records, write_manifest, write_patch_files  # noqa: F401
from .patches import Patch, PatchingError, class_fractions, cut_patches, filter_patches, grid_positions
from .scaling import rescale_image, rescale_mask, scaled_shape  # noqa: F401
from .sources import (GENERATED_SCALE_WARN, SourceImage, _same_stem_error, load_sources,  # noqa: F401
                      patch_size_warning, source_scale)
from .tiers import TIERS, assign_tiers

__all__ = [
    "TIERS",
    "Patch",
    "SourceImage",
    "grid_positions",
    "cut_patches",
    "filter_patches",
    "assign_tiers",
    "load_sources",
    "prepare_dataset",
    "Manifest",
    "class_fractions",
    "PatchingError",
]


# --------------------------------------------------------------------------- the data as a whole
def _class_counts(sources: Sequence[SourceImage], k: int) -> np.ndarray:
    return sum((np.bincount(s.mask_hq.ravel(), minlength=k)[:k] for s in sources), np.zeros(k, np.int64))


def _absent_class_notes(cfg: DataConfig, sources: Sequence[SourceImage]) -> list[str]:
    counts = _class_counts(sources, cfg.palette.num_classes)
    absent = [n for n, c in zip(cfg.palette.names, counts) if c == 0]
    if not absent:
        return []
    return [f"class(es) {absent} of the palette ({cfg.path or cfg.name}) appear in no mask of the "
            f"{len(sources)} source image(s): no model can learn them and their per-class scores stay blank (n/a) in "
            f"metrics.csv. Check the palette's colour / grey level for them and source.mask_encoding, or remove "
            f"the class from the palette"]


def _no_patch_left_message(cfg: DataConfig, sources: Sequence[SourceImage], patches: Sequence[Patch],
                           max_majority_fraction: float) -> str:
    names = cfg.palette.names
    counts = _class_counts(sources, len(names))
    held = [names[i] for i in np.flatnonzero(counts)]
    where = f"({len(patches)} patches of {len(sources)} image(s), data YAML {cfg.path or cfg.name})"
    if len(held) <= 1:
        return (f"no patch left after filtering: every mask holds only class {held[0] if held else '?'!r} {where}, "
                f"so no patch shows two classes. Check the masks and source.mask_encoding (RGB colour masks need "
                f"rgb or auto, masks of palette grey levels grey or auto, masks of class numbers index)")
    if max_majority_fraction >= 1.0:
        return (f"no patch left after filtering: every patch holds a single class {where}, although the masks hold "
                f"{held}: the classes do not meet within one {patches[0].image.shape[0]} px patch. Use a larger "
                f"patch_size, or check the masks")
    return (f"no patch left after filtering: all patches have one class covering more than "
            f"{max_majority_fraction:.1%} {where}; raise max_majority_fraction (up to 1.0) or check the masks")


# --------------------------------------------------------------------------- the whole recipe
def prepare_dataset(
    cfg: DataConfig,
    out_dir: str | os.PathLike,
    patch_size: int = 256,
    seed: int = 0,
    max_majority_fraction: float = 0.995,
    progress: bool = True,
    sources: list[SourceImage] | None = None,
) -> Manifest:
    """Cut, filter, tier and split; write patches + ``manifest.json`` into ``out_dir``."""
    if patch_size % 4:
        raise ParamError(f"patch_size={patch_size}: must be divisible by 4 (the VQ-VAE downsamples by 4)")
    out_dir = Path(out_dir)
    if sources is None:
        sources = load_sources(cfg, patch_size, seed, progress=progress)
    k = cfg.palette.num_classes
    names: dict[str, SourceImage] = {}
    for s in sources:  # patch ids are <source>_rRR_cCC: two sources of one name would share ids
        if s.name in names:
            raise _same_stem_error(Path(names[s.name].path or s.name), Path(s.path or s.name), "source images")
        names[s.name] = s
    all_patches: list[Patch] = []
    for s in sources:
        if s.image.shape[2] != cfg.channels:
            raise DataError(f"{s.path or s.name}: has {s.image.shape[2]} channels, the data YAML says {cfg.channels}")
        all_patches += cut_patches(s, patch_size)
    if not any(s.role == "train" for s in sources):
        raise PatchingError(
            f"every source image was held out for testing (its patches feed tiers.test_extra only), so no tier can "
            f"be drawn: keep at least one image for training (lower source.test_image_fraction or set "
            f"tiers.test_extra: 0) or add images"
        )
    notes = _absent_class_notes(cfg, sources)
    for note in notes:  # at once: it may explain an error below
        warnings.warn(note, stacklevel=2)
    kept = filter_patches(all_patches, k, max_majority_fraction)
    if not kept:
        raise PatchingError(_no_patch_left_message(cfg, sources, all_patches, max_majority_fraction))
    train_ids = [p.id for p in kept if p.role == "train"]
    test_ids = [p.id for p in kept if p.role == "test"]
    plan = assign_tiers(train_ids, test_ids, cfg.tiers, seed)
    test_classes = np.zeros(k, bool)
    by_id = {p.id: p for p in all_patches}
    for e in plan["test"]:
        test_classes |= np.bincount(by_id[e["id"]].mask_hq.ravel(), minlength=k)[:k] > 0
    in_masks = _class_counts(sources, k) > 0
    untested = [cfg.palette.names[i] for i in range(k) if in_masks[i] and not test_classes[i]]
    if untested:
        notes.append(f"class(es) {untested} appear in no test patch ({len(plan['test'])} test patches): their "
                     "per-class Missing Class IoU cannot be measured and stays blank (n/a) in metrics.csv; hold out "
                     "more test patches (tiers.test_main / tiers.test_extra) or images holding them")
        warnings.warn(notes[-1], stacklevel=2)
    used = {e["id"] for t in plan["tiers"].values() for sp in t.values() for e in sp} | {e["id"] for e in plan["test"]}
    needs_lq = {e["id"] for t in plan["tiers"].values() for sp in t.values() for e in sp if e["mask"] == "lq"}
    records = write_patch_files(out_dir, all_patches, used, needs_lq, k, progress=progress)
    return write_manifest(out_dir, cfg, patch_size, seed, max_majority_fraction, sources, records, plan, notes)
