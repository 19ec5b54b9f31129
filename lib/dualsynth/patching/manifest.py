"""``patches/manifest.json``: writing the patch files and the manifest, and :class:`Manifest` to read them back.

The manifest records every patch (position, class fractions, LQ error, why it was dropped, its files if used), every
source image (its size, and its size before ``source.scale`` resampled it), the tiers, the test set and the data
YAML.  The old manifest is removed before patch files are rewritten and the new one is written last, atomically,
so a manifest never points at a mix of old and new files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..config import DataConfig
from ..io import DataError, atomic_write_json, read_image, read_json, read_mask, write_png
from ..palette import Palette
from .patches import Patch, class_fractions
from .sources import SourceImage

__all__ = ["MANIFEST_FORMAT", "Manifest", "write_patch_files", "source_records", "write_manifest"]

MANIFEST_FORMAT = 1


# --------------------------------------------------------------------------- writing
def write_patch_files(out_dir: Path, patches: Sequence[Patch], used: set[str], needs_lq: set[str], num_classes: int,
                      progress: bool = False) -> dict[str, dict[str, Any]]:
    """Write the used patches' image and mask PNGs; return every patch's manifest record (after removing an older
    ``manifest.json``, which must not point at a mix of old and new files while they are rewritten)."""
    (out_dir / "manifest.json").unlink(missing_ok=True)
    records: dict[str, dict[str, Any]] = {}
    iterator: Iterable[Patch] = patches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(patches, desc="writing patches", unit="patch")
    for p in iterator:
        rec: dict[str, Any] = {
            "source": p.source, "role": p.role, "row": p.row, "col": p.col, "y": p.y, "x": p.x,
            "fractions_hq": [round(float(v), 6) for v in class_fractions(p.mask_hq, num_classes)],
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
    return records


def source_records(sources: Sequence[SourceImage], num_classes: int) -> list[dict[str, Any]]:
    """One manifest record per source image: name, role, path, size (and size before scaling), class fractions."""
    out = []
    for s in sources:
        r: dict[str, Any] = {"name": s.name, "role": s.role, "path": s.path, "height": int(s.image.shape[0]),
                             "width": int(s.image.shape[1])}
        if s.original_size is not None:
            r["original_height"], r["original_width"] = int(s.original_size[0]), int(s.original_size[1])
        r["fractions_hq"] = [round(float(v), 6) for v in class_fractions(s.mask_hq, num_classes)]
        if s.mask_lq is not None:
            r["lq_error"] = round(float(np.mean(s.mask_lq != s.mask_hq)), 6)
        out.append(r)
    return out


def write_manifest(out_dir: Path, cfg: DataConfig, patch_size: int, seed: int, max_majority_fraction: float,
                   sources: Sequence[SourceImage], records: dict[str, dict[str, Any]], plan: dict[str, Any],
                   notes: list[str]) -> "Manifest":
    """Write ``manifest.json`` atomically (last: the patch files it names are already in place)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "data": cfg.to_dict(),
        "patch_size": int(patch_size),
        "channels": int(cfg.channels),
        "seed": int(seed),
        "max_majority_fraction": float(max_majority_fraction),
        "sources": source_records(sources, cfg.palette.num_classes),
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
