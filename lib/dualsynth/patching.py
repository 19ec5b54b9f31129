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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .config import DataConfig, ParamError, resolve_path
from .io import IMAGE_SUFFIXES, DataError, atomic_write_json, read_image, read_json, read_mask, write_png
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
def _list_images(folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no images matching {pattern!r} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return files


def _find_mask(mask_dir: Path, stem: str, image_path: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        cand = mask_dir / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    raise DataError(f"{image_path}: no mask named {stem}.* in {mask_dir}")


def load_sources(cfg: DataConfig, patch_size: int, seed: int, progress: bool = False) -> list[SourceImage]:
    """Read or generate the large images a data YAML describes, with HQ and LQ masks."""
    src = cfg.source
    kind = cfg.kind
    root = resolve_path(".")  # data paths in a data YAML are relative to the project root
    if kind == "generated":
        from . import microstructure

        if src.get("generator", "ndfeb") != "ndfeb":
            raise ParamError(f"{cfg.path}: unknown generator {src.get('generator')!r}; only 'ndfeb' exists")
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
    lq_dir = resolve_path(src["masks_lq"], base=root) if lq_mode == "folder" else None
    if lq_mode == "folder" and lq_dir is None:
        raise ParamError(f"{cfg.path}: lq_masks: folder needs source.masks_lq")
    frac = float(src.get("test_image_fraction", 0.25))
    if not (0.0 <= frac < 1.0):
        raise ParamError(f"{cfg.path}: source.test_image_fraction must be in [0, 1), got {frac}")
    rng = np.random.default_rng(seed)
    n_test = int(round(frac * len(files))) if cfg.tiers.test_extra else 0
    if cfg.tiers.test_extra and n_test == 0:
        n_test = 1
    test_set = set(rng.choice(len(files), size=n_test, replace=False).tolist()) if n_test else set()
    encoding = src.get("mask_encoding", "auto")
    sources = []
    iterator: Iterable = enumerate(files)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(list(iterator), desc=f"reading {cfg.name}", unit="image")
    for i, f in iterator:
        img = read_image(f, channels=cfg.channels)
        m = read_mask(_find_mask(mask_dir, f.stem, f), cfg.palette, encoding)
        if m.shape != img.shape[:2]:
            raise DataError(
                f"{f}: image is {img.shape[1]}×{img.shape[0]} (W×H) but mask "
                f"{_find_mask(mask_dir, f.stem, f)} is {m.shape[1]}×{m.shape[0]}; they must match"
            )
        if lq_mode == "folder":
            lq = read_mask(_find_mask(lq_dir, f.stem, f), cfg.palette, encoding)
        elif lq_mode == "degrade":
            from .microstructure import degrade_mask

            lq = degrade_mask(m, seed=seed * 7919 + i, num_classes=cfg.palette.num_classes)
        else:
            lq = m.copy()
        sources.append(SourceImage(f.stem, img, m, lq, "test" if i in test_set else "train", str(f)))
    return sources


# --------------------------------------------------------------------------- the whole recipe
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
    all_patches: list[Patch] = []
    for s in sources:
        if s.image.shape[2] != cfg.channels:
            raise DataError(f"{s.path or s.name}: has {s.image.shape[2]} channels, the data YAML says {cfg.channels}")
        all_patches += cut_patches(s, patch_size)
    kept = filter_patches(all_patches, k, max_majority_fraction)
    if not kept:
        raise PatchingError(
            f"no patch left after filtering: all {len(all_patches)} patches have one class covering more than "
            f"{max_majority_fraction:.1%}; raise max_majority_fraction or check the masks"
        )
    train_ids = [p.id for p in kept if p.role == "train"]
    test_ids = [p.id for p in kept if p.role == "test"]
    plan = assign_tiers(train_ids, test_ids, cfg.tiers, seed)
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
