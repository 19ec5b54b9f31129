"""The large images a data YAML describes: generated (the embedded default) or read and paired from folders.

Images are paired with their masks by file name without its type (``images/img00.png`` ↔ ``masks/img00.tif``);
hidden files are skipped; two images or masks of one name, or one image twice, are refused.  With
``source.scale`` (kind ``pairs``) each image and its masks are resampled (:mod:`.scaling`) right after reading,
before the LQ masks are made from the HQ ones and before anything is cut.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..config import DataConfig, ParamError, resolve_path
from ..io import IMAGE_SUFFIXES, DataError, fingerprint, read_image, read_mask
from .patches import PatchingError
from .scaling import rescale_image, rescale_mask

__all__ = ["SourceImage", "load_sources", "patch_size_warning", "source_scale", "GENERATED_SCALE_WARN"]


@dataclass
class SourceImage:
    """One large micrograph with its HQ mask (and LQ mask, if any)."""

    name: str
    image: np.ndarray  # uint8 (H, W, C)
    mask_hq: np.ndarray  # uint8 (H, W) class index
    mask_lq: np.ndarray | None = None
    role: str = "train"  # "train": patches feed tiers and test_main; "test": patches feed test_extra only
    path: str | None = None
    original_size: tuple[int, int] | None = None  # (H, W) of the file before source.scale resampled it

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


# --------------------------------------------------------------------------- files and their pairing
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


# --------------------------------------------------------------------------- sizes
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


def source_scale(cfg: DataConfig) -> float:
    """``source.scale`` of a data YAML (1.0 when absent), checked again for a :class:`DataConfig` built in code."""
    if "scale" not in cfg.source:
        return 1.0
    v = cfg.source["scale"]
    where = cfg.path or cfg.name
    if cfg.kind != "pairs":
        raise ParamError(f"{where}: source.scale applies to source kind 'pairs' only; the generated default is drawn "
                         f"at the size you ask for (source.width, source.height, source.grain_diameter_px)")
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (0 < v <= 1):
        raise ParamError(f"{where}: source.scale must be a factor in (0, 1], e.g. 0.5 to halve width and height, "
                         f"got {v!r}")
    return float(v)


def _scaled_source(f: Path, img: np.ndarray, m: np.ndarray, scale: float, patch_size: int,
                   cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image (area averaging) and HQ mask (nearest) resampled by ``scale``; refused if smaller than one patch."""
    h0, w0 = m.shape
    img, m = rescale_image(img, scale), rescale_mask(m, scale)
    if min(m.shape) < patch_size:
        raise PatchingError(
            f"{f}: source.scale {scale} (data YAML {cfg.path or cfg.name}) makes this {w0}×{h0} image "
            f"{m.shape[1]}×{m.shape[0]} px (W×H), smaller than one {patch_size}×{patch_size} patch; raise "
            f"source.scale or use a smaller patch_size")
    return img, m


# --------------------------------------------------------------------------- reading or generating the sources
def load_sources(cfg: DataConfig, patch_size: int, seed: int, progress: bool = False) -> list[SourceImage]:
    """Read or generate the large images a data YAML describes, with HQ and LQ masks."""
    src = cfg.source
    kind = cfg.kind
    root = resolve_path(".")  # data paths in a data YAML are relative to the project root
    resample = source_scale(cfg)  # source.scale (pairs); the generated default's scale is patch_size / 256
    if kind == "generated":
        from .. import microstructure

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
        original = None
        if resample != 1.0:
            original = (int(m.shape[0]), int(m.shape[1]))
            img, m = _scaled_source(f, img, m, resample, patch_size, cfg)
        if lq_mode == "folder":
            lq_file = _find_mask(masks_lq, lq_dir, f.stem, f)
            lq = read_mask(lq_file, cfg.palette, encoding)
            if original is not None:
                if lq.shape != original:
                    raise DataError(f"{lq_file}: LQ mask is {lq.shape[1]}×{lq.shape[0]} (W×H) but image {f} is "
                                    f"{original[1]}×{original[0]}; they must match")
                lq = rescale_mask(lq, resample)
        elif lq_mode == "degrade":
            from ..microstructure import degrade_mask

            lq = degrade_mask(m, seed=seed * 7919 + i, num_classes=cfg.palette.num_classes)
        else:
            lq = m.copy()
        sources.append(SourceImage(f.stem, img, m, lq, "test" if i in test_set else "train", str(f), original))
    return sources
