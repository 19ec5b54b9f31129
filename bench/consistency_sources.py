"""Where do synthetic masks disagree with their micrographs: in the VQ-VAE, in the prior, or in the judge?

For each experiment given (04 finished, with its pre-test judge in ``synthetic/pretest_unet``), the judge — a U-Net
trained on the real BMQ training patches — segments four sets, each scored as 04 scores the pool
(:func:`dualsynth.quality.consistency`: IoU against the set's masks ÷ the judge's IoU on the real test images):

* ``real_val``: the real BMQ validation patches with their own masks (no generator at all; the judge never trained
  on them, though it chose its learning-rate steps on them) — what "consistency 1" looks like on other real data;
* ``recon_val``: the same patches encoded and decoded by the VQ-VAE (its image and mask channels) — what the VQ-VAE
  alone loses;
* ``pool``: the synthetic pool 04 wrote (codes drawn by the prior) — what the prior adds to that;
* ``pool_second_judge``: the pool under a second judge of another seed (:func:`dualsynth.pretest.check_record`,
  trained in ``synthetic/pretest_unet_check`` unless it is there) — how much of the number is the judge's own.

    .venv/bin/python bench/consistency_sources.py outputs/q17-nasa_super ... [--out FILE]

Writes ``bench/results/consistency_sources.json`` (one entry per experiment; merged with an existing file).  The
judge settings are the ``quick`` preset's (``params/presets/quick/04_synthesis.yaml``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import dualsynth  # noqa: F401  (sets the Keras environment first)
import numpy as np
import yaml

from dualsynth import patching, pretest, quality, synthesis, vqvae
from dualsynth.dual import compose_batch, split
from dualsynth.io import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]


def _score(judge, images, masks) -> dict:
    images = images if images.dtype == np.uint8 else np.clip(images, 0.0, 1.0)
    rec = quality.consistency(masks, judge.predict(images), judge.real_masks, judge.real_preds, judge.num_classes,
                              judge.class_names, real_train_masks=judge.real_train_masks)
    return _summary(rec)


def _summary(rec: dict) -> dict:
    """A record of quality.consistency, shortened: the plain, balanced and capped overall measures, the IoU and
    fraction ratio per class."""
    return {k: rec[k] for k in ("consistency", "consistency_balanced", "consistency_capped")} | {
        "iou_ratio": {c: v["ratio"] for c, v in rec["per_class"].items()},
        "fraction_ratio": {c: v["fraction_ratio"] for c, v in rec["per_class"].items()}}


def measure(exp: Path, settings: dict) -> dict:
    manifest = patching.Manifest.load(exp / "patches")
    pal, syn = manifest.palette, exp / "synthetic"
    kw = dict(encoder=settings["pretest_encoder"], epochs=settings["pretest_epochs"], seed=0,
              unet=settings.get("pretest_unet") or {}, progress=False)
    judge = pretest.train_judge(manifest, syn / "pretest_unet", **kw)
    generator = vqvae.load_vqvae(exp / "vqvae" / "checkpoint", which="best")
    encoding = read_json(exp / "vqvae" / "summary.json")["mask_encoding"]
    img, msk = manifest.load_arrays("BMQ", "val")
    rec = vqvae.decode_codes(generator, vqvae.encode_dataset(generator, compose_batch(img, msk, pal, encoding)))
    rec_img, rec_part = split(rec, manifest.channels, encoding)
    rec_msk = synthesis.decoded_labels(rec_part, pal, encoding)
    p_img, p_msk = synthesis.load_pool_arrays(syn, manifest)
    second = pretest.check_record(manifest, syn / "pretest_unet_check", p_img, p_msk, **kw)
    return {"real_val": _score(judge, img, msk), "recon_val": _score(judge, rec_img, rec_msk),
            "recon_val_mask_agreement": float((rec_msk == msk).mean()), "pool": _score(judge, p_img, p_msk),
            "pool_second_judge": {**_summary(second["consistency"]), "judge_seed": second["judge_seed"]},
            "num_val": int(len(img)), "num_pool": int(len(p_img))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "consistency_sources.json")
    args = ap.parse_args(argv)
    import tensorflow as tf  # loaded by dualsynth already; its retracing notices are no news here

    tf.get_logger().setLevel("ERROR")
    settings = yaml.safe_load((ROOT / "params" / "presets" / "quick" / "04_synthesis.yaml").read_text())
    results = read_json(args.out) if args.out.is_file() else {}
    for exp in args.experiments:
        t0 = time.perf_counter()
        entry = measure(exp, settings)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results[exp.name] = entry
        row = {k: tuple(None if v[m] is None else round(v[m], 3)
                        for m in ("consistency", "consistency_balanced", "consistency_capped"))
               for k, v in entry.items() if isinstance(v, dict) and "consistency" in v}
        print(exp.name, row, flush=True)
        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
