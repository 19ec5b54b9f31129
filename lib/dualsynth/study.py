"""Planning the study: which runs of ``06_unet_training`` it holds, which are finished, stale, or still to run.

A run is one variant (or matched control, ``<base>@<updates>``, see :func:`dualsynth.variants.parse_run`) with one
seed, in ``unet/<run>/seed<k>/``; it is finished when its ``metrics.json`` is complete.  :func:`plan_study` lists the
runs of ``variants × seeds`` and, with ``matched_controls`` under 06's ``budget: epochs``, the control run of every
mixed variant (its base trained with as many updates, :func:`dualsynth.unet.budget.matched_control`).  No
TensorFlow, no Dask: :mod:`dualsynth.batch` runs what is planned here.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import ParamError
from .io import DataError, atomic_write_json, atomic_write_text, read_json
from .records import record_tag, run_record, run_record_path
from .unet import budget as unet_budget
from .unet.record import read_complete
from .variants import VariantError, inputs_fingerprint, legacy_inputs_fingerprint, load_variant, parse_run, run_dir

__all__ = ["StudyPlan", "plan_study", "study_runs", "adopt_runs", "adoption_lines", "executed_study_notebook",
           "data_variant", "recorded_updates", "predicted_share"]


def data_variant(run: str, metrics: Mapping[str, Any] | None = None) -> str:
    """The variant whose files a run trained on: ``SHQ_0`` for ``SHQ_0@320`` (recorded as ``data_variant``)."""
    if metrics is not None and metrics.get("data_variant"):
        return str(metrics["data_variant"])
    try:
        return parse_run(run).variant.name
    except VariantError:  # a folder no variant names (left by another version): no variant file, so trusted
        return str(run)


def _fingerprints(variant_file: Path) -> dict[str, str]:
    """The fingerprints a run trained on ``variant_file``'s data may carry: ``content``, today's (path-free), and
    ``legacy``, the one recorded before 2026-12-05 (with paths), so neither kind of run is redone."""
    data = load_variant(variant_file)
    return {"content": inputs_fingerprint(data), "legacy": legacy_inputs_fingerprint(data)}


def _stale_check(experiment_path: Path):
    """``is_stale(run, metrics)``: the complete run's recorded ``inputs_fingerprint`` is not one of those of the data
    the variant file it trained on (``variants/<variant>.json``; a control's is its base's) now lists (a run recorded
    before fingerprints existed, or whose variant file is gone, is trusted).  Fingerprints are computed once per
    variant."""
    current: dict[str, frozenset[str] | None] = {}

    def is_stale(run: str, metrics: Mapping[str, Any]) -> bool:
        recorded = metrics.get("inputs_fingerprint")
        if recorded is None:
            return False
        variant = data_variant(run, metrics)
        if variant not in current:
            f = experiment_path / "variants" / f"{variant}.json"
            current[variant] = frozenset(_fingerprints(f).values()) if f.is_file() else None
        return current[variant] is not None and recorded not in current[variant]

    return is_stale


def study_runs(experiment_path: Path, variant_names: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every (run, seed) with its folder, whether its ``metrics.json`` is complete, and whether that complete run
    was made from other data than its variant file now lists (``stale``: its recorded ``inputs_fingerprint`` is
    neither of that file's, see :func:`_stale_check`; a run recorded before fingerprints existed is trusted)."""
    is_stale = _stale_check(experiment_path)
    out = []
    for v in variant_names:
        for s in seeds:
            d = run_dir(experiment_path / "unet", v, s)
            metrics = read_complete(d / "metrics.json")  # complete: dualsynth.unet.record.record_complete
            done = metrics is not None
            stale = done and is_stale(v, metrics)
            out.append({"variant": v, "seed": int(s), "dir": d, "done": done, "stale": stale})
    return out


#: 06 parameters that say where, with how many threads and with which figures a run ran, not what it learned: a
#: run is adopted from another experiment when every other parameter is equal
WHERE_NOT_WHAT = ("experiment", "outputs_dir", "tf_threads", "save_figures")
#: the notebook a study runs (re-exported as :data:`dualsynth.dask_study.STUDY_NOTEBOOK`)
STUDY_STAGE = "06_unet_training"


def adopt_runs(experiment_path: str | Path, source_path: str | Path, runs: Sequence[Mapping[str, Any]],
               params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Copy into this experiment the finished runs of ``source_path`` that trained on the same data with the same
    parameters and software, instead of training them again (the real-only base variants of two experiments that
    differ only in the generator, for example).

    ``runs``: :func:`study_runs` rows; only those not done here are looked at (one whose folder exists, an
    interrupted run, is left to resume).  ``params``: 06's parameters as this study's runs get them (notebook
    defaults, preset, overrides), without variant and seed; ``defaults``: the notebook's defaults, which stand for a
    parameter an older run record does not list.  A source run is adopted when

    - its ``metrics.json`` is complete and carries the path-free :func:`~dualsynth.variants.inputs_fingerprint` of
      the variant file here, or the source's variant file holds the same data and the run carries one of that file's
      fingerprints (the same files by content, ids, order and variant fields, whatever folder they are in);
    - its run record's parameters equal ``params`` apart from :data:`WHERE_NOT_WHAT`;
    - its run record's package versions and ``op_determinism`` equal this process's.

    The copy is made beside the target and renamed into place, then the run record is written; its ``metrics.json``
    carries this experiment's fingerprint and ``adopted_from`` (the folder where the run was trained: a table column),
    its run record ``adopted_from`` (the source record).  A copy that fails is removed and the run is left to train.
    Returns ``{"adopted": [labels], "not_adopted": {label: why}, "commits": [source commits of the adopted runs],
    "head_commit": this checkout's}``.
    Changes of the library's code are not detected: the commits are returned to be said.
    """
    exp, src = Path(experiment_path), Path(source_path)
    if exp.resolve() == src.resolve():
        raise ParamError(f"--adopt-from names the experiment itself ({src}); give another experiment")
    if not (src / "unet").is_dir():
        raise ParamError(f"{src} holds no U-Net runs (no {src / 'unet'}); nothing to adopt")
    defaults = dict(defaults or {})
    here_env = run_record()
    fps: dict[Path, dict[str, str]] = {}

    def fp(variant_file: Path) -> dict[str, str]:
        if variant_file not in fps:
            fps[variant_file] = _fingerprints(variant_file)
        return fps[variant_file]

    def why_not(name: str, seed: int, src_dir: Path) -> tuple[str | None, Any, Any, Path | None]:
        """(reason or None, metrics, record, record file)."""
        if not (src_dir / "metrics.json").is_file():
            return ("no such run there" if not src_dir.is_dir() else "not finished there"), None, None, None
        metrics = read_complete(src_dir / "metrics.json")
        if metrics is None:
            return "not finished there", None, None, None
        recorded = metrics.get("inputs_fingerprint")
        if recorded is None:
            return "no data fingerprint recorded there (a run older than fingerprints)", None, None, None
        variant = data_variant(name, metrics)
        try:
            here = fp(exp / "variants" / f"{variant}.json")
        except (OSError, DataError, VariantError) as e:
            return f"this experiment's variant file cannot be read ({e})", None, None, None
        if recorded != here["content"]:
            try:
                there = fp(src / "variants" / f"{variant}.json")
            except (OSError, DataError, VariantError) as e:
                return f"its variant file there cannot be read ({type(e).__name__}: {e})", None, None, None
            if there["content"] != here["content"] or recorded not in there.values():
                return "trained on other data", None, None, None
        rec_file = run_record_path(src, record_tag(STUDY_STAGE, {"variant": name, "seed": seed}))
        try:
            record = read_json(rec_file)
        except DataError as e:
            return f"its run record is missing or unreadable ({e})", None, None, None
        theirs = {**defaults, **record.get("params", {})}  # a parameter the old run did not pass had its default
        mine = {**params, "variant": name, "seed": seed}
        differ = sorted(k for k in set(theirs) | set(mine) if k not in WHERE_NOT_WHAT and theirs.get(k) != mine.get(k))
        if differ:
            return "other parameters: " + ", ".join(
                f"{k} {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ[:3]), None, None, None
        env = [k for k in ("versions", "op_determinism") if record.get(k, here_env[k]) != here_env[k]]
        if env:
            if "versions" in env:
                v0, v1 = record["versions"], here_env["versions"]
                env = [f"{k} {v0.get(k)} there, {v1.get(k)} here" for k in sorted(set(v0) | set(v1))
                       if v0.get(k) != v1.get(k)] + [e for e in env if e != "versions"]
            return "other software: " + ", ".join(env[:3]), None, None, None
        return None, {**metrics, "inputs_fingerprint": here["content"]}, record, rec_file

    out: dict[str, Any] = {"adopted": [], "not_adopted": {}, "commits": {}, "head_commit": here_env["git_commit"]}
    for r in runs:
        name, seed, dest = str(r["variant"]), int(r["seed"]), Path(r["dir"])
        label = f"{name} seed {seed}"
        if r["done"]:
            continue
        if dest.exists():
            out["not_adopted"][label] = "an interrupted run of it is here (it resumes)"
            continue
        src_dir = run_dir(src / "unet", name, seed)
        why, metrics, record, rec_file = why_not(name, seed, src_dir)
        if why:
            out["not_adopted"][label] = why
            continue
        tmp = dest.with_name(f".{dest.name}.adopting")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src_dir, tmp)
            atomic_write_json(tmp / "metrics.json", {**metrics, "adopted_from": metrics.get("adopted_from") or
                                                     str(src_dir)})
            tmp.rename(dest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            out["not_adopted"][label] = f"the copy failed ({type(e).__name__}: {e})"
            continue
        atomic_write_json(exp / "runs" / rec_file.name, {**record, "adopted_from": str(rec_file)})
        _adopt_notebook(src, exp, name, seed)
        out["adopted"].append(label)
        out["commits"][str(record.get("git_commit", "unknown"))] = None
    out["commits"] = list(out["commits"])
    return out


def executed_study_notebook(experiment_path: str | Path, variant: str, seed: int) -> Path:
    """Where the batch keeps the executed ``06_unet_training`` of one run."""
    return Path(experiment_path) / "notebooks" / f"{STUDY_STAGE}-{variant}-seed{seed}.ipynb"


def _adopt_notebook(src: Path, exp: Path, name: str, seed: int) -> None:
    """The adopted run's executed notebook too, so that the report has its page; marked in its metadata with the
    notebook it was copied from (``dualsynth.adopted_from``, kept through re-adoption) and the time of adoption
    (``dualsynth.adopted_at``: the report shows it over an earlier failed attempt here).  A notebook of this run
    already here belongs to an attempt that did not finish (the run was not done here): it is replaced.  Best
    effort: a source notebook that is missing or that nbformat cannot read is not copied, and nothing of it stops
    the adoption (the run and its record are in place already)."""
    import nbformat  # lazy: jsonschema behind it, and most studies adopt nothing

    there, here = executed_study_notebook(src, name, seed), executed_study_notebook(exp, name, seed)
    if not there.is_file():
        return
    try:
        nb = nbformat.read(there, as_version=4)
        meta = nb.metadata.get("dualsynth")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["adopted_from"] = meta.get("adopted_from") or str(there)
        meta["adopted_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        nb.metadata["dualsynth"] = meta
        atomic_write_text(here, nbformat.writes(nb))
    except Exception:  # noqa: BLE001 -- best effort, see above
        return


def adoption_lines(got: Mapping[str, Any], source: str) -> list[str]:
    """What :func:`adopt_runs` did, for the terminal: the adopted runs and the commits that made them, then the
    others grouped by reason."""
    lines = []
    if got["adopted"]:
        lines.append(f"adopted {len(got['adopted'])} finished run(s) from {source} (same data, same parameters): "
                     f"{', '.join(got['adopted'])}")
        head = got.get("head_commit", "unknown")
        others = [c for c in got["commits"] if c != head]
        if others:
            lines.append(f"note: the adopted runs were made by commit {', '.join(others)}; this checkout is {head}: "
                         "a change of the U-Net code between the two is not checked")
    by_reason: dict[str, list[str]] = {}
    for label, why in got["not_adopted"].items():
        by_reason.setdefault(why, []).append(label)
    for why, labels in by_reason.items():
        shown = ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")
        lines.append(f"note: not adopted from {source}: {shown}: {why}")
    return lines


@dataclass
class StudyPlan:
    """The runs of a study: ``variants`` as chosen, ``controls`` (variant → its matched control run, added runs),
    ``runs`` (:func:`study_runs` of both) and ``notes`` to print (why no control, a base not selected, ...)."""

    variants: list[str]
    controls: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def control_runs(self) -> list[str]:
        """The added control runs, each once (two variants can share one), not counting chosen names."""
        return [c for c in dict.fromkeys(self.controls.values()) if c not in self.variants]


def plan_study(experiment_path: str | Path, variants: Sequence[str], seeds: Sequence[int],
               params: Mapping[str, Any], matched_controls: bool = False) -> StudyPlan:
    """The runs of ``variants × seeds`` and, with ``matched_controls``, of their matched controls.

    ``params`` are 06's parameters as the runs get them (notebook defaults, preset, overrides): ``budget``,
    ``epochs``, ``batch_size``, ``steps_per_epoch``; inconsistent ones raise :class:`~dualsynth.config.ParamError`.
    Under ``budget: epochs`` every mixed variant whose update budget differs from its base's gets the control
    ``<base>@<updates>`` with the same seeds; under ``fixed`` none is added (each base is its variants' control).
    A ``PT_`` variant gets ``<base>@<pretraining + fine-tuning updates>`` under either budget.
    The training-set sizes come from ``variants/<variant>.json`` (05).
    """
    exp = Path(experiment_path)
    unet_budget.check_params(params)
    plan = StudyPlan(list(variants))
    if matched_controls:
        kw = {k: params[k] for k in ("budget", "epochs", "batch_size", "steps_per_epoch")}
        if params["budget"] == "fixed":
            plan.notes.append(f"budget fixed: every run gets {params['epochs']} × {params['steps_per_epoch']} = "
                              f"{params['epochs'] * params['steps_per_epoch']} updates, so each base variant is the "
                              "matched control of its mixed variants; no control runs added for them (a PT_ variant "
                              "still gets one: it pretrains on top of its base's budget)")
        for v in variants:
            spec = parse_run(v).variant
            # a PT_ variant (pretraining + its base's budget) trains longer than its base under either budget
            if (params["budget"] == "fixed" and spec.group != "pretrain") or spec.group not in ("mixed", "pretrain") \
                    or parse_run(v).control:
                continue
            base = f"{spec.tier}_0"
            data = load_variant(exp / "variants" / f"{v}.json")
            control = unet_budget.matched_control(v, len(data["train"]), int(data["num_real_train"]),
                                                  pretrain_size=len(data.get("pretrain", [])), **kw)
            if control is None:
                plan.notes.append(f"{v} gets as many updates as {base}: {base} is its matched control")
                continue
            if not (exp / "variants" / f"{base}.json").is_file():
                raise ParamError(f"the matched control {control} of {v} trains on {exp / 'variants' / base}.json, "
                                 f"which is missing: run 05_datasets with {base} (or variants: all)")
            plan.controls[v] = control
            if base not in variants:
                plan.notes.append(f"{base} is not among the variants: the split of {v}'s gain needs it for the "
                                  f"'more updates' part ({control} − {base}); add it to --variants")
    plan.runs = study_runs(exp, plan.variants + plan.control_runs, seeds)
    return plan


def recorded_updates(metrics: Mapping[str, Any], run_folder: str | Path) -> int | None:
    """A finished run's update budget: recorded in ``metrics.json`` (``updates``), or — for runs made before it was
    recorded — from the run's ``unet_config.json`` (epochs, batch size, steps per epoch) and training-set size,
    counted by :func:`dualsynth.unet.budget.run_updates` (a set ``steps_per_epoch`` is a fixed budget)."""
    if metrics.get("updates") is not None:
        return int(metrics["updates"])
    f = Path(run_folder) / "unet_config.json"
    n = int(metrics.get("num_real_train") or 0) + int(metrics.get("num_synthetic_train") or 0)
    if not f.is_file() or n < 1:
        return None
    cfg = read_json(f)
    steps = int(cfg.get("steps_per_epoch") or 0)
    return unet_budget.run_updates(n, budget="fixed" if steps else "epochs", epochs=int(cfg.get("epochs", 200)),
                                   batch_size=int(cfg.get("batch_size", 2)), steps_per_epoch=steps)


def predicted_share(metrics: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """The largest share of the test pixels one class is predicted on, and that class (from the summed confusion
    matrix in ``metrics.json``, columns = prediction); ``(None, None)`` when it is not recorded."""
    cm = metrics.get("confusion")
    if not cm:
        return None, None
    cols = [sum(row[j] for row in cm) for j in range(len(cm[0]))]
    total = sum(cols)
    if total <= 0:
        return None, None
    j = max(range(len(cols)), key=cols.__getitem__)
    names = metrics.get("class_names") or [str(i) for i in range(len(cols))]
    return cols[j] / total, str(names[j])
