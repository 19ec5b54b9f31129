"""Reading and writing micrographs and masks, with validation; atomic writes.

Micrographs come as PNG, JPEG or TIFF, 8- or 16-bit, grey, RGB or RGBA.  Inside
the project an image is always ``uint8`` with shape ``(H, W, C)``, C = 1 (grey)
or 3 (RGB).  Masks are returned as ``uint8`` class-index arrays ``(H, W)``
through a :class:`~dualsynth.palette.Palette`.

Every writer here is atomic: it writes a temporary file in the target folder
and renames it over the target, so a reader never sees a half-written file and
a killed run never leaves one behind.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .palette import Palette, PaletteError

__all__ = [
    "DataError",
    "read_image",
    "read_mask",
    "write_png",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "atomic_save_npz",
    "write_csv",
    "write_rows_csv",
    "read_rows_csv",
    "fingerprint",
    "guard_inputs",
    "recorded_inputs",
    "stale_inputs_message",
    "replace_dir",
    "recover_dir",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output folder {path.parent}: {e.strerror or e}") from e
    if not os.access(path.parent, os.W_OK):
        raise DataError(f"output folder {path.parent} is not writable; choose another outputs_dir")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the renamed file should be like any other new file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text: {e})") from e


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed`` to a temporary file, then rename."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return Path(path)


def write_csv(df, path: str | os.PathLike) -> Path:
    """A pandas DataFrame to CSV (no index), atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_rows_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]],
                   int_columns: Sequence[str] = ()) -> Path:
    """Training-history rows (mappings with at least ``columns``) as CSV, atomically.

    ``int_columns`` are written as integers, every other value as ``repr(float)`` (reads back bit-exact).
    """
    ints = set(int_columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([int(r[c]) if c in ints else repr(float(r[c])) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def read_rows_csv(path: str | os.PathLike, columns: Sequence[str], int_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows written by :func:`write_rows_csv`.

    A :class:`DataError` names the file (and the line) if a column is missing, a row is short or a cell is
    not a number.
    """
    path = Path(path)
    ints = set(int_columns)
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(columns) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing history columns {sorted(missing)}; delete the file's folder to start again")
        for r in reader:
            row = {}
            for c in columns:
                cell = r[c]
                if cell is None:
                    raise DataError(f"{path}: line {reader.line_num}: short row, no value for column {c!r}")
                try:
                    row[c] = int(float(cell)) if c in ints else float(cell)
                except (ValueError, OverflowError):
                    raise DataError(f"{path}: line {reader.line_num}: column {c!r}: {cell!r} is not a number") from None
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- input fingerprints
INPUTS_FILE = "inputs.json"


def fingerprint(*parts: Any) -> str:
    """SHA-256 of arrays (shape, dtype and bytes), bytes, strings and files (a ``Path``: its contents)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(b"file:")
            with open(part, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        elif isinstance(part, (bytes, bytearray)):
            h.update(b"bytes:" + bytes(part))
        elif isinstance(part, str):
            h.update(b"str:" + part.encode("utf-8"))
        else:
            a = np.ascontiguousarray(part)
            h.update(repr((a.shape, str(a.dtype))).encode())
            h.update(a.data)
        h.update(b"|")
    return h.hexdigest()


def stale_inputs_message(folder: str | os.PathLike, what: str) -> str:
    return (f"{folder} holds a {what} made from other data than this run's (an earlier stage was re-run, e.g. "
            f"01_patching with another seed), so it cannot be resumed or reused: delete {folder} "
            "or pass a new experiment name")


def recorded_inputs(folder: str | os.PathLike) -> str | None:
    """The input fingerprint recorded in ``<folder>/inputs.json`` (None for a folder saved without one)."""
    f = Path(folder) / INPUTS_FILE
    return read_json(f).get("fingerprint") if f.is_file() else None


def guard_inputs(folder: str | os.PathLike, digest: str, what: str, resuming: bool) -> None:
    """Refuse to resume ``folder`` when ``<folder>/inputs.json`` records other inputs; record ``digest`` otherwise.

    A folder saved before fingerprints existed (no ``inputs.json``) is trusted and gets one.
    """
    recorded = recorded_inputs(folder)
    if resuming and recorded is not None:
        if recorded != digest:
            raise DataError(stale_inputs_message(folder, what))
        return
    atomic_write_json(Path(folder) / INPUTS_FILE, {"fingerprint": digest})


# --------------------------------------------------------------------------- folders replaced as a whole
def _aside(target: Path) -> tuple[Path, Path]:
    return target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the complete folder ``tmp`` (``<target>.tmp``) in place of ``target``: two renames, then clean up.

    A kill between the renames leaves ``<target>.old`` and a complete ``<target>.tmp`` and no ``target``;
    :func:`recover_dir` finishes the swap.
    """
    tmp, target = Path(tmp), Path(target)
    _, old = _aside(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def recover_dir(target: str | os.PathLike, complete: Callable[[Path], bool] | None = None) -> Path:
    """Finish or undo an interrupted :func:`replace_dir` of ``target`` (call before reading or rewriting it).

    ``complete(folder)``, if given, checks that ``<target>.tmp`` is complete before it is put in place; an
    incomplete one is deleted and ``<target>.old`` is restored instead.
    """
    target = Path(target)
    tmp, old = _aside(target)
    if not target.exists() and old.exists():
        if tmp.exists() and (complete is None or complete(tmp)):  # killed between the two renames
            os.replace(tmp, target)
        else:
            os.replace(old, target)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)  # killed while tmp was written: it is incomplete
    return target


# --------------------------------------------------------------------------- reading
def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: file is not readable (permissions)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _read_raw(path: Path) -> np.ndarray:
    """Read pixels as stored (any dtype, 2-D or 3-D)."""
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                # reduced-resolution pages (pyramid levels, thumbnails) are not further images
                planes = sum(1 for page in tif.pages if not getattr(page, "is_reduced", False))
                if planes > 1:
                    raise DataError(_multi_page_message(path, planes, "pages"))
                arr = tif.asarray()
        else:
            from PIL import Image

            with Image.open(path) as im:
                frames = int(getattr(im, "n_frames", 1) or 1)
                if frames > 1 and suffix not in (".jpg", ".jpeg"):  # (a camera JPEG's 2nd frame is a preview)
                    raise DataError(_multi_page_message(path, frames, "frames"))
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    return np.array(im, dtype=np.uint16)
                elif im.mode in ("I", "F"):
                    return np.array(im)
                elif im.mode not in ("L", "RGB", "RGBA", "LA"):
                    im = im.convert("RGB")
                arr = np.array(im)
    except DataError:
        raise
    except Exception as e:  # PIL/tifffile raise many types for corrupt files
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    arr = np.asarray(arr)
    if arr.size == 0:
        raise DataError(f"{path}: not a readable image (no pixel data)")
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: unsupported image shape {arr.shape}; expected (H, W) or (H, W, C)")
    return arr


def _multi_page_message(path: Path, n: int, what: str) -> str:
    return (f"{path}: a multi-page image ({n} {what}, e.g. a stack, time series or channels saved as pages); "
            "one file must hold one micrograph or mask. Save each page as its own file (e.g. Fiji: Image > Stacks > "
            "Stack to Images, or tifffile) and keep only the ones you mean")


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = float(arr.max()) if arr.size else 0.0
        if arr.min() < 0:
            raise DataError(f"{path}: negative pixel values in a {arr.dtype} image")
        # 16-bit detectors often fill only 12 bits; scale by the smallest container that fits the data.
        full = 255.0 if top <= 255 else 4095.0 if top <= 4095 else float(np.iinfo(arr.dtype).max)
        return np.clip(np.round(arr.astype(np.float64) * 255.0 / full), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        scale = 1.0 if hi <= 1.0 and lo >= 0.0 else (hi - lo or 1.0)
        off = 0.0 if scale == 1.0 else lo
        return np.clip(np.round((arr - off) / scale * 255.0), 0, 255).astype(np.uint8)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}")


def read_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """Read a micrograph as ``uint8 (H, W, C)``.

    16-bit images are scaled to 8 bit (12-bit data in a 16-bit container by
    4095, otherwise by 65535); an alpha channel is dropped.  ``channels``
    forces 1 (grey) or 3 (RGB): RGB with equal channels becomes grey exactly,
    other RGB is converted by luminance with a warning; grey is repeated to RGB.
    ``None`` keeps what the file holds (grey stays 1 channel).
    """
    path = Path(path)
    arr = _to_uint8(_read_raw(path), path)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., :1]
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.shape[2] not in (1, 3):
        raise DataError(f"{path}: {arr.shape[2]} channels; expected grey, RGB or RGBA")
    if channels is None or channels == arr.shape[2]:
        return np.ascontiguousarray(arr)
    if channels == 1:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            return np.ascontiguousarray(arr[..., :1])
        warnings.warn(f"{path}: colour image converted to grey by luminance", stacklevel=2)
        lum = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.round(lum), 0, 255).astype(np.uint8)[..., None]
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    raise DataError(f"channels must be 1 or 3, got {channels}")


def read_mask(path: str | os.PathLike, palette: Palette, encoding: str = "auto") -> np.ndarray:
    """Read a mask file as a ``uint8 (H, W)`` class-index array (see ``Palette.to_index``)."""
    path = Path(path)
    arr = _read_raw(path)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.max() < 256 and arr.min() >= 0:
            arr = arr.astype(np.uint8)
        else:
            raise DataError(f"{path}: mask must hold 8-bit values (class ids, grey levels or colours), got {arr.dtype}")
    try:
        return palette.to_index(arr, encoding=encoding, source=str(path))
    except PaletteError as e:
        msg = str(e)
        if path.suffix.lower() in (".jpg", ".jpeg") and "not in the palette" in msg:
            msg += ("; this mask is a JPEG, whose lossy compression changes pixel values (mostly along class "
                    "borders): save masks as PNG or TIFF")
        raise DataError(msg) from e


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array (H, W), (H, W, 1) or (H, W, 3) as PNG, atomically."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: write_png needs uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)
