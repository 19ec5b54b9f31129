"""Running the notebooks with papermill: the chain 01 → 07 and the study (06 over variants × seeds on Dask).

``python -m dualsynth.batch chain --preset quick`` runs the numbered notebooks in
order, each with ``params/presets/<preset>/<notebook>.yaml`` plus the
experiment name (and the data YAML for 01).  Every executed notebook is kept
under ``outputs/<experiment>/notebooks/``.  Parameters are checked against the
notebook's ``parameters`` cell before it runs: papermill itself only warns
about an unknown parameter, which would silently run the wrong thing.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import BATCH_ENV, ParamError, experiment_dir, experiment_lock, load_yaml, project_root, resolve_outputs
from .io import DataError
from .study import _stale_check, plan_study, predicted_share, recorded_updates, study_runs  # noqa: F401  (re-exported)

__all__ = ["NOTEBOOKS", "notebook_path", "notebook_parameters", "preset_params", "run_notebook", "run_chain",
           "fork_experiment", "study_runs", "collect_metrics", "main"]

#: The numbered notebooks, in order.  Only the ones that exist are run.
NOTEBOOKS = (
    "01_patching",
    "02_vqvae",
    "03_pixelcnn",
    "04_synthesis",
    "05_datasets",
    "06_unet_training",
    "07_results_plots",
)


def notebook_path(name: str) -> Path:
    p = project_root() / "notebooks" / f"{name}.ipynb"
    if not p.is_file():
        raise ParamError(f"notebook {p} not found; notebooks are {', '.join(NOTEBOOKS)}")
    return p


def notebook_parameters(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell (via papermill); defaults must be plain literals."""
    import papermill as pm

    path = Path(name_or_path)
    if not path.suffix:
        path = notebook_path(str(name_or_path))
    info = pm.inspect_notebook(str(path))
    out = {}
    for k, v in info.items():
        try:
            out[k] = ast.literal_eval(v.get("default"))
        except (ValueError, SyntaxError):
            raise ParamError(f"{path}: parameter {k} = {v.get('default')} is not a plain literal") from None
    return out


def preset_file(preset: str, notebook: str) -> Path:
    return project_root() / "params" / "presets" / preset / f"{notebook}.yaml"


def preset_params(preset: str, notebook: str) -> dict[str, Any]:
    folder = project_root() / "params" / "presets" / preset
    if not folder.is_dir():
        known = sorted(p.name for p in (project_root() / "params" / "presets").iterdir() if p.is_dir())
        raise ParamError(f"unknown preset {preset!r}; presets are {known}")
    f = preset_file(preset, notebook)
    return load_yaml(f) if f.is_file() else {}


def check_parameters(notebook: str, params: Mapping[str, Any]) -> None:
    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ParamError(
            f"parameters {unknown} are not declared in the parameters cell of notebooks/{notebook}.ipynb "
            f"(declared: {sorted(declared)}); papermill would only warn and run with the defaults"
        )


class StageError(RuntimeError):
    """A notebook failed; the message is the project's own error, then where the full traceback is."""


def failed_notebook_path(output: str | os.PathLike) -> Path:
    """Where a failed attempt's executed notebook is kept: ``<name>-failed.ipynb`` beside ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}-failed{output.suffix}")


def _record_paths(notebook: str, parameters: Mapping[str, Any]) -> tuple[Path, Path] | None:
    """(pending, final) run record of a run: ``config.start_stage`` writes the pending one when the batch runs it."""
    from .config import experiment_name_ok, record_tag, run_record_path

    full = {**notebook_parameters(notebook), **parameters}
    if not experiment_name_ok(full.get("experiment")) or not isinstance(full.get("outputs_dir"), str):
        return None  # start_stage refuses the run
    exp = resolve_outputs(full["outputs_dir"]) / full["experiment"]
    tag = record_tag(notebook, full)
    return run_record_path(exp, tag, pending=True), run_record_path(exp, tag)


def _stage_error(notebook: str, error: BaseException, failed: Path | None) -> StageError:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):  # the notebook's own exception: the project's message
        what = f"{error.ename}: {error.evalue}"
        cell = f" (cell [{error.exec_count}])" if error.exec_count is not None else ""
        where = f"full traceback in the failed attempt's notebook {failed}{cell}"
    else:  # papermill itself failed (kernel, disk): the notebook holds what ran until then
        what = f"{type(error).__name__}: {error}"
        where = f"the failed attempt's notebook, as far as it got: {failed}"
    if failed is None:
        where = "no executed notebook was written"
    return StageError(f"{notebook} failed: {what}\n  {where}")


def run_notebook(notebook: str, output: str | os.PathLike, parameters: Mapping[str, Any],
                 log_output: bool = False, progress_bar: bool = True) -> Path:
    """Execute one notebook with papermill (cwd = project root); the executed copy goes to ``output``.

    The records of a run are written only when it succeeds, each in one rename: papermill writes the executed
    notebook to a hidden file beside ``output``, renamed to ``output`` on success, and ``config.start_stage`` puts the
    run record in ``runs/.pending/``, moved into ``runs/`` on success.  A failed or interrupted attempt keeps the
    last good run's notebook and record; its own notebook is kept as ``<name>-failed.ipynb``
    (:func:`failed_notebook_path`), named in the :class:`StageError`, and its pending record is dropped.
    """
    import papermill as pm

    from .config import BATCH_ENV, lock_token

    check_parameters(notebook, parameters)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    running = output.with_name(f".{output.stem}.{os.getpid()}.running{output.suffix}")
    records = _record_paths(notebook, parameters)
    if records:
        records[0].unlink(missing_ok=True)
    saved_env = os.environ.get(BATCH_ENV)
    if saved_env is None:  # not inside a chain/study: the records still wait for the stage to succeed
        os.environ[BATCH_ENV] = lock_token()
    try:
        pm.execute_notebook(
            str(notebook_path(notebook)),
            str(running),
            parameters=dict(parameters),
            cwd=str(project_root()),
            log_output=log_output,
            progress_bar=progress_bar,
            kernel_name="python3",
        )
    except BaseException as e:
        failed = None
        if running.exists():
            failed = failed_notebook_path(output)
            os.replace(running, failed)
        if records:
            records[0].unlink(missing_ok=True)
        if isinstance(e, Exception):
            raise _stage_error(notebook, e, failed) from e
        raise  # KeyboardInterrupt, SystemExit: the failed notebook is kept all the same
    finally:
        if saved_env is None:
            os.environ.pop(BATCH_ENV, None)
    os.replace(running, output)
    if records and records[0].is_file():
        os.replace(records[0], records[1])
    return output


def notebook_warnings(executed: str | os.PathLike, limit: int = 10) -> list[str]:
    """The project's warnings an executed notebook printed (``UserWarning: …`` on stderr; not the libraries')."""
    import json
    import re

    try:
        cells = json.loads(Path(executed).read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return []
    pattern = re.compile(r"^(?P<where>\S.*?):\d+: (?P<kind>[A-Za-z]*Warning): (?P<msg>.+)$")
    out: list[str] = []
    for cell in cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") != "stream" or o.get("name") != "stderr":
                continue
            text = o.get("text", "")
            for line in ("".join(text) if isinstance(text, list) else text).splitlines():
                m = pattern.match(line)
                if m and ("-packages" not in m["where"] or "dualsynth" in m["where"]):
                    w = f"{m['kind']}: {m['msg']}"
                    if w not in out:
                        out.append(w)
    return out[:limit]


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
              matched_controls: bool = False, max_seeds: int | None = None) -> list[dict[str, Any]]:
    """Run the selected notebooks in order; stop at the first failure (later stages need its files).

    Stage 06 is the study: ``06_unet_training`` for every variant in ``variants`` and every seed, on Dask
    (:func:`run_study`; with ``max_seeds``, seeds added until decided, :mod:`dualsynth.adaptive`); a failed run
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
    exp = experiment_dir(outputs_dir, experiment)
    with experiment_lock(exp):
        return _run_chain_locked(preset, experiment, data, selected, exp, outputs_dir, overrides, variants, seeds,
                                 workers, matched_controls, max_seeds)


def _stage_params(preset: str, nb: str, data: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's parameters as the chain passes them, over the notebook's defaults."""
    declared = notebook_parameters(nb)
    params = {**declared, **preset_params(preset, nb)}
    if data is not None and "data_config" in declared:
        params["data_config"] = data
    params.update({k: v for k, v in overrides.items() if k in declared})
    return params


def _check_variants(spec: Any, what: str) -> None:
    """A variant list that names an unknown variant (``VariantError``) or none at all is refused."""
    from .variants import select

    if not isinstance(spec, (str, list, tuple)):
        raise ParamError(f"{what}={spec!r}: give a comma list of variant names or groups, or all")
    if not select(spec):
        raise ParamError(f"{what} {spec!r} selects no variant: give names like SHQ_0,BMQ_50, groups (base, mixed, "
                         "synthetic, augment) or all")


def _check_workers(workers: Any, threads: Any = None) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParamError(f"--workers {workers!r}: the number of Dask worker processes, an integer ≥ 1")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ParamError(f"--threads {threads!r}: TensorFlow threads per run, an integer ≥ 1 (or leave it out)")


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
        from .config import load_data_config
        from .patching import patch_size_warning

        p = _stage_params(preset, "01_patching", data, overrides)
        if isinstance(p.get("data_config"), str) and isinstance(p.get("patch_size"), int):
            warning = patch_size_warning(load_data_config(p["data_config"]), p["patch_size"])
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)


def _run_chain_locked(preset, experiment, data, selected, exp, outputs_dir, overrides, variants, seeds, workers,
                      matched_controls, max_seeds) -> list[dict[str, Any]]:
    timings = []
    for nb in selected:
        if nb == STUDY_NOTEBOOK:
            print(f"[{time.strftime('%H:%M:%S')}] {nb}: study of {variants!r}, seeds {list(seeds)}, {workers} worker(s)",
                  flush=True)
            t0 = time.perf_counter()
            from .adaptive import study_runner

            summary = study_runner(max_seeds)(preset, experiment, variants, seeds, workers, outputs_dir=outputs_dir,
                                overrides={k: v for k, v in (overrides or {}).items()
                                           if k in notebook_parameters(nb)}, matched_controls=matched_controls)
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


# --------------------------------------------------------------------------- the study: 06 over variants × seeds
STUDY_NOTEBOOK = "06_unet_training"
METRIC_COLUMNS = ("accuracy", "miou", "miou_dataset", "missing_class_iou")


def _run_one(notebook: str, output: str, parameters: dict[str, Any], log_path: str, root: str,
             batch: str | None = None) -> dict[str, Any]:
    """Execute one notebook run on a Dask worker; its output (cell by cell) goes to ``log_path``.  ``batch``: the
    lock holder (``$DUALSYNTH_BATCH`` of the study), which a worker of another scheduler does not inherit."""
    import contextlib
    import logging

    os.environ.setdefault("DUALSYNTH_ROOT", root)
    if batch:
        os.environ[BATCH_ENV] = batch
    t0 = time.perf_counter()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w", encoding="utf-8") as log:
        # file-descriptor level, so the kernel subprocess's TensorFlow messages land in the log too
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        handler = logging.StreamHandler(log)
        pm_logger = logging.getLogger("papermill")
        pm_logger.addHandler(handler)
        pm_logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                run_notebook(notebook, output, parameters, log_output=True, progress_bar=False)
        finally:
            pm_logger.removeHandler(handler)
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return {"seconds": time.perf_counter() - t0}


def collect_metrics(experiment_path: str | os.PathLike, stale: str = "drop") -> "pd.DataFrame":
    """One row per COMPLETE run found under ``unet/*/seed*/metrics.json`` (incomplete or corrupt files are skipped).

    Besides the scores: ``updates`` (the run's update budget, :func:`dualsynth.study.recorded_updates`),
    ``budget`` (``fixed`` / ``epochs``, None before it was recorded), ``pred_max_share`` / ``pred_max_class`` (the
    largest share of test pixels predicted as one class, from the confusion matrix).

    A run trained on other data than its variant file now lists (04/05 re-run after it; see :func:`study_runs`)
    is left out with a warning naming it (``stale="drop"``), refused (``"error"``) or kept (``"keep"``).
    """
    import warnings

    import pandas as pd

    from .io import read_json
    from .variants import metrics_complete

    if stale not in ("drop", "error", "keep"):
        raise ValueError(f"stale must be drop, error or keep, got {stale!r}")
    exp = Path(experiment_path)
    is_stale = _stale_check(exp)
    rows, left_out = [], []
    for f in sorted(exp.glob("unet/*/seed*/metrics.json")):
        if not metrics_complete(f):
            continue
        m = read_json(f)
        if stale != "keep" and is_stale(str(m.get("variant")), m):
            left_out.append(str(f.parent))
            continue
        row = {k: m.get(k) for k in ("variant", "seed", "group", "tier", "percent", "augment", "num_real_train",
                                     "num_synthetic_train", "num_test", "encoder", "epochs_run", "best_epoch",
                                     "train_seconds", "budget")}
        row["updates"] = recorded_updates(m, f.parent)  # the run's update budget (matched controls compare it)
        row.update({k: m[k] for k in ("updates_pretrain", "updates_finetune") if k in m})  # PT_ runs: per stage
        row["pred_max_share"], row["pred_max_class"] = predicted_share(m)  # a collapsed model predicts one class
        row.update({k: m[k] for k in METRIC_COLUMNS})
        for name, val in (m.get("per_class") or {}).items():
            row[f"mciou_{name}"] = val
        rows.append(row)
    if left_out:
        msg = (f"{len(left_out)} finished run(s) in {exp / 'unet'} were trained on other data than "
               f"{exp / 'variants'} now lists (04_synthesis or 05_datasets was re-run since), e.g. {left_out[0]}")
        if stale == "error":
            raise DataError(msg)
        warnings.warn(msg + "; they are left out: re-run 06 for them", stacklevel=2)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["group", "tier", "percent", "variant", "seed"], kind="stable").reset_index(drop=True)
    return df


def write_metrics_csv(experiment_path: str | os.PathLike) -> Path:
    """Rebuild ``results/metrics.csv`` from the per-run files (never appended), atomically."""
    from .io import write_csv

    exp = Path(experiment_path)
    return write_csv(collect_metrics(exp), exp / "results" / "metrics.csv")


#: what a forked experiment shares with its source: the patches, the synthetic pool, the variant lists, the
#: generator's summary (its training tier); not the checkpoints or the U-Net runs
FORK_ITEMS = ("patches", "synthetic", "variants", "vqvae/summary.json")


def fork_experiment(outputs_dir: str | os.PathLike, source: str, target: str) -> Path:
    """Start experiment ``target`` from the data of ``source`` (01–05 done), for a study with other U-Net settings.

    Copies :data:`FORK_ITEMS` (the variant files keep pointing at ``source``'s images, which must stay) and writes
    ``forked_from.json``.  Forking again from the same source is a no-op; a target holding anything else is refused.
    """
    import shutil

    from .io import atomic_write_json, read_json

    src = resolve_outputs(outputs_dir) / source
    if source == target:
        raise ParamError(f"--from-experiment {source!r} is the experiment itself; give the study a new --experiment")
    missing = [i for i in ("patches/manifest.json", "variants") if not (src / i).exists()]
    if missing:
        raise ParamError(f"{src} has no {', '.join(missing)}: run 01–05 for experiment {source!r} before forking it")
    dst = experiment_dir(outputs_dir, target)
    mark = dst / "forked_from.json"
    if mark.is_file():
        if read_json(mark).get("source") != str(src):
            raise ParamError(f"{dst} was forked from {read_json(mark).get('source')}, not {src}; pick a new "
                             "experiment name")
        return dst
    present = [p.name for p in dst.iterdir()]
    if present:
        raise ParamError(f"{dst} already holds {', '.join(sorted(present)[:5])}: fork into a new experiment name")
    tmp = dst.with_name(dst.name + ".fork.tmp")  # complete copy beside it, then one rename: never half a fork
    shutil.rmtree(tmp, ignore_errors=True)
    for item in FORK_ITEMS:
        if (src / item).is_dir():
            shutil.copytree(src / item, tmp / item)
        elif (src / item).is_file():
            (tmp / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / item, tmp / item)
    atomic_write_json(tmp / mark.name, {"source": str(src), "items": list(FORK_ITEMS)})
    dst.rmdir()
    tmp.rename(dst)
    return dst


def _guarded_study(fn):
    """Checks :func:`run_study`'s workers, threads and variants (none selected: refused, not a run of 0 runs that
    rewrites metrics.csv empty), then holds the experiment's lock (:func:`dualsynth.config.experiment_lock`)
    while it runs."""
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        a = sig.bind(*args, **kwargs)
        a.apply_defaults()
        _check_workers(a.arguments["workers"], a.arguments["threads_per_worker"] or None)
        _check_variants(a.arguments["variants"] if a.arguments["variants"] is not None else "all", "--variants")
        exp = experiment_dir(a.arguments["outputs_dir"], a.arguments["experiment"] or a.arguments["preset"])
        with experiment_lock(exp):
            return fn(*a.args, **a.kwargs)

    return wrapper


@_guarded_study
def run_study(preset: str, experiment: str | None = None, variants: str | Sequence[str] | None = "all",
              seeds: Sequence[int] = (0,), workers: int = 1, threads_per_worker: int | None = None,
              scheduler: str | None = None, outputs_dir: str = "outputs", overrides: Mapping[str, Any] | None = None,
              progress: bool = True, matched_controls: bool = False) -> dict[str, Any]:
    """Run ``06_unet_training`` for every (variant, seed) with papermill on Dask; resumable.

    A run whose ``metrics.json`` is complete is skipped; an interrupted one is redone (its U-Net training resumes
    from its last epoch checkpoint).  Failures are reported at the end without stopping the other runs.
    ``results/metrics.csv`` is rebuilt from the per-run files at the end.  ``matched_controls`` (under 06's
    ``budget: epochs``) adds each mixed variant's matched control run, ``<base>@<updates>``
    (:func:`dualsynth.study.plan_study`); control runs are runs like the others (resumable, fingerprinted).
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from .variants import select

    experiment = experiment or preset
    exp = experiment_dir(outputs_dir, experiment)
    if not (exp / "variants").is_dir():
        raise ParamError(f"{exp / 'variants'} not found: run 05_datasets for experiment {experiment!r} first")
    chosen = [v.name for v in select(variants)]
    missing = [v for v in chosen if not (exp / "variants" / f"{v}.json").is_file()]
    if missing:
        raise ParamError(f"variants {missing[:5]} have no file in {exp / 'variants'}; run 05_datasets with them")
    unknown = sorted(set(overrides or {}) - set(notebook_parameters(STUDY_NOTEBOOK)))
    if unknown:
        raise ParamError(f"override(s) {', '.join(unknown)} are not parameters of {STUDY_NOTEBOOK}")
    base = dict(preset_params(preset, STUDY_NOTEBOOK))
    base.update(overrides or {})
    # refuse an inconsistent budget once, before any run starts (not in every run)
    plan = plan_study(exp, chosen, seeds, {**notebook_parameters(STUDY_NOTEBOOK), **base}, matched_controls)
    runs = plan.runs
    stale = [str(r["dir"]) for r in runs if r["stale"]]
    if stale:
        raise DataError(
            f"{len(stale)} finished run(s) were trained on other data than {exp / 'variants'} now lists (04_synthesis "
            f"or 05_datasets was re-run since), e.g. {stale[0]}; their results would be mixed with new ones. "
            f"Delete {exp / 'unet'} (or those run folders) or pass a new experiment name")
    todo = [r for r in runs if not r["done"]]
    cores = os.cpu_count() or 1
    tf_threads = int(threads_per_worker) if threads_per_worker else max(1, cores // max(1, workers))
    base.update({"experiment": experiment, "outputs_dir": str(resolve_outputs(outputs_dir)), "tf_threads": tf_threads})
    summary = {"total": len(runs), "skipped": len(runs) - len(todo), "done": 0, "failed": [], "seconds": {}}
    controls = (f" + {len(plan.control_runs)} matched control(s) × {len(seeds)} seeds" if plan.control_runs else "")
    for note in plan.notes:
        print(f"note: {note}", flush=True)
    print(f"study {experiment}: {len(runs)} runs ({len(chosen)} variants × {len(seeds)} seeds{controls}), "
          f"{summary['skipped']} already complete, {len(todo)} to run", flush=True)
    if todo:
        if scheduler:
            client = Client(scheduler)
            cluster = None
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        try:
            futures = {}
            for r in todo:
                params = {**base, "variant": r["variant"], "seed": r["seed"]}
                out_nb = exp / "notebooks" / f"{STUDY_NOTEBOOK}-{r['variant']}-seed{r['seed']}.ipynb"
                log = exp / "logs" / f"{r['variant']}-seed{r['seed']}.log"
                check_parameters(STUDY_NOTEBOOK, params)
                fut = client.submit(_run_one, STUDY_NOTEBOOK, str(out_nb), params, str(log), str(project_root()),
                                    os.environ.get(BATCH_ENV), key=f"{experiment}-{r['variant']}-seed{r['seed']}-{time.time_ns()}", pure=False)
                futures[fut] = r
            bar = tqdm(total=len(futures), desc="U-Nets", unit="run", disable=not progress)
            for fut in as_completed(futures):
                r = futures[fut]
                name = f"{r['variant']} seed {r['seed']}"
                try:
                    res = fut.result()
                    summary["done"] += 1
                    summary["seconds"][name] = round(res["seconds"], 1)
                except Exception as e:  # noqa: BLE001 — a failed run must not stop the others
                    summary["failed"].append({"run": name, "error": f"{type(e).__name__}: {str(e)[:300]}",
                                              "log": str(exp / "logs" / f"{r['variant']}-seed{r['seed']}.log")})
                bar.update(1)
            bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    csv = write_metrics_csv(exp)
    summary["metrics_csv"] = str(csv)
    if summary["failed"]:
        print(f"{len(summary['failed'])} run(s) failed:", file=sys.stderr)
        for f in summary["failed"]:
            print(f"  {f['run']}: {f['error']} (log: {f['log']})", file=sys.stderr)
    print(f"{summary['done']} run(s) finished, {summary['skipped']} skipped, {len(summary['failed'])} failed; "
          f"table: {csv}", flush=True)
    return summary


#: The most numbers one --seeds / --stages range may give (a typo such as 0-100000000 must not fill the memory).
MAX_RANGE = 10_000


def _int_ranges(text: str, option: str = "--seeds", example: str = "0,1,2 or 0-4") -> list[int]:
    """``"0,2-4"`` → ``[0, 2, 3, 4]`` (used for --stages and --seeds); anything else is a ParamError naming
    ``option`` (numbers ≥ 0, ranges ``a-b`` with a ≤ b)."""
    import re

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
    import json

    from .io import atomic_write_json

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
    import yaml

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
    st.add_argument("--variants", default="all", help="'all' (the paper's 47), groups (base, mixed, synthetic, augment, pretrain: the PT_ variants) or names, comma-separated")
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
        p.add_argument("--until-decided", action="store_true",
                       help="start from --seeds, then add one seed per round only to the comparisons (variant vs "
                            "matched control, else base) whose 95%% interval over seeds still includes 0; implies "
                            "--matched-controls; record: results/adaptive.json")
        p.add_argument("--max-seeds", type=int, default=None, metavar="N",
                       help="with --until-decided: stop a comparison undecided at N seeds (default 5)")
    args = ap.parse_args(argv)
    if args.max_seeds is not None and not args.until_decided:
        ap.error("--max-seeds goes with --until-decided")
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
            from .adaptive import study_runner

            summary = study_runner(max_seeds)(args.preset, args.experiment, args.variants, _parse_seeds(args.seeds),
                                              args.workers, args.threads, args.scheduler, args.outputs_dir,
                                              overrides=overrides, matched_controls=args.matched_controls)
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
                                overrides=overrides, matched_controls=args.matched_controls, max_seeds=max_seeds)
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
            from .io import atomic_write_json

            exp = experiment_dir(args.outputs_dir, args.experiment or args.preset)
            record_timings(exp / "results" / "chain_timings.json", args.preset, timings)
        print("stage times: " + ", ".join(f"{t['notebook']} {t['seconds']} s" for t in timings) + f"; total {total:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
