"""Dual images: a micrograph's C channels plus its mask, as one float array the generator learns.

Two mask encodings:

* ``grey`` (the paper's): ONE mask channel holding each class's palette grey level scaled to [0, 1]
  (e.g. NdFeB: matrix 0, Eta 1/3, oxide 2/3, Nd-rich 1) → (H, W, C+1).  Decoded masks need k-means and
  clean-up; a blurred edge between two classes passes through the grey levels of the classes between them,
  so thin structures of an extreme grey level come back rimmed with intermediate classes.
* ``onehot`` (ours): one channel per class (K channels) → (H, W, C+K).  A decoded edge is a mixture of the
  two classes it separates, and the class is the arg-max: no ordering artefacts.

``split`` undoes either; the mask part comes back as floats for the clean-up in ``synthesis``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .labels import check_labels
from .palette import Palette

__all__ = ["ENCODINGS", "compose", "split", "compose_batch", "num_channels", "class_pixel_weights",
           "rare_class_weights", "image_error_per_class"]

ENCODINGS = ("grey", "onehot")


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"mask encoding must be one of {ENCODINGS}, got {encoding!r}")


def num_channels(image_channels: int, num_classes: int, encoding: str = "grey") -> int:
    """Channels of a dual image: C + 1 (grey) or C + K (onehot)."""
    _check_encoding(encoding)
    return image_channels + (1 if encoding == "grey" else num_classes)


def compose(image: np.ndarray, mask: np.ndarray, palette: Palette, encoding: str = "grey") -> np.ndarray:
    """``uint8 (H, W, C)`` image + class-index mask ``(H, W)`` → ``float32 (H, W, C+1 | C+K)`` in [0, 1]."""
    _check_encoding(encoding)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    idx = np.asarray(mask, dtype=np.intp)
    if encoding == "grey":
        m = palette.grey_unit[idx][..., None]
    else:
        m = np.eye(palette.num_classes, dtype=np.float32)[idx]
    return np.concatenate([image.astype(np.float32) / 255.0, m.astype(np.float32)], axis=-1)


def compose_batch(images: np.ndarray, masks: np.ndarray, palette: Palette, encoding: str = "grey") -> np.ndarray:
    """Batched :func:`compose`: ``(N, H, W, C)`` + ``(N, H, W)`` → ``(N, H, W, C+1 | C+K)``."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if len(images) == 0:
        raise ValueError("no images to compose")
    return np.stack([compose(i, m, palette, encoding) for i, m in zip(images, masks)])


def split(dual: np.ndarray, image_channels: int | None = None, encoding: str = "grey") -> tuple[np.ndarray, np.ndarray]:
    """Dual image(s) → (``uint8`` micrograph ``(…, H, W, C)``, float mask part).

    The mask part is ``(…, H, W)`` for ``grey`` and ``(…, H, W, K)`` for ``onehot``.  ``image_channels`` (1 or 3)
    is needed for ``onehot``; for ``grey`` it is the last axis minus one.
    """
    _check_encoding(encoding)
    dual = np.asarray(dual, dtype=np.float32)
    if encoding == "grey":
        if dual.ndim < 3 or dual.shape[-1] not in (2, 4):
            raise ValueError(f"a grey-encoded dual image has 2 (grey) or 4 (RGB) channels in the last axis, got {dual.shape}")
        c = dual.shape[-1] - 1
    else:
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3 to split a one-hot dual image, got {image_channels}")
        c = image_channels
        if dual.shape[-1] < c + 2:
            raise ValueError(f"a one-hot dual image has C + K ≥ {c + 2} channels, got {dual.shape}")
    image = np.clip(np.round(dual[..., :c] * 255.0), 0, 255).astype(np.uint8)
    mask = dual[..., c]
    if encoding == "onehot":
        mask = dual[..., c:]
    return image, mask


def mask_as_grey(mask_part: np.ndarray, palette: Palette, encoding: str = "grey") -> np.ndarray:
    """The decoded mask part as one grey channel in [0, 1] (for display and the raw PNG): as is for ``grey``,
    the probability-weighted palette grey level for ``onehot``."""
    _check_encoding(encoding)
    if encoding == "grey":
        return np.asarray(mask_part, np.float32)
    p = np.clip(np.asarray(mask_part, np.float32), 0, None)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-6)
    return (p * palette.grey_unit).sum(-1)


def dihedral(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 rotations/reflections of every (image, mask) pair: ``(N, H, W, …)`` → ``(8N, H, W, …)``.

    A micrograph's statistics do not depend on its orientation, so these are genuine extra examples of the
    microstructure (used to give the prior 8× more code maps to learn from; patches must be square).
    """
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"dihedral augmentation needs square patches, got {images.shape[1:3]}")
    outs_i, outs_m = [], []
    for flip in (False, True):
        im = images[:, :, ::-1] if flip else images
        mk = masks[:, :, ::-1] if flip else masks
        for k in range(4):
            outs_i.append(np.rot90(im, k, axes=(1, 2)))
            outs_m.append(np.rot90(mk, k, axes=(1, 2)))
    return np.ascontiguousarray(np.concatenate(outs_i)), np.ascontiguousarray(np.concatenate(outs_m))


def class_pixel_weights(masks: np.ndarray, num_classes: int, power: float = 0.5,
                        max_ratio: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel loss weights that make a rare class count in the generator's reconstruction loss.

    A class covering a fraction ``f_c`` of the pixels of ``masks`` gets the weight ``w_c ∝ f_c ** -power``, capped
    at ``max_ratio`` times the most frequent class's weight, and scaled so that the mean weight over all pixels is 1
    (the loss keeps its scale). ``power = 0`` gives all ones (the unweighted loss); 0.5 weights a class of 0.1 % of
    the pixels 20× a class of 40 %. A class absent from ``masks`` gets weight 0 (it has no pixel to weigh).

    Returns ``(weights float32 (N, H, W), per-class weights float64 (num_classes,))``.
    """
    masks = check_labels(masks, num_classes, "class_pixel_weights: masks", ndim=3, allow_empty=True,
                         outside=f"{{what}}: class indices must lie in [0, {num_classes}), got [{{lo}}, {{hi}}]")
    power, max_ratio = float(power), float(max_ratio)
    if not np.isfinite(power) or power < 0:
        raise ValueError(f"class_pixel_weights: power must be >= 0, got {power!r}")
    if not max_ratio >= 1:
        raise ValueError(f"class_pixel_weights: max_ratio must be >= 1, got {max_ratio!r}")
    freq = np.bincount(masks.ravel().astype(np.intp), minlength=num_classes)[:num_classes] / max(masks.size, 1)
    present = freq > 0
    w = np.zeros(num_classes, np.float64)
    w[present] = freq[present] ** -power
    if present.any():
        w = np.minimum(w, w[present].min() * max_ratio)
        w /= float((freq * w).sum())  # mean pixel weight 1
    return w[masks.astype(np.intp)].astype(np.float32), w


def rare_class_weights(masks: np.ndarray, names: Sequence[str], power: float,
                       below: float = 0.01) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """:func:`class_pixel_weights` when the data need them: only if ``power > 0`` and the rarest class present in
    ``masks`` covers less than ``below`` of the pixels (``below = 1``: always).

    Why the condition: the plain loss draws a class of a few per cent at its share (measured on the embedded default,
    rarest 7.7 %, and nasa_super, 3.45 %), and weighting it there changed the pools without helping the U-Nets; a
    class of 0.15 % it drops entirely (metaldam's precipitate), and the weights bring it back.
    Returns ``(pixel weights or None, per-class weights or None, a sentence saying which and why)``.
    """
    masks = check_labels(masks, len(names), "rare_class_weights: masks", ndim=3, allow_empty=False,
                         outside=f"{{what}}: class indices must lie in [0, {len(names)}), got [{{lo}}, {{hi}}]")
    below = float(below)
    if not 0 < below <= 1:
        raise ValueError(f"rare_class_weights: below must be in (0, 1], got {below!r}")
    if not power:
        return None, None, "the plain loss (rare_class_weight 0)"
    share = np.bincount(masks.ravel().astype(np.intp), minlength=len(names))[:len(names)] / masks.size
    rarest = int(np.argmin(np.where(share > 0, share, np.inf)))
    if share[rarest] >= below:
        return None, None, (f"the plain loss: the rarest class, {names[rarest]}, covers {share[rarest]:.2%} of the "
                            f"training pixels, not below rare_class_below {below:.2%} (a class that common is drawn "
                            f"at its share without weights)")
    pixel, per_class = class_pixel_weights(masks, len(names), power)
    listed = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, per_class))
    return pixel, per_class, (f"class weights (rarest class {names[rarest]}: {share[rarest]:.2%} of the training "
                              f"pixels, below {below:.2%}): {listed}")


def image_error_per_class(x: np.ndarray, recon: np.ndarray, masks: np.ndarray, image_channels: int,
                          names: Sequence[str]) -> dict[str, Any]:
    """How well the micrograph part of dual images is reconstructed, overall and inside each class's pixels.

    ``x``, ``recon``: float dual images ``(N, H, W, C)`` in [0, 1] (the micrograph's ``image_channels`` first);
    ``masks``: their class-index masks ``(N, H, W)``; ``names``: the class names.  Returns ``{"all": mse,
    <name>: mse over that class's pixels or None when it has none}`` — the squared error of the micrograph
    channels only, so a loss that favours the mask (``rare_class_weight``) can be seen costing the image.
    """
    x, recon = np.asarray(x, np.float32), np.asarray(recon, np.float32)
    if x.shape != recon.shape or x.shape[:3] != np.shape(masks) or not 1 <= image_channels < x.shape[-1]:
        raise ValueError(f"image_error_per_class: dual images {x.shape} and {recon.shape}, masks {np.shape(masks)} "
                         f"and {image_channels} image channel(s) do not fit together")
    sq = ((recon[..., :image_channels] - x[..., :image_channels]) ** 2).mean(axis=-1)
    masks = np.asarray(masks)
    out: dict[str, Any] = {"all": float(sq.mean())}
    for k, name in enumerate(names):
        sel = masks == k
        out[name] = float(sq[sel].mean()) if sel.any() else None
    return out
