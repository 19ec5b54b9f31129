"""Segmentation metrics for label masks (pure NumPy; no TensorFlow).

Definitions (one test image, ground truth ``G`` and prediction ``P``, integer
arrays of the same shape with values ``0 .. C-1``):

* ``IoU_c = |G=c and P=c| / |G=c or P=c|``; undefined (NaN) when the union is
  empty, i.e. class ``c`` is absent from both ``G`` and ``P``.
* **Missing Class IoU** (per image) = mean of ``IoU_c`` over the classes
  *present in G*.  A class that is predicted but absent from ``G`` is not
  averaged; its pixels still lower the IoU of their true class, because they
  enlarge that class's union (false negatives).
* **mIoU** (per image) = mean of ``IoU_c`` over *all* classes, a class absent
  from both ``G`` and ``P`` counting as 1 (the convention of
  segmentation-models' IoU score with smoothing).  A class absent from ``G``
  but predicted has IoU 0.
* **Pixel accuracy** = share of pixels with ``P == G``.

Dataset scores (:func:`evaluate`): mean over images of the per-image mIoU and
Missing Class IoU; per-class Missing Class IoU of ``c`` = mean of ``IoU_c``
over the images whose ``G`` contains ``c`` (``None`` if none does); pixel
accuracy pooled over all pixels; and ``miou_dataset``, the mIoU of the summed
confusion matrix (classes with an empty union over the whole set count as 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .labels import check_labels

__all__ = [
    "confusion_matrix",
    "iou_per_class",
    "missing_class_iou",
    "miou",
    "pixel_accuracy",
    "evaluate",
]


# --------------------------------------------------------------------------- helpers
def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return int(num_classes)


def _as_labels(a: Any, name: str) -> np.ndarray:
    """Return ``a`` as an integer ndarray; floats are accepted only if integral."""
    return check_labels(a, None, name, allow_float=True, allow_empty=True)


def _check_pair(gt: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    g = _as_labels(gt, "gt")
    p = _as_labels(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"shape mismatch: gt {g.shape} vs pred {p.shape}")
    if g.size == 0:
        raise ValueError("empty input: gt and pred have no pixels")
    return g, p


def _check_range(arr: np.ndarray, name: str, num_classes: int) -> None:
    check_labels(arr, num_classes, name, allow_empty=True)


def _iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=1) + cm.sum(axis=0) - np.diag(cm)
    out = np.full(cm.shape[0], np.nan)
    nz = union > 0
    out[nz] = inter[nz] / union[nz]
    return out


def _miou_from_confusion(cm: np.ndarray) -> float:
    return float(np.mean(np.nan_to_num(_iou_from_confusion(cm), nan=1.0)))


def _mci_from_confusion(cm: np.ndarray) -> float:
    present = cm.sum(axis=1) > 0
    return float(np.mean(_iou_from_confusion(cm)[present]))


def _opt(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


# --------------------------------------------------------------------------- per image
def confusion_matrix(gt: Any, pred: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 confusion matrix; rows = ground truth, columns = prediction."""
    c = _check_num_classes(num_classes)
    g, p = _check_pair(gt, pred)
    _check_range(g, "gt", c)
    _check_range(p, "pred", c)
    idx = g.ravel().astype(np.int64) * c + p.ravel().astype(np.int64)
    return np.bincount(idx, minlength=c * c).reshape(c, c).astype(np.int64)


def iou_per_class(gt: Any, pred: Any, num_classes: int) -> np.ndarray:
    """IoU of every class, shape (C,); NaN where the class is absent from both."""
    return _iou_from_confusion(confusion_matrix(gt, pred, num_classes))


def missing_class_iou(gt: Any, pred: Any, num_classes: int) -> float:
    """Mean IoU over the classes present in the ground truth."""
    return _mci_from_confusion(confusion_matrix(gt, pred, num_classes))


def miou(gt: Any, pred: Any, num_classes: int) -> float:
    """Mean IoU over all classes; a class absent from both gt and pred counts as 1."""
    return _miou_from_confusion(confusion_matrix(gt, pred, num_classes))


def pixel_accuracy(gt: Any, pred: Any) -> float:
    """Share of pixels where pred equals gt."""
    g, p = _check_pair(gt, pred)
    return float(np.count_nonzero(g == p) / g.size)


# --------------------------------------------------------------------------- dataset
def _as_image_list(x: Any, name: str) -> list[np.ndarray]:
    if isinstance(x, np.ndarray):
        if x.ndim == 3:
            return [x[i] for i in range(x.shape[0])]
        if x.ndim == 2:
            raise ValueError(
                f"{name} is a single 2-D array; pass a list of images or an (N, H, W) array"
            )
        raise ValueError(f"{name} must be an (N, H, W) array or a sequence of 2-D arrays, "
                         f"got an array of shape {x.shape}")
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise ValueError(f"{name} must be a sequence of 2-D arrays or an (N, H, W) array")
    return list(x)


def evaluate(
    gts: Any,
    preds: Any,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Score a test set; returns a JSON-serialisable dict (plain floats, ints, None).

    Keys: ``accuracy`` (pooled pixel accuracy), ``miou`` (mean of per-image mIoU),
    ``miou_dataset`` (mIoU of the summed confusion matrix), ``missing_class_iou``
    (mean of per-image Missing Class IoU), ``per_class`` (name -> mean IoU over the
    images whose gt contains the class, or None), ``per_class_iou_dataset``
    (name -> IoU of the summed confusion matrix, None for an empty union),
    ``per_image`` (list of dicts with ``index``, ``accuracy``, ``miou``,
    ``missing_class_iou`` and ``iou`` = name -> IoU or None if the class is
    absent from both), ``num_images``, ``num_classes``, ``class_names`` and
    ``confusion`` (nested list, rows = truth).
    """
    c = _check_num_classes(num_classes)
    if class_names is None:
        names = [str(i) for i in range(c)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != c:
            raise ValueError(f"class_names has {len(names)} names for {c} classes")
        if len(set(names)) != c:
            raise ValueError(f"class_names must be unique, got {names}")

    g_list = _as_image_list(gts, "gts")
    p_list = _as_image_list(preds, "preds")
    if len(g_list) == 0:
        raise ValueError("empty input: no images given")
    if len(g_list) != len(p_list):
        raise ValueError(f"gts has {len(g_list)} images but preds has {len(p_list)}")

    total_cm = np.zeros((c, c), dtype=np.int64)
    per_image: list[dict] = []
    iou_rows = np.empty((len(g_list), c))
    present_rows = np.zeros((len(g_list), c), dtype=bool)
    for i, (g, p) in enumerate(zip(g_list, p_list)):
        try:
            ga, pa = np.asarray(g), np.asarray(p)
            if ga.ndim != 2:
                raise ValueError(f"gt must be 2-D, got shape {ga.shape}")
            if pa.ndim != 2:
                raise ValueError(f"pred must be 2-D, got shape {pa.shape}")
            cm = confusion_matrix(ga, pa, c)
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from exc
        total_cm += cm
        ious = _iou_from_confusion(cm)
        iou_rows[i] = ious
        present_rows[i] = cm.sum(axis=1) > 0
        per_image.append(
            {
                "index": i,
                "accuracy": float(np.trace(cm) / cm.sum()),
                "miou": _miou_from_confusion(cm),
                "missing_class_iou": _mci_from_confusion(cm),
                "iou": {names[k]: _opt(ious[k]) for k in range(c)},
            }
        )

    per_class: dict[str, float | None] = {}
    for k in range(c):
        sel = present_rows[:, k]
        per_class[names[k]] = float(np.mean(iou_rows[sel, k])) if sel.any() else None

    ds_iou = _iou_from_confusion(total_cm)
    return {
        "accuracy": float(np.trace(total_cm) / total_cm.sum()),
        "miou": float(np.mean([r["miou"] for r in per_image])),
        "miou_dataset": _miou_from_confusion(total_cm),
        "missing_class_iou": float(np.mean([r["missing_class_iou"] for r in per_image])),
        "per_class": per_class,
        "per_class_iou_dataset": {names[k]: _opt(ds_iou[k]) for k in range(c)},
        "per_image": per_image,
        "num_images": len(per_image),
        "num_classes": c,
        "class_names": names,
        "confusion": [[int(v) for v in row] for row in total_cm],
    }
