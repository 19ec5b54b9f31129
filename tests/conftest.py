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


# --------------------------------------------------------------------------- whole chains (notebooks 01 → 07)
class ChainProcess:
    """``python -m dualsynth.batch chain --experiment <name> --outputs-dir <out> <args>`` in a subprocess (its own
    process group), its console in ``<out>/<name>.log`` (a file, not a pipe: a full pipe would stall the run)."""

    def __init__(self, name: str, out: Path, args: list[str], env: dict | None = None):
        import subprocess
        import sys

        self.name, self.out, self.log = name, out, out / f"{name}.log"
        cmd = [sys.executable, "-m", "dualsynth.batch", "chain", "--experiment", name, "--outputs-dir", str(out), *args]
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 1800) -> Path:
        """The experiment folder, once the chain has succeeded."""
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"chain {self.name} failed (exit {rc}):\n{self.log.read_text()[-3000:]}"
        return self.out / self.name

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


#: The real-data chain of ``test_notebooks.py::test_generative_chain_on_grey_real_data``: the smoke preset on
#: nasa_super, two variants on 2 workers; the plain U-Net as 04's judge (the smoke chain trains EfficientNetB0's).
REAL_DATA_CHAIN = ("nasa", ["--preset", "smoke", "--data", "params/data/nasa_super.yaml", "--stages", "all",
                            "--variants", "SHQ_0,SHQ_50", "--workers", "2", "--set", "pretest_encoder=plain"])


@pytest.fixture(scope="session")
def chain_processes(tmp_path_factory):
    """Chains in subprocesses, started once per session by name (``start(name, args)``) and stopped at its end."""

    class Chains(dict):
        def start(self, name: str, args: list[str], env: dict | None = None) -> ChainProcess:
            if name not in self:
                self[name] = ChainProcess(name, tmp_path_factory.mktemp(f"chain_{name}"), args, env)
            return self[name]

    chains = Chains()
    yield chains
    for chain in chains.values():
        chain.stop()


@pytest.fixture(scope="session")
def real_data_chain(chain_processes) -> Path:
    """The real-data chain's experiment folder (``REAL_DATA_CHAIN``); skipped without ../shared/data."""
    shared_dataset("nasa_super")
    return chain_processes.start(*REAL_DATA_CHAIN).wait()


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory, chain_processes, request):
    """The smoke chain 01 → 07 (variants SHQ_0 and SHQ_50 side by side on 2 Dask workers, as ``make run``), run once
    per test session through the batch (papermill) into a temporary outputs folder: (experiment folder, the chain's
    stage timings).  Every test that needs a smoke chain's outputs shares this one and only reads it, except
    ``test_notebooks.py::test_study_resumes_after_sigkill`` (the last to use it), which adds the run SLQ_0.  To run
    a notebook on it, copy it (:func:`copy_experiment`).

    When the real-data chain's test is selected too, its chain starts first, in a subprocess, and runs side by side
    with this one: a chain keeps about one of the two cores busy (kernel start-ups, graph tracing and plots are
    single-threaded), so the two together take little longer than one."""
    from dualsynth import batch

    selected = {getattr(item, "originalname", item.name) for item in request.session.items}
    if "test_generative_chain_on_grey_real_data" in selected and (SHARED_DATA / "nasa_super" / "images").is_dir():
        chain_processes.start(*REAL_DATA_CHAIN)
    out = tmp_path_factory.mktemp("outputs")
    timings = batch.run_chain("smoke", experiment="t", stages="all", outputs_dir=str(out), variants="SHQ_0,SHQ_50",
                              workers=2)
    return out / "t", timings


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
