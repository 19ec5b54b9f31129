"""Bad input caught before hours of work (issue 7, "Reliability"): each test is one row of the README's fault table.

Most bad-input rows are tested beside their code (test_io.py, test_patching.py, test_variants.py, …); this file
holds the rest: stale checkpoints and runs (their inputs changed), a prior of another configuration, a NaN prior
loss, unwritable output folders, one validation call per notebook, and the run record.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from dualsynth import config
from dualsynth.io import DataError, write_png


def _stripes(n, seed, k=4, size=6):
    rng = np.random.default_rng(seed)
    return np.repeat(rng.integers(0, k, (n, 1, size)), size, axis=1).astype(np.int32)


# --------------------------------------------------------------------------- validation at the start of each notebook
@pytest.mark.parametrize("nb", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_validates_its_parameters_first(nb):
    """The code cell after the parameters cell calls config.start_stage (the one validation function) before
    anything reads or writes data."""
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    src = "".join(cells[1]["source"])
    call = f'config.start_stage("{nb.stem}", globals())'
    assert call in src, f"{nb.name}: the first cell after the parameters must call {call}"
    before = [ln.split("#")[0].strip() for ln in src[:src.index(call)].splitlines()[:-1]]  # the lines above it
    assert all(not ln or ln.startswith(("import ", "from ")) for ln in before), f"{nb.name}: code before {call}"


# --------------------------------------------------------------------------- stale inputs: refuse, name the folder
@pytest.mark.slow
def test_prior_checkpoint_from_other_codes_refused(tmp_path):
    """03 re-run after 01/02 changed: the prior checkpoint was trained on other code maps → refused."""
    from dualsynth import pixelcnn as pc

    make = lambda: pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, seed=0)  # noqa: E731
    pc.fit_prior(make(), _stripes(16, 0), _stripes(4, 1), tmp_path / "ck", steps=10, batch_size=8, eval_every=10,
                 progress=False)
    with pytest.raises(DataError, match=r"ck holds a prior checkpoint made from other data.*delete .*ck or pass a "
                                         r"new experiment name"):
        pc.fit_prior(make(), _stripes(16, 7), _stripes(4, 1), tmp_path / "ck", steps=20, batch_size=8,
                     eval_every=10, progress=False)


@pytest.mark.slow
def test_prior_checkpoint_of_other_config_refused(tmp_path):
    from dualsynth import pixelcnn as pc

    pc.fit_prior(pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1), _stripes(16, 0), _stripes(4, 1),
                 tmp_path / "ck", steps=10, batch_size=8, eval_every=10, progress=False)
    with pytest.raises(ValueError, match=r"holds a prior with config .*delete .*ck or pass a new experiment name"):
        pc.fit_prior(pc.make_prior("pixelcnn", 4, hidden_channels=16, num_layers=1), _stripes(16, 0),
                     _stripes(4, 1), tmp_path / "ck", steps=20, batch_size=8, eval_every=10, progress=False)


@pytest.mark.slow
def test_prior_nan_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    """The prior's loss becomes NaN (weights poisoned, as after a divergence): training stops with a message naming
    the last good checkpoint, which stays loadable."""
    import tensorflow as tf

    from dualsynth import pixelcnn as pc

    make = lambda: pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1)  # noqa: E731
    kw = dict(batch_size=8, eval_every=10, progress=False)
    pc.fit_prior(make(), _stripes(16, 0), _stripes(4, 1), tmp_path / "ck", steps=10, **kw)
    real = pc.train_prior

    def poisoned(model, *a, **k):
        for v in model.trainable_variables:
            v.assign(tf.fill(v.shape, float("nan")))
        return real(model, *a, **k)

    monkeypatch.setattr(pc, "train_prior", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss became nan.*last good checkpoint .*last \(step 10\).*"
                                                 r"lower learning_rate"):
        pc.fit_prior(make(), _stripes(16, 0), _stripes(4, 1), tmp_path / "ck", steps=40, **kw)
    monkeypatch.undo()
    again = pc.fit_prior(make(), _stripes(16, 0), _stripes(4, 1), tmp_path / "ck", steps=20, **kw)
    assert [r["step"] for r in again["history"]] == [10, 20]
    assert np.isfinite(pc.evaluate_nll(pc.load_prior(tmp_path / "ck" / "best"), _stripes(4, 1)))


@pytest.mark.slow
def test_vqvae_checkpoint_from_other_patches_refused(tmp_path):
    """02 re-run after 01 was re-run with another seed: the VQ-VAE checkpoint is refused, not resumed; 03 run
    after 01 without 02: the generator is refused."""
    from dualsynth import vqvae as vq

    rng = np.random.default_rng(0)
    x, other = rng.random((4, 16, 16, 2)).astype(np.float32), rng.random((4, 16, 16, 2)).astype(np.float32)
    make = lambda: vq.VQVAE(in_channels=2, num_embeddings=4, embedding_dim=4, num_hiddens=8,  # noqa: E731
                            num_residual_hiddens=4, num_residual_layers=1)
    vq.train_vqvae(make(), x, x, steps=2, batch_size=2, eval_every=2, checkpoint_dir=tmp_path / "ck", progress=False)
    with pytest.raises(DataError, match=r"ck holds a VQ-VAE checkpoint made from other data.*pass a new experiment"):
        vq.train_vqvae(make(), other, x, steps=4, batch_size=2, eval_every=2, checkpoint_dir=tmp_path / "ck",
                       progress=False)
    # the same data resumes
    h = vq.train_vqvae(make(), x, x, steps=4, batch_size=2, eval_every=2, checkpoint_dir=tmp_path / "ck",
                       progress=False)
    assert h.resumed_from_step == 2 and h.final_step == 4
    # 03 after 01 was re-run but 02 was not: the generator was made from other patches
    vq.check_trained_on(tmp_path / "ck", x, x)
    with pytest.raises(DataError, match=r"VQ-VAE in .*ck was trained on other patches.*re-run 02_vqvae"):
        vq.check_trained_on(tmp_path / "ck", other, x)


def _fake_study(exp: Path, fingerprint: str | None) -> Path:
    """An experiment with variant SHQ_0 (one real pair per split) and a finished run of it."""
    from dualsynth import variants as V

    pair = {"image": str(exp / "i.png"), "mask": str(exp / "m.png"), "source": "real", "id": "i"}
    write_png(exp / "i.png", np.zeros((4, 4), np.uint8))
    write_png(exp / "m.png", np.zeros((4, 4), np.uint8))
    data = {"variant": "SHQ_0", "group": "base", "tier": "SHQ", "percent": 0, "augment": False, "num_real_train": 1,
            "num_synthetic_train": 0, "train": [pair], "val": [pair], "test": [pair]}
    (exp / "variants").mkdir(parents=True)
    (exp / "variants" / "SHQ_0.json").write_text(json.dumps(data))
    run = V.run_dir(exp / "unet", "SHQ_0", 0)
    run.mkdir(parents=True)
    rec = {"variant": "SHQ_0", "seed": 0, "complete": True, "accuracy": 0.5, "miou": 0.5, "miou_dataset": 0.5,
           "missing_class_iou": 0.5, "inputs_fingerprint": fingerprint or V.inputs_fingerprint(data)}
    (run / "metrics.json").write_text(json.dumps(rec))
    return run


def test_study_refuses_finished_runs_made_from_other_data(tmp_path):
    """06 (batch) after 04/05 were re-run: a finished run whose variant files changed is not silently kept."""
    from dualsynth import batch

    run = _fake_study(tmp_path / "e", None)
    assert batch.study_runs(tmp_path / "e", ["SHQ_0"], [0])[0] == {"variant": "SHQ_0", "seed": 0, "dir": run,
                                                                   "done": True, "stale": False}
    write_png(tmp_path / "e" / "i.png", np.full((4, 4), 9, np.uint8))  # e.g. a re-generated synthetic image
    with pytest.raises(DataError, match=r"1 finished run\(s\) were trained on other data .*seed0.*Delete .*unet"):
        batch.run_study("smoke", "e", "SHQ_0", outputs_dir=str(tmp_path), progress=False)


# --------------------------------------------------------------------------- corrupt saved files: name the file
def test_corrupt_saved_json_names_the_file(tmp_path):
    """A truncated or non-UTF-8 config of a saved model gives a DataError naming the file, not a bare decode error."""
    from dualsynth import pixelcnn as pc
    from dualsynth import vqvae as vq
    from dualsynth.segmentation import load_unet_config

    pc.save_prior(pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1), tmp_path / "prior")
    (tmp_path / "prior" / "prior.json").write_text('{"kind": "pixel')
    with pytest.raises(DataError, match=r"prior[/\\]prior\.json: not valid JSON"):
        pc.load_prior(tmp_path / "prior")
    (tmp_path / "vq").mkdir()
    (tmp_path / "vq" / "config.json").write_bytes(b'{"in_channels": \xff}')
    with pytest.raises(DataError, match=r"vq[/\\]config\.json: not valid JSON"):
        vq.load_vqvae(tmp_path / "vq")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "unet_config.json").write_text("")
    with pytest.raises(DataError, match=r"unet[/\\]unet_config\.json: not valid JSON"):
        load_unet_config(tmp_path / "unet")


# --------------------------------------------------------------------------- benchmark helpers
@pytest.fixture
def bench_common(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import _common

    return _common


def test_bench_child_without_result_line(bench_common, tmp_path):
    script = tmp_path / "child.py"
    script.write_text("print('warming up')\nprint('oops, forgot the result')\n")
    with pytest.raises(RuntimeError, match=r"(?s)child .*child\.py --child .*printed no 'RESULT ' line.*forgot the "
                                           r"result"):
        bench_common.run_child(str(script), {"n": 1})
    script.write_text("import sys\nsys.exit('bad task')\n")
    with pytest.raises(RuntimeError, match=r"(?s)child .*child\.py --child .*failed \(exit 1\).*bad task"):
        bench_common.run_child(str(script), {"n": 1})
    script.write_text("print('RESULT ' + '[1, 2]')\n")
    assert bench_common.run_child(str(script), {}) == [1, 2]


def test_bench_fit_exponent_factor_at_zero_intercept(bench_common):
    fit = bench_common.fit_exponent([1, 2, 4, 8], [1, 2, 4, 8])  # y = 1 * x: log-intercept a == 0
    assert fit["exponent"] == 1.0 and fit["factor"] == pytest.approx(1.0) and fit["r2"] == 1.0
    assert bench_common.fit_exponent([1, 2, 4], [3, 12, 48])["factor"] == pytest.approx(3.0)


# --------------------------------------------------------------------------- output folders
def test_output_folder_not_creatable(tmp_path):
    (tmp_path / "file").write_text("x")
    params = {**_defaults("05_datasets"), "outputs_dir": str(tmp_path / "file")}
    with pytest.raises(DataError, match=r"cannot create output folder .*file.*choose another outputs_dir"):
        config.start_stage("05_datasets", params)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; "
                                              "test_output_folder_not_creatable covers this case as root")
def test_output_folder_read_only(tmp_path):
    ro = tmp_path / "ro"
    (ro / "smoke").mkdir(parents=True)
    ro.chmod(0o500)
    (ro / "smoke").chmod(0o500)
    try:
        with pytest.raises(DataError, match=r"output folder .*smoke is not writable; choose another outputs_dir"):
            config.start_stage("05_datasets", {**_defaults("05_datasets"), "outputs_dir": str(ro)})
    finally:
        (ro / "smoke").chmod(0o700)
        ro.chmod(0o700)


def test_output_folder_not_writable_simulated(tmp_path, monkeypatch):
    """As root permissions do not block writes; os.access answering 'no' stands for a read-only folder."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode == os.W_OK else real(p, mode, *a, **k))
    with pytest.raises(DataError, match=r"output folder .*smoke is not writable; choose another outputs_dir"):
        config.start_stage("05_datasets", {**_defaults("05_datasets"), "outputs_dir": str(tmp_path)})


def _defaults(nb: str) -> dict:
    from dualsynth import batch

    return batch.notebook_parameters(nb)


# --------------------------------------------------------------------------- the run record
def test_run_record_versions_and_commit(tmp_path, monkeypatch):
    rec = config.run_record()
    for dist in ("tensorflow", "dm-sonnet", "segmentation-models", "numpy"):
        assert rec["versions"][dist], dist
    assert rec["python"] and rec["git_commit"] not in (None, "")
    params = {**_defaults("05_datasets"), "outputs_dir": str(tmp_path / "o")}
    monkeypatch.setenv("DUALSYNTH_ROOT", str(tmp_path))  # outside any git work tree
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert config.run_record()["git_commit"] == "unknown"
    stage = config.start_stage("05_datasets", params)
    stage.finish()  # run by hand: the record is written when the notebook reaches its end
    written = json.loads((stage.experiment_dir / "runs" / "run_05_datasets.json").read_text())
    assert written["versions"]["tensorflow"] and written["git_commit"] == "unknown"
    assert written["params"]["outputs_dir"] == str(tmp_path / "o")


@pytest.mark.slow
def test_synthesis_refuses_prior_of_another_generator(tmp_path):
    """04 after 02 was re-run but 03 was not: the prior was trained on another VQ-VAE's code maps → refused."""
    from dualsynth import pixelcnn as pc
    from dualsynth import vqvae as vq
    from dualsynth.palette import NDFEB_PALETTE
    from dualsynth.synthesis import generate_samples

    rng = np.random.default_rng(0)
    for name in ("g1", "g2"):
        x = rng.random((4, 16, 16, 2)).astype(np.float32)
        vq.train_vqvae(vq.VQVAE(in_channels=2, num_embeddings=4, embedding_dim=4, num_hiddens=8,
                                num_residual_hiddens=4, num_residual_layers=1),
                       x, x, steps=2, batch_size=2, eval_every=2, checkpoint_dir=tmp_path / name, progress=False)
    g1, g2 = vq.load_vqvae(tmp_path / "g1"), vq.load_vqvae(tmp_path / "g2")
    assert g1.checkpoint_id == vq.load_vqvae(tmp_path / "g1").checkpoint_id != g2.checkpoint_id
    pc.save_prior(pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1), tmp_path / "pixelcnn" / "prior",
                  generator_id=g1.checkpoint_id)
    prior = pc.load_prior(tmp_path / "pixelcnn" / "prior")
    assert prior.generator_id == g1.checkpoint_id
    with pytest.raises(DataError, match=r"prior in .*pixelcnn was trained on the code maps of another VQ-VAE than the "
                                        r"one in .*g2 .*re-run 03_pixelcnn after deleting .*pixelcnn"):
        generate_samples(g2, prior, 1, NDFEB_PALETTE, code_shape=(4, 4), progress=False, image_channels=1)


# --------------------------------------------------------------------------- issue 15: multi-page images
def test_multi_page_tiff_refused(tmp_path):
    """Issue 15 item 2: a TIFF stack (or channels saved as pages) is refused naming the file and its page count,
    instead of being averaged into one grey picture with a 'colour image converted to grey' warning."""
    import tifffile

    from dualsynth.io import read_image, read_mask
    from dualsynth.palette import NDFEB_PALETTE

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros((4, 32, 32), np.uint8), imagej=True)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as w:
        w.write(np.zeros((32, 32), np.uint8))
        w.write(np.ones((32, 32), np.uint8))
    for name, n in (("stack", 5), ("hyper", 4), ("pages", 2)):
        with pytest.raises(DataError, match=rf"{name}\.tif: a multi-page image \({n} pages.*one file must hold one "
                                            r"micrograph or mask"):
            read_image(tmp_path / f"{name}.tif", channels=1)
        with pytest.raises(DataError, match=rf"{name}\.tif: a multi-page image"):
            read_mask(tmp_path / f"{name}.tif", NDFEB_PALETTE)
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"anim\.png: a multi-page image \(2 frames"):
        read_image(tmp_path / "anim.png")
    # one image per file still reads: RGB, and a pyramid (reduced-resolution levels are not further images)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((32, 32, 3), np.uint8))
    assert read_image(tmp_path / "rgb.tif").shape == (32, 32, 3)
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as w:
        w.write(np.zeros((64, 64), np.uint8), subifds=1)
        w.write(np.zeros((32, 32), np.uint8), subfiletype=1)
    assert read_image(tmp_path / "pyr.tif").shape == (64, 64, 1)


# --------------------------------------------------------------------------- issue 15: records of failed re-runs
def _fake_papermill(monkeypatch, fail=lambda params: None):
    """papermill.execute_notebook without a kernel: it writes the executed notebook as papermill does (the output
    file, as it goes), runs the notebook's first cell (``config.start_stage``) in this process, prints a project
    warning into the notebook, then raises what ``fail(parameters)`` returns (an exception) or succeeds."""
    import papermill as pm

    calls = []

    def execute(input_path, output_path, parameters=None, **kw):
        from dualsynth import batch

        name = Path(input_path).stem
        calls.append((name, dict(parameters)))
        warning = "/tmp/ipykernel_7/123.py:4: UserWarning: class(es) ['oxide'] appear in no test patch\n"
        nb = {"cells": [{"cell_type": "code", "source": "stage = config.start_stage(…)", "metadata": {},
                         "outputs": [{"output_type": "stream", "name": "stderr", "text": [warning]}]}],
              "metadata": {"papermill": {"parameters": dict(parameters)}}, "nbformat": 4, "nbformat_minor": 5}
        Path(output_path).write_text(json.dumps(nb))
        config.start_stage(name, {**batch.notebook_parameters(name), **parameters})
        error = fail(parameters)
        if error is not None:
            raise error

    monkeypatch.setattr(pm, "execute_notebook", execute)
    return calls


def _notebook_error():
    from papermill.exceptions import PapermillExecutionError

    return PapermillExecutionError(3, 5, "manifest = patching.prepare_dataset(…)", "PatchingError",
                                   "no patch left after filtering: …; raise max_majority_fraction",
                                   ["\x1b[0;31m-----\x1b[0m"] + [f"  frame {i}" for i in range(60)])


def test_failed_rerun_keeps_the_last_good_records(tmp_path, monkeypatch, capsys):
    """Issue 15 items 6 and 13: a re-run of a stage that fails inside its notebook, is interrupted or hits a full disk
    leaves the last good run's executed notebook and runs/ record as they were; the attempt's notebook is kept as
    01_patching-failed.ipynb and named in the error, whose first line is the project's message."""
    import errno

    from dualsynth import batch

    outcome: dict = {}
    _fake_papermill(monkeypatch, lambda p: outcome.get(p["patch_size"]))
    exp = tmp_path / "e"
    batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path))
    good_nb = (exp / "notebooks" / "01_patching.ipynb").read_bytes()
    good_rec = (exp / "runs" / "run_01_patching.json").read_bytes()
    assert json.loads(good_rec)["params"]["patch_size"] == 64
    assert "warning: UserWarning: class(es) ['oxide'] appear in no test patch" in capsys.readouterr().out

    def same_records():
        assert (exp / "notebooks" / "01_patching.ipynb").read_bytes() == good_nb
        assert (exp / "runs" / "run_01_patching.json").read_bytes() == good_rec
        assert not [p.name for p in (exp / "runs" / ".pending").iterdir()]
        assert not [p.name for p in (exp / "notebooks").iterdir() if p.name.startswith(".")]

    failed = exp / "notebooks" / "01_patching-failed.ipynb"
    outcome[128] = _notebook_error()
    with pytest.raises(batch.StageError) as err:
        batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path), overrides={"patch_size": 128})
    first, second = str(err.value).splitlines()
    assert first == "01_patching failed: PatchingError: no patch left after filtering: …; raise max_majority_fraction"
    assert f"full traceback in the failed attempt's notebook {failed} (cell [5])" in second
    same_records()
    assert json.loads(failed.read_text())["metadata"]["papermill"]["parameters"]["patch_size"] == 128
    outcome[96] = KeyboardInterrupt()  # Ctrl-C (or SIGINT) during a long stage
    with pytest.raises(KeyboardInterrupt):
        batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path), overrides={"patch_size": 96})
    same_records()
    assert json.loads(failed.read_text())["metadata"]["papermill"]["parameters"]["patch_size"] == 96
    outcome[32] = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(batch.StageError, match=r"01_patching failed: OSError: \[Errno 28\] No space left on device"):
        batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path), overrides={"patch_size": 32})
    same_records()
    # the command line prints the one-line message first, then where the traceback is; no Python traceback
    rc = batch.main(["chain", "--preset", "smoke", "--experiment", "e", "--stages", "01", "--outputs-dir",
                     str(tmp_path), "--set", "patch_size=128"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err_lines[0].startswith("error: 01_patching failed: PatchingError: no patch left")
    assert "01_patching-failed.ipynb" in err_lines[1] and len(err_lines) == 2
    same_records()
    # a good re-run replaces both records
    batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path), overrides={"patch_size": 48})
    assert json.loads((exp / "runs" / "run_01_patching.json").read_text())["params"]["patch_size"] == 48


# --------------------------------------------------------------------------- issue 15: one writer per experiment
_HOLDER = r"""
import sys, time
from dualsynth.config import experiment_lock
lock = experiment_lock(sys.argv[1], "holder chain")
lock.__enter__()
print("held", flush=True)
time.sleep(120)
"""


def test_a_kernel_that_dies_before_it_replies_is_started_again(tmp_path, monkeypatch, capsys):
    """Two chains starting kernels at the same moment can collide on a port (CI, session 14: ``ZMQError: Address
    already in use``, "Kernel died before replying to kernel_info"): no cell ran, so the stage starts another kernel
    (up to runner.KERNEL_START_ATTEMPTS in all) instead of failing the chain; when every one dies, the last good
    records stay and the error says so; a notebook's own error, or any other, is not retried."""
    import papermill as pm

    from dualsynth import batch, runner

    monkeypatch.setattr(runner, "_kernel_retry_pause", lambda: None)
    died = RuntimeError("Kernel died before replying to kernel_info")
    failures = {"left": 1}
    calls = _fake_papermill(monkeypatch)
    runs_cells = pm.execute_notebook
    starts = []

    def execute(input_path, output_path, parameters=None, **kw):
        starts.append(Path(input_path).stem)
        if failures["left"]:  # as papermill does: the notebook is written, no cell runs (no config.start_stage)
            failures["left"] -= 1
            Path(output_path).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                     "nbformat_minor": 5}))
            raise died
        return runs_cells(input_path, output_path, parameters=parameters, **kw)

    monkeypatch.setattr(pm, "execute_notebook", execute)
    exp = tmp_path / "e"
    batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path))
    assert starts == ["01_patching", "01_patching"] and len(calls) == 1
    good_rec = (exp / "runs" / "run_01_patching.json").read_bytes()
    assert "01_patching: the kernel died at start-up (Kernel died before replying to kernel_info" in \
        capsys.readouterr().out

    failures["left"] = runner.KERNEL_START_ATTEMPTS  # dies every time: the stage fails, the last records stay
    starts.clear()
    with pytest.raises(batch.StageError, match=rf"01_patching failed: RuntimeError: Kernel died before replying "
                                               rf"to kernel_info \({runner.KERNEL_START_ATTEMPTS} kernels started"):
        batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path))
    assert len(starts) == runner.KERNEL_START_ATTEMPTS and len(calls) == 1
    assert (exp / "runs" / "run_01_patching.json").read_bytes() == good_rec
    assert not list((exp / "runs" / ".pending").iterdir())
    assert (exp / "notebooks" / "01_patching-failed.ipynb").is_file()
    assert not [p.name for p in (exp / "notebooks").iterdir() if p.name.startswith(".")]

    for other in (_notebook_error(), OSError("No space left on device")):  # not a kernel start: one attempt
        calls = _fake_papermill(monkeypatch, lambda p, other=other: other)
        with pytest.raises(runner.StageError):
            runner.run_notebook("01_patching", tmp_path / "x.ipynb", {"experiment": "e",
                                                                      "outputs_dir": str(tmp_path)})
        assert len(calls) == 1
    assert runner.kernel_did_not_start(died) and not runner.kernel_did_not_start(_notebook_error())


def test_experiment_locked_by_its_first_writer(tmp_path, monkeypatch, capsys):
    """Issue 15 item 7: while one chain writes an experiment, a second chain, a study and a notebook run by hand are
    refused naming the holder's process; once the holder is killed (SIGKILL: the lock file stays), the next chain
    takes the stale lock over with a warning and runs."""
    import signal
    import subprocess
    import sys

    from dualsynth import batch

    calls = _fake_papermill(monkeypatch)
    exp = tmp_path / "e"
    exp.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(exp)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = json.loads((exp / "experiment.lock").read_text())
        assert lock["pid"] == holder.pid and lock["command"] == "holder chain"
        who = rf"experiment .*e is in use by process {holder.pid} on .*holder chain.*pass another experiment name"
        with pytest.raises(config.ExperimentLocked, match=who):
            batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path))
        with pytest.raises(config.ExperimentLocked, match=who):
            batch.run_study("smoke", "e", "SHQ_0", outputs_dir=str(tmp_path), progress=False)
        with pytest.raises(config.ExperimentLocked, match=who):
            config.start_stage("01_patching", {**_defaults("01_patching"), "experiment": "e",
                                               "outputs_dir": str(tmp_path)})
        assert batch.main(["chain", "--preset", "smoke", "--experiment", "e", "--stages", "01",
                           "--outputs-dir", str(tmp_path)]) == 2
        assert f"is in use by process {holder.pid}" in capsys.readouterr().err
        assert not calls and not (exp / "runs").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (exp / "experiment.lock").exists()  # a killed holder leaves its lock file
    with pytest.warns(UserWarning, match=rf"taking over a stale lock of process {holder.pid} .*is no longer running"):
        batch.run_chain("smoke", experiment="e", stages="01", outputs_dir=str(tmp_path))
    assert [c[0] for c in calls] == ["01_patching"] and (exp / "runs" / "run_01_patching.json").is_file()
    assert not (exp / "experiment.lock").exists()  # released when the chain ends
