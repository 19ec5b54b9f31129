"""Which real patches the generator (VQ-VAE, and the prior after it) trains and validates on.

By default the generator uses its tier's own train / val split (BMQ: 48 / 12), the split of the segmentation
study.  The paper trained its generator on all BMQ patches with 6 held out (56 / 6 of 62; its 62 include two
matrix-only patches that the study then dropped): ``val_patches = 6`` pools the tier's train and val patches and
holds out that many (a seeded draw) for the generator's validation.  Test patches are never among them.

02 records the split in ``vqvae/summary.json`` (``generator_split``); 03 reads it from there, so the prior's code
maps come from exactly the generator's patches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..io import read_image, read_mask

__all__ = ["GeneratorSplit", "generator_split"]


@dataclass(frozen=True)
class GeneratorSplit:
    """The generator's patches: manifest entries (``{"id", "mask"}``) of its training and validation sets."""

    tier: str
    val_patches: int  # 0: the tier's own split
    train: list[dict[str, str]] = field(default_factory=list)
    val: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "val_patches": self.val_patches, "train": [dict(e) for e in self.train],
                "val": [dict(e) for e in self.val]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorSplit":
        return cls(str(d["tier"]), int(d["val_patches"]), [dict(e) for e in d["train"]], [dict(e) for e in d["val"]])

    @classmethod
    def of_experiment(cls, manifest, vq_summary: Mapping[str, Any]) -> "GeneratorSplit":
        """The split 02 recorded in ``vqvae/summary.json`` (an older summary without one: the tier's own split)."""
        if "generator_split" in vq_summary:
            return cls.from_dict(vq_summary["generator_split"])
        return generator_split(manifest, vq_summary["train_tier"])

    def load(self, manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images ``uint8 (N, P, P, C)`` and class-index masks ``uint8 (N, P, P)`` of ``split`` (train / val), read
        as :meth:`dualsynth.patching.Manifest.load_arrays` reads a tier."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        entries = self.train if split == "train" else self.val
        images, masks = [], []
        for e in entries:
            rec = manifest.data["patches"][e["id"]]
            images.append(read_image(manifest.root / rec["image"], channels=manifest.channels))
            masks.append(read_mask(manifest.root / rec["mask_" + e["mask"]], manifest.palette, "index"))
        return np.stack(images), np.stack(masks)

    def describe(self) -> str:
        how = "its own split" if not self.val_patches else f"train + val pooled, {self.val_patches} held out"
        return f"{self.tier} ({how}): {len(self.train)} train / {len(self.val)} val patches"


def generator_split(manifest, tier: str, val_patches: int = 0, seed: int = 0) -> GeneratorSplit:
    """The generator's train / val patches of ``tier``.

    ``val_patches = 0``: the tier's own split.  ``val_patches = n > 0``: the tier's train and val patches pooled,
    ``n`` of them drawn (``numpy.random.default_rng(seed)``) for validation, the rest for training; both lists keep
    the manifest's order.
    """
    val_patches = int(val_patches)
    train, val = manifest.entries(tier, "train"), manifest.entries(tier, "val")
    if val_patches < 0:
        raise ValueError(f"val_patches must be >= 0 (0: the tier's own split), got {val_patches}")
    if val_patches == 0:
        return GeneratorSplit(tier, 0, train, val)
    pool = train + val
    if val_patches >= len(pool):
        raise ValueError(f"val_patches={val_patches}: the {tier} tier has only {len(pool)} train + val patches; "
                         "hold out fewer")
    held = set(np.random.default_rng(seed).permutation(len(pool))[:val_patches].tolist())
    return GeneratorSplit(tier, val_patches, [e for i, e in enumerate(pool) if i not in held],
                          [e for i, e in enumerate(pool) if i in held])
