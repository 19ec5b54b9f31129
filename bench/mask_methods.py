"""Compare mask clean-up methods on one generator: consistency, class fractions and similarity per method.

For each experiment given (02 and 03 finished), one pool of code maps is sampled and decoded once; every
clean-up method is applied to the same decoded masks, and the same pre-test judge (a U-Net trained on the real
BMQ set, in ``synthetic/pretest_unet``, trained here if 04 has not trained it) segments the same synthetic
micrographs.  So the methods differ only in their masks.  The consistency's denominator (the judge on the real
test images) is the same for every method of one experiment: the ranking of the methods does not depend on test
data; the generator's training patches are the real side of the fractions and similarity.

    .venv/bin/python bench/mask_methods.py outputs/q-onehot-ndfeb_default ... [--pool 144] [--out FILE]

Writes ``bench/results/mask_methods.json`` (one entry per experiment and method; merged with an existing file).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dualsynth  # noqa: F401  (sets the Keras environment first)
import numpy as np

from dualsynth import patching, pixelcnn, pretest, quality, synthesis, vqvae
from dualsynth.dual import split
from dualsynth.io import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("paper", "thin", "none")


def compare(exp: Path, pool: int, seed: int, judge_epochs: int, rim_px: int) -> dict:
    manifest = patching.Manifest.load(exp / "patches")
    palette = manifest.palette
    k = palette.num_classes
    generator = vqvae.load_vqvae(exp / "vqvae" / "checkpoint", which="best")
    prior = pixelcnn.load_prior(exp / "pixelcnn" / "prior")
    code_shape = tuple(read_json(exp / "pixelcnn" / "summary.json")["code_map_shape"])
    encoding = read_json(exp / "vqvae" / "summary.json")["mask_encoding"]
    conditions = synthesis.ConditionSource.for_prior(prior, exp / "pixelcnn", seed=seed)
    t0 = time.perf_counter()
    judge = pretest.train_judge(manifest, exp / "synthetic" / "pretest_unet", encoder="efficientnetb0",
                                epochs=judge_epochs, seed=seed, progress=False)
    t_judge = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = pixelcnn.sample_fast(prior, pool, *code_shape, seed=seed, batch_size=min(pool, 48),
                                 **({"condition": conditions.draw(pool)} if conditions.active else {}))
    images, parts = split(vqvae.decode_codes(generator, codes), manifest.channels, encoding)
    t_sample = time.perf_counter() - t0
    preds = judge.predict(images)
    real_images, real_masks = manifest.load_arrays("BMQ", "train")
    features = quality.vqvae_features(generator, palette, encoding)
    min_px = synthesis.scaled_min_object_px(manifest.patch_size)
    out = {"experiment": exp.name, "mask_encoding": encoding, "pool": pool, "patch_size": manifest.patch_size,
           "min_object_px": min_px, "rim_px": rim_px, "conditioned": conditions.active,
           "seconds_judge": round(t_judge, 1), "seconds_sample": round(t_sample, 1), "methods": {}}
    for method in METHODS:
        t0 = time.perf_counter()
        samples = [synthesis.clean_decoded(images[i], parts[i], palette, min_px, seed=seed + i, encoding=encoding,
                                           cleanup=method, rim_px=rim_px) for i in range(pool)]
        t_clean = time.perf_counter() - t0
        masks = np.stack([s.cleaned for s in samples])
        rec = pretest.judge_record(judge, masks, preds)
        sim = quality.similarity_report(real_images, real_masks, images, masks, k, features_fn=features, seed=seed,
                                        class_names=palette.names, boundary=False)
        cons = rec["consistency"]
        out["methods"][method] = {
            "consistency": cons["consistency"],
            "failing_classes": cons["failing_classes"],
            "per_class": cons["per_class"],
            "missing_class_iou_synthetic": rec["missing_class_iou_synthetic"],
            "missing_class_iou_real_test": rec["missing_class_iou_real_test"],
            "changed_fraction": float(np.mean([s.changed_fraction for s in samples])),
            "seconds_cleanup": round(t_clean, 2),
            "similarity": {key: {"synthetic_vs_real": m["synthetic_vs_real"], "real_vs_real": m["real_vs_real"]}
                           for key, m in sim["measures"].items()},
        }
        fr = {n: round(v["fraction_ratio"] or 0, 2) for n, v in cons["per_class"].items()}
        print(f"{exp.name:32s} {method:6s} consistency {synthesis.fmt(cons['consistency'], '.3f')}  fraction ratios {fr}  "
              + "  ".join(f"{key} {m['synthetic_vs_real']:.4f}/{m['real_vs_real']:.4f}"
                          for key, m in sim["measures"].items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="+", type=Path)
    ap.add_argument("--pool", type=int, default=144)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge-epochs", type=int, default=15, help="the quick preset's pretest_epochs")
    ap.add_argument("--rim-px", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the result key (e.g. a variant of the generator)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mask_methods.json")
    args = ap.parse_args(argv)
    results = read_json(args.out) if args.out.is_file() else {}
    for exp in args.experiments:
        results[exp.name + args.tag] = compare(exp, args.pool, args.seed, args.judge_epochs, args.rim_px)
        atomic_write_json(args.out, results)
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
