"""The pre-test (Volman Stern et al. 2024, Fig. 12) and the image–mask consistency of a synthetic pool.

A segmentation model trained on *real* data (the "judge") segments the synthetic micrographs; where the
synthetic masks are right, it agrees with them about as well as it agrees with real masks on real held-out
images.  The paper ran an existing expert model on the raw synthetic masks; here a U-Net is trained on the
real base set of the experiment (``BMQ`` train / val by default) in ``synthetic/pretest_unet/`` (resumable like
every U-Net run).  The numbers themselves come from :func:`dualsynth.quality.consistency` (pure NumPy): this
module only trains the judge, runs it and assembles the record 04 writes into ``quality.json``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import quality

__all__ = ["Judge", "train_judge", "judge_record", "score_samples"]


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

    def predict(self, images: np.ndarray) -> np.ndarray:
        from . import segmentation

        return segmentation.predict(self.model, np.asarray(images))

    @property
    def reference(self) -> float:
        """Mean over the classes present in the real reference masks of the judge's pooled IoU there."""
        rec = quality.consistency(self.real_masks[:1], self.real_preds[:1], self.real_masks, self.real_preds,
                                  self.num_classes, self.class_names)
        n = len(rec["classes"])
        return rec["iou_sum_real"] / n if n else 0.0


def train_judge(manifest, folder: str | os.PathLike, *, encoder: str, epochs: int, seed: int = 0,
                tier: str = "BMQ", progress: bool = True) -> Judge:
    """Train (or resume) the pre-test U-Net on the real ``tier`` set and segment the real test images."""
    from . import segmentation

    k = manifest.palette.num_classes
    cfg = segmentation.UNetConfig(num_classes=k, in_channels=manifest.channels, encoder=encoder, epochs=epochs,
                                  seed=seed)
    train = manifest.load_arrays(tier, "train")
    result = segmentation.train_unet(cfg, train, manifest.load_arrays(tier, "val"), folder, progress=progress)
    test_img, test_mask = manifest.load_arrays("test", "test")
    preds = segmentation.predict(result.model, test_img)
    return Judge(model=result.model, encoder=encoder, epochs=result.epochs_run, real_images=test_img,
                 real_masks=test_mask, real_preds=preds, real_train_masks=train[1], num_classes=k,
                 class_names=list(manifest.palette.names))


def score_samples(judge: Judge, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The judge's segmentation of synthetic micrographs and each image's consistency (see
    :func:`dualsynth.quality.per_image_consistency`)."""
    preds = judge.predict(images)
    return preds, quality.per_image_consistency(masks, preds, judge.num_classes, judge.reference)


def judge_record(judge: Judge, syn_masks: np.ndarray, syn_preds: np.ndarray) -> dict[str, Any]:
    """The ``pretest`` entry of ``quality.json``: consistency overall and per class, plus the paper's numbers
    (Missing Class IoU of the judge on the synthetic set and on the real test images)."""
    from .metrics import evaluate

    names = judge.class_names
    on_syn = evaluate(syn_masks, syn_preds, judge.num_classes, names)
    on_real = evaluate(judge.real_masks, judge.real_preds, judge.num_classes, names)
    cons = quality.consistency(syn_masks, syn_preds, judge.real_masks, judge.real_preds, judge.num_classes,
                               names, real_train_masks=judge.real_train_masks)
    return {
        "encoder": judge.encoder,
        "epochs": judge.epochs,
        "missing_class_iou_synthetic": on_syn["missing_class_iou"],
        "missing_class_iou_real_test": on_real["missing_class_iou"],
        "per_class_synthetic": on_syn["per_class"],
        "per_class_real_test": on_real["per_class"],
        "per_image_synthetic": [r["missing_class_iou"] for r in on_syn["per_image"]],
        "consistency": cons,
    }


def generate_pool(generate, pool_size: int, *, judge: Judge | None = None, min_consistency: float = 0.0,
                  max_rounds: int = 5) -> tuple[list, np.ndarray | None, dict[str, Any]]:
    """Draw a pool of ``pool_size`` synthetic samples, optionally curated by the judge.

    ``generate(n, start_index)`` returns ``n`` :class:`~dualsynth.synthesis.SyntheticSample` drawn as if
    ``start_index`` samples had been drawn before.  With ``min_consistency`` > 0
    (needs a judge) samples whose per-image consistency is below it are dropped and more are drawn, in up to
    ``max_rounds`` rounds, each sized by the acceptance rate so far; if the pool is still short, the best of the
    dropped samples fill it (counted in ``filled_below_threshold``).  Returns ``(samples, judge predictions or
    None, curation record)``; samples keep the order in which they were drawn.
    """
    if min_consistency < 0 or not np.isfinite(min_consistency):
        raise ValueError(f"min_consistency must be >= 0, got {min_consistency!r}")
    if min_consistency > 0 and judge is None:
        raise ValueError("min_consistency > 0 needs the pre-test judge (pretest: true)")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds!r}")
    samples = list(generate(pool_size, 0))
    drawn = len(samples)
    if judge is None:
        return samples, None, {"min_consistency": 0.0, "drawn": drawn, "dropped": 0}
    preds, scores = score_samples(judge, np.stack([s.image for s in samples]), np.stack([s.cleaned for s in samples]))
    if min_consistency == 0:
        return samples, preds, {"min_consistency": 0.0, "drawn": drawn, "dropped": 0,
                                "per_image_mean": float(np.mean(scores))}
    kept = [i for i in range(drawn) if scores[i] >= min_consistency]
    pool_s, pool_p, pool_c = samples, list(preds), list(scores)
    rounds = 1
    while len(kept) < pool_size and rounds < max_rounds:
        rate = max(len(kept) / len(pool_s), 0.1)
        need = int(np.ceil((pool_size - len(kept)) / rate * 1.2))
        more = list(generate(need, drawn))
        drawn += len(more)
        p, c = score_samples(judge, np.stack([s.image for s in more]), np.stack([s.cleaned for s in more]))
        base = len(pool_s)
        pool_s += more
        pool_p += list(p)
        pool_c += list(c)
        kept += [base + i for i in range(len(more)) if c[i] >= min_consistency]
        rounds += 1
    filled = 0
    if len(kept) < pool_size:
        rest = sorted((i for i in range(len(pool_s)) if i not in set(kept)), key=lambda i: -pool_c[i])
        filled = pool_size - len(kept)
        kept += rest[:filled]
        import warnings

        warnings.warn(f"only {pool_size - filled} of {drawn} synthetic samples reach min_consistency "
                      f"{min_consistency} after {rounds} rounds; the best {filled} below it fill the pool",
                      stacklevel=2)
    kept = sorted(kept[:pool_size])
    record = {"min_consistency": float(min_consistency), "drawn": drawn, "dropped": drawn - len(kept),
              "rounds": rounds, "filled_below_threshold": filled,
              "per_image_mean_drawn": float(np.mean(pool_c)),
              "per_image_mean_kept": float(np.mean([pool_c[i] for i in kept]))}
    return [pool_s[i] for i in kept], np.stack([pool_p[i] for i in kept]), record
