"""Running the notebooks with papermill: the chain 01 → 07 and the study (06 over variants × seeds on Dask).

``python -m dualsynth.batch chain --preset quick`` runs the numbered notebooks in
order, each with ``params/presets/<preset>/<notebook>.yaml`` plus the
experiment name (and the data YAML for 01).  Every executed notebook is kept
under ``outputs/<experiment>/notebooks/``.  Parameters are checked against the
notebook's ``parameters`` cell before it runs: papermill itself only warns
about an unknown parameter, which would silently run the wrong thing.

``python -m dualsynth.batch study`` runs ``06_unet_training`` over variants × seeds on Dask.  This module holds
the chain and the command line and re-exports the rest: running one notebook (:mod:`dualsynth.runner`), the
study (:mod:`dualsynth.dask_study`), the results table (:mod:`dualsynth.results`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .adaptive import study_runner
from .config import ParamError, experiment_dir, experiment_lock, load_data_config, project_root, resolve_outputs
from .dask_study import (FORK_ITEMS, STUDY_NOTEBOOK, _check_variants, _check_workers, _run_one,  # noqa: F401
                         fork_experiment, run_study)
from .io import DataError, atomic_write_json
from .patching import patch_size_warning
from .results import METRIC_COLUMNS, collect_metrics, write_metrics_csv  # noqa: F401  (re-exported)
from .runner import (NOTEBOOKS, StageError, _record_paths, _stage_error, check_parameters,  # noqa: F401
                     failed_notebook_path, notebook_parameters, notebook_path, notebook_warnings, preset_file,
                     preset_params, run_notebook)
from .study import _stale_check, plan_study, predicted_share, recorded_updates, study_runs  # noqa: F401  (re-exported)
from .tfquiet import set_verbose

__all__ = ["NOTEBOOKS", "notebook_path", "notebook_parameters", "preset_params", "run_notebook", "run_chain",
           "fork_experiment", "study_runs", "collect_metrics", "main"]


# --------------------------------------------------------------------------- the chain: 01 → 07 in order
def _select(stages: str) -> list[str]:
    if stages in ("all", ""):
        chosen = list(NOTEBOOKS)
    else:
        wanted = [f"{i:02d}" for i in _int_ranges(stages, "--stages", "01-04, 01,03 or all")]
        chosen = [n for n in NOTEBOOKS if n[:2] in wanted]
        if not chosen:
            raise ParamError(f"--stages {stages!r} selects no notebook; use e.g. 01-04, 01,02 or all")
    return [n for n in chosen if (project_root() / "notebooks" / f"{n}.ipynb").is_file()]


def run_chain(preset: str, experiment: str | None = None, data: str | None = None, stages: str = "all",
              outputs_dir: str = "outputs", overrides: Mapping[str, Any] | None = None,
              variants: str = "all", seeds: Sequence[int] = (0,), workers: int = 1,
              matched_controls: bool = False, max_seeds: int | None = None,
              futility: bool = False, adopt_from: str | None = None) -> list[dict[str, Any]]:
    """Run the selected notebooks in order; stop at the first failure (later stages need its files).

    Stage 06 is the study: ``06_unet_training`` for every variant in ``variants`` and every seed, on Dask
    (:func:`run_study`; with ``max_seeds``, seeds added until decided, with ``futility`` also stopped when they
    could not decide, :mod:`dualsynth.adaptive`; with ``adopt_from``, the finished runs of that experiment with the
    same data and parameters are copied in first, :func:`dualsynth.study.adopt_runs`); a failed run
    there is reported and stops the chain before 07.
    """
    experiment = experiment or preset
    selected = _select(stages)
    for nb in selected:  # refuse a bad preset before anything is written
        preset_params(preset, nb)
    unknown = sorted(set(overrides or {}) - {k for nb in selected for k in notebook_parameters(nb)})
    if unknown:
        raise ParamError(f"override(s) {', '.join(unknown)} are not parameters of any selected notebook "
                         f"({', '.join(selected)}); see each notebook's `parameters` cell")
    _check_chain(preset, selected, data, overrides or {}, variants, workers)  # before anything runs
    if adopt_from:
        _check_adopt_from(outputs_dir, experiment, adopt_from, selected)
    exp = experiment_dir(outputs_dir, experiment)
    with experiment_lock(exp):
        return _run_chain_locked(preset, experiment, data, selected, exp, outputs_dir, overrides, variants, seeds,
                                 workers, matched_controls, max_seeds, futility, adopt_from)


def _stage_params(preset: str, nb: str, data: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's parameters as the chain passes them, over the notebook's defaults."""
    declared = notebook_parameters(nb)
    params = {**declared, **preset_params(preset, nb)}
    if data is not None and "data_config" in declared:
        params["data_config"] = data
    params.update({k: v for k, v in overrides.items() if k in declared})
    return params



def _check_chain(preset: str, selected: Sequence[str], data: str | None, overrides: Mapping[str, Any],
                 variants: Any, workers: Any) -> None:
    """What would stop a later stage, refused before the first runs: the study's variants and workers, 05's
    variants; and a patch size far larger than the data warrants is said at once (not after minutes)."""
    if STUDY_NOTEBOOK in selected:
        _check_variants(variants, "--variants")
        _check_workers(workers)
    if "05_datasets" in selected:
        _check_variants(_stage_params(preset, "05_datasets", data, overrides).get("variants"), "variants (05_datasets)")
    if "01_patching" in selected:
        p = _stage_params(preset, "01_patching", data, overrides)
        if isinstance(p.get("data_config"), str) and isinstance(p.get("patch_size"), int):
            warning = patch_size_warning(load_data_config(p["data_config"]), p["patch_size"])
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)


def _check_adopt_from(outputs_dir: str, experiment: str, source: str, selected: Sequence[str]) -> None:
    """``chain --adopt-from``: refused before 01 runs when 06 is not among the stages, or the source holds no runs."""
    if STUDY_NOTEBOOK not in selected:
        raise ParamError(f"--adopt-from {source}: runs are adopted by the study stage (06), which --stages does not "
                         "select")
    src = resolve_outputs(outputs_dir) / source
    if source == experiment or not (src / "unet").is_dir():
        raise ParamError(f"--adopt-from {source}: " + ("that is the experiment itself" if source == experiment else
                                                       f"{src} holds no U-Net runs (no {src / 'unet'})"))


def _run_chain_locked(preset, experiment, data, selected, exp, outputs_dir, overrides, variants, seeds, workers,
                      matched_controls, max_seeds, futility=False, adopt_from=None) -> list[dict[str, Any]]:
    timings = []
    for nb in selected:
        if nb == STUDY_NOTEBOOK:
            print(f"[{time.strftime('%H:%M:%S')}] {nb}: study of {variants!r}, seeds {list(seeds)}, {workers} worker(s)",
                  flush=True)
            t0 = time.perf_counter()
            summary = study_runner(max_seeds, futility)(preset, experiment, variants, seeds, workers,
                                                        outputs_dir=outputs_dir,
                                overrides={k: v for k, v in (overrides or {}).items()
                                           if k in notebook_parameters(nb)}, matched_controls=matched_controls,
                                **({"adopt_from": adopt_from} if adopt_from else {}))
            timings.append({"notebook": nb, "seconds": round(time.perf_counter() - t0, 1),
                            "runs": summary["done"], "skipped": summary["skipped"]})
            if summary["failed"]:
                first = summary["failed"][0]
                raise StageError(f"{len(summary['failed'])} U-Net run(s) failed, e.g. {first['run']}: {first['error']}"
                                 f"\n  logs: {first['log']} (all under {exp / 'logs'})")
            continue
        params = dict(preset_params(preset, nb))
        params["experiment"] = experiment
        params["outputs_dir"] = str(resolve_outputs(outputs_dir))
        if data is not None and "data_config" in notebook_parameters(nb):
            params["data_config"] = data
        for k, v in (overrides or {}).items():
            if k in notebook_parameters(nb):
                params[k] = v
        out = exp / "notebooks" / f"{nb}.ipynb"
        print(f"[{time.strftime('%H:%M:%S')}] {nb} → {out}", flush=True)
        t0 = time.perf_counter()
        run_notebook(nb, out, params)
        dt = time.perf_counter() - t0
        timings.append({"notebook": nb, "seconds": round(dt, 1)})
        print(f"    done in {dt:.1f} s", flush=True)
        for w in notebook_warnings(out):  # said inside the notebook; a user of the chain must see them too
            print(f"    warning: {w}", flush=True)
    return timings



# --------------------------------------------------------------------------- the command line
#: The most numbers one --seeds / --stages range may give (a typo such as 0-100000000 must not fill the memory).
MAX_RANGE = 10_000


def _int_ranges(text: str, option: str = "--seeds", example: str = "0,1,2 or 0-4") -> list[int]:
    """``"0,2-4"`` → ``[0, 2, 3, 4]`` (used for --stages and --seeds); anything else is a ParamError naming
    ``option`` (numbers ≥ 0, ranges ``a-b`` with a ≤ b)."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ParamError(f"{option} {text!r}: {part!r} is not a number ≥ 0 or a range like 2-4; write e.g. "
                             f"{example}")
        a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if b < a:
            raise ParamError(f"{option} {text!r}: the range {part!r} runs backwards; write e.g. {example}")
        if b - a >= MAX_RANGE:
            raise ParamError(f"{option} {text!r}: the range {part!r} gives {b - a + 1} numbers, more than {MAX_RANGE}")
        out += list(range(a, b + 1))
    return out


def _parse_seeds(text: str) -> list[int]:
    seeds = _int_ranges(text, "--seeds", "0,1,2 or 0-4")
    if not seeds:
        raise ParamError(f"--seeds {text!r}: give seeds ≥ 0 like 0,1,2 or 0-4")
    return list(dict.fromkeys(seeds))


def record_timings(path: str | os.PathLike, preset: str, timings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge this chain's stage times into ``chain_timings.json``: a re-run stage replaces its old entry, the
    stages not run this time keep theirs (so ``--stages 07`` does not erase the times of 01–06)."""
    path = Path(path)
    old: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = list(json.loads(path.read_text()).get("stages", []))
        except (ValueError, AttributeError):
            old = []  # an unreadable old record is replaced, not trusted
    new_names = {t["notebook"] for t in timings}
    stages = [t for t in old if t.get("notebook") not in new_names] + [dict(t) for t in timings]
    stages.sort(key=lambda t: NOTEBOOKS.index(t["notebook"]) if t["notebook"] in NOTEBOOKS else len(NOTEBOOKS))
    record = {"preset": preset, "stages": stages, "total_seconds": round(sum(t["seconds"] for t in stages), 1)}
    atomic_write_json(path, record)
    return record


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=3", "mask_encoding=onehot"]`` → ``{"epochs": 3, "mask_encoding": "onehot"}`` (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ParamError(f"--set {item!r}: the value is not valid YAML ({e})") from e
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualsynth.batch", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("chain", help="run the numbered notebooks in order with a preset")
    ch.add_argument("--preset", default="quick", help="params/presets/<preset>/ (smoke, quick, paper)")
    ch.add_argument("--experiment", default=None, help="outputs/<experiment>/ (default: the preset name)")
    ch.add_argument("--data", default=None, help="data YAML for 01_patching (default: the notebook's)")
    ch.add_argument("--stages", default="all", help="e.g. 01-04, 01,03 or all (default)")
    ch.add_argument("--outputs-dir", default="outputs")
    ch.add_argument("--variants", default="all", help="variants of the study stage (06), as for 'study'")
    ch.add_argument("--seeds", default="0", help="seeds of the study stage (06)")
    ch.add_argument("--workers", type=int, default=1, help="Dask workers of the study stage (06)")
    ch.add_argument("--matched-controls", action="store_true", help="as for 'study'")
    ch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter for every stage that declares it (YAML value; repeatable)")
    st = sub.add_parser("study", help="run 06_unet_training for many variants and seeds on Dask (resumable)")
    st.add_argument("--preset", default="quick")
    st.add_argument("--experiment", default=None, help="outputs/<experiment>/ (default: the preset name)")
    st.add_argument("--variants", default="all", help="'all' (the paper's 47), 'core' (SHQ_0, BMQ_0, SHQ_100, BMQ_100, PT_SHQ_100: what make run trains), groups (base, mixed, synthetic, augment, pretrain: the PT_ variants) or names, comma-separated")
    st.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-4")
    st.add_argument("--workers", type=int, default=1, help="Dask LocalCluster worker processes (default 1)")
    st.add_argument("--threads", type=int, default=None, help="TensorFlow threads per run (default: cores / workers)")
    st.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler instead of a LocalCluster")
    st.add_argument("--outputs-dir", default="outputs")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter of 06_unet_training (YAML value; repeatable)")
    st.add_argument("--matched-controls", action="store_true",
                    help="with budget=epochs: also train each mixed variant's base with as many updates "
                         "(control run <base>@<updates>, e.g. SHQ_0@320), to split a gain into more updates and "
                         "synthetic data; nothing is added under budget=fixed (the base is the control), except "
                         "for PT_ variants, which train longer than their base under either budget")
    st.add_argument("--from-experiment", default=None, metavar="SOURCE",
                    help="first fork --experiment from SOURCE's patches, pool and variants (01-05 done there), "
                         "to compare U-Net settings on the same data")
    for p in (ch, st):
        p.add_argument("--adopt-from", default=None, metavar="EXPERIMENT",
                       help="copy in EXPERIMENT's finished runs that trained on the same data with the same 06 "
                            "parameters (e.g. the real-only base variants of an experiment that differs only in the "
                            "generator) instead of training them again; each copy records where it came from")
        p.add_argument("--until-decided", action="store_true",
                       help="start from --seeds, then add one seed per round only to the comparisons (variant vs "
                            "matched control, else base) whose 95%% interval over seeds still includes 0; implies "
                            "--matched-controls; record: results/adaptive.json")
        p.add_argument("--max-seeds", type=int, default=None, metavar="N",
                       help="with --until-decided: stop a comparison undecided at N seeds (default 5)")
        p.add_argument("--futility", action="store_true",
                       help="with --until-decided: also stop a comparison, undecided, when at the spread of its seeds "
                            "so far even --max-seeds seeds could not decide its gain (fewer runs; never a verdict)")
        p.add_argument("--verbose", action="store_true",
                       help="show TensorFlow's C++ log lines and the kernels' start-up messages (hidden by default; "
                            "the same as DUALSYNTH_VERBOSE=1)")
    args = ap.parse_args(argv)
    if args.verbose:
        set_verbose()  # before any kernel or Dask worker starts: they inherit the environment
    if args.max_seeds is not None and not args.until_decided:
        ap.error("--max-seeds goes with --until-decided")
    if args.futility and not args.until_decided:
        ap.error("--futility goes with --until-decided")
    max_seeds = (args.max_seeds or 5) if args.until_decided else None
    try:
        overrides = _parse_overrides(args.overrides)
    except ParamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "study":
        try:
            if args.from_experiment:
                fork_experiment(args.outputs_dir, args.from_experiment, args.experiment or args.preset)
            summary = study_runner(max_seeds, args.futility)(
                args.preset, args.experiment, args.variants, _parse_seeds(args.seeds), args.workers, args.threads,
                args.scheduler, args.outputs_dir, overrides=overrides, matched_controls=args.matched_controls,
                **({"adopt_from": args.adopt_from} if args.adopt_from else {}))
        except (ParamError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
            return 130
        return 1 if summary["failed"] else 0
    if args.cmd == "chain":
        try:
            timings = run_chain(args.preset, args.experiment, args.data, args.stages, args.outputs_dir,
                                variants=args.variants, seeds=_parse_seeds(args.seeds), workers=args.workers,
                                overrides=overrides, matched_controls=args.matched_controls, max_seeds=max_seeds,
                                futility=args.futility, adopt_from=args.adopt_from)
        except (ParamError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except StageError as e:  # the project's one-line message first, then where the full traceback is
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: the stage that was running keeps its last good records (its attempt is kept as "
                  "notebooks/<stage>-failed.ipynb); run the same command again", file=sys.stderr)
            return 130
        total = sum(t["seconds"] for t in timings)
        if timings:
            exp = experiment_dir(args.outputs_dir, args.experiment or args.preset)
            record_timings(exp / "results" / "chain_timings.json", args.preset, timings)
        print("stage times: " + ", ".join(f"{t['notebook']} {t['seconds']} s" for t in timings) + f"; total {total:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
