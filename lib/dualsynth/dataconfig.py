"""The data YAML (``params/data/*.yaml``): palette, where the micrographs come from, how many patches each tier gets.

``load_data_config`` reads and validates one into a :class:`DataConfig` (with its :class:`TierSpec`); every
problem is a :class:`~dualsynth.paths.ParamError` naming the file and the key.  Re-exported by
:mod:`dualsynth.config`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .palette import Palette, PaletteError
from .paths import ParamError, load_yaml, resolve_path

__all__ = ["TierSpec", "DataConfig", "load_data_config"]


@dataclass(frozen=True)
class TierSpec:
    """How many patches each tier gets (the paper: SHQ/SLQ 16/5, BLQ/BMQ 48/12, test 7 + 20)."""

    small: tuple[int, int] = (16, 5)
    big: tuple[int, int] = (48, 12)
    test_main: int = 7  # test patches cut from the training image(s) (paper: 7 SHQ test patches)
    test_extra: int = 20  # test patches from held-out images (paper: 20 from other images)

    def __post_init__(self) -> None:
        for name in ("small", "big"):
            v = getattr(self, name)
            if len(v) != 2 or min(v) < 1:
                raise ParamError(f"tiers.{name} must be [train, val] with both ≥ 1, got {list(v)}")
        if sum(self.big) < sum(self.small):
            raise ParamError(f"tiers.big {list(self.big)} must hold at least as many patches as tiers.small {list(self.small)}")
        if self.big[0] < self.small[0] or self.big[1] < self.small[1]:
            raise ParamError("tiers.big train/val must each be ≥ tiers.small train/val (the small set is part of the big one)")
        if self.test_main < 0 or self.test_extra < 0 or self.test_main + self.test_extra < 1:
            raise ParamError("tiers.test_main + tiers.test_extra must be ≥ 1 (test images are needed)")


_SOURCE_KINDS = {
    "generated": {"kind", "generator", "seed", "width", "height", "grain_diameter_px", "scale_with_patch", "extra_test_seed"},
    "pairs": {"kind", "images", "masks", "masks_lq", "mask_encoding", "glob", "test_image_fraction", "lq_masks",
              "scale"},
}
_DATA_KEYS = {"name", "description", "modality", "channels", "classes", "source", "tiers", "citation", "license"}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, (float, np.floating)) and np.isfinite(v))


#: The type of each source value, with what a good value is: (check, hint)
_SOURCE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "generator": (lambda v: isinstance(v, str), "a generator name (ndfeb)"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    "extra_test_seed": (lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    "width": (lambda v: _is_int(v) and v >= 8, "an integer number of pixels ≥ 8"),
    "height": (lambda v: _is_int(v) and v >= 8, "an integer number of pixels ≥ 8"),
    "grain_diameter_px": (lambda v: _is_number(v) and v > 0, "a number of pixels > 0"),
    "scale_with_patch": (lambda v: isinstance(v, bool), "true or false"),
    "images": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "masks": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "masks_lq": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "glob": (lambda v: isinstance(v, str) and v != "", "a file pattern such as '*.png'"),
    "mask_encoding": (lambda v: v in ("auto", "index", "grey", "rgb"), "auto, index, grey or rgb"),
    "test_image_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1), e.g. 0.25"),
    # images resampled by area averaging, masks by nearest neighbour before patching (patching.scaling)
    "scale": (lambda v: _is_number(v) and 0 < v <= 1,
              "a factor in (0, 1], e.g. 0.5 to halve width and height (images are only scaled down)"),
}


def _check_data_types(path: Path, raw: Mapping[str, Any], source: Mapping[str, Any], tiers: Mapping[str, Any]) -> None:
    """Name the file and the key of a value of the wrong type (a bare TypeError/ValueError names neither)."""
    for key, v in source.items():
        if key in _SOURCE_TYPES and not _SOURCE_TYPES[key][0](v):
            raise ParamError(f"{path}: source.{key} must be {_SOURCE_TYPES[key][1]}, got {v!r}")
    for key in ("small", "big"):
        if key in tiers:
            v = tiers[key]
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)):
                raise ParamError(f"{path}: tiers.{key} must be [train, val], two integers ≥ 1 (e.g. [16, 5]), "
                                 f"got {v!r}")
    for key in ("test_main", "test_extra"):
        if key in tiers and not (_is_int(tiers[key]) and tiers[key] >= 0):
            raise ParamError(f"{path}: tiers.{key} must be an integer ≥ 0, got {tiers[key]!r}")
    for key in ("name", "description"):
        if key in raw and not (isinstance(raw[key], (str, type(None))) or _is_int(raw[key])):
            raise ParamError(f"{path}: {key} must be a text, got {raw[key]!r}")


@dataclass(frozen=True)
class DataConfig:
    name: str
    channels: int
    palette: Palette
    source: dict[str, Any]
    tiers: TierSpec = field(default_factory=TierSpec)
    description: str = ""
    path: Path | None = None

    @property
    def kind(self) -> str:
        return str(self.source["kind"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "channels": self.channels,
            "classes": self.palette.to_dict(),
            "source": self.source,
            "tiers": {"small": list(self.tiers.small), "big": list(self.tiers.big),
                      "test_main": self.tiers.test_main, "test_extra": self.tiers.test_extra},
            "path": str(self.path) if self.path else None,
        }


def load_data_config(path: str | os.PathLike) -> DataConfig:
    """Read and validate a data YAML (``params/data/*.yaml``); relative data paths are taken from the project root."""
    path = resolve_path(path)
    raw = load_yaml(path)
    unknown = set(raw) - _DATA_KEYS
    if unknown:
        raise ParamError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_DATA_KEYS)}")
    for key in ("name", "channels", "classes", "source"):
        if key not in raw:
            raise ParamError(f"{path}: missing required key {key!r}")
    channels = raw["channels"]
    if not _is_int(channels) or channels not in (1, 3):
        raise ParamError(f"{path}: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    try:
        palette = Palette.from_dict(raw["classes"], source=str(path))
    except PaletteError as e:
        raise ParamError(str(e)) from e
    for key in ("source", "tiers"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ParamError(f"{path}: {key} must be a mapping of keys to values, got {raw[key]!r}")
    source = dict(raw["source"] or {})
    kind = source.get("kind")
    if kind not in _SOURCE_KINDS:
        raise ParamError(f"{path}: source.kind must be one of {sorted(_SOURCE_KINDS)}, got {kind!r}")
    bad = set(source) - _SOURCE_KINDS[kind]
    if "scale" in bad:
        raise ParamError(f"{path}: source.scale applies to source kind 'pairs' only; the generated default is drawn "
                         f"at the size you ask for (source.width, source.height, source.grain_diameter_px)")
    if bad:
        raise ParamError(f"{path}: source keys {sorted(bad)} are not known for kind {kind!r}; allowed: {sorted(_SOURCE_KINDS[kind])}")
    lq = source.get("lq_masks", "degrade")
    if kind != "generated" and lq not in ("degrade", "hq", "folder"):
        raise ParamError(f"{path}: source.lq_masks must be degrade, hq or folder, got {lq!r}")
    tiers_raw = dict(raw.get("tiers") or {})
    bad = set(tiers_raw) - {"small", "big", "test_main", "test_extra"}
    if bad:
        raise ParamError(f"{path}: unknown tiers keys {sorted(bad)}")
    _check_data_types(path, raw, source, tiers_raw)
    missing = sorted({"images", "masks"} - set(source)) if kind == "pairs" else []
    if missing:
        raise ParamError(f"{path}: source of kind 'pairs' needs {' and '.join(f'source.{k}' for k in missing)} "
                         "(folders of images and of their masks, paired by file name)")
    try:
        tiers = TierSpec(
            small=tuple(tiers_raw.get("small", (16, 5))),
            big=tuple(tiers_raw.get("big", (48, 12))),
            test_main=int(tiers_raw.get("test_main", 7)),
            test_extra=int(tiers_raw.get("test_extra", 20)),
        )
    except ParamError as e:
        raise ParamError(f"{path}: {e}") from e
    return DataConfig(
        name=str(raw["name"]),
        channels=int(channels),
        palette=palette,
        source=source,
        tiers=tiers,
        description=str(raw.get("description", "")),
        path=path,
    )
