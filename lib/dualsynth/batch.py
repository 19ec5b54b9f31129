"""Running the notebooks with papermill: the chain 01 → 07, and (later) batches over variants and seeds.

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

from .config import ParamError, experiment_dir, load_yaml, project_root, resolve_path

__all__ = ["NOTEBOOKS", "notebook_path", "notebook_parameters", "preset_params", "run_notebook", "run_chain", "main"]

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


def run_notebook(notebook: str, output: str | os.PathLike, parameters: Mapping[str, Any],
                 log_output: bool = False, progress_bar: bool = True) -> Path:
    """Execute one notebook with papermill (cwd = project root); the executed copy goes to ``output``."""
    import papermill as pm

    check_parameters(notebook, parameters)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(notebook_path(notebook)),
        str(output),
        parameters=dict(parameters),
        cwd=str(project_root()),
        log_output=log_output,
        progress_bar=progress_bar,
        kernel_name="python3",
    )
    return output


def _select(stages: str) -> list[str]:
    if stages in ("all", ""):
        chosen = list(NOTEBOOKS)
    else:
        wanted: list[str] = []
        for part in stages.split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                wanted += [f"{i:02d}" for i in range(int(a), int(b) + 1)]
            else:
                wanted.append(f"{int(part):02d}")
        chosen = [n for n in NOTEBOOKS if n[:2] in wanted]
        if not chosen:
            raise ParamError(f"--stages {stages!r} selects no notebook; use e.g. 01-04, 01,02 or all")
    return [n for n in chosen if (project_root() / "notebooks" / f"{n}.ipynb").is_file()]


def run_chain(preset: str, experiment: str | None = None, data: str | None = None, stages: str = "all",
              outputs_dir: str = "outputs", overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run the selected notebooks in order; stop at the first failure (later stages need its files)."""
    experiment = experiment or preset
    exp = experiment_dir(outputs_dir, experiment)
    timings = []
    for nb in _select(stages):
        params = dict(preset_params(preset, nb))
        params["experiment"] = experiment
        params["outputs_dir"] = str(resolve_path(outputs_dir))
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
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualsynth.batch", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("chain", help="run the numbered notebooks in order with a preset")
    ch.add_argument("--preset", default="quick", help="params/presets/<preset>/ (smoke, quick, paper)")
    ch.add_argument("--experiment", default=None, help="outputs/<experiment>/ (default: the preset name)")
    ch.add_argument("--data", default=None, help="data YAML for 01_patching (default: the notebook's)")
    ch.add_argument("--stages", default="all", help="e.g. 01-04, 01,03 or all (default)")
    ch.add_argument("--outputs-dir", default="outputs")
    args = ap.parse_args(argv)
    if args.cmd == "chain":
        try:
            timings = run_chain(args.preset, args.experiment, args.data, args.stages, args.outputs_dir)
        except ParamError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        total = sum(t["seconds"] for t in timings)
        print("stage times: " + ", ".join(f"{t['notebook']} {t['seconds']} s" for t in timings) + f"; total {total:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
