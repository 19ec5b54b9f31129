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
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .config import DataConfig, ParamError, resolve_path
from .io import IMAGE_SUFFIXES, DataError, atomic_write_json, fingerprint, read_image, read_json, read_mask, write_png
from .palette import Palette

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

TIERS = ("SHQ", "SLQ", "BLQ", "BMQ")
MANIFEST_FORMAT = 1


class PatchingError(DataError):
    """The data cannot be cut into the requested patches/tiers."""


# --------------------------------------------------------------------------- sources
@dataclass
class SourceImage:
    """One large micrograph with its HQ mask (and LQ mask, if any)."""

    name: str
    image: np.ndarray  # uint8 (H, W, C)
    mask_hq: np.ndarray  # uint8 (H, W) class index
    mask_lq: np.ndarray | None = None
    role: str = "train"  # "train": patches feed tiers and test_main; "test": patches feed test_extra only
    path: str | None = None

    def __post_init__(self) -> None:
        where = self.path or self.name
        if self.image.ndim != 3:
            raise DataError(f"{where}: image must be (H, W, C), got {self.image.shape}")
        if self.image.shape[:2] != self.mask_hq.shape:
            raise DataError(
                f"{where}: image is {self.image.shape[1]}×{self.image.shape[0]} (W×H) but its mask is "
                f"{self.mask_hq.shape[1]}×{self.mask_hq.shape[0]}; image and mask must have the same size"
            )
        if self.mask_lq is not None and self.mask_lq.shape != self.mask_hq.shape:
            raise DataError(f"{where}: LQ mask {self.mask_lq.shape} and HQ mask {self.mask_hq.shape} differ in size")
        if self.role not in ("train", "test"):
            raise DataError(f"{where}: role must be train or test, got {self.role!r}")


@dataclass
class Patch:
    id: str
    source: str
    row: int
    col: int
    y: int
    x: int
    image: np.ndarray
    mask_hq: np.ndarray
    mask_lq: np.ndarray | None
    role: str = "train"
    drop_reason: str | None = None


def class_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, mask.size)


def grid_positions(height: int, width: int, patch_size: int, source: str = "image") -> list[tuple[int, int, int, int]]:
    """Non-overlapping grid, anchored top-left: ``(row, col, y, x)`` for each patch.

    A 2752 × 2208 image at 256 px gives 10 × 8 = 80 patches (the right and
    bottom remainders are not used).
    """
    if patch_size < 8:
        raise ParamError(f"patch_size={patch_size}: must be at least 8 (and divisible by 4 for the VQ-VAE)")
    if height < patch_size or width < patch_size:
        raise PatchingError(
            f"{source}: image is {width}×{height} px (W×H), smaller than one {patch_size}×{patch_size} patch; "
            f"use a smaller patch_size or a larger image"
        )
    rows, cols = height // patch_size, width // patch_size
    return [(r, c, r * patch_size, c * patch_size) for r in range(rows) for c in range(cols)]


def cut_patches(src: SourceImage, patch_size: int) -> list[Patch]:
    out = []
    for r, c, y, x in grid_positions(*src.mask_hq.shape, patch_size, source=src.path or src.name):
        sl = (slice(y, y + patch_size), slice(x, x + patch_size))
        out.append(
            Patch(
                id=f"{src.name}_r{r:02d}_c{c:02d}",
                source=src.name,
                row=r,
                col=c,
                y=y,
                x=x,
                image=src.image[sl],
                mask_hq=src.mask_hq[sl],
                mask_lq=None if src.mask_lq is None else src.mask_lq[sl],
                role=src.role,
            )
        )
    return out


def filter_patches(patches: Sequence[Patch], num_classes: int, max_majority_fraction: float = 0.995) -> list[Patch]:
    """Mark patches whose most frequent class covers more than ``max_majority_fraction`` as dropped.

    (The paper dropped patches holding only the matrix phase.)  Returns the kept patches.
    """
    if not (0.0 < max_majority_fraction <= 1.0):
        raise ParamError(f"max_majority_fraction={max_majority_fraction}: must be in (0, 1]")
    kept = []
    for p in patches:
        frac = class_fractions(p.mask_hq, num_classes)
        if frac.max() > max_majority_fraction or (max_majority_fraction == 1.0 and frac.max() >= 1.0):
            p.drop_reason = f"majority class covers {frac.max():.1%} > {max_majority_fraction:.1%}"
        else:
            kept.append(p)
    return kept


def assign_tiers(train_ids: Sequence[str], test_ids: Sequence[str], spec, seed: int) -> dict[str, Any]:
    """Draw test patches and the small/big sets; return tiers, test and unused ids.

    ``train_ids``: kept patches of training images; ``test_ids``: kept patches
    of held-out images.  Deterministic given ``seed`` and the id order.
    """
    rng = np.random.default_rng(seed)
    pool = [train_ids[i] for i in rng.permutation(len(train_ids))]
    n_small, n_big = sum(spec.small), sum(spec.big)
    need = spec.test_main + n_big
    if len(pool) < need:
        raise PatchingError(
            f"tiers need {need} patches from the training image(s) ({spec.test_main} test + BLQ/BMQ "
            f"{spec.big[0]} train + {spec.big[1]} val), but only {len(pool)} patches are left after filtering; "
            f"lower tiers.big/tiers.small/tiers.test_main in the data YAML, use a smaller patch_size, or add images"
        )
    if len(test_ids) < spec.test_extra:
        raise PatchingError(
            f"tiers.test_extra={spec.test_extra} but the held-out images give only {len(test_ids)} patches "
            f"after filtering; lower tiers.test_extra or hold out more images"
        )
    test_main = pool[: spec.test_main]
    small = pool[spec.test_main : spec.test_main + n_small]
    rest = pool[spec.test_main + n_small : spec.test_main + n_big]
    unused = pool[spec.test_main + n_big :]
    small_train, small_val = small[: spec.small[0]], small[spec.small[0] :]
    extra_train = spec.big[0] - spec.small[0]
    big_train = small_train + rest[:extra_train]
    big_val = small_val + rest[extra_train:]
    test_extra = [test_ids[i] for i in sorted(rng.choice(len(test_ids), size=spec.test_extra, replace=False))] if spec.test_extra else []
    small_set = set(small)

    def entries(ids: Iterable[str], mask_of) -> list[dict[str, str]]:
        return [{"id": i, "mask": mask_of(i)} for i in ids]

    tiers = {
        "SHQ": {"train": entries(small_train, lambda i: "hq"), "val": entries(small_val, lambda i: "hq")},
        "SLQ": {"train": entries(small_train, lambda i: "lq"), "val": entries(small_val, lambda i: "lq")},
        "BLQ": {"train": entries(big_train, lambda i: "lq"), "val": entries(big_val, lambda i: "lq")},
        "BMQ": {
            "train": entries(big_train, lambda i: "hq" if i in small_set else "lq"),
            "val": entries(big_val, lambda i: "hq" if i in small_set else "lq"),
        },
    }
    test = entries(test_main + test_extra, lambda i: "hq")
    chosen = set(test_extra)
    unused += [i for i in test_ids if i not in chosen]
    return {"tiers": tiers, "test": test, "unused": unused}


# --------------------------------------------------------------------------- loading sources
def _is_image_file(p: Path) -> bool:
    # hidden files are not data: macOS resource forks (._img00.png), editors' and our own temporary files
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()


def _same_stem_error(a: Path, b: Path, what: str) -> DataError:
    return DataError(
        f"{a} and {b} are two {what} with the same name {a.stem!r}: images are paired with their masks and patches "
        f"are named by the file name without its type, so one would be taken for the other (a patch of one in "
        f"training, of the other in test). Rename or remove one of them"
    )


def _list_images(folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.glob(pattern) if _is_image_file(p))
    if not files:
        raise DataError(f"{folder}: no images matching {pattern!r} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise _same_stem_error(seen[f.stem], f, "images")
        seen[f.stem] = f
    return files


def _mask_index(mask_dir: Path) -> dict[str, list[Path]]:
    """The mask files of a folder by name without type (``img00`` → ``[…/img00.png]``)."""
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder not found")
    out: dict[str, list[Path]] = {}
    for p in sorted(mask_dir.iterdir()):
        if _is_image_file(p):
            out.setdefault(p.stem, []).append(p)
    return out


def _find_mask(masks: dict[str, list[Path]], mask_dir: Path, stem: str, image_path: Path) -> Path:
    found = masks.get(stem, [])
    if len(found) > 1:
        raise _same_stem_error(found[0], found[1], "masks")
    if not found:
        raise DataError(f"{image_path}: no mask named {stem}.* in {mask_dir}")
    return found[0]


#: Above this factor over the paper's scale (256 px patches) the generated default warns: its image grows with the
#: square of patch_size (scale_with_patch), for the same microstructure at a finer resolution.
GENERATED_SCALE_WARN = 2.0


def patch_size_warning(cfg: DataConfig, patch_size: int) -> str | None:
    """Why ``patch_size`` is far larger than the data warrants, or None (checked before anything is generated)."""
    src = cfg.source
    if cfg.kind != "generated" or not src.get("scale_with_patch", True):
        return None
    scale = patch_size / 256
    if scale <= GENERATED_SCALE_WARN:
        return None
    width, height = int(round(src.get("width", 2752) * scale)), int(round(src.get("height", 2208) * scale))
    return (f"patch_size={patch_size} makes the generated image {width}×{height} px ({scale ** 2:.0f}× the pixels of "
            f"the paper's scale, 256 px patches; data YAML {cfg.path or cfg.name}, scale_with_patch: true): the same "
            f"microstructure at a finer resolution, no more patches, but generating it takes minutes and every later "
            f"stage works on {scale ** 2:.0f}× the pixels. The paper uses patch_size=256, the quick and smoke presets 64")


def load_sources(cfg: DataConfig, patch_size: int, seed: int, progress: bool = False) -> list[SourceImage]:
    """Read or generate the large images a data YAML describes, with HQ and LQ masks."""
    src = cfg.source
    kind = cfg.kind
    root = resolve_path(".")  # data paths in a data YAML are relative to the project root
    if kind == "generated":
        from . import microstructure

        if src.get("generator", "ndfeb") != "ndfeb":
            raise ParamError(f"{cfg.path}: unknown generator {src.get('generator')!r}; only 'ndfeb' exists")
        warning = patch_size_warning(cfg, patch_size)
        if warning:
            warnings.warn(warning, stacklevel=2)
        scale = patch_size / 256 if src.get("scale_with_patch", True) else 1.0
        width = int(round(src.get("width", 2752) * scale))
        height = int(round(src.get("height", 2208) * scale))
        kw = {"width": width, "height": height}
        if "grain_diameter_px" in src:
            kw["grain_diameter_px"] = float(src["grain_diameter_px"]) * scale
        elif scale != 1.0:
            kw["grain_diameter_px"] = microstructure.NdFeBParams().grain_diameter_px * scale
        gseed = int(src.get("seed", 0)) + seed
        main = microstructure.generate_ndfeb(seed=gseed, **kw)
        sources = [SourceImage("main", main.image, main.mask_hq, main.mask_lq, "train", f"generated ndfeb seed {gseed}")]
        n_extra = cfg.tiers.test_extra
        if n_extra:
            # further images "of the same magnet type": just big enough for the extra test patches
            cols = int(np.ceil(np.sqrt(n_extra * 1.5)))
            rows = int(np.ceil(n_extra * 1.5 / cols))
            eseed = int(src.get("extra_test_seed", 1000)) + seed
            extra = microstructure.generate_ndfeb(
                seed=eseed, **{**kw, "width": cols * patch_size + patch_size // 3, "height": rows * patch_size + patch_size // 3}
            )
            sources.append(SourceImage("extra", extra.image, extra.mask_hq, None, "test", f"generated ndfeb seed {eseed}"))
        return sources

    # real data: folders of image/mask pairs, each image cut into patches
    image_dir = resolve_path(src["images"], base=root)
    mask_dir = resolve_path(src["masks"], base=root)
    files = _list_images(image_dir, src.get("glob", "*"))
    lq_mode = src.get("lq_masks", "degrade")
    if lq_mode == "folder" and not src.get("masks_lq"):
        raise ParamError(f"{cfg.path}: lq_masks: folder needs source.masks_lq")
    lq_dir = resolve_path(src["masks_lq"], base=root) if lq_mode == "folder" else None
    frac = src.get("test_image_fraction", 0.25)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not (0.0 <= frac < 1.0):
        raise ParamError(f"{cfg.path}: source.test_image_fraction must be a fraction in [0, 1), got {frac!r}")
    rng = np.random.default_rng(seed)
    n_test = int(round(frac * len(files))) if cfg.tiers.test_extra else 0
    if cfg.tiers.test_extra and n_test == 0:
        n_test = 1
    if n_test >= len(files):
        raise PatchingError(
            f"{cfg.path}: {image_dir} holds {len(files)} image(s), and with tiers.test_extra={cfg.tiers.test_extra} "
            f"and source.test_image_fraction={frac} {n_test} whole image(s) are held out for testing, so none is "
            f"left for training. Add images, lower test_image_fraction, or set tiers.test_extra: 0 (with "
            f"tiers.test_main > 0: test patches are then cut from the training image(s), apart from their tiers)"
        )
    test_set = set(rng.choice(len(files), size=n_test, replace=False).tolist()) if n_test else set()
    encoding = src.get("mask_encoding", "auto")
    masks = _mask_index(mask_dir)
    masks_lq = _mask_index(lq_dir) if lq_dir is not None else {}
    seen: dict[str, Path] = {}  # pixel fingerprint -> file: the same image twice could be in training and test
    sources = []
    iterator: Iterable = enumerate(files)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(list(iterator), desc=f"reading {cfg.name}", unit="image")
    for i, f in iterator:
        img = read_image(f, channels=cfg.channels)
        digest = fingerprint(img)
        if digest in seen:
            raise DataError(f"{seen[digest]} and {f} hold the same image: one copy could be held out for testing "
                            "while the other trains the model. Remove one of them")
        seen[digest] = f
        mask_file = _find_mask(masks, mask_dir, f.stem, f)
        m = read_mask(mask_file, cfg.palette, encoding)
        if m.shape != img.shape[:2]:
            raise DataError(
                f"{f}: image is {img.shape[1]}×{img.shape[0]} (W×H) but mask "
                f"{mask_file} is {m.shape[1]}×{m.shape[0]}; they must match"
            )
        if lq_mode == "folder":
            lq = read_mask(_find_mask(masks_lq, lq_dir, f.stem, f), cfg.palette, encoding)
        elif lq_mode == "degrade":
            from .microstructure import degrade_mask

            lq = degrade_mask(m, seed=seed * 7919 + i, num_classes=cfg.palette.num_classes)
        else:
            lq = m.copy()
        sources.append(SourceImage(f.stem, img, m, lq, "test" if i in test_set else "train", str(f)))
    return sources


# --------------------------------------------------------------------------- the whole recipe
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


def prepare_dataset(
    cfg: DataConfig,
    out_dir: str | os.PathLike,
    patch_size: int = 256,
    seed: int = 0,
    max_majority_fraction: float = 0.995,
    progress: bool = True,
    sources: list[SourceImage] | None = None,
) -> "Manifest":
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

    # an older manifest must not point at a mix of old and new patch files while they are rewritten
    (out_dir / "manifest.json").unlink(missing_ok=True)
    records: dict[str, dict[str, Any]] = {}
    iterator: Iterable[Patch] = all_patches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(all_patches, desc="writing patches", unit="patch")
    for p in iterator:
        rec: dict[str, Any] = {
            "source": p.source, "role": p.role, "row": p.row, "col": p.col, "y": p.y, "x": p.x,
            "fractions_hq": [round(float(v), 6) for v in class_fractions(p.mask_hq, k)],
            "drop_reason": p.drop_reason, "used": p.id in used,
        }
        if p.mask_lq is not None:
            rec["lq_error"] = round(float(np.mean(p.mask_lq != p.mask_hq)), 6)
        if p.id in used:
            rec["image"] = f"images/{p.id}.png"
            rec["mask_hq"] = f"masks/hq/{p.id}.png"
            write_png(out_dir / rec["image"], p.image)
            write_png(out_dir / rec["mask_hq"], p.mask_hq)
            if p.id in needs_lq:
                if p.mask_lq is None:
                    raise DataError(f"patch {p.id}: an LQ mask is needed but its source has none")
                rec["mask_lq"] = f"masks/lq/{p.id}.png"
                write_png(out_dir / rec["mask_lq"], p.mask_lq)
        records[p.id] = rec

    src_records = []
    for s in sources:
        r: dict[str, Any] = {"name": s.name, "role": s.role, "path": s.path, "height": int(s.image.shape[0]),
                             "width": int(s.image.shape[1]),
                             "fractions_hq": [round(float(v), 6) for v in class_fractions(s.mask_hq, k)]}
        if s.mask_lq is not None:
            r["lq_error"] = round(float(np.mean(s.mask_lq != s.mask_hq)), 6)
        src_records.append(r)
    manifest = {
        "format": MANIFEST_FORMAT,
        "data": cfg.to_dict(),
        "patch_size": int(patch_size),
        "channels": int(cfg.channels),
        "seed": int(seed),
        "max_majority_fraction": float(max_majority_fraction),
        "sources": src_records,
        "patches": records,
        "tiers": plan["tiers"],
        "test": plan["test"],
        "unused": plan["unused"],
        "warnings": notes,
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return Manifest(out_dir / "manifest.json", manifest)


# --------------------------------------------------------------------------- reading back
class Manifest:
    """``patches/manifest.json`` and the arrays it points to."""

    def __init__(self, path: str | os.PathLike, data: dict[str, Any] | None = None):
        self.path = Path(path)
        self.root = self.path.parent
        self.data = read_json(self.path) if data is None else data
        if self.data.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{self.path}: manifest format {self.data.get('format')!r}, expected {MANIFEST_FORMAT}; re-run 01_patching")
        self.palette = Palette.from_dict(self.data["data"]["classes"], source=str(self.path))

    @classmethod
    def load(cls, patches_dir: str | os.PathLike) -> "Manifest":
        p = Path(patches_dir)
        p = p / "manifest.json" if p.is_dir() or p.suffix != ".json" else p
        if not p.is_file():
            raise DataError(f"{p}: file not found; run 01_patching for this experiment first")
        return cls(p)

    @property
    def patch_size(self) -> int:
        return int(self.data["patch_size"])

    @property
    def channels(self) -> int:
        return int(self.data["channels"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.palette.names

    def entries(self, tier: str, split: str) -> list[dict[str, str]]:
        if tier == "test" or split == "test":
            return list(self.data["test"])
        if tier not in self.data["tiers"]:
            raise DataError(f"unknown tier {tier!r}; tiers are {list(self.data['tiers'])} and 'test'")
        if split not in ("train", "val"):
            raise DataError(f"unknown split {split!r}; use train, val or test")
        return list(self.data["tiers"][tier][split])

    def files(self, tier: str, split: str) -> list[tuple[Path, Path]]:
        """(image path, mask path) pairs of a tier's split; masks HQ or LQ as the tier says."""
        out = []
        for e in self.entries(tier, split):
            rec = self.data["patches"][e["id"]]
            out.append((self.root / rec["image"], self.root / rec["mask_" + e["mask"]]))
        return out

    def load_arrays(self, tier: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images ``uint8 (N, P, P, C)`` and class-index masks ``uint8 (N, P, P)``."""
        pairs = self.files(tier, split)
        imgs = np.stack([read_image(i, channels=self.channels) for i, _ in pairs]) if pairs else np.zeros((0,))
        masks = np.stack([read_mask(m, self.palette, "index") for _, m in pairs]) if pairs else np.zeros((0,))
        return imgs, masks

    def tier_table(self) -> list[dict[str, Any]]:
        """Rows like the paper's Table 1: tier, train, val, test, masks, HQ share of train+val."""
        rows = []
        n_test = len(self.data["test"])
        for t, d in self.data["tiers"].items():
            tv = d["train"] + d["val"]
            n_hq = sum(e["mask"] == "hq" for e in tv)
            rows.append({"tier": t, "train": len(d["train"]), "val": len(d["val"]), "test": n_test,
                         "hq_masks": n_hq, "lq_masks": len(tv) - n_hq})
        return rows

    def split_fractions(self) -> dict[str, list[float]]:
        """Mean class fractions (HQ masks) per split, like the paper's Table 2."""
        out: dict[str, list[float]] = {}
        groups = {"SHQ train": self.entries("SHQ", "train"), "SHQ val": self.entries("SHQ", "val"),
                  "BMQ train": self.entries("BMQ", "train"), "BMQ val": self.entries("BMQ", "val"),
                  "test": self.data["test"]}
        for name, ents in groups.items():
            fr = np.array([self.data["patches"][e["id"]]["fractions_hq"] for e in ents])
            out[name] = fr.mean(axis=0).round(4).tolist() if len(fr) else []
        return out
