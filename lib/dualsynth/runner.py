"""Running one notebook with papermill: its parameters cell, the presets, the run itself and its warnings.

``run_notebook`` executes a numbered notebook (cwd = project root) after checking its parameters against the
notebook's ``parameters`` cell (papermill itself only warns about an unknown parameter, which would silently run
the wrong thing); its records are written only when it succeeds.  The chain and the study
(:mod:`dualsynth.batch`, :mod:`dualsynth.dask_study`) are built on it.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Mapping

from .config import (BATCH_ENV, ParamError, experiment_name_ok, load_yaml, lock_token, project_root, record_tag,
                     resolve_outputs, run_record_path)
from .tfquiet import kernel_arguments

__all__ = ["NOTEBOOKS", "notebook_path", "notebook_parameters", "preset_file", "preset_params", "check_parameters",
           "StageError", "failed_notebook_path", "KERNEL_START_ATTEMPTS",
           "kernel_did_not_start", "run_notebook", "notebook_warnings"]


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
    import papermill as pm  # lazy: papermill (nbclient, jupyter) only where notebooks are read or run

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
    full = {**notebook_parameters(notebook), **parameters}
    if not experiment_name_ok(full.get("experiment")) or not isinstance(full.get("outputs_dir"), str):
        return None  # start_stage refuses the run
    exp = resolve_outputs(full["outputs_dir"]) / full["experiment"]
    tag = record_tag(notebook, full)
    return run_record_path(exp, tag, pending=True), run_record_path(exp, tag)


def _stage_error(notebook: str, error: BaseException, failed: Path | None) -> StageError:
    from papermill.exceptions import PapermillExecutionError  # lazy: papermill, as above

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


#: How often a notebook's kernel is started when it dies before it replies (see :func:`kernel_did_not_start`).
KERNEL_START_ATTEMPTS = 3


def kernel_did_not_start(error: BaseException) -> bool:
    """True when ``error`` says the kernel died before it answered its first request, so no cell ran and the notebook
    can simply be run again.  Seen when two processes start kernels at the same moment: jupyter_client picks free
    ports by binding and releasing them, and the other process may take one before this kernel binds it
    (``ZMQError: Address already in use`` in the kernel's log)."""
    return isinstance(error, RuntimeError) and "before replying to kernel_info" in str(error)


def _kernel_retry_pause() -> None:
    """A short random pause before the next kernel start, apart from the other process that took its port."""
    time.sleep(random.uniform(0.5, 2.0))


def run_notebook(notebook: str, output: str | os.PathLike, parameters: Mapping[str, Any],
                 log_output: bool = False, progress_bar: bool = True) -> Path:
    """Execute one notebook with papermill (cwd = project root); the executed copy goes to ``output``.

    The records of a run are written only when it succeeds, each in one rename: papermill writes the executed
    notebook to a hidden file beside ``output``, renamed to ``output`` on success, and ``config.start_stage`` puts the
    run record in ``runs/.pending/``, moved into ``runs/`` on success.  A failed or interrupted attempt keeps the
    last good run's notebook and record; its own notebook is kept as ``<name>-failed.ipynb``
    (:func:`failed_notebook_path`), named in the :class:`StageError`, and its pending record is dropped.  A kernel
    that dies before it replies (no cell ran: :func:`kernel_did_not_start`) is started again, up to
    :data:`KERNEL_START_ATTEMPTS` kernels in all; an error inside the notebook is never retried.
    """
    import papermill as pm  # lazy: papermill, as above

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
        for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
            try:
                pm.execute_notebook(
                    str(notebook_path(notebook)),
                    str(running),
                    parameters=dict(parameters),
                    cwd=str(project_root()),
                    log_output=log_output,
                    progress_bar=progress_bar,
                    kernel_name="python3",
                    # the kernel's start-up log and its harmless shutdown-interrupt line only with DUALSYNTH_VERBOSE;
                    # its errors still show
                    extra_arguments=kernel_arguments(),
                )
                break
            except Exception as e:
                if not kernel_did_not_start(e):
                    raise
                if attempt == KERNEL_START_ATTEMPTS:
                    raise RuntimeError(f"{e} ({attempt} kernels started, each died at start-up)") from e
                print(f"{notebook}: the kernel died at start-up ({e}; the traceback above is its own); starting "
                      f"another (attempt {attempt + 1} of {KERNEL_START_ATTEMPTS})", flush=True)
                _kernel_retry_pause()
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
