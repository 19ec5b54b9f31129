"""Choose the quick U-Net recipe on validation data: base variants of several datasets, several recipes, seeds.

For each experiment given (01 and 05 finished, so ``variants/<base>.json`` exists), each recipe below is trained
on the base variant's real training patches with each seed, early stopping / best epoch on its real validation
patches as in 06.  The recipe is *chosen* by the Missing Class IoU on the validation patches (mean over seeds and
datasets); the test score is recorded beside it so the winner's test number can be reported once, but nothing
here looks at it to choose.  Results are merged into the output file after every run (resumable: a finished
(experiment, variant, recipe, seed) is skipped).

    .venv/bin/python bench/unet_recipe.py outputs/q-ohc-nasa_super ... [--recipes a,b] [--seeds 0,1]
        [--variant BMQ_0] [--out bench/results/unet_recipe.json]
    .venv/bin/python bench/unet_recipe.py --summary bench/results/unet_recipe_2026-12-04.json   # the table, no runs

Recipes are :class:`dualsynth.unet.UNetConfig` overrides (``RECIPES``); every recipe uses the same number of
updates unless it says otherwise (``updates``), and ``bn_momentum`` 0.9 as the quick preset.

Compare recipes only within one results file: the same recipe and seed score differently on another CPU (float
round-off) and run at another speed.  ``bench/results/unet_recipe.json``: the first search (2026-12-03, a 2-core
EPYC with AVX-512); ``bench/results/unet_recipe_2026-12-04.json``: schedules and step sizes against the reference
``plain16_b8`` re-run beside them (a 2-core EPYC with AVX2 only).  The quick preset holds the best recipe of the
latest file by the validation mean (``tests/test_unet_recipe.py`` checks that it still does).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dualsynth  # noqa: F401  (sets the Keras environment first)

from dualsynth import metrics, patching
from dualsynth import variants as V
from dualsynth.io import atomic_write_json, read_json
from dualsynth.unet.infer import predict
from dualsynth.unet.model import UNetConfig
from dualsynth.unet.train import train_unet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(bn_momentum=0.9, learning_rate=1e-3, early_stopping_patience=1000, reduce_lr_patience=3)
COSINE = dict(lr_schedule="cosine", warmup_fraction=0.05)
#: name -> (UNetConfig overrides, updates, batch size)
RECIPES = {
    "effb0": (dict(encoder="efficientnetb0"), 160, 2),  # the quick preset until this benchmark
    "plain16": (dict(encoder="plain", base_filters=16), 160, 2),
    "plain16_cos": (dict(encoder="plain", base_filters=16, **COSINE), 160, 2),
    "plain16_cos_norm": (dict(encoder="plain", base_filters=16, normalise="patches", **COSINE), 160, 2),
    "plain16_cos_norm_w": (dict(encoder="plain", base_filters=16, normalise="patches",
                                class_weighting="sqrt_inverse", **COSINE), 160, 2),
    "plain16_cos_norm_w_b8": (dict(encoder="plain", base_filters=16, normalise="patches",
                                   class_weighting="sqrt_inverse", **COSINE), 160, 8),
    "plain16_cos_norm_w_b8_480": (dict(encoder="plain", base_filters=16, normalise="patches",
                                       class_weighting="sqrt_inverse", **COSINE), 480, 8),
    "plain32_cos_norm_w_b8": (dict(encoder="plain", base_filters=32, normalise="patches",
                                   class_weighting="sqrt_inverse", **COSINE), 160, 8),
    "mnv2_cos_norm_w_b8": (dict(encoder="mobilenetv2", normalise="patches", class_weighting="sqrt_inverse",
                                **COSINE), 160, 8),
    "r18_cos_norm_w_b8": (dict(encoder="resnet18", normalise="patches", class_weighting="sqrt_inverse",
                               **COSINE), 160, 8),
    "effb0_cos_norm_w_b8": (dict(encoder="efficientnetb0", normalise="patches", class_weighting="sqrt_inverse",
                                 **COSINE), 160, 8),
    # the paper's plateau schedule at batch 8, with and without the normalisation and class weights
    "plain16_b8": (dict(encoder="plain", base_filters=16), 160, 8),
    "plain16_norm_w_b8": (dict(encoder="plain", base_filters=16, normalise="patches",
                               class_weighting="sqrt_inverse"), 160, 8),
    # 2026-12-04: can a schedule or a larger step reach further in the same 160 updates (metaldam's BMQ_0 stood
    # at 80 % of its ceiling with plain16_b8)?
    "plain16_b8_lr2e3": (dict(encoder="plain", base_filters=16, learning_rate=2e-3), 160, 8),
    "plain16_cos_b8_lr3e3": (dict(encoder="plain", base_filters=16, learning_rate=3e-3, **COSINE), 160, 8),
    # the winner's settings from a local inpainting pretext (dualsynth.unet.pretext) instead of random weights
    "plain16_cos_norm_w_b8_pre": (dict(encoder="plain", base_filters=16, normalise="patches",
                                       class_weighting="sqrt_inverse", encoder_weights="{pretext}", **COSINE),
                                  160, 8),
}
EPOCHS = 10  # history rows / validation checks per run
PRETEXT_UPDATES = 600


def pretext_file(exp: Path, base_filters: int = 16) -> str:
    """The experiment's inpainting-pretrained plain U-Net (made here once if missing)."""
    from dualsynth.unet.pretext import pretext_images, pretrain_plain

    path = exp / "unet" / f"pretext_plain{base_filters}.h5"
    if not path.is_file():
        pretrain_plain(pretext_images(exp / "patches"), path, base_filters, PRETEXT_UPDATES, progress=False)
    return str(path)


def run_one(exp: Path, variant: str, recipe: str, seed: int) -> dict:
    overrides, updates, batch = RECIPES[recipe]
    manifest = patching.Manifest.load(exp / "patches")
    palette = manifest.palette
    data = V.load_variant(exp / "variants" / f"{variant}.json")
    split = {s: V.load_split(data, s, manifest.channels, palette) for s in ("train", "val", "test")}
    steps = max(1, updates // EPOCHS)
    if overrides.get("encoder_weights") == "{pretext}":
        overrides = {**overrides, "encoder_weights": pretext_file(exp, overrides["base_filters"])}
    cfg = UNetConfig(num_classes=palette.num_classes, in_channels=manifest.channels, epochs=EPOCHS,
                     steps_per_epoch=steps, batch_size=batch, seed=seed, **{**COMMON, **overrides})
    t0 = time.perf_counter()
    result = train_unet(cfg, split["train"], split["val"], None, progress=False)
    seconds = time.perf_counter() - t0
    out = {"experiment": exp.name, "variant": variant, "recipe": recipe, "seed": seed, "updates": steps * EPOCHS,
           "batch_size": batch, "train_seconds": round(seconds, 1), "best_epoch": result.best_epoch,
           "config": {k: v for k, v in cfg.to_dict().items() if k != "input_stats"},
           "val_patches": len(split["val"][0]), "test_patches": len(split["test"][0])}
    for name in ("val", "test"):
        images, masks = split[name]
        scores = metrics.evaluate(masks, predict(result.model, images), palette.num_classes, palette.names)
        out[name] = {"missing_class_iou": scores["missing_class_iou"], "miou": scores["miou"],
                     "per_class_iou_dataset": scores["per_class_iou_dataset"]}
    return out


def validation_means(paths: list[Path]) -> list[dict]:
    """Per recipe: the validation Missing Class IoU per experiment (mean over its seeds), the number of seeds, their
    mean over experiments (NaN unless the recipe ran on every experiment of the files) and the seconds per run;
    sorted best first.  The test scores are not read: they are not for choosing."""
    runs = [r for p in paths if p.is_file() for r in read_json(p)["runs"]]
    exps = sorted({r["experiment"] for r in runs})
    table: dict[str, dict[str, list[dict]]] = {}
    for r in runs:
        table.setdefault(r["recipe"], {}).setdefault(r["experiment"], []).append(r)
    rows = []
    for recipe, per in table.items():
        vals = {e: sum(x["val"]["missing_class_iou"] for x in per[e]) / len(per[e]) for e in per}
        mean = sum(vals.values()) / len(vals) if len(vals) == len(exps) else float("nan")
        secs = sum(x["train_seconds"] for e in per for x in per[e]) / sum(len(per[e]) for e in per)
        rows.append({"recipe": recipe, "mean": mean, "val": vals, "seeds": {e: len(per[e]) for e in per},
                     "seconds": secs, "experiments": exps})
    rows.sort(key=lambda r: -r["mean"] if r["mean"] == r["mean"] else 1)
    return rows


def summary_table(paths: list[Path]) -> str:
    """Markdown: per recipe the validation Missing Class IoU per dataset (mean over seeds, seeds in brackets),
    their mean, and the seconds per run; sorted by the mean.  Test scores are left out: they are not for choosing."""
    rows = validation_means(paths)
    exps = rows[0]["experiments"] if rows else []
    out = ["| recipe | " + " | ".join(exps) + " | mean | s / run |", "|---" * (len(exps) + 3) + "|"]
    for r in rows:
        cells = [f"{r['val'][e]:.3f} ({r['seeds'][e]})" if e in r["val"] else "–" for e in exps]
        out.append(f"| {r['recipe']} | " + " | ".join(cells) + f" | {r['mean']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="*")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variant", default="BMQ_0")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "unet_recipe.json"))
    ap.add_argument("--summary", nargs="*", metavar="JSON", help="print the validation table of result files; no runs")
    args = ap.parse_args(argv)
    if args.summary is not None:
        print(summary_table([Path(p) for p in (args.summary or [args.out])]))
        return 0
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    payload = read_json(out) if out.is_file() else {"runs": []}
    done = {(r["experiment"], r["variant"], r["recipe"], r["seed"]) for r in payload["runs"]}
    for seed in seeds:
        for recipe in recipes:
            for e in args.experiments:
                exp = Path(e)
                key = (exp.name, args.variant, recipe, seed)
                if key in done:
                    continue
                row = run_one(exp, args.variant, recipe, seed)
                print(f"{exp.name} {args.variant} {recipe} seed {seed}: val {row['val']['missing_class_iou']:.3f} "
                      f"test {row['test']['missing_class_iou']:.3f} ({row['train_seconds']:.0f} s)", flush=True)
                payload["runs"].append(row)
                payload["machine"] = machine()
                atomic_write_json(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
