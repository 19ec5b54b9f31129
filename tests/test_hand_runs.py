"""Notebooks run by hand behave as the batch's (issue 15): the experiment lock for the life of the stage, the run
record only when the notebook reached its end (``stage.finish()``); and the stage's one figure saver (issue 17).

A notebook run by hand is a process (a Jupyter kernel) that calls ``config.start_stage`` without ``$DUALSYNTH_BATCH``;
the tests use small Python processes doing what a notebook's cells do, and (slow) one real kernel through papermill.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import ROOT
from dualsynth import batch, config
from dualsynth.config import BATCH_ENV, ExperimentLocked

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: a notebook 05 run by hand, cell by cell: start_stage, then (told on stdin) the last cell or a failing one
_NOTEBOOK = r"""
import sys
from dualsynth import batch, config
params = {**batch.notebook_parameters("05_datasets"), "outputs_dir": sys.argv[1], "experiment": "e",
          "variants": sys.argv[2]}
stage = config.start_stage("05_datasets", params)
print("started", flush=True)
if sys.stdin.readline().strip() == "finish":
    stage.finish()
    print("finished", flush=True)
    sys.stdin.readline()  # the kernel stays alive after its notebook ended
else:
    raise RuntimeError("a later cell of the notebook failed")
"""


@pytest.fixture(autouse=True)
def _by_hand(monkeypatch):
    """This process as a kernel run by hand (no batch), holding no experiment afterwards."""
    monkeypatch.delenv(BATCH_ENV, raising=False)
    yield
    config.release_experiment()


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != BATCH_ENV}


def _start(outputs: Path, variants: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _NOTEBOOK, str(outputs), variants], cwd=ROOT, env=_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line == "started", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def _params(outputs: Path, **kw) -> dict:
    return {**batch.notebook_parameters("05_datasets"), "outputs_dir": str(outputs), "experiment": "e", **kw}


def _tell(p: subprocess.Popen, what: str) -> None:
    p.stdin.write(what + "\n")
    p.stdin.flush()


def _finish(p: subprocess.Popen) -> list[str]:
    """Run the notebook's last cell in ``p``; what it printed."""
    _tell(p, "finish")
    lines = []
    while (line := p.stdout.readline().strip()) != "finished":
        assert line or p.poll() is None, p.stderr.read()
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- the run record: only at the end
def test_failed_hand_run_keeps_the_last_good_record(tmp_path):
    """A notebook run by hand writes runs/run_<stage>.json only from its last cell (stage.finish()); a later run that
    fails in a cell, or whose kernel is killed, leaves the good run's record byte for byte."""
    record = tmp_path / "e" / "runs" / "run_05_datasets.json"
    good = _start(tmp_path, "SHQ_0")
    assert not record.exists()  # started, not finished: nothing recorded yet
    assert _finish(good) == [f"05_datasets done: run recorded in {record}; experiment e free"]
    _tell(good, "")
    assert good.wait(60) == 0
    before = record.read_bytes()
    assert json.loads(before)["params"]["variants"] == "SHQ_0"

    failed = _start(tmp_path, "BMQ_0")
    _tell(failed, "fail")
    assert failed.wait(60) != 0 and "a later cell of the notebook failed" in failed.stderr.read()
    assert record.read_bytes() == before
    assert not (tmp_path / "e" / "runs" / ".pending").exists()
    assert not (tmp_path / "e" / "experiment.lock").exists()  # the kernel process ended: its lock went with it

    killed = _start(tmp_path, "SLQ_0")
    killed.send_signal(signal.SIGKILL)
    killed.wait(60)
    assert record.read_bytes() == before
    # the killed kernel's lock file stays; the next run takes it over, saying whose it was
    with pytest.warns(UserWarning, match=rf"stale lock of process {killed.pid} .*notebook 05_datasets run by hand"):
        stage = config.start_stage("05_datasets", _params(tmp_path, variants="BLQ_0"))
    assert record.read_bytes() == before
    stage.finish()
    assert json.loads(record.read_text())["params"]["variants"] == "BLQ_0"  # a good run replaces it
    for p in (good, failed, killed):
        p.stdout.close(), p.stderr.close(), p.stdin.close()


def test_rerun_in_the_same_kernel_keeps_its_lock_and_finishes_once(tmp_path, capsys):
    """A notebook run again in its kernel (after a failed cell, say) keeps the lock it holds; stage.finish() writes
    the record and frees the experiment; a second finish() does nothing; a stage of another experiment in the same
    kernel frees the first one's (that stage was left unfinished)."""
    first = config.start_stage("05_datasets", _params(tmp_path))
    lock = tmp_path / "e" / "experiment.lock"
    info = json.loads(lock.read_text())
    assert info["pid"] == os.getpid() and info["by_hand"] and info["command"] == "notebook 05_datasets run by hand"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a stale lock: its own
        again = config.start_stage("05_datasets", _params(tmp_path, variants="SHQ_0"))
    assert not first.by_batch and not (tmp_path / "e" / "runs").exists()
    again.finish()
    assert not lock.exists()
    assert f"run recorded in {tmp_path / 'e' / 'runs' / 'run_05_datasets.json'}" in capsys.readouterr().out
    written = (tmp_path / "e" / "runs" / "run_05_datasets.json").read_bytes()
    again.finish()
    assert (tmp_path / "e" / "runs" / "run_05_datasets.json").read_bytes() == written and not lock.exists()
    config.start_stage("05_datasets", _params(tmp_path))
    assert lock.exists()
    config.start_stage("05_datasets", _params(tmp_path, experiment="f"))  # another experiment in this kernel
    assert not lock.exists() and (tmp_path / "f" / "experiment.lock").exists()


# --------------------------------------------------------------------------- the lock: for the life of the stage
def test_a_second_process_is_refused_until_the_stage_finishes(tmp_path):
    """While a notebook run by hand holds the experiment (started, not finished) another kernel, a chain and a
    study are refused at once with ExperimentLocked naming it and what frees it; once it finishes — its kernel still
    running — the next notebook (02 after 01 in another kernel, say) starts."""
    hand = _start(tmp_path, "SHQ_0")
    try:
        who = (rf"experiment .*e is in use by process {hand.pid} on .*notebook 05_datasets run by hand.*Wait for it "
               rf"to finish \(if that notebook stopped with an error, run it again to its end, or shut down its "
               rf"kernel, process {hand.pid}: its lock goes with it\), or pass another experiment name")
        t0 = time.perf_counter()
        with pytest.raises(ExperimentLocked, match=who):
            config.start_stage("05_datasets", _params(tmp_path))
        assert time.perf_counter() - t0 < 5  # refused, not waiting
        with pytest.raises(ExperimentLocked, match=who):
            batch.run_chain("smoke", experiment="e", stages="05", outputs_dir=str(tmp_path))
        with pytest.raises(ExperimentLocked, match=who):
            batch.run_study("smoke", "e", "SHQ_0", outputs_dir=str(tmp_path), progress=False)
        assert not (tmp_path / "e" / "runs").exists()
        _finish(hand)
        assert hand.poll() is None  # the kernel is still alive; its stage has ended
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stage = config.start_stage("05_datasets", _params(tmp_path, variants="BMQ_0"))
        assert json.loads((tmp_path / "e" / "experiment.lock").read_text())["pid"] == os.getpid()
        stage.finish()
    finally:
        hand.kill()
        hand.wait(60)
        hand.stdout.close(), hand.stderr.close(), hand.stdin.close()


def test_batch_path_unchanged(tmp_path, monkeypatch):
    """Started by the batch ($DUALSYNTH_BATCH): no lock of its own (the batch holds it), the record in runs/.pending/
    at the start (moved by the batch on success), stage.finish() writes nothing."""
    monkeypatch.setenv(BATCH_ENV, "otherhost:1")
    stage = config.start_stage("05_datasets", _params(tmp_path))
    assert stage.by_batch and not (tmp_path / "e" / "experiment.lock").exists()
    pending = tmp_path / "e" / "runs" / ".pending" / "run_05_datasets.json"
    assert pending.is_file()
    stage.finish()
    assert sorted(p.name for p in (tmp_path / "e" / "runs").iterdir()) == [".pending"]


@pytest.mark.slow
def test_real_kernel_failing_notebook_keeps_the_record_and_frees_the_lock(tmp_path):
    """The same through a real kernel (papermill without the batch, as Jupyter runs it): a notebook that fails after
    start_stage leaves the good run's record, and its kernel's end frees the experiment."""
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell(f"outputs_dir = {str(tmp_path)!r}\nexperiment = 'e'\nseed = 0\n"
                                       "variants = 'SHQ_0'\nsave_figures = False\nfail = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params,
                nbformat.v4.new_code_cell("from dualsynth import config\n"
                                          "stage = config.start_stage('05_datasets', globals())"),
                nbformat.v4.new_code_cell("assert not fail, 'a later cell failed'"),
                nbformat.v4.new_code_cell("stage.finish()")]
    nbformat.write(nb, tmp_path / "hand.ipynb")
    env = dict(os.environ)
    os.environ.pop(BATCH_ENV, None)
    try:
        pm.execute_notebook(str(tmp_path / "hand.ipynb"), str(tmp_path / "ok.ipynb"), kernel_name="python3",
                            progress_bar=False)
        record = tmp_path / "e" / "runs" / "run_05_datasets.json"
        before = record.read_bytes()
        with pytest.raises(PapermillExecutionError, match="a later cell failed"):
            pm.execute_notebook(str(tmp_path / "hand.ipynb"), str(tmp_path / "bad.ipynb"), kernel_name="python3",
                                progress_bar=False, parameters={"variants": "BMQ_0", "fail": True})
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert record.read_bytes() == before and json.loads(before)["params"]["variants"] == "SHQ_0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel shut down cleanly: no stale lock left behind
        config.start_stage("05_datasets", _params(tmp_path)).finish()


# --------------------------------------------------------------------------- every notebook ends with finish()
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_ends_with_finish_and_saves_figures_through_the_stage(nb):
    cells = [c for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    last = [ln for ln in "".join(cells[-1]["source"]).splitlines() if ln.strip() and not ln.startswith("#")]
    assert last == ["stage.finish()"], f"{nb.name}: the last code cell must be stage.finish()"
    body = "".join("".join(c["source"]) for c in cells[1:])
    assert "if save_figures" not in body and "plots.save_figure" not in body, nb.name
    if "stage.save_figure(" in body:
        assert "stage.figures(" in "".join(cells[1]["source"]), f"{nb.name}: set the figure folder in the first cell"


# --------------------------------------------------------------------------- the figure saver
def test_stage_saves_figures_only_when_asked(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    stage = config.start_stage("05_datasets", _params(tmp_path))
    with pytest.raises(RuntimeError, match=r"call stage.figures\(<folder>\) before stage.save_figure"):
        stage.save_figure(fig, "x")
    assert stage.figures("variants") == tmp_path / "e" / "variants"
    assert stage.save_figure(fig, "sizes") is None  # a cell ending with it shows nothing
    assert sorted(p.name for p in (tmp_path / "e" / "variants").iterdir()) == ["sizes.png"]
    run = tmp_path / "e" / "unet" / "SHQ_0" / "seed0"
    stage.figures(run, pdf=True)  # a folder inside the experiment, as 06's run folder; with PDFs, as 07
    stage.save_figure(fig, "curve")
    stage.save_figure(fig, "plain", pdf=False)
    assert sorted(p.name for p in run.iterdir()) == ["curve.pdf", "curve.png", "plain.png"]
    off = config.start_stage("05_datasets", _params(tmp_path, save_figures=False))
    off.figures("results")
    off.save_figure(fig, "nothing")
    assert not list((tmp_path / "e" / "results").iterdir())
    plt.close(fig)


# --------------------------------------------------------------------------- Dask's own failure block
def test_dask_compute_failed_block_is_silenced_in_workers(caplog):
    """A failed study run: Dask's worker logs a multi-line 'Compute Failed' block (key, task, exception, traceback)
    besides the study's own one-line report; _run_one drops that block in the worker, other worker errors stay."""
    import logging

    from dualsynth import dask_study

    logger = logging.getLogger("distributed.worker")
    saved = list(logger.filters)
    try:
        dask_study._quiet_compute_failed()
        dask_study._quiet_compute_failed()
        assert sum(isinstance(f, dask_study._NoComputeFailed) for f in logger.filters) == 1
        with caplog.at_level(logging.INFO, logger="distributed.worker"):
            logger.error("Compute Failed\nKey:       %s\nState:     %s\n", "06-SHQ_0-seed0", "executing")
            logger.error("another worker error")
        assert [r.getMessage() for r in caplog.records] == ["another worker error"]
    finally:
        logger.filters[:] = saved


@pytest.mark.slow
def test_failed_run_on_a_real_worker_prints_no_compute_failed(tmp_path, capfd):
    """End to end on a Dask LocalCluster worker process: a run that fails (here refused before its kernel starts)
    raises our error to the study, and the worker's stderr holds no 'Compute Failed' block."""
    from dask.distributed import Client, LocalCluster

    from dualsynth import dask_study

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        fut = client.submit(dask_study._run_one, "06_unet_training", str(tmp_path / "out.ipynb"), {"nope": 1},
                            str(tmp_path / "run.log"), str(ROOT), pure=False)
        with pytest.raises(config.ParamError, match=r"parameters \['nope'\] are not declared"):
            fut.result()
        time.sleep(0.5)  # the worker logs after the task ended
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "Traceback:" not in err
