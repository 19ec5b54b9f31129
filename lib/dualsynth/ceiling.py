"""A ceiling per dataset: the study's U-Net recipe trained to convergence on the real BMQ set, measured once.

A quick U-Net's score means little on its own: 0.45 Missing Class IoU may be most of what 40 patches allow, or a
fraction of it.  The ceiling is the same architecture and recipe (the preset's 06 parameters) trained for many
more updates (default 2,000, a cosine schedule over all of them, the best epoch by validation IoU) on the base
variant's real training patches, scored on the same real test patches as the study.  Beside the majority-class
baseline it lets 07 and the report say "SHQ_0 reaches 82 % of what this data allows".

It is kept as a small results file per dataset, ``params/ceilings/<data name>.json`` (committed: measured once,
read by every later experiment on that data), and found again only for an experiment with the same data name,
patch size and test / training patch ids (:func:`lookup`); a ceiling of another recipe is still shown in the
report, with the settings that differ named.  It is the recipe's architecture, batch, loss and BatchNorm settings
with its own schedule (cosine over all updates), on BMQ's labels (mixed quality): a reference for what this
architecture learns from the data at length, not an upper bound for every tier.

    python -m dualsynth.ceiling outputs/<experiment> [--updates 2000] [--seeds 0] [--preset quick] [--add]

Each seed is written as soon as it is trained, so an interrupted measurement keeps its finished seeds; ``--add``
adds seeds to the file already there (same data, recipe and number of updates, else a clear error) instead of
starting a new one (:func:`merge`).

Nothing here imports TensorFlow until :func:`measure` trains.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import metrics, patching
from . import variants as V
from .config import ParamError, project_root
from .io import DataError, atomic_write_json, read_json
from .tfquiet import verbose

__all__ = ["ceiling_file", "split_key", "lookup", "measure", "merge", "main", "RECIPE_KEYS"]

#: The ceiling's own schedule, whatever the recipe's: left out when a ceiling's recipe is compared with a run's.
_OWN_SCHEDULE = ("lr_schedule", "warmup_fraction")
#: 06 parameters that make up the recipe a ceiling is measured with (and compared on).
RECIPE_KEYS = ("encoder", "encoder_weights", "base_filters", "batch_size", "learning_rate", "lr_schedule",
               "warmup_fraction", "class_weighting", "normalise", "bn_momentum", "focal_weight")


#: Rows of a ceiling's training history (its epochs): the updates are rounded down to a multiple of it.
ROWS = 40


def _recipe(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in RECIPE_KEYS if k in params}


def recipe_differs(ceiling_recipe: Mapping[str, Any], recipe: Mapping[str, Any]) -> list[str]:
    """The :data:`RECIPE_KEYS` both hold on which a ceiling's recipe and ``recipe`` differ (the schedule aside)."""
    return [k for k in RECIPE_KEYS if k not in _OWN_SCHEDULE and k in ceiling_recipe and k in recipe
            and ceiling_recipe[k] != recipe[k]]


def ceiling_file(data_name: str, root: str | Path | None = None) -> Path:
    if not data_name or "/" in data_name or data_name.startswith("."):
        raise ParamError(f"not a usable data name for a ceiling file: {data_name!r}")
    return Path(root or project_root()) / "params" / "ceilings" / f"{data_name}.json"


def split_key(manifest_data: Mapping[str, Any], patch_size: int, variant_data: Mapping[str, Any]) -> str:
    """Identity of the data a ceiling was measured on: data name, patch size, train / val / test patch ids."""
    ids = {s: sorted(str(e["id"]) for e in variant_data[s]) for s in ("train", "val", "test")}
    text = json.dumps({"data": manifest_data.get("name"), "patch_size": int(patch_size), "ids": ids},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _experiment_key(exp: Path, variant: str) -> tuple[str, str]:
    manifest = read_json(exp / "patches" / "manifest.json")
    data = read_json(exp / "variants" / f"{variant}.json")
    return manifest["data"]["name"], split_key(manifest["data"], manifest["patch_size"], data)


def lookup(experiment: str | Path, recipe: Mapping[str, Any] | None = None,
           root: str | Path | None = None) -> dict[str, Any] | None:
    """The ceiling measured on this experiment's data (same name, patch size and patch ids), else None.

    The record gets ``same_recipe`` (True/False; None without ``recipe``) comparing its recipe with ``recipe``
    (06 parameters) on the :data:`RECIPE_KEYS` both hold, the schedule left out, and ``recipe_differs`` (those
    that differ).
    """
    exp = Path(experiment)
    try:
        record = None
        for variant in ("BMQ_0",):
            name, key = _experiment_key(exp, variant)
            path = ceiling_file(name, root)
            if not path.is_file():
                return None
            record = read_json(path)
            if record.get("split_key") != key:
                return None
    except (DataError, OSError, KeyError, ParamError):
        return None
    assert record is not None
    record["recipe_differs"] = []
    if recipe is not None:  # the schedule is the ceiling's own (cosine over all its updates): not compared
        record["recipe_differs"] = recipe_differs(record["recipe"], recipe)
        record["same_recipe"] = not record["recipe_differs"]
    else:
        record["same_recipe"] = None
    return record


def measure(experiment: str | Path, params: Mapping[str, Any], updates: int = 2000, seeds: Sequence[int] = (0,),
            variant: str = "BMQ_0", rows: int = ROWS, progress: bool = True) -> dict[str, Any]:
    """Train ``params`` (06 parameters) for ``updates`` updates on ``variant`` per seed; score on its test set."""
    from .unet.infer import predict  # (TensorFlow: only the measurement trains a U-Net)
    from .unet.model import UNetConfig
    from .unet.train import train_unet

    exp = Path(experiment)
    if updates < rows:
        raise ParamError(f"ceiling updates={updates}: need at least {rows} (one per history row)")
    manifest = patching.Manifest.load(exp / "patches")
    palette = manifest.palette
    data = V.load_variant(exp / "variants" / f"{variant}.json")
    split = {s: V.load_split(data, s, manifest.channels, palette) for s in ("train", "val", "test")}
    recipe = _recipe(params)
    steps = updates // rows
    per_seed = []
    for seed in seeds:
        cfg = UNetConfig.from_params({**recipe, "lr_schedule": "cosine"}, num_classes=palette.num_classes,
                                     in_channels=manifest.channels, epochs=rows, steps_per_epoch=steps,
                                     early_stopping_patience=rows, seed=int(seed))
        t0 = time.perf_counter()
        result = train_unet(cfg, split["train"], split["val"], None, progress=progress)
        images, masks = split["test"]
        scores = metrics.evaluate(masks, predict(result.model, images), palette.num_classes, palette.names)
        per_seed.append({"seed": int(seed), "missing_class_iou": scores["missing_class_iou"],
                         "miou": scores["miou"], "per_class_iou_dataset": scores["per_class_iou_dataset"],
                         "best_update": result.best_epoch * steps, "train_seconds": round(time.perf_counter() - t0)})
    name, key = _experiment_key(exp, variant)
    return _summarise({
        "format": 1, "dataset": name, "variant": variant, "split_key": key, "measured_on": exp.name,
        "recipe": recipe, "updates": steps * rows, "schedule": "cosine over all updates, best epoch by val IoU",
        "per_seed": per_seed}, palette.names)


def _summarise(record: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``record`` with its seeds, the means over them and the per-class means (the seeds' order kept)."""
    per_seed = record["per_seed"]
    mean = lambda key: sum(r[key] for r in per_seed) / len(per_seed)  # noqa: E731
    per_class = {}
    for c in names:
        vals = [r["per_class_iou_dataset"].get(c) for r in per_seed]
        vals = [v for v in vals if v is not None]
        per_class[c] = sum(vals) / len(vals) if vals else None
    out = {k: v for k, v in record.items() if k != "per_seed"}
    out.update({"seeds": [int(r["seed"]) for r in per_seed], "missing_class_iou": mean("missing_class_iou"),
                "miou": mean("miou"), "per_class_iou_dataset": per_class, "per_seed": per_seed})
    return out


def _check_same(old: Mapping[str, Any], new: Mapping[str, Any], where: str) -> None:
    differs = [k for k in ("dataset", "variant", "split_key", "updates", "recipe") if old.get(k) != new.get(k)]
    if differs:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differs)
        raise ParamError(f"{where}: cannot add seeds to a ceiling measured differently ({detail}); "
                         "measure it anew without --add")


def merge(old: Mapping[str, Any], new: Mapping[str, Any], where: str = "ceiling file") -> dict[str, Any]:
    """One ceiling from the seeds of ``old`` and ``new`` (a seed in both: ``new``'s run), means recomputed.

    Both must be measured on the same data (split key), with the same recipe and number of updates; otherwise a
    :class:`ParamError` names what differs (``where``: the file, for the message).
    """
    _check_same(old, new, where)
    seeds_new = {int(r["seed"]) for r in new["per_seed"]}
    per_seed = [r for r in old["per_seed"] if int(r["seed"]) not in seeds_new] + list(new["per_seed"])
    names = list(new["per_class_iou_dataset"])
    return _summarise({**{k: v for k, v in new.items() if k in ("format", "dataset", "variant", "split_key",
                                                                 "measured_on", "recipe", "updates", "schedule")},
                       "per_seed": sorted(per_seed, key=lambda r: int(r["seed"]))}, names)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualsynth.ceiling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="outputs/<experiment> with 01 and 05 finished")
    ap.add_argument("--preset", default="quick", help="whose 06 parameters are the recipe (default quick)")
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    ap.add_argument("--add", action="store_true",
                    help="add these seeds to the ceiling file already there instead of replacing it")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a 06 parameter of the recipe")
    args = ap.parse_args(argv)
    # the batch runner, for the command line only: the report imports this module and must not pull it in
    from .batch import _parse_overrides, notebook_parameters, preset_params

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        exp = Path(args.experiment)
        if not (exp / "variants" / "BMQ_0.json").is_file():
            raise ParamError(f"{exp}: no variants/BMQ_0.json; run 01_patching and 05_datasets first")
        # the recipe as a study run gets it: the notebook's defaults, then the preset, then --set
        params = {**notebook_parameters("06_unet_training"), **preset_params(args.preset, "06_unet_training"),
                  **_parse_overrides(args.overrides)}
        # each seed's new model traces the same Keras predict code again, which TensorFlow's Python logger reports
        # as "N out of the last M calls … triggered tf.function retracing" from the third seed on: not a problem
        # here, so its WARNING lines stay out of the terminal (its errors, and Python warnings, still show; all of
        # it with DUALSYNTH_VERBOSE=1)
        if not verbose():
            logging.getLogger("tensorflow").setLevel(logging.ERROR)
        if not seeds:
            raise ParamError(f"--seeds {args.seeds!r}: no seed given")
        record = None
        name, key = _experiment_key(exp, "BMQ_0")
        out = ceiling_file(name)
        if args.add and out.is_file():  # checked before anything trains: a mismatch must not cost a training
            header = {"dataset": name, "variant": "BMQ_0", "split_key": key,
                      "updates": (args.updates // ROWS) * ROWS, "recipe": _recipe(params)}
            _check_same(read_json(out), header, str(out))
        for i, seed in enumerate(seeds):  # one seed at a time, each written at once: an interruption keeps them
            one = measure(exp, params, args.updates, [seed])
            if record is None and args.add and out.is_file():
                record = read_json(out)
            record = one if record is None else merge(record, one, str(out))
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out, record)
            if len(seeds) > 1:
                print(f"seed {seed}: Missing Class IoU {one['missing_class_iou']:.3f} -> {out}"
                      f" ({i + 1} of {len(seeds)} seeds)")
    except (ParamError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    assert record is not None
    print(f"{record['dataset']}: ceiling Missing Class IoU {record['missing_class_iou']:.3f} "
          f"({record['updates']} updates, seeds {record['seeds']}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
