"""Checking class-index label masks: the one validator that metrics, the mask clean-up, quality, the U-Net data
and the LQ-mask model call.  Pure NumPy (no TensorFlow).

A label mask holds one class index per pixel, ``0 .. num_classes - 1``, as an integer (or boolean) array.
:func:`check_labels` checks the number of axes, emptiness, the dtype and the value range, with one message for
each problem that names the array (``what``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LabelTypeError", "check_labels"]

_AXES = {2: "(H, W)", 3: "(N, H, W)"}


class LabelTypeError(TypeError, ValueError):
    """Labels of a non-integer dtype: a ``ValueError`` for the NumPy-side checks, a ``TypeError`` for the U-Net's."""


def _verb(what: str, plural: str, singular: str) -> str:
    return plural if what.endswith("s") else singular


def check_labels(labels: Any, num_classes: int | None = None, what: str = "labels", *, ndim: int | None = None,
                 allow_float: bool = False, allow_empty: bool = False, outside: str | None = None) -> np.ndarray:
    """``labels`` as an array of class indices, or a ``ValueError`` naming ``what`` and the problem.

    * ``ndim``: the number of axes required (2: ``(H, W)``, 3: ``(N, H, W)``); None: any.
    * ``allow_empty``: an array without pixels passes (refused by default: "… empty …: no masks or no pixels").
    * dtype: integer or boolean arrays pass unchanged; with ``allow_float``, floats holding whole numbers are
      converted to int64 (NaN/inf and fractions refused); anything else raises :class:`LabelTypeError`.
    * ``num_classes``: every value must be in ``0 .. num_classes - 1`` (None: the range is not checked).
      ``outside`` replaces the message of that check; it is formatted with ``what``, ``lo``, ``hi`` and ``last``.
    """
    arr = np.asarray(labels)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D {_AXES.get(ndim, '')}, got shape {arr.shape}".replace("  ", " "))
    if arr.size == 0:
        if not allow_empty:
            raise ValueError(f"{what} {_verb(what, 'are', 'is')} empty (shape {arr.shape}): no masks or no pixels")
        return arr
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        pass
    elif allow_float and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} must hold integer class indices, got non-integral floats")
        arr = arr.astype(np.int64)
    else:
        raise LabelTypeError(f"{what} must be an integer class-index array, got dtype {arr.dtype}")
    if num_classes is not None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            template = outside or "{what} {verb} values outside 0..{last} (min {lo}, max {hi})"
            raise ValueError(template.format(what=what, verb=_verb(what, "have", "has"), lo=lo, hi=hi,
                                             last=num_classes - 1))
    return arr
