"""The study on Dask: ``06_unet_training`` for every variant × seed, resumable; forking an experiment's data.

``run_study`` plans the runs (:func:`dualsynth.study.plan_study`), skips the finished ones, runs the rest with
papermill on a Dask ``LocalCluster`` (or a given scheduler) while holding the experiment's lock, and rebuilds
``results/metrics.csv`` (:func:`dualsynth.results.write_metrics_csv`).  ``fork_experiment`` starts a new experiment
from another's patches, pool and variants.  Re-exported by :mod:`dualsynth.batch`.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import BATCH_ENV, ParamError, experiment_dir, experiment_lock, project_root, resolve_outputs
from .io import DataError, atomic_write_json, read_json
from .results import write_metrics_csv
from .runner import check_parameters, notebook_parameters, preset_params, run_notebook
from .study import STUDY_STAGE, adopt_runs, adoption_lines, executed_study_notebook, plan_study, study_runs
from .variants import GROUPS, select

__all__ = ["STUDY_NOTEBOOK", "FORK_ITEMS", "fork_experiment", "run_study"]

STUDY_NOTEBOOK = STUDY_STAGE


def _check_variants(spec: Any, what: str) -> None:
    """A variant list that names an unknown variant (``VariantError``) or none at all is refused."""
    if not isinstance(spec, (str, list, tuple)):
        raise ParamError(f"{what}={spec!r}: give a comma list of variant names or groups, or all")
    if not select(spec):
        raise ParamError(f"{what} {spec!r} selects no variant: give names like SHQ_0,BMQ_50, groups "
                         f"({', '.join(('core',) + GROUPS)}) or all")


def _check_workers(workers: Any, threads: Any = None) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParamError(f"--workers {workers!r}: the number of Dask worker processes, an integer ≥ 1")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ParamError(f"--threads {threads!r}: TensorFlow threads per run, an integer ≥ 1 (or leave it out)")


class _NoComputeFailed(logging.Filter):
    """Drops the Dask worker's own multi-line ``Compute Failed`` block (key, task, exception, traceback) for a run
    that failed: the study reports each failed run itself, in one line naming its log (:func:`run_study`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


def _quiet_compute_failed() -> None:
    """Install :class:`_NoComputeFailed` on ``distributed.worker``'s logger in this (worker) process, once."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _NoComputeFailed) for f in logger.filters):
        logger.addFilter(_NoComputeFailed())


def _run_one(notebook: str, output: str, parameters: dict[str, Any], log_path: str, root: str,
             batch: str | None = None) -> dict[str, Any]:
    """Execute one notebook run on a Dask worker; its output (cell by cell) goes to ``log_path``.  ``batch``: the
    lock holder (``$DUALSYNTH_BATCH`` of the study), which a worker of another scheduler does not inherit.  A run
    that fails raises (:class:`~dualsynth.runner.StageError`) without the worker's ``Compute Failed`` block."""
    _quiet_compute_failed()  # runs in the worker process, where Dask logs a failed task
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


#: what a forked experiment shares with its source: the patches, the synthetic pool, the variant lists, the
#: generator's summary (its training tier); not the checkpoints or the U-Net runs
FORK_ITEMS = ("patches", "synthetic", "variants", "vqvae/summary.json")


def fork_experiment(outputs_dir: str | os.PathLike, source: str, target: str) -> Path:
    """Start experiment ``target`` from the data of ``source`` (01–05 done), for a study with other U-Net settings.

    Copies :data:`FORK_ITEMS` (the variant files keep pointing at ``source``'s images, which must stay) and writes
    ``forked_from.json``.  Forking again from the same source is a no-op; a target holding anything else is refused.
    """
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
              progress: bool = True, matched_controls: bool = False, notes: bool = True,
              adopt_from: str | None = None) -> dict[str, Any]:
    """Run ``06_unet_training`` for every (variant, seed) with papermill on Dask; resumable.

    A run whose ``metrics.json`` is complete is skipped; an interrupted one is redone (its U-Net training resumes
    from its last epoch checkpoint).  Failures are reported at the end without stopping the other runs.
    ``results/metrics.csv`` is rebuilt from the per-run files at the end.  ``matched_controls`` (under 06's
    ``budget: epochs``) adds each mixed variant's matched control run, ``<base>@<updates>``
    (:func:`dualsynth.study.plan_study`); control runs are runs like the others (resumable, fingerprinted).
    ``notes``: print the plan's notes (``study --until-decided``'s rounds, which run a subset, do not).
    ``adopt_from``: an experiment (name under ``outputs_dir``) whose finished runs of the same data and parameters
    are copied in instead of trained again (:func:`dualsynth.study.adopt_runs`).
    """
    from dask.distributed import Client, LocalCluster, as_completed  # lazy: Dask only where a study runs
    from tqdm.auto import tqdm  # with it: the study's progress bar

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
    if adopt_from:
        got = adopt_runs(exp, resolve_outputs(outputs_dir) / adopt_from, runs,
                         {**notebook_parameters(STUDY_NOTEBOOK), **base}, notebook_parameters(STUDY_NOTEBOOK))
        for line in adoption_lines(got, adopt_from):
            if notes or not line.startswith("note:"):
                print(line, flush=True)
        runs = plan.runs = study_runs(exp, list(dict.fromkeys(r["variant"] for r in runs)), seeds)
    todo = [r for r in runs if not r["done"]]
    cores = os.cpu_count() or 1
    tf_threads = int(threads_per_worker) if threads_per_worker else max(1, cores // max(1, workers))
    base.update({"experiment": experiment, "outputs_dir": str(resolve_outputs(outputs_dir)), "tf_threads": tf_threads})
    summary = {"total": len(runs), "skipped": len(runs) - len(todo), "done": 0, "failed": [], "seconds": {}}
    controls = (f" + {len(plan.control_runs)} matched control(s) × {len(seeds)} seeds" if plan.control_runs else "")
    for note in plan.notes if notes else ():
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
                out_nb = executed_study_notebook(exp, r["variant"], r["seed"])
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
