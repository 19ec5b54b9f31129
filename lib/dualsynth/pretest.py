"""The pre-test (Volman Stern et al. 2024, Fig. 12) and the image–mask consistency of a synthetic pool.

A segmentation model trained on *real* data (the "judge") segments the synthetic micrographs; where the
synthetic masks are right, it agrees with them about as well as it agrees with real masks on real held-out
images.  The paper ran an existing expert model on the raw synthetic masks: :func:`load_judge` takes such a
model (04's ``pretest_model``: a dualsynth U-Net training folder or a local ``.h5`` weight file), and
:func:`judge_record` scores the judge against the raw (pre-clean-up) labels too.  Without one, a U-Net is trained on
the real base set of the experiment (``BMQ`` train / val by default) in ``synthetic/pretest_unet/`` (resumable like
every U-Net run).  The numbers themselves come from :func:`dualsynth.quality.consistency` (pure NumPy): this
module only trains the judge, runs it and assembles the record 04 writes into ``quality.json``.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import quality
from .checkpoint import ConfigMismatch
from .config import resolve_path
from .io import DataError
from .metrics import evaluate, iou_per_class

# ``segmentation`` and ``unet.*`` load TensorFlow and segmentation-models (seconds): the functions that run a U-Net
# import them when called, so importing this module (04's parameter checks, the record) stays light

__all__ = ["Judge", "train_judge", "judge_config", "load_judge", "judge_record", "real_reference",
           "score_samples", "check_record",
           "CHECK_SEED_OFFSET"]


@dataclass
class Judge:
    """A segmentation model trained on real data, with its segmentation of the real reference images."""

    model: Any
    encoder: str
    epochs: int
    real_images: np.ndarray
    real_masks: np.ndarray
    real_preds: np.ndarray
    real_train_masks: np.ndarray
    num_classes: int
    class_names: list[str]
    source: str = "trained"  # "trained" (train_judge) or the path of the user's model (load_judge)
    #: real patches the judge was not trained on besides the test set (the tier's validation patches): scored like
    #: a pool, they show what consistency real masks reach with this judge (None: not available)
    val_images: np.ndarray | None = None
    val_masks: np.ndarray | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        from . import segmentation  # (TensorFlow: see the note at the imports)

        return segmentation.predict(self.model, np.asarray(images))

    @property
    def reference(self) -> float:
        """The judge's mean per-image score on the real test images, computed like
        :func:`dualsynth.quality.per_image_consistency`'s numerator (mean IoU over the classes in each image's mask
        or prediction), so a synthetic image scoring 1 agrees with its mask as well as an average real one."""
        return float(np.mean([np.nanmean(iou_per_class(m, p, self.num_classes))
                              for m, p in zip(self.real_masks, self.real_preds)]))


def train_judge(manifest, folder: str | os.PathLike, *, encoder: str, epochs: int, seed: int = 0,
                tier: str = "BMQ", unet: Mapping[str, Any] | None = None, progress: bool = True) -> Judge:
    """Train (or resume) the pre-test U-Net on the real ``tier`` set and segment the real test images.

    ``unet``: further U-Net settings (any :class:`~dualsynth.unet.model.UNetConfig` field, e.g. ``base_filters``,
    ``batch_size``, ``steps_per_epoch``, ``bn_momentum``; 04's ``pretest_unet``), so the judge can be trained with
    the study's own recipe (the ``quick`` preset: the BMQ_0 run of 06).  A judge that cannot segment a class cannot
    say whether the synthetic masks draw it right: its per-class score on the real test images is in the record."""
    from . import segmentation  # (TensorFlow: see the note at the imports)

    k = manifest.palette.num_classes
    cfg = judge_config(unet or {}, num_classes=k, in_channels=manifest.channels, encoder=encoder, epochs=epochs,
                       seed=seed)
    train = manifest.load_arrays(tier, "train")
    val = manifest.load_arrays(tier, "val")
    try:  # resumes a judge of the same settings and data
        result = segmentation.train_unet(cfg, train, val, folder, progress=progress)
    except (ConfigMismatch, DataError) as e:  # another recipe or other patches: the judge is cheap, train anew
        warnings.warn(f"the pre-test judge in {folder} was trained with other settings or data; training a new "
                      f"one ({str(e).splitlines()[0][:200]})", stacklevel=2)
        result = segmentation.train_unet(cfg, train, val, folder, progress=progress, resume=False)
    test_img, test_mask = manifest.load_arrays("test", "test")
    preds = segmentation.predict(result.model, test_img)
    return Judge(model=result.model, encoder=encoder, epochs=result.epochs_run, real_images=test_img,
                 real_masks=test_mask, real_preds=preds, real_train_masks=train[1], num_classes=k,
                 class_names=list(manifest.palette.names), val_images=val[0], val_masks=val[1])


#: UNetConfig fields 04 sets itself (from the manifest, ``pretest_encoder``, ``pretest_epochs``, ``seed``)
JUDGE_FIXED = ("num_classes", "in_channels", "encoder", "epochs", "seed", "input_stats")


def judge_config(unet: Mapping[str, Any], **fixed: Any):
    """The judge's :class:`~dualsynth.unet.model.UNetConfig`: ``fixed`` plus the settings in ``unet``; an unknown
    key (:meth:`~dualsynth.unet.model.UNetConfig.from_params` with ``strict=True``) or a fixed one in ``unet`` is
    refused by name."""
    from .unet.model import UNetConfig, UnknownSettings  # (TensorFlow: see the note at the imports)

    clash = sorted(set(unet) & set(JUDGE_FIXED))
    if clash:
        raise ValueError(f"pretest_unet: {clash} are set by 04 itself (pretest_encoder, pretest_epochs, seed, the "
                         "patches); remove them from pretest_unet")
    try:
        return UNetConfig.from_params(unet, strict=True, **fixed)
    except UnknownSettings as e:
        allowed = sorted(set(e.allowed) - set(JUDGE_FIXED))
        raise ValueError(f"pretest_unet: unknown U-Net setting(s) {e.unknown}; allowed: {allowed}") from None


def _user_model(path: str | os.PathLike, num_classes: int, channels: int, encoder: str):
    """A segmentation model from a dualsynth U-Net training folder (``unet_config.json`` + ``model.h5``), a weight
    file beside such a config, or a bare Keras 2 / Keras 3 ``.h5`` weight file of a U-Net with ``encoder``."""
    from .unet.files import CONFIG_FILE, WEIGHTS_FILE  # (TensorFlow: see the note at the imports)
    from .unet.infer import load_unet_config
    from .unet.model import UNetConfig, build_unet
    from .unet.weights import load_weights_h5

    path = resolve_path(path)  # a relative path is taken from the project root, like the other parameters
    if path.is_dir():
        folder, weights = path, path / WEIGHTS_FILE
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise FileNotFoundError(f"pretest_model {path}: no such file or folder (give a U-Net training folder or a "
                                "local .h5 weight file)")
    if not weights.is_file():
        raise FileNotFoundError(f"pretest_model {path}: no {WEIGHTS_FILE} in the folder (has its training finished an "
                                "epoch?)")
    if (folder / CONFIG_FILE).is_file():
        cfg = load_unet_config(folder)
    else:
        cfg = UNetConfig(num_classes=num_classes, in_channels=channels, encoder=encoder)
    if cfg.num_classes != num_classes:
        raise ValueError(f"pretest_model {path}: a model of {cfg.num_classes} classes, the experiment's palette has "
                         f"{num_classes}")
    # grey and RGB U-Nets share their weights (the input adapter repeats a grey channel)
    cfg = dataclasses.replace(cfg, in_channels=channels, encoder_weights=None)
    model = build_unet(cfg)
    load_weights_h5(model, weights, strict=True)
    return model, cfg.encoder


def load_judge(manifest, model_path: str | os.PathLike, *, encoder: str = "efficientnetb3",
               tier: str = "BMQ") -> Judge:
    """The pre-test as the paper ran it: an existing segmentation model (``model_path``: a dualsynth U-Net training
    folder, or a ``.h5`` weight file -- with ``unet_config.json`` beside it, or of a U-Net with ``encoder`` and the
    palette's classes) instead of one trained here.  It segments the real test images as the reference."""
    from . import segmentation  # (TensorFlow: see the note at the imports)

    k = manifest.palette.num_classes
    model, enc = _user_model(model_path, k, manifest.channels, encoder)
    test_img, test_mask = manifest.load_arrays("test", "test")
    val_img, val_mask = manifest.load_arrays(tier, "val")
    return Judge(model=model, encoder=enc, epochs=0, real_images=test_img, real_masks=test_mask,
                 real_preds=segmentation.predict(model, test_img),
                 real_train_masks=manifest.load_arrays(tier, "train")[1], num_classes=k,
                 class_names=list(manifest.palette.names), source=str(model_path), val_images=val_img,
                 val_masks=val_mask)


def score_samples(judge: Judge, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The judge's segmentation of synthetic micrographs and each image's consistency (see
    :func:`dualsynth.quality.per_image_consistency`)."""
    preds = judge.predict(images)
    return preds, quality.per_image_consistency(masks, preds, judge.num_classes, judge.reference)


def judge_record(judge: Judge, syn_masks: np.ndarray, syn_preds: np.ndarray,
                 raw_masks: np.ndarray | None = None) -> dict[str, Any]:
    """The ``pretest`` entry of ``quality.json``: consistency overall and per class, plus the paper's numbers
    (Missing Class IoU of the judge on the synthetic set and on the real test images).  ``raw_masks``: the
    synthetic masks before clean-up (the labels of the decoded mask channel), which the paper's pre-test compared
    with: adds ``missing_class_iou_synthetic_raw``, ``per_class_synthetic_raw`` and ``per_image_synthetic_raw``."""
    names = judge.class_names
    on_syn = evaluate(syn_masks, syn_preds, judge.num_classes, names)
    on_real = evaluate(judge.real_masks, judge.real_preds, judge.num_classes, names)
    cons = quality.consistency(syn_masks, syn_preds, judge.real_masks, judge.real_preds, judge.num_classes,
                               names, real_train_masks=judge.real_train_masks)
    record = {
        "model": judge.source,
        "encoder": judge.encoder,
        "epochs": judge.epochs,
        "missing_class_iou_synthetic": on_syn["missing_class_iou"],
        "missing_class_iou_real_test": on_real["missing_class_iou"],
        "per_class_synthetic": on_syn["per_class"],
        "per_class_real_test": on_real["per_class"],
        "per_image_synthetic": [r["missing_class_iou"] for r in on_syn["per_image"]],
        "consistency": cons,
    }
    if judge.val_images is not None and judge.val_masks is not None and len(judge.val_images):
        record["real_reference"] = real_reference(judge)
    if raw_masks is not None:
        on_raw = evaluate(np.asarray(raw_masks), syn_preds, judge.num_classes, names)
        record["missing_class_iou_synthetic_raw"] = on_raw["missing_class_iou"]
        record["per_class_synthetic_raw"] = on_raw["per_class"]
        record["per_image_synthetic_raw"] = [r["missing_class_iou"] for r in on_raw["per_image"]]
    return record


def real_reference(judge: Judge) -> dict[str, Any]:
    """Real patches scored exactly as a pool: the judge's consistency on the validation patches of its tier with
    their own masks (``quality.json`` → ``pretest`` → ``real_reference``).  "Consistency 1" is a point, not a line
    real data clears: real masks of other patches score around it, and the balanced and capped forms stay below 1
    on real data too (for a small set, its class fractions differ from the training masks by chance).  The judge
    never trained on these patches, though its training chose its best epoch on them."""
    rec = quality.consistency(judge.val_masks, judge.predict(judge.val_images), judge.real_masks, judge.real_preds,
                              judge.num_classes, judge.class_names, real_train_masks=judge.real_train_masks)
    return {k: rec[k] for k in ("consistency", "consistency_balanced", "consistency_capped")} | {
        "num_patches": int(len(judge.val_images)), "what": "the judge's tier's validation patches, with their masks"}


#: the independent judge's seed is the curating judge's plus this (another initialisation and batch order)
CHECK_SEED_OFFSET = 1


def check_record(manifest, folder: str | os.PathLike, images: np.ndarray, masks: np.ndarray, *, encoder: str,
                 epochs: int, seed: int, unet: Mapping[str, Any] | None = None, progress: bool = True,
                 train=None) -> dict[str, Any]:
    """The pool's consistency measured by a judge that did not pick it (``quality.json`` → ``pretest_check``).

    A pool curated with ``min_consistency`` keeps the pairs its judge agrees with, so that judge's consistency of
    the kept pool is biased upwards (it partly measures the judge's own errors).  A second judge, trained like the
    first on the same real set but with seed ``seed + CHECK_SEED_OFFSET`` in ``folder``, segments the kept pool
    afresh: its :func:`judge_record` (plus ``judge_seed``) is the honest number.  ``train``: the judge trainer
    (default :func:`train_judge`; tests pass a fake)."""
    images, masks = np.asarray(images), np.asarray(masks)
    if len(images) != len(masks):  # before the judge's training, not after
        raise ValueError(f"check_record: {len(images)} images but {len(masks)} masks")
    train = train_judge if train is None else train
    check_seed = int(seed) + CHECK_SEED_OFFSET
    judge = train(manifest, folder, encoder=encoder, epochs=epochs, seed=check_seed, unet=unet, progress=progress)
    record = judge_record(judge, masks, judge.predict(images))
    record["judge_seed"] = check_seed
    return record


def fraction_error(sample, num_classes: int) -> float:
    """Total-variation distance between a sample's cleaned-mask class fractions and the fractions it was
    generated for (``sample.condition``): half the L1 distance, 0 = exactly the target, 1 = disjoint."""
    got = quality.per_patch_fractions(np.asarray(sample.cleaned)[None], num_classes)[0]
    return float(0.5 * np.abs(got - np.asarray(sample.condition, np.float64)).sum())


def match_fractions(fractions: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` of the rows of ``fractions`` (``(N, K)``, each sample's mask class fractions) whose mean
    is close to ``target`` (``(K,)``): greedy, each step adds the sample that most lowers the sum over classes of
    the squared *relative* error of the running mean (relative, so a rare class counts as much as the matrix; a
    class with target 0 is weighted as one of 0.1 %).  Returned in increasing order."""
    f = np.asarray(fractions, np.float64)
    t = np.asarray(target, np.float64)
    if f.ndim != 2 or t.shape != (f.shape[1],):
        raise ValueError(f"match_fractions needs fractions (N, K) and a target (K,), got {f.shape} and {t.shape}")
    if not 1 <= n <= len(f):
        raise ValueError(f"match_fractions: cannot choose {n} of {len(f)} samples")
    w = 1.0 / np.maximum(t, 1e-3)
    chosen = np.zeros(len(f), bool)
    total = np.zeros_like(t)
    for k in range(n):
        cost = ((((total + f) / (k + 1) - t) * w) ** 2).sum(axis=1)
        cost[chosen] = np.inf
        i = int(np.argmin(cost))
        chosen[i] = True
        total += f[i]
    return np.flatnonzero(chosen)


def generate_pool(generate, pool_size: int, *, judge: Judge | None = None, min_consistency: float = 0.0,
                  max_fraction_error: float | None = None, num_classes: int | None = None,
                  max_rounds: int = 5, fraction_target: np.ndarray | None = None,
                  candidates: float = 1.0) -> tuple[list, np.ndarray | None, dict[str, Any]]:
    """Draw a pool of ``pool_size`` synthetic samples, optionally curated.

    ``generate(n, start_index)`` returns ``n`` :class:`~dualsynth.synthesis.SyntheticSample` drawn as if
    ``start_index`` samples had been drawn before.  A sample is accepted when

    * ``min_consistency`` > 0 (needs a judge): its per-image consistency is at least that, and
    * ``max_fraction_error`` is set (needs a prior conditioned on class fractions, so every sample carries the
      target it was drawn for, and ``num_classes``): its :func:`fraction_error` is at most that.

    With ``fraction_target`` (the class fractions of the real training masks; needs ``num_classes``), the pool is
    *matched*: accepted samples are drawn until there are ``candidates`` × ``pool_size`` of them (or
    ``max_rounds`` is reached), and :func:`match_fractions` keeps the ``pool_size`` whose mean class fractions
    come closest to the target — a generator that over-draws the matrix and under-draws a rare phase still gives a
    pool with the real phase fractions, each sample unchanged.

    Rejected samples are replaced by drawing more, in up to ``max_rounds`` rounds, each sized by the acceptance
    rate so far; if the pool is still short, the rejected samples that fail fewest criteria (then the most
    consistent, then the closest to their target) fill it (counted in ``filled_below_threshold``, with a
    warning).  Returns ``(samples, judge predictions or None, curation record)``; samples keep the order in which
    they were drawn.
    """
    if min_consistency < 0 or not np.isfinite(min_consistency):
        raise ValueError(f"min_consistency must be >= 0, got {min_consistency!r}")
    if min_consistency > 0 and judge is None:
        raise ValueError("min_consistency > 0 needs the pre-test judge (pretest: true)")
    if max_fraction_error is not None and not 0 <= max_fraction_error <= 1:
        raise ValueError(f"max_fraction_error must be in [0, 1] or None, got {max_fraction_error!r}")
    if max_fraction_error is not None and not num_classes:
        raise ValueError("max_fraction_error needs num_classes")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds!r}")
    if fraction_target is not None:
        if not num_classes:
            raise ValueError("fraction_target needs num_classes")
        t = np.asarray(fraction_target, np.float64)
        if t.shape != (num_classes,) or not np.all(np.isfinite(t)) or t.min() < 0 or abs(t.sum() - 1) > 1e-3:
            raise ValueError(f"fraction_target must be {num_classes} class fractions >= 0 summing to 1, got "
                             f"{np.round(t, 4).tolist()}")
    if not (np.isfinite(candidates) and candidates >= 1):
        raise ValueError(f"candidates must be a number >= 1, got {candidates!r}")
    wanted = pool_size if fraction_target is None else int(np.ceil(candidates * pool_size))

    def judged(batch):
        if judge is None:
            return [None] * len(batch), [None] * len(batch)
        p, c = score_samples(judge, np.stack([s.image for s in batch]), np.stack([s.cleaned for s in batch]))
        return list(p), [float(x) for x in c]

    def errors(batch):
        if max_fraction_error is None:
            return [None] * len(batch)
        if any(getattr(s, "condition", None) is None for s in batch):
            raise ValueError("max_fraction_error needs a prior conditioned on class fractions (03_pixelcnn "
                             "condition: class_fractions): unconditioned samples have no target fractions")
        return [fraction_error(s, num_classes) for s in batch]

    def failures(c, e) -> int:
        return int(min_consistency > 0 and c < min_consistency) + int(e is not None and e > max_fraction_error)

    pool_s = list(generate(pool_size, 0))
    pool_p, pool_c = judged(pool_s)
    pool_e = errors(pool_s)
    drawn, rounds = len(pool_s), 1
    kept = [i for i in range(drawn) if failures(pool_c[i], pool_e[i]) == 0]
    while len(kept) < wanted and rounds < max_rounds:
        rate = max(len(kept) / len(pool_s), 0.1)
        more = list(generate(int(np.ceil((wanted - len(kept)) / rate * 1.2)), drawn))
        p, c = judged(more)
        e = errors(more)
        base = len(pool_s)
        pool_s, pool_p, pool_c, pool_e = pool_s + more, pool_p + p, pool_c + c, pool_e + e
        kept += [base + i for i in range(len(more)) if failures(c[i], e[i]) == 0]
        drawn += len(more)
        rounds += 1
    filled = 0
    if len(kept) < pool_size:
        taken = set(kept)
        rest = sorted((i for i in range(len(pool_s)) if i not in taken),
                      key=lambda i: (failures(pool_c[i], pool_e[i]), -(pool_c[i] or 0.0), pool_e[i] or 0.0))
        filled = pool_size - len(kept)
        kept += rest[:filled]
        warnings.warn(f"only {pool_size - filled} of {drawn} synthetic samples pass the curation "
                      f"(min_consistency {min_consistency}, max_fraction_error {max_fraction_error}) after {rounds} "
                      f"rounds; the best {filled} of the others fill the pool", stacklevel=2)
    matched, before_match = None, len(kept)
    if fraction_target is not None:
        if len(kept) < wanted:
            warnings.warn(f"match_fractions: only {len(kept)} candidates for a pool of {pool_size} (wanted {wanted}) "
                          f"after {rounds} rounds; the pool is matched among fewer (raise max_curation_rounds)",
                          stacklevel=2)
        fr = quality.per_patch_fractions(np.stack([pool_s[i].cleaned for i in kept]), num_classes)
        pick = match_fractions(fr, fraction_target, pool_size)
        matched = {"target": [float(x) for x in fraction_target], "candidates": len(kept), "wanted": wanted,
                   "mean_candidates": [float(x) for x in fr.mean(axis=0)],
                   "mean_kept": [float(x) for x in fr[pick].mean(axis=0)]}
        kept = [kept[i] for i in pick]
    kept = sorted(kept[:pool_size])
    record: dict[str, Any] = {"min_consistency": float(min_consistency), "max_fraction_error": max_fraction_error,
                              "drawn": drawn, "dropped": drawn - len(kept), "rounds": rounds,
                              "filled_below_threshold": filled, "fraction_match": matched,
                              "dropped_by_match": before_match - pool_size if matched else 0}
    if judge is not None:
        record["per_image_mean_drawn"] = float(np.mean(pool_c))
        record["per_image_mean_kept"] = float(np.mean([pool_c[i] for i in kept]))
    if max_fraction_error is not None:
        record["fraction_error_mean_drawn"] = float(np.mean(pool_e))
        record["fraction_error_mean_kept"] = float(np.mean([pool_e[i] for i in kept]))
    preds = np.stack([pool_p[i] for i in kept]) if judge is not None else None
    return [pool_s[i] for i in kept], preds, record
