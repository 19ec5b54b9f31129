"""Shared test fixtures.  ``import dualsynth`` first: it sets the Keras environment."""
from __future__ import annotations

import os
from pathlib import Path

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS / SM_FRAMEWORK)
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DUALSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """The folder of a real dataset in ../shared/data, or skip the test with a reason."""
    path = SHARED_DATA / name
    if not (path / "images").is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def ndfeb_palette():
    from dualsynth.palette import NDFEB_PALETTE

    return NDFEB_PALETTE



@pytest.fixture(scope="module")
def no_grappler():
    """Switch TensorFlow's Grappler graph optimisation off for a module: it costs ~15-40 s per traced U-Net
    training graph on this CPU while the tiny test steps gain nothing from it (restored afterwards)."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


# --------------------------------------------------------------------------- whole chains and other long jobs
#: Niceness of the jobs started early (below) while they run beside the tests: a lower priority, so that they mostly
#: take the cycles the tests in this process leave idle (kernel start-ups, graph tracing and plotting are
#: single-threaded); not the lowest, so that on a busy machine they are not starved into a kernel's or a child's
#: start-up timeout.  A test that waits for one gives it this process's priority back (``BackgroundProcess.returncode``;
#: lowering a niceness needs root or CAP_SYS_NICE, else the job stays niced).
BACKGROUND_NICE = 5


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux ``/proc``; kernels and Dask workers included, whatever their
    session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class BackgroundProcess:
    """``cmd`` in a subprocess (its own process group, niced by ``nice``), its console in ``log`` (a file, not a pipe:
    a full pipe would stall the run)."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None, nice: int = BACKGROUND_NICE):
        import shutil
        import subprocess

        self.name, self.log = name, log
        if nice and shutil.which("nice"):  # nice(1), not preexec_fn: safe however many threads this process has
            cmd = ["nice", "-n", str(nice), *cmd]
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _unnice(self) -> None:
        """Every thread of the job's processes back to this process's niceness (quietly not, where not allowed)."""
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        for pid in _descendants(self.proc.pid):
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):  # Linux: a niceness is per thread
                try:
                    if os.getpriority(os.PRIO_PROCESS, int(task.name)) > mine:
                        os.setpriority(os.PRIO_PROCESS, int(task.name), mine)
                except OSError:
                    pass

    def returncode(self, timeout: float = 1800) -> int:
        """The exit code, the job at this process's priority meanwhile (it is killed, and the test fails, after
        ``timeout`` seconds)."""
        import subprocess
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                self._unnice()  # again every few seconds: for the processes and threads started since
            except OSError:
                pass
            try:
                return self.proc.wait(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    self.stop()
                    pytest.fail(f"{self.name} still running after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def check(self, timeout: float = 1800) -> None:
        """Wait for a successful end (the test fails on another exit code, with the end of the console)."""
        rc = self.returncode(timeout)
        assert rc == 0, f"{self.name} failed (exit {rc}):\n{self.log.read_text()[-3000:]}"

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


class ChainProcess(BackgroundProcess):
    """``python -m dualsynth.batch chain --experiment <name> --outputs-dir <out> <args>``, its console in
    ``<out>/<name>.log``."""

    def __init__(self, name: str, out: Path, args: list[str], env: dict | None = None):
        import sys

        self.out = out
        cmd = [sys.executable, "-m", "dualsynth.batch", "chain", "--experiment", name, "--outputs-dir", str(out), *args]
        super().__init__(name, cmd, out / f"{name}.log", env)

    def wait(self, timeout: float = 1800) -> Path:
        """The experiment folder, once the chain has succeeded."""
        self.check(timeout)
        return self.out / self.name


#: ``batch.run_chain(**kwargs)`` in a fresh interpreter, after an optional ``prelude`` (Python source, e.g. the
#: paper test's judge weights); the stage timings it returns go to a JSON file.
_RUN_CHAIN = r"""
import json, sys
import dualsynth  # noqa: F401  (the Keras environment before TensorFlow)
spec = json.loads(sys.argv[1])
exec(spec["prelude"])
from dualsynth import batch
timings = batch.run_chain(**spec["kwargs"])
with open(spec["timings"], "w") as fh:
    json.dump(timings, fh)
"""


class RunChainProcess(BackgroundProcess):
    """:func:`dualsynth.batch.run_chain` with ``kwargs`` (``outputs_dir`` is ``out``) in a subprocess: the same call
    a test would make in this process, run beside the tests; its console in ``<out>/<name>.log``."""

    def __init__(self, name: str, out: Path, kwargs: dict, prelude: str = ""):
        import json
        import sys

        self.out, self.timings = out, out / f"{name}.timings.json"
        spec = dict(kwargs=dict(kwargs, outputs_dir=str(out)), timings=str(self.timings), prelude=prelude)
        super().__init__(name, [sys.executable, "-c", _RUN_CHAIN, json.dumps(spec)], out / f"{name}.log")

    def wait(self, timeout: float = 1800) -> list[dict]:
        """``run_chain``'s stage timings, once it has succeeded."""
        import json

        self.check(timeout)
        return json.loads(self.timings.read_text())


#: The real-data chain of ``test_notebooks.py::test_generative_chain_on_grey_real_data``: the smoke preset on
#: nasa_super, two variants on 2 workers; the plain U-Net as 04's judge (the smoke chain trains EfficientNetB0's).
REAL_DATA_CHAIN = ("nasa", ["--preset", "smoke", "--data", "params/data/nasa_super.yaml", "--stages", "all",
                            "--variants", "SHQ_0,SHQ_50", "--workers", "2", "--set", "pretest_encoder=plain"])
#: The smoke chain's ``batch.run_chain`` arguments (the fixture ``smoke_chain``).
SMOKE_CHAIN = dict(preset="smoke", experiment="t", stages="all", variants="SHQ_0,SHQ_50", workers=2)


@pytest.fixture(scope="session")
def chain_processes(tmp_path_factory):
    """Long jobs in subprocesses (chains and others), started once per session by name and stopped at its end (or at
    exit, should the session be interrupted): ``start(name, args)`` a batch chain, ``start_job(name, factory)`` any
    :class:`BackgroundProcess` (``factory(folder)``, a fresh temporary folder)."""
    import atexit

    class Chains(dict):
        def start(self, name: str, args: list[str], env: dict | None = None) -> ChainProcess:
            if name not in self:
                self[name] = ChainProcess(name, tmp_path_factory.mktemp(f"chain_{name}"), args, env)
            return self[name]

        def start_job(self, name: str, factory) -> BackgroundProcess:
            if name not in self:
                self[name] = factory(tmp_path_factory.mktemp(f"job_{name}"))
            return self[name]

        def stop_all(self) -> None:
            for job in self.values():
                job.stop()

    chains = Chains()
    atexit.register(chains.stop_all)
    yield chains
    chains.stop_all()
    atexit.unregister(chains.stop_all)


def _start_smoke_chains(jobs, selected: set[str]) -> BackgroundProcess:
    """The smoke chain, and the real-data chain first when its test is selected too (they run side by side: a chain
    keeps about one of the two cores busy, so the two together take little longer than one)."""
    _start_real_data_chain(jobs, selected)
    return jobs.start_job("smoke", lambda out: RunChainProcess("t", out, SMOKE_CHAIN))


def _start_real_data_chain(jobs, selected: set[str]) -> None:
    if "test_generative_chain_on_grey_real_data" in selected and (SHARED_DATA / "nasa_super" / "images").is_dir():
        jobs.start(*REAL_DATA_CHAIN)


@pytest.fixture(scope="session", autouse=True)
def _start_long_jobs_early(request, chain_processes, tmp_path_factory):
    """Start the session's long subprocess jobs when it begins, so that they run beside the quick tests instead of
    each holding up the test that needs it: the smoke chains (when a test uses ``smoke_chain`` or
    ``real_data_chain``) and whatever a selected test module starts in its ``start_early(jobs, tmp_path_factory,
    selected)`` (``jobs``: ``chain_processes``; ``selected``: the names of its selected tests).  The tests then only
    wait for the results (the same commands, the same checks)."""
    items = request.session.items
    selected = {getattr(item, "originalname", item.name) for item in items}
    uses = set().union(*(getattr(item, "fixturenames", ()) for item in items))
    if "smoke_chain" in uses:
        _start_smoke_chains(chain_processes, selected)
    elif "real_data_chain" in uses:
        _start_real_data_chain(chain_processes, selected)
    modules: dict = {}
    for item in items:
        mod = getattr(item, "module", None)
        if mod is not None and hasattr(mod, "start_early"):
            modules.setdefault(mod, set()).add(getattr(item, "originalname", item.name))
    for mod, names in modules.items():
        mod.start_early(chain_processes, tmp_path_factory, names)


@pytest.fixture(scope="session")
def real_data_chain(chain_processes) -> Path:
    """The real-data chain's experiment folder (``REAL_DATA_CHAIN``); skipped without ../shared/data."""
    shared_dataset("nasa_super")
    return chain_processes.start(*REAL_DATA_CHAIN).wait()


@pytest.fixture(scope="session")
def smoke_chain(chain_processes, request):
    """The smoke chain 01 → 07 (variants SHQ_0 and SHQ_50 side by side on 2 Dask workers, as ``make run``), run once
    per test session through the batch (papermill, ``batch.run_chain``) into a temporary outputs folder: (experiment
    folder, the chain's stage timings).  It runs in a subprocess, started when the session starts
    (``_start_long_jobs_early``).  Every test that needs a smoke chain's outputs shares this one and only reads it,
    except ``test_notebooks.py::test_study_resumes_after_sigkill`` (the last to use it), which adds the run SLQ_0.  To
    run a notebook on it, copy it (:func:`copy_experiment`)."""
    selected = {getattr(item, "originalname", item.name) for item in request.session.items}
    job = _start_smoke_chains(chain_processes, selected)  # already started, unless selected by hand
    timings = job.wait()
    return job.out / SMOKE_CHAIN["experiment"], timings


def copy_experiment(src: Path, dst: Path, stages=("patches", "vqvae", "pixelcnn", "synthetic", "variants")) -> Path:
    """A copy of the stage folders ``stages`` of experiment ``src`` as experiment ``dst`` (the pre-test judge's
    weights, ~150 MB, are left out), with the variant files' absolute paths moved to ``dst``: an experiment a
    later stage can run on without touching ``src``."""
    import shutil

    dst.mkdir(parents=True)
    for stage in stages:
        shutil.copytree(src / stage, dst / stage, ignore=shutil.ignore_patterns("pretest_unet"))
    for f in (dst / "variants").glob("*.json") if "variants" in stages else ():
        f.write_text(f.read_text().replace(f"{src}{os.sep}", f"{dst}{os.sep}"))
    return dst


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """A manifest of 8 px patches from one random 64 × 96 RGB image pair (NdFeB palette; tiers 4/2 and 8/3, 2 test
    patches), for tests of variants and their files.  Shared: tests only read it."""
    from dualsynth.config import DataConfig, TierSpec
    from dualsynth.palette import NDFEB_PALETTE
    from dualsynth.patching import SourceImage, prepare_dataset

    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("patches")
    srcs = [SourceImage("m", rng.integers(0, 256, (64, 96, 3), dtype=np.uint8),
                        rng.integers(0, 4, (64, 96)).astype(np.uint8), rng.integers(0, 4, (64, 96)).astype(np.uint8))]
    cfg = DataConfig("x", 3, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((4, 2), (8, 3), 2, 0))
    return prepare_dataset(cfg, d, patch_size=8, sources=srcs, progress=False)


def fake_pool(n: int) -> dict:
    """A synthetic pool record (``pool.json``) of ``n`` items, without files."""
    return {"items": [{"id": f"s{i:03d}", "image": f"images/s{i:03d}.png", "mask": f"masks/s{i:03d}.png"}
                      for i in range(n)]}


def squares(n: int, size: int = 32, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Trivially learnable pairs: class 1 = a bright square, class 0 = dark noisy background."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        h, w = rng.integers(size // 4, size // 2 + 1, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        masks[i, y0:y0 + h, x0:x0 + w] = 1
    img = np.where(masks == 1, 190, 40) + rng.integers(0, 40, masks.shape)
    img = img.astype(np.uint8)[..., None]
    if channels == 3:
        img = np.repeat(img, 3, axis=-1)
    return img, masks
