"""Global conditions of a conditioned prior: checking them, storing them, drawing target vectors.

The conditioned :class:`~dualsynth.prior.model.GatedPixelCNN` takes one vector
per code map; here that vector is the **class fractions** of the map's mask
(shape (C,), C = number of mask classes, entries >= 0 summing to 1 -- the share
of the patch's pixels in each class).  Fractions do not change under
rotation/reflection, so a dihedrally augmented map has the fractions of its
original.

* :func:`check_condition` -- the one validation of a condition array (shape (N, C),
  finite, >= 0), used by the models, the trainers and the samplers.
* :func:`save_conditions` / :func:`load_conditions` -- ``conditions.npz`` next to
  the code maps (keys ``train``, ``val``, ``class_names``), written by 03.
* :func:`draw_conditions` -- target fraction vectors for sampling: rows of the
  real training maps' fractions, drawn with replacement, optionally favouring
  maps rich in rare classes.

No TensorFlow here.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..io import DataError, atomic_save_npz

__all__ = [
    "RARE_FRACTION",
    "check_condition",
    "ConditionSet",
    "save_conditions",
    "load_conditions",
    "rare_classes",
    "draw_conditions",
]

#: A class is *rare* when it holds less than this share of all training pixels.
RARE_FRACTION = 0.10


def check_condition(condition, num_conditions: int, num_maps: int | None = None,
                    name: str = "condition") -> np.ndarray | None:
    """Validate a conditioning array for a prior with ``num_conditions`` = C.

    Returns ``condition`` as float32 (N, C), or None when C == 0 and no condition
    was given.  Raises ValueError (naming ``name``) when a condition is missing
    (C > 0), given to an unconditioned prior (C == 0), of the wrong shape (not
    (N, C), or N != ``num_maps`` when that is given), or holds values that are
    not finite or negative.  The values are not required to sum to 1.
    """
    if num_conditions == 0:
        if condition is not None:
            raise ValueError(f"{name} was given, but this prior was built with num_conditions=0 "
                             "(unconditioned); train a GatedPixelCNN with num_conditions=C to use one")
        return None
    if condition is None:
        raise ValueError(f"{name} is required: this prior was built with num_conditions={num_conditions}; "
                         f"pass an array of shape (N, {num_conditions}) (e.g. the class fractions of each map)")
    try:
        arr = np.asarray(condition, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric array of shape (N, {num_conditions})") from None
    if arr.ndim != 2 or arr.shape[1] != num_conditions:
        raise ValueError(f"{name} must have shape (N, {num_conditions}) (num_conditions={num_conditions}), "
                         f"got {arr.shape}")
    if num_maps is not None and arr.shape[0] != num_maps:
        raise ValueError(f"{name} has {arr.shape[0]} rows but there are {num_maps} code maps; "
                         "give one condition vector per map")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    if (arr < 0).any():
        raise ValueError(f"{name} holds negative values (min {float(arr.min())}); class fractions are >= 0")
    return arr



@dataclass(frozen=True)
class ConditionSet:
    """Per-map class fractions of the prior's training and validation code maps.

    ``train`` (N_train, C) and ``val`` (N_val, C), float32, rows in the order of the
    code maps in ``codes.npz``; ``class_names`` the C mask classes, in column order.
    """

    train: np.ndarray
    val: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_conditions(self) -> int:
        return int(self.train.shape[1])


def save_conditions(path: str | os.PathLike, train, val, class_names: Sequence[str]) -> ConditionSet:
    """Check and write ``train`` / ``val`` fractions and ``class_names`` to ``path`` (.npz), atomically."""
    names = tuple(str(n) for n in class_names)
    tr = check_condition(train, len(names), name="train fractions")
    va = check_condition(val, len(names), name="val fractions")
    atomic_save_npz(path, train=tr, val=va, class_names=np.array(names, dtype=str))
    return ConditionSet(tr, va, names)


def load_conditions(path: str | os.PathLike) -> ConditionSet:
    """Read a ``conditions.npz`` written by :func:`save_conditions` (a clear error if it is missing)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no class fractions; run 03_pixelcnn with condition='class_fractions'")
    with np.load(path, allow_pickle=False) as z:
        missing = {"train", "val", "class_names"} - set(z.files)
        if missing:
            raise DataError(f"{path}: not a conditions file (missing {sorted(missing)}); re-run 03_pixelcnn")
        names = tuple(str(n) for n in z["class_names"])
        return ConditionSet(check_condition(z["train"], len(names), name=f"{path}: train"),
                            check_condition(z["val"], len(names), name=f"{path}: val"), names)


def rare_classes(train_fractions, threshold: float = RARE_FRACTION) -> np.ndarray:
    """Indices of the classes holding less than ``threshold`` of all training pixels.

    ``train_fractions`` (N, C): per-map class fractions of equally sized maps, so the
    share of all pixels is the mean over the maps.
    """
    fr = _check_fractions(train_fractions)
    if not (0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return _rare_below(fr, threshold)


def draw_conditions(train_fractions, num_samples: int, *, rare_boost: float = 0.0,
                    rare_classes: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
    """Target class-fraction vectors (num_samples, C) for a conditioned sampler, float32.

    Each row is the fraction vector of one real training map, drawn with replacement
    (``numpy.random.default_rng(seed)``, so the result is fixed by ``seed``):

    * ``rare_boost == 0`` (default): uniformly -- the empirical distribution of the
      training maps' fractions.
    * ``rare_boost > 0``: map ``n`` is drawn with probability proportional to
      ``exp(rare_boost * z_n)``, where ``z_n`` is the z-score (over the training maps)
      of the map's *rare share* -- the sum of its fractions of the rare classes.  So
      ``rare_boost = 1`` makes a map one standard deviation richer in rare classes
      e = 2.7 times as likely as an average one.  If all maps have the same rare
      share (or there is no rare class) the draw is uniform (with a warning).

    ``rare_classes``: class indices counted as rare; None (default) takes the classes
    below :data:`RARE_FRACTION` (10 %) of all training pixels (:func:`rare_classes`).
    """
    fr = _check_fractions(train_fractions)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    try:
        rare_boost = float(rare_boost)
    except (TypeError, ValueError):
        raise TypeError(f"rare_boost must be a number, got {rare_boost!r}") from None
    if not (math.isfinite(rare_boost) and rare_boost >= 0):
        raise ValueError(f"rare_boost must be a finite number >= 0, got {rare_boost}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = np.random.default_rng(int(seed))
    n = len(fr)
    if rare_boost == 0:
        return fr[rng.integers(0, n, size=int(num_samples))]
    if rare_classes is None:
        rare = _rare_below(fr, RARE_FRACTION)
    else:
        rare = np.asarray(rare_classes)
        if rare.ndim != 1 or not np.issubdtype(rare.dtype, np.integer) or (
                rare.size and (rare.min() < 0 or rare.max() >= fr.shape[1])):
            raise ValueError(f"rare_classes must be class indices in 0..{fr.shape[1] - 1}, got {rare_classes!r}")
    share = fr[:, rare].sum(axis=1, dtype=np.float64)
    sd = share.std()
    if rare.size == 0 or not sd > 0:
        warnings.warn("draw_conditions: no rare class, or every map has the same rare share; rare_boost has no "
                      "effect (uniform draw)", RuntimeWarning, stacklevel=2)
        return fr[rng.integers(0, n, size=int(num_samples))]
    logw = rare_boost * (share - share.mean()) / sd
    w = np.exp(logw - logw.max())
    return fr[rng.choice(n, size=int(num_samples), replace=True, p=w / w.sum())]


def _rare_below(fractions: np.ndarray, threshold: float) -> np.ndarray:
    return np.flatnonzero(fractions.mean(axis=0) < threshold)


def _check_fractions(train_fractions) -> np.ndarray:
    arr = np.asarray(train_fractions)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"train_fractions must have shape (N, C) with N, C >= 1, got {arr.shape}")
    return check_condition(arr, arr.shape[1], name="train_fractions")
