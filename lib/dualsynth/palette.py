"""Class palettes: class names, RGB mask colours and mask-channel grey levels.

A palette is the single description of a dataset's classes.  Masks are kept as
``uint8`` class-index arrays inside the project; the palette converts between
that and the two encodings people store masks in:

* RGB colour masks (one colour per class), and
* grey-level masks (one grey level per class) -- the form the mask takes as the
  extra channel of a dual image.

No TensorFlow here: this module must stay fast to import and test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Palette", "PaletteError", "NDFEB_PALETTE", "evenly_spaced_grey_levels"]


class PaletteError(ValueError):
    """A mask holds values that the palette does not know, or a palette is inconsistent."""


def evenly_spaced_grey_levels(num_classes: int) -> tuple[int, ...]:
    """Grey levels 0 … 255 evenly spaced, one per class (index order)."""
    if num_classes < 2:
        raise PaletteError(f"a palette needs at least 2 classes, got {num_classes}")
    return tuple(int(round(i * 255 / (num_classes - 1))) for i in range(num_classes))


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def _whole(v: Any) -> bool:
    """An integer (also a NumPy integer or a whole float such as 255.0), not a bool or a text."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    return float(v).is_integer()


@dataclass(frozen=True)
class Palette:
    """Names, RGB colours and grey levels of the classes; index = position."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    grey_levels: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.names)
        if k < 2:
            raise PaletteError(f"a palette needs at least 2 classes, got {k}: {self.names}")
        if len(set(self.names)) != k:
            raise PaletteError(f"class names must be unique, got {self.names}")
        if len(self.colors) != k or len(self.grey_levels) != k:
            raise PaletteError(
                f"palette has {k} names but {len(self.colors)} colours and "
                f"{len(self.grey_levels)} grey levels"
            )
        for c in self.colors:
            if len(c) != 3 or any(not (0 <= int(v) <= 255) for v in c):
                raise PaletteError(f"colour {c} is not an RGB triple in 0..255")
        if len(set(map(tuple, self.colors))) != k:
            raise PaletteError(f"class colours must be distinct, got {self.colors}")
        g = list(self.grey_levels)
        if any(not (0 <= v <= 255) for v in g):
            raise PaletteError(f"grey levels must lie in 0..255, got {g}")
        if len(set(g)) != k:
            raise PaletteError(f"grey levels must be distinct, got {g}")

    # ------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def colors_array(self) -> np.ndarray:
        return np.asarray(self.colors, dtype=np.uint8)

    @property
    def grey_array(self) -> np.ndarray:
        return np.asarray(self.grey_levels, dtype=np.uint8)

    @property
    def grey_unit(self) -> np.ndarray:
        """Grey levels scaled to [0, 1] (the mask channel of a dual image), index order."""
        return self.grey_array.astype(np.float32) / 255.0

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise PaletteError(f"unknown class {name!r}; classes are {list(self.names)}") from None

    # ------------------------------------------------------------ conversions
    def _check_index(self, mask: np.ndarray, source: str | None) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise PaletteError(f"class-index mask{_where(source)} must be 2-D, got shape {mask.shape}")
        if mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
            bad = sorted(set(np.unique(mask).tolist()) - set(range(self.num_classes)))
            raise PaletteError(
                f"mask{_where(source)} holds class indices {bad[:10]} outside 0..{self.num_classes - 1} "
                f"(classes: {list(self.names)})"
            )
        return mask.astype(np.uint8, copy=False)

    def index_to_rgb(self, mask: np.ndarray) -> np.ndarray:
        """Class-index mask (H, W) → RGB colour mask (H, W, 3) uint8."""
        return self.colors_array[self._check_index(mask, None)]

    def index_to_grey(self, mask: np.ndarray) -> np.ndarray:
        """Class-index mask (H, W) → grey-level mask (H, W) uint8."""
        return self.grey_array[self._check_index(mask, None)]

    def rgb_to_index(self, rgb: np.ndarray, source: str | None = None) -> np.ndarray:
        """RGB colour mask (H, W, 3) → class-index mask; unknown colours are an error."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise PaletteError(f"RGB mask{_where(source)} must be (H, W, 3), got shape {rgb.shape}")
        rgb = rgb[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in self.colors], dtype=np.int64)
        order = np.argsort(keys)
        pos = np.searchsorted(keys[order], code)
        pos = np.clip(pos, 0, len(keys) - 1)
        ok = keys[order][pos] == code
        if not ok.all():
            bad = np.unique(code[~ok])[:5]
            cols = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad]
            raise PaletteError(
                f"mask{_where(source)} has {int((~ok).sum())} pixels with colours not in the palette, "
                f"e.g. {cols}; palette colours are {dict(zip(self.names, self.colors))}"
            )
        return order[pos].astype(np.uint8)

    def grey_to_index(self, grey: np.ndarray, source: str | None = None, tolerance: int = 0) -> np.ndarray:
        """Grey-level mask (H, W) → class-index mask.

        ``tolerance`` accepts values within ±tolerance of a palette level (for
        masks saved with lossy compression); anything else is an error.
        """
        grey = np.asarray(grey)
        if grey.ndim != 2:
            raise PaletteError(f"grey mask{_where(source)} must be 2-D, got shape {grey.shape}")
        levels = self.grey_array.astype(np.int64)
        dist = np.abs(grey.astype(np.int64)[..., None] - levels[None, None, :])
        idx = dist.argmin(axis=-1)
        ok = np.take_along_axis(dist, idx[..., None], axis=-1)[..., 0] <= tolerance
        if not ok.all():
            bad = np.unique(grey[~ok])[:10].tolist()
            raise PaletteError(
                f"mask{_where(source)} has {int((~ok).sum())} pixels with grey levels not in the palette, "
                f"e.g. {bad}; palette grey levels are {dict(zip(self.names, self.grey_levels))}"
            )
        return idx.astype(np.uint8)

    def to_index(self, mask: np.ndarray, encoding: str = "auto", source: str | None = None) -> np.ndarray:
        """Convert a mask in any supported encoding to class indices.

        ``encoding``: ``index`` (values are class ids), ``grey`` (palette grey
        levels), ``rgb`` (palette colours) or ``auto`` (RGB if 3-D, else index
        when all values are valid ids, else grey levels).
        """
        mask = np.asarray(mask)
        if encoding == "auto":
            if mask.ndim == 3:
                rgb = mask[..., :3]
                if rgb.shape[2] == 3 and not (
                    np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
                ):
                    return self.rgb_to_index(rgb, source)
                if rgb.shape[2] == 3:
                    try:  # achromatic class colours (e.g. a class drawn grey) are still palette colours
                        return self.rgb_to_index(rgb, source)
                    except PaletteError:
                        pass
                mask = rgb[..., 0]  # grey stored as RGB(A) with equal channels
            if mask.ndim == 2 and mask.size and mask.max() < self.num_classes and mask.min() >= 0:
                return mask.astype(np.uint8)
            return self.grey_to_index(mask, source)
        if encoding in ("index", "grey") and mask.ndim == 3:
            rgb = mask[..., :3]
            if rgb.shape[2] == 3 and not (
                np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
            ):
                raise PaletteError(
                    f"mask{_where(source)} is a colour (RGB) image, but mask_encoding is {encoding!r}, which reads "
                    f"one channel only: use mask_encoding: rgb (or auto) for masks drawn in the palette colours "
                    f"{dict(zip(self.names, self.colors))}"
                )
            mask = mask[..., 0]
        if encoding == "index":
            return self._check_index(mask, source)
        if encoding == "grey":
            return self.grey_to_index(mask, source)
        if encoding == "rgb":
            return self.rgb_to_index(mask, source)
        raise PaletteError(f"unknown mask encoding {encoding!r}{_where(source)}; use index, grey, rgb or auto")

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "color": [int(v) for v in c], "grey": int(g)}
            for n, c, g in zip(self.names, self.colors, self.grey_levels)
        ]

    @classmethod
    def from_dict(cls, classes: Sequence[Mapping[str, Any]], source: str | None = None) -> "Palette":
        """Build from a list of ``{name, color, grey}`` entries (grey optional: evenly spaced)."""
        if not isinstance(classes, Sequence) or isinstance(classes, (str, bytes)) or len(classes) < 2:
            raise PaletteError(f"'classes'{_where(source)} must be a list of at least 2 entries")
        names, colors, greys = [], [], []
        default_greys = evenly_spaced_grey_levels(len(classes))
        for i, entry in enumerate(classes):
            if not isinstance(entry, Mapping) or "name" not in entry or "color" not in entry:
                raise PaletteError(
                    f"class #{i}{_where(source)} must have 'name' and 'color' (and optionally 'grey'), got {entry!r}"
                )
            unknown = set(entry) - {"name", "color", "grey"}
            if unknown:
                raise PaletteError(f"class #{i}{_where(source)} has unknown keys {sorted(unknown)}")
            name = entry["name"]
            if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) == "":
                raise PaletteError(f"classes[{i}].name{_where(source)} must be a non-empty text, got {name!r}")
            where = f"classes[{i}] ({name!r}){_where(source)}"
            color = entry["color"]
            if (not isinstance(color, Sequence) or isinstance(color, (str, bytes)) or len(color) != 3
                    or not all(_whole(v) and 0 <= v <= 255 for v in color)):
                raise PaletteError(f"{where}: color must be [R, G, B] with integers 0..255, got {color!r}")
            grey = entry.get("grey", default_greys[i])
            if not (_whole(grey) and 0 <= grey <= 255):
                raise PaletteError(f"{where}: grey must be an integer 0..255 (the class's mask grey level), "
                                   f"got {grey!r}")
            names.append(str(name))
            colors.append(tuple(int(v) for v in color))
            greys.append(int(grey))
        return cls(tuple(names), tuple(colors), tuple(greys))

    @classmethod
    def from_names(cls, names: Iterable[str], colors: Sequence[Sequence[int]]) -> "Palette":
        names = tuple(names)
        return cls(names, tuple(tuple(int(v) for v in c) for c in colors), evenly_spaced_grey_levels(len(names)))


#: The embedded default (paper): matrix black; Eta grey, oxide light grey, Nd-rich white
#: in the mask channel; RGB mask colours matrix black and the three phases red, green, blue.
NDFEB_PALETTE = Palette(
    names=("matrix", "eta", "oxide", "nd_rich"),
    colors=((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)),
    grey_levels=(0, 85, 170, 255),
)
