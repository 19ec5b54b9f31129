"""The dataset variants of the segmentation study: names, percentages, exact file lists.

46 variants as in the paper, plus an augmentation-only baseline:

* ``SHQ_0 … BMQ_0`` — the four real base sets, no synthetic images (4);
* ``<tier>_<p>`` for tier in SHQ, SLQ, BLQ, BMQ and p in 50, 75, 100, 150, 200, 250, 300 — the base set plus
  p % of its training size in synthetic images (28); e.g. SHQ_50 = 16 real + 8 synthetic;
* ``SyntLQ_<p>``, ``SyntMQ_<p>`` — synthetic images only (p % of the big training size, 48), validated on
  the real BLQ / BMQ validation set (14);
* ``BMQ_aug`` — BMQ with the albumentations baseline, no synthetic images.

Beyond the paper, a second way to use the pool (group ``pretrain``, 28 variants, not part of ``all``):

* ``PT_<tier>_<p>`` — *pretrain on synthetic, then fine-tune on real*: a U-Net is first trained on p % of the tier's
  training size in synthetic images only (the same count and the same pool prefix as the mixed variant
  ``<tier>_<p>``: ``PT_SHQ_50`` pretrains on SHQ_50's 8 synthetic images), then fine-tuned, starting from those
  weights, on the tier's real training set with exactly the base run's budget.  Both stages validate on the tier's
  real validation set.  Its variant file lists the real fine-tuning set as ``train`` and the synthetic pretraining
  set as ``pretrain`` (:func:`materialise`); the schedule is :mod:`dualsynth.unet.pretrain`, the budgets
  :func:`dualsynth.unet.budget.run_budget`.  Its base is ``<tier>_0``; as it trains longer than its base (pretraining
  + the base's budget), its matched control is ``<tier>_0@<total updates>`` under either budget.

A **run** of the study trains one variant with one seed under ``unet/<run>/seed<k>/``; its name is the variant's,
or, for a *matched control* (06's ``budget: epochs``, ``study --matched-controls``), ``<base>@<updates>``: the
base variant (e.g. ``SHQ_0``) trained with the number of updates of a variant with synthetic data (``SHQ_0@320``),
on the base's files (:func:`parse_run`, :func:`control_name`).

Synthetic images are taken as *prefixes* of one shuffled pool, so a smaller variant's synthetic images are part
of every larger one's.  Validation and test sets are always real.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .config import ParamError, project_root
from .io import DataError, atomic_write_json, atomic_write_text, fingerprint, read_image, read_json, read_mask
from .unet.record import metrics_complete, read_complete  # noqa: F401  (metrics_complete re-exported: its old home)

__all__ = [
    "BASE_TIERS",
    "PERCENTAGES",
    "Variant",
    "parse_variant",
    "all_variants",
    "variant_names",
    "write_variant_yamls",
    "materialise",
    "materialise_all",
    "load_variant",
    "VariantError",
    "pretrain_variants",
    "CORE",
    "RunName",
    "parse_run",
    "control_name",
]

BASE_TIERS = ("SHQ", "SLQ", "BLQ", "BMQ")
PERCENTAGES = (50, 75, 100, 150, 200, 250, 300)
SYNTHETIC_ONLY = {"SyntLQ": "BLQ", "SyntMQ": "BMQ"}  # name → tier whose real validation set is used
_RE = re.compile(r"^(SHQ|SLQ|BLQ|BMQ|SyntLQ|SyntMQ)_(\d+|aug)$")
PRETRAIN_PREFIX = "PT_"  # PT_<tier>_<p>: pretrain on p % synthetic, fine-tune on the real <tier> set
_PT_RE = re.compile(r"^PT_(SHQ|SLQ|BLQ|BMQ)_(\d+)$")
GROUPS = ("base", "mixed", "synthetic", "augment", "pretrain")
#: ``core``: the runs that answer the question on a small budget — the two base sets the paper compares (one small,
#: one big, both high-quality masks), each with 100 % synthetic images added, and the pretrain-then-fine-tune
#: variant, which the study found the most useful way to use the pool. ``make run`` trains these (with
#: ``--matched-controls``, which adds ``SHQ_0@<updates of PT_SHQ_100>``); ``--variants all`` is the paper's grid.
CORE = ("SHQ_0", "BMQ_0", "SHQ_100", "BMQ_100", "PT_SHQ_100")


class VariantError(ParamError):
    """An unknown variant, or a variant the data cannot supply."""


@dataclass(frozen=True)
class Variant:
    name: str
    group: str  # "base", "mixed", "synthetic", "augment", "pretrain"
    tier: str  # real tier giving the training (base/mixed/augment) and the validation set
    percent: int  # synthetic share, % of the reference training size
    augment: bool = False

    @property
    def synthetic_only(self) -> bool:
        return self.group == "synthetic"

    def synthetic_count(self, base_train: int, big_train: int) -> int:
        """Number of synthetic training images: percent of the tier's training size (of the big set's for Synt*)."""
        ref = big_train if self.synthetic_only else base_train
        return int(math.floor(self.percent * ref / 100 + 0.5))


def parse_variant(name: str) -> Variant:
    pt = _PT_RE.match(str(name))
    if pt:
        tier, p = pt.group(1), int(pt.group(2))
        if p not in PERCENTAGES:
            raise VariantError(f"unknown variant {name!r}: pretraining percentages are {list(PERCENTAGES)}")
        return Variant(str(name), "pretrain", tier, p)
    m = _RE.match(str(name))
    if not m:
        raise VariantError(
            f"unknown variant {name!r}; variants are <SHQ|SLQ|BLQ|BMQ>_<0|{'|'.join(map(str, PERCENTAGES))}>, "
            f"<SyntLQ|SyntMQ>_<{'|'.join(map(str, PERCENTAGES))}>, BMQ_aug and "
            f"PT_<SHQ|SLQ|BLQ|BMQ>_<{'|'.join(map(str, PERCENTAGES))}>"
        )
    head, tail = m.groups()
    if tail == "aug":
        if head != "BMQ":
            raise VariantError(f"unknown variant {name!r}: the augmentation baseline is BMQ_aug only")
        return Variant(name, "augment", "BMQ", 0, augment=True)
    p = int(tail)
    if head in SYNTHETIC_ONLY:
        if p not in PERCENTAGES:
            raise VariantError(f"unknown variant {name!r}: synthetic-only percentages are {list(PERCENTAGES)}")
        return Variant(name, "synthetic", SYNTHETIC_ONLY[head], p)
    if p == 0:
        return Variant(name, "base", head, 0)
    if p not in PERCENTAGES:
        raise VariantError(f"unknown variant {name!r}: percentages are 0 and {list(PERCENTAGES)}")
    return Variant(name, "mixed", head, p)


@dataclass(frozen=True)
class RunName:
    """A study run's name: its variant and, for a matched control run (``SHQ_0@320``), its number of updates."""

    name: str
    variant: Variant  # the variant whose files the run trains on
    updates: int | None = None  # a matched control's update budget; None for a plain run of the variant

    @property
    def control(self) -> bool:
        return self.updates is not None


def control_name(base: str, updates: int) -> str:
    """``"SHQ_0@320"``: base variant ``base`` trained with ``updates`` updates (a matched control run)."""
    return parse_run(f"{base}@{int(updates)}").name


def parse_run(name: str) -> RunName:
    """A variant name (``SHQ_100``) or a matched control run's (``<base>@<updates>``, e.g. ``SHQ_0@320``)."""
    name = str(name)
    head, sep, tail = name.rpartition("@")
    if not sep:
        return RunName(name, parse_variant(name))
    v = parse_variant(head)
    if v.group != "base":
        raise VariantError(f"run {name!r}: a matched control run trains a base variant "
                           f"({', '.join(f'{t}_0' for t in BASE_TIERS)}), not {head}")
    if not tail.isdigit() or int(tail) < 1:
        raise VariantError(f"run {name!r}: after '@' comes the number of updates, an integer ≥ 1 (e.g. {head}@320)")
    return RunName(f"{head}@{int(tail)}", v, int(tail))


def all_variants(include_aug: bool = True) -> list[Variant]:
    out = [Variant(f"{t}_0", "base", t, 0) for t in BASE_TIERS]
    out += [Variant(f"{t}_{p}", "mixed", t, p) for t in BASE_TIERS for p in PERCENTAGES]
    out += [Variant(f"{s}_{p}", "synthetic", t, p) for s, t in SYNTHETIC_ONLY.items() for p in PERCENTAGES]
    if include_aug:
        out.append(Variant("BMQ_aug", "augment", "BMQ", 0, augment=True))
    return out


def pretrain_variants() -> list[Variant]:
    """The 28 pretrain-then-fine-tune variants ``PT_<tier>_<p>`` (not among :func:`all_variants`)."""
    return [Variant(f"{PRETRAIN_PREFIX}{t}_{p}", "pretrain", t, p) for t in BASE_TIERS for p in PERCENTAGES]


def variant_names(include_aug: bool = True, include_pretrain: bool = False) -> list[str]:
    return [v.name for v in all_variants(include_aug) + (pretrain_variants() if include_pretrain else [])]


def select(spec: str | Sequence[str] | None, with_pretrain: bool = False) -> list[Variant]:
    """``None``/"all" → all 47 (the paper's grid + BMQ_aug; with ``with_pretrain`` also the 28 ``PT_`` variants, as
    05 writes them); a comma list or list of names and groups ``all``, ``core`` (:data:`CORE`), ``base``,
    ``mixed``, ``synthetic``, ``augment``, ``pretrain``."""
    if spec is None or spec == "all":
        return all_variants() + (pretrain_variants() if with_pretrain else [])
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Variant] = []
    for n in (x.strip() for x in names if x.strip()):
        if n == "all":
            out += select("all", with_pretrain)
        elif n in GROUPS:
            out += [v for v in all_variants() + pretrain_variants() if v.group == n]
        elif n == "core":
            out += [parse_variant(c) for c in CORE]
        else:
            out.append(parse_variant(n))
    seen, uniq = set(), []
    for v in out:
        if v.name not in seen:
            seen.add(v.name)
            uniq.append(v)
    return uniq


def write_variant_yamls(folder: str | Path | None = None) -> list[Path]:
    """(Re)write ``params/variants/<name>.yaml`` for every variant; remove stale ones."""
    folder = Path(folder) if folder is not None else project_root() / "params" / "variants"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = set()
    for v in all_variants() + pretrain_variants():
        p = folder / f"{v.name}.yaml"
        wanted.add(p.name)
        desc = {
            "base": f"real {v.tier} training set, no synthetic images",
            "mixed": f"real {v.tier} training set + {v.percent} % synthetic images",
            "synthetic": f"synthetic images only ({v.percent} % of the big training size), real {v.tier} validation",
            "augment": "real BMQ training set with the albumentations baseline, no synthetic images",
            "pretrain": f"pretrain on {v.percent} % synthetic images, then fine-tune on the real {v.tier} set",
        }[v.group]
        atomic_write_text(p, f"# {v.name}: {desc}\n# generated by dualsynth.variants.write_variant_yamls()\nvariant: {v.name}\n")
        written.append(p)
    for stale in folder.glob("*.yaml"):
        if stale.name not in wanted:
            stale.unlink()
    return written


# --------------------------------------------------------------------------- exact file lists
def _pool_items(pool: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(pool["items"]) if pool else []


def materialise(variant: str | Variant, manifest, pool: dict[str, Any] | None, pool_root: Path | None = None) -> dict[str, Any]:
    """Exact file lists (absolute paths) of one variant: train (real + synthetic), val (real), test (real).

    A ``PT_`` variant's ``train``, ``val`` and ``test`` are its base's (real; the fine-tuning stage) and
    ``pretrain`` lists its synthetic pretraining images (``num_synthetic_train`` of them, the mixed variant's
    count and pool prefix)."""
    v = parse_variant(variant) if isinstance(variant, str) else variant
    base_train = manifest.files(v.tier, "train")
    base_val = manifest.files(v.tier, "val")
    n_syn = v.synthetic_count(len(base_train), len(manifest.files("BLQ", "train")))
    if v.percent and n_syn == 0:
        raise VariantError(
            f"variant {v.name}: {v.percent} % of {len(base_train)} training images is 0 synthetic images; "
            f"use bigger tiers or drop this variant"
        )
    items = _pool_items(pool)
    if n_syn > len(items):
        raise VariantError(
            f"variant {v.name} needs {n_syn} synthetic images but the synthetic pool has {len(items)}; "
            f"re-run 04_synthesis with pool_size ≥ {n_syn}"
        )
    root = Path(pool_root) if pool_root is not None else None
    syn = [
        {"image": str(root / it["image"]) if root else it["image"], "mask": str(root / it["mask"]) if root else it["mask"],
         "source": "synthetic", "id": it["id"]}
        for it in items[:n_syn]
    ]
    real = lambda pairs: [{"image": str(i), "mask": str(m), "source": "real", "id": Path(i).stem} for i, m in pairs]  # noqa: E731
    if v.group == "pretrain":  # stage 1 on the synthetic images alone, stage 2 (``train``) on the real base set
        out = materialise(f"{v.tier}_0", manifest, pool, pool_root)
        return {**out, "variant": v.name, "group": v.group, "percent": v.percent, "num_synthetic_train": n_syn,
                "pretrain": syn}
    train = ([] if v.synthetic_only else real(base_train)) + syn
    return {
        "variant": v.name,
        "group": v.group,
        "tier": v.tier,
        "percent": v.percent,
        "augment": v.augment,
        "num_real_train": 0 if v.synthetic_only else len(base_train),
        "num_synthetic_train": n_syn,
        "train": train,
        "val": real(base_val),
        "test": real(manifest.files("test", "test")),
    }


def materialise_all(variants: Iterable[Variant], manifest, pool: dict[str, Any] | None, pool_root: Path | None,
                    out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<variant>.json`` for each variant (atomically); returns the paths."""
    out = []
    for v in variants:
        p = Path(out_dir) / f"{v.name}.json"
        atomic_write_json(p, materialise(v, manifest, pool, pool_root))
        out.append(p)
    return out


def load_variant(path: str | Path) -> dict[str, Any]:
    data = read_json(path)
    for key in ("variant", "train", "val", "test"):
        if key not in data:
            raise DataError(f"{path}: not a variant file (missing {key!r}); re-run 05_datasets")
    return data


def load_split(variant_data: dict[str, Any], split: str, channels: int, palette):
    """Images ``uint8 (N, H, W, C)`` and class-index masks ``uint8 (N, H, W)`` of a materialised variant's split."""
    if split not in ("train", "val", "test", "pretrain"):
        raise VariantError(f"unknown split {split!r}; use train, val, test or (PT_ variants) pretrain")
    if split not in variant_data:
        raise VariantError(f"variant {variant_data['variant']} has no {split} split (only PT_ variants have one)")
    entries = variant_data[split]
    if not entries:
        raise VariantError(f"variant {variant_data['variant']}: the {split} split is empty")
    images = np.stack([read_image(e["image"], channels=channels) for e in entries])
    masks = np.stack([read_mask(e["mask"], palette, "index") for e in entries])
    return images, masks


def run_dir(unet_root: str | Path, variant: str, seed: int) -> Path:
    """``unet/<variant>/seed<seed>/`` — where one training run of a variant writes its files."""
    return Path(unet_root) / variant / f"seed{int(seed)}"


def _splits(variant_data: dict[str, Any]) -> tuple[str, ...]:
    return ("train", "val", "test") + (("pretrain",) if "pretrain" in variant_data else ())  # PT_: + pretrain


def inputs_fingerprint(variant_data: dict[str, Any]) -> str:
    """Fingerprint of what a run of this variant trains and is scored on: the variant file's content with every
    image and mask path replaced by the digest of its bytes.  A re-generated synthetic pool changes it even under the
    same names; the same files in another experiment's folder (another path) do not, so a finished run can be
    adopted by an experiment holding the same data (:func:`dualsynth.study.adopt_runs`)."""
    splits = _splits(variant_data)
    content = {k: ([{**e, **{f: _file_digest(Path(e[f])) for f in ("image", "mask")}} for e in v]
                   if k in splits else v) for k, v in variant_data.items()}
    return fingerprint(json.dumps(content, sort_keys=True))


def legacy_inputs_fingerprint(variant_data: dict[str, Any]) -> str:
    """The fingerprint runs recorded before 2026-12-05: the variant file's text (with its paths) and the bytes of
    every image and mask it lists.  Still accepted by the study's stale check, so those runs are not redone."""
    files = [Path(e[k]) for split in _splits(variant_data) for e in variant_data[split] for k in ("image", "mask")]
    return fingerprint(json.dumps(variant_data, sort_keys=True), *[_file_digest(f) for f in files])


def _file_digest(path: Path) -> str:
    st = path.stat()
    return _cached_digest(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _cached_digest(path: str, mtime_ns: int, size: int) -> str:
    return fingerprint(Path(path))


def load_run_metrics(experiment_path: str | Path, variant: str, seed: int) -> dict[str, Any] | None:
    """A run's ``metrics.json`` if it is complete (:mod:`dualsynth.unet.record`), else ``None``."""
    return read_complete(run_dir(Path(experiment_path) / "unet", variant, seed) / "metrics.json")


def load_predictions(experiment_path: str | Path, variant: str, seed: int):
    """A finished run's test predictions ``uint8 (N, H, W)`` and its per-image scores, or ``(None, None)``."""
    d = run_dir(Path(experiment_path) / "unet", variant, seed)
    metrics = load_run_metrics(experiment_path, variant, seed)
    if metrics is None or not (d / "predictions.npz").is_file():
        return None, None
    with np.load(d / "predictions.npz") as z:
        preds = z["predictions"]
    return preds, metrics["per_image"]
