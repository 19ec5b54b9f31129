"""Notebooks: parameters cells vs params YAML, committed without outputs, and executed with the smoke preset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dualsynth import batch, config

from conftest import ROOT, copy_experiment

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NB_NAMES = [p.stem for p in NOTEBOOKS]


def test_notebooks_exist_in_order():
    assert NB_NAMES[0] == "01_patching"
    assert NB_NAMES == [n for n in batch.NOTEBOOKS if n in NB_NAMES]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_NAMES)
def test_committed_clean_with_one_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), f"{path.name} has outputs; strip them before committing"
    assert not any(c.get("execution_count") for c in code), f"{path.name} has execution counts"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} must have exactly one cell tagged 'parameters'"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"


@pytest.mark.parametrize("name", NB_NAMES)
def test_rules_match_parameters_cell(name):
    """config.NOTEBOOK_RULES (what start_stage validates) names exactly the parameters cell's variables."""
    declared = batch.notebook_parameters(name)
    assert set(config.NOTEBOOK_RULES[name]) == set(declared)
    # the defaults themselves pass validation
    config.validate_params(declared, config.NOTEBOOK_RULES[name])


def _yaml_targets():
    """Every params YAML and the notebooks it is meant for."""
    out = []
    for f in sorted((ROOT / "params" / "presets").glob("*/*.yaml")):
        out.append((f, [f.stem]))
    for f in sorted((ROOT / "params" / "variants").glob("*.yaml")):
        out.append((f, ["06_unet_training"]))
    return out


def test_every_preset_file_names_a_notebook():
    for f, targets in _yaml_targets():
        for t in targets:
            assert (ROOT / "notebooks" / f"{t}.ipynb").is_file(), f"{f} is meant for {t}, which does not exist"


@pytest.mark.parametrize("f,targets", _yaml_targets(), ids=lambda v: str(v).split("params/")[-1] if isinstance(v, Path) else "")
def test_params_keys_exist_in_parameters_cell(f, targets):
    keys = set(yaml.safe_load(f.read_text()) or {})
    for t in targets:
        declared = set(batch.notebook_parameters(t))
        assert keys <= declared, f"{f}: keys {sorted(keys - declared)} are not in the parameters cell of {t}"


def test_unknown_parameter_refused(tmp_path):
    with pytest.raises(config.ParamError, match=r"\['patchsize'\] are not declared"):
        batch.run_notebook("01_patching", tmp_path / "x.ipynb", {"patchsize": 32})


def test_bad_parameter_value_is_reported(tmp_path):
    with pytest.raises(config.ParamError, match=r"patch_size=30: an integer ≥ 8 divisible by 4"):
        config.start_stage("01_patching", {**batch.notebook_parameters("01_patching"), "patch_size": 30,
                                           "outputs_dir": str(tmp_path)})
    with pytest.raises(config.ParamError, match=r"experiment='a b'"):
        config.start_stage("01_patching", {**batch.notebook_parameters("01_patching"), "experiment": "a b",
                                           "outputs_dir": str(tmp_path)})


# smoke_chain (tests/conftest.py): the smoke chain 01 → 07 through the batch, once per test session


@pytest.mark.slow
def test_smoke_01_patching(smoke_chain):
    exp, _ = smoke_chain
    m = json.loads((exp / "patches" / "manifest.json").read_text())
    assert m["patch_size"] == 64
    sizes = {t: (len(d["train"]), len(d["val"])) for t, d in m["tiers"].items()}
    assert sizes == {"SHQ": (16, 5), "SLQ": (16, 5), "BLQ": (48, 12), "BMQ": (48, 12)}
    assert len(m["test"]) == 27
    main = m["sources"][0]
    # the generator's fractions and LQ error rate, as recorded by the run
    fr = dict(zip([c["name"] for c in m["data"]["classes"]], main["fractions_hq"]))
    assert abs(fr["matrix"] - 0.788) < 0.04 and abs(fr["nd_rich"] - 0.056) < 0.04
    assert 0.03 <= main["lq_error"] <= 0.10
    for fig in ("source_overview", "patch_grid", "class_fractions", "hq_vs_lq"):
        assert (exp / "patches" / "figures" / f"{fig}.png").stat().st_size > 5000
    nb = json.loads((exp / "notebooks" / "01_patching.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["patch_size"] == 64
    run = json.loads((exp / "runs" / "run_01_patching.json").read_text())
    assert run["versions"]["tensorflow"] and run["params"]["patch_size"] == 64


@pytest.mark.slow
def test_smoke_02_vqvae(smoke_chain):
    exp, _ = smoke_chain
    s = json.loads((exp / "vqvae" / "summary.json").read_text())
    assert s["final_step"] == 30 and 0 < s["best_step"] <= 30
    assert s["code_map_shape"] == [16, 16]  # 64 px patches / 4
    rows = (exp / "vqvae" / "checkpoint" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + evaluations at 10, 20, 30
    for fig in ("training_curve", "reconstructions", "code_maps"):
        assert (exp / "vqvae" / "figures" / f"{fig}.png").is_file()


@pytest.mark.slow
def test_smoke_03_pixelcnn(smoke_chain):
    import numpy as np

    exp, _ = smoke_chain
    codes = np.load(exp / "pixelcnn" / "codes.npz")
    assert codes["train"].shape == (48 * 8, 16, 16) and codes["val"].shape == (12, 16, 16)  # 8 orientations
    assert codes["train"].min() >= 0 and codes["train"].max() < 10
    s = json.loads((exp / "pixelcnn" / "summary.json").read_text())
    assert s["steps"] == 30
    assert s["val_nll_nats"] < s["uniform_nll_nats"], "the prior learned nothing beyond a uniform distribution"
    assert (exp / "pixelcnn" / "prior" / "prior.json").is_file()


@pytest.mark.slow
def test_smoke_04_synthesis(smoke_chain):
    import numpy as np
    from dualsynth.io import read_mask
    from dualsynth.palette import NDFEB_PALETTE

    exp, timings = smoke_chain
    pool = json.loads((exp / "synthetic" / "pool.json").read_text())
    assert pool["size"] == 144 and len({it["id"] for it in pool["items"]}) == 144
    m = read_mask(exp / "synthetic" / pool["items"][0]["mask"], NDFEB_PALETTE, "index")
    assert m.shape == (64, 64) and m.max() < 4
    assert (exp / "synthetic" / pool["items"][0]["raw"]).is_file()
    q = json.loads((exp / "synthetic" / "quality.json").read_text())
    assert abs(sum(q["class_fractions"]["synthetic (cleaned)"].values()) - 1) < 1e-6
    assert 0 <= q["pretest"]["missing_class_iou_synthetic"] <= 1
    assert 0 <= q["pretest"]["missing_class_iou_real_test"] <= 1
    cons = q["pretest"]["consistency"]
    assert cons["classes"][0] == "matrix" and set(cons["per_class"]) == set(cons["classes"])
    if cons["iou_sum_real"] > 0:  # consistency = the two IoU sums' ratio over the classes of the real masks
        assert cons["consistency"] == pytest.approx(cons["iou_sum_synthetic"] / cons["iou_sum_real"])
    else:
        assert cons["consistency"] is None
    # the balanced and capped forms, and real validation patches scored the same way for scale
    assert set(cons) >= {"consistency_balanced", "consistency_capped"}
    ref = q["pretest"]["real_reference"]
    assert ref["num_patches"] > 0 and set(ref) >= {"consistency", "consistency_balanced", "consistency_capped"}
    assert (exp / "synthetic" / "figures" / "consistency.png").is_file()
    # the defaults are the measured best method: one-hot masks, a class-fraction-conditioned prior, no clean-up
    assert pool["mask_encoding"] == "onehot" and pool["cleanup"] == "none" and pool["conditioned"] is True
    assert pool["curation"]["drawn"] == 144 and pool["curation"]["dropped"] == 0
    sim = q["similarity"]
    assert set(sim["measures"]) == {"class_fraction_w1", "s2_rms", "kid", "boundary_disagreement"}
    assert sim["n_real"] == 48 and sim["n_synthetic"] == 144 and sim["class_names"][0] == "matrix"
    assert (exp / "synthetic" / "figures" / "similarity.png").is_file()
    assert [t["notebook"] for t in timings][:4] == ["01_patching", "02_vqvae", "03_pixelcnn", "04_synthesis"]


@pytest.mark.slow
def test_smoke_05_to_07(smoke_chain):
    import pandas as pd

    exp, timings = smoke_chain
    variants = sorted(p.stem for p in (exp / "variants").glob("*.json"))
    assert len(variants) == 47 + 28  # 05's "all" also writes the PT_ variants (the study's "all" is the 47)
    v = json.loads((exp / "variants" / "SHQ_50.json").read_text())
    assert v["num_real_train"] == 16 and v["num_synthetic_train"] == 8
    pt = json.loads((exp / "variants" / "PT_SHQ_50.json").read_text())
    assert pt["train"] == json.loads((exp / "variants" / "SHQ_0.json").read_text())["train"]
    assert pt["pretrain"] == [t for t in v["train"] if t["source"] == "synthetic"]
    table = pd.read_csv(exp / "results" / "metrics.csv")
    assert sorted(table.variant) == ["SHQ_0", "SHQ_50"] and table.seed.tolist() == [0, 0]
    for col in ("accuracy", "miou", "missing_class_iou"):
        assert table[col].between(0, 1).all()
    m = json.loads((exp / "unet" / "SHQ_50" / "seed0" / "metrics.json").read_text())
    assert m["complete"] and m["num_test"] == 27 and len(m["per_image"]) == 27
    for fig in ("fig15_accuracy", "fig16_miou", "fig17_missing_class_iou", "fig19_per_class"):
        assert (exp / "results" / f"{fig}.png").is_file() and (exp / "results" / f"{fig}.pdf").is_file()
    ranked = pd.read_csv(exp / "results" / "ranked.csv")
    assert set(ranked.variant) == {"SHQ_0", "SHQ_50"}
    assert ranked.loc[ranked.variant == "SHQ_50", "base"].item() == "SHQ_0"
    rep = json.loads((exp / "results" / "report.json").read_text())
    assert rep["largest_gain"]["variant"] == "SHQ_50" and rep["largest_gain"]["gain_n"] == 1
    assert rep["verdict"] in ("helps", "hurts", "does_not_help", "inconclusive") and rep["similarity"]["measures"]
    assert "## ndfeb_default" in (exp / "results" / "report.md").read_text()
    assert "06_unet_training" in [t["notebook"] for t in timings]


def _run_as_a_user(name: str):
    """Execute ``notebooks/<name>.ipynb`` as Jupyter (or nbval) does: its own defaults (no parameters injected), the
    notebooks folder as the working directory, outside the batch (records written at the start); a failing cell
    raises nbclient's ``CellExecutionError`` with its traceback."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return nb


@pytest.mark.slow
def test_06_and_07_as_a_user_runs_them(smoke_chain, tmp_path, monkeypatch):
    """What nbval checked that the chain does not: 06 and 07 with their own defaults, run by hand (cwd notebooks/,
    no parameters injected, ``$DUALSYNTH_BATCH`` unset), on a copy of the chain's 01–05 outputs as experiment
    ``smoke`` in ``$DUALSYNTH_OUTPUTS``, as a user's ``outputs/smoke``.  01–05's defaults are the smoke preset the
    chain ran (01 and 02 also run by hand in JupyterLab: test_browser.py); 06's are not — variant BMQ_50 under the
    ``epochs`` budget — and 07 then reports a mixed variant whose base was not run."""
    from dualsynth.config import BATCH_ENV

    exp, _ = smoke_chain
    user = copy_experiment(exp, tmp_path / "smoke")
    monkeypatch.setenv("DUALSYNTH_OUTPUTS", str(tmp_path))  # the kernels inherit it: outputs_dir "outputs" → here
    monkeypatch.delenv(BATCH_ENV, raising=False)
    for name in ("06_unet_training", "07_results_plots"):
        nb = _run_as_a_user(name)
        assert "papermill" not in nb.metadata  # not a parameterised run
    m = json.loads((user / "unet" / "BMQ_50" / "seed0" / "metrics.json").read_text())
    assert m["complete"] and m["budget"] == "epochs" and m["epochs_run"] == 2 and m["num_test"] == 27
    assert (m["num_real_train"], m["num_synthetic_train"]) == (48, 24)
    assert m["steps_per_epoch"] == 72 // 2 and m["updates"] == m["updates_run"] == 2 * 36  # every image once per epoch
    run = json.loads((user / "runs" / "run_06_unet_training-BMQ_50-seed0.json").read_text())  # not in runs/.pending
    assert run["params"]["variant"] == "BMQ_50" and run["params"]["outputs_dir"] == "outputs"
    import pandas as pd

    table = pd.read_csv(user / "results" / "metrics.csv")
    assert table.variant.tolist() == ["BMQ_50"] and table.missing_class_iou.between(0, 1).all()
    rep = json.loads((user / "results" / "report.json").read_text())
    assert rep["runs"] == 1 and (user / "results" / "fig16_miou.png").is_file()
    assert not (exp / "unet" / "BMQ_50").exists()  # the chain's own experiment untouched


@pytest.mark.slow
def test_study_resumes_after_sigkill(smoke_chain):
    """Kill the batch with SIGKILL mid-run, restart it: it completes, finished runs are not redone,
    and metrics.csv has exactly one complete row per run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    exp, _ = smoke_chain
    done_before = exp / "unet" / "SHQ_0" / "seed0" / "metrics.json"
    mtime = done_before.stat().st_mtime_ns
    cmd = [sys.executable, "-m", "dualsynth.batch", "study", "--preset", "smoke", "--experiment", exp.name,
           "--outputs-dir", str(exp.parent), "--variants", "SHQ_0,SHQ_50,SLQ_0", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # wait until the new run (SLQ_0) has finished its first epoch (its epoch checkpoint is committed), then kill
    target = exp / "unet" / "SLQ_0" / "seed0"
    deadline = time.time() + 400
    while time.time() < deadline and not (target / "checkpoint" / "state.json").exists() and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the batch ended before it could be killed"
    assert (target / "checkpoint" / "state.json").exists(), "no epoch checkpoint appeared in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target / "metrics.json").exists(), "killed too late: the run had finished"
    table = pd.read_csv(exp / "results" / "metrics.csv")
    assert "SLQ_0" not in set(table.variant)
    # restart: completes; SHQ_0 and SHQ_50 are skipped
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 already complete, 1 to run" in out.stdout
    assert done_before.stat().st_mtime_ns == mtime, "a finished run was redone"
    table = pd.read_csv(exp / "results" / "metrics.csv")
    assert sorted(zip(table.variant, table.seed)) == [("SHQ_0", 0), ("SHQ_50", 0), ("SLQ_0", 0)]
    assert table.missing_class_iou.notna().all()
    # the killed run resumed from its epoch checkpoint and still ran the preset's number of epochs
    m = json.loads((target / "metrics.json").read_text())
    assert m["epochs_run"] == 2
    hist = (target / "history.csv").read_text().strip().splitlines()
    assert [h.split(",")[0] for h in hist[1:]] == ["1", "2"]


@pytest.mark.slow
@pytest.mark.realdata
def test_generative_chain_on_grey_real_data(real_data_chain):
    """The whole chain 01 → 07 at smoke scale on a real grey-scale SEM dataset (2-channel dual images), run by the
    command line (conftest.REAL_DATA_CHAIN; side by side with the smoke chain when both are selected).  04's pre-test
    judge is the plain U-Net here: the smoke chain trains the EfficientNetB0 judge, and test_segmentation.py an
    EfficientNetB0 U-Net on grey images."""
    import numpy as np

    exp = real_data_chain
    m = json.loads((exp / "patches" / "manifest.json").read_text())
    assert m["channels"] == 1 and [c["name"] for c in m["data"]["classes"]][0] == "matrix"
    cfg = json.loads((exp / "vqvae" / "checkpoint" / "config.json").read_text())
    assert cfg["in_channels"] == 1 + 3  # grey micrograph + one mask channel per class (onehot, the default)
    pool = json.loads((exp / "synthetic" / "pool.json").read_text())
    from dualsynth.io import read_image

    img = read_image(exp / "synthetic" / pool["items"][0]["image"])
    assert img.shape == (64, 64, 1)
    q = json.loads((exp / "synthetic" / "quality.json").read_text())
    assert q["pretest"]["encoder"] == "plain" and 0 <= q["pretest"]["missing_class_iou_synthetic"] <= 1
    assert set(q["class_fractions"]["synthetic (cleaned)"]) == {"matrix", "gamma_prime", "small_gamma_prime"}
    assert np.isclose(sum(q["class_fractions"]["real BMQ train"].values()), 1)
    sim = q["similarity"]
    assert sim["class_names"] == ["matrix", "gamma_prime", "small_gamma_prime"] and sim["n_real"] == 40
    assert set(sim["measures"]) == {"class_fraction_w1", "s2_rms", "kid", "boundary_disagreement"}
    # test patches come only from held-out source images, never from an image that gave training patches
    roles = {src["name"]: src["role"] for src in m["sources"]}
    test_sources = {m["patches"][e["id"]]["source"] for e in m["test"]}
    train_sources = {m["patches"][e["id"]]["source"] for t in m["tiers"].values() for e in t["train"] + t["val"]}
    assert test_sources and {roles[s] for s in test_sources} == {"test"} and not test_sources & train_sources
    rows = batch.collect_metrics(exp)
    assert sorted(rows.variant) == ["SHQ_0", "SHQ_50"] and set(rows.num_test) == {len(m["test"])}
    assert rows.missing_class_iou.between(0, 1).all()
    rep = json.loads((exp / "results" / "report.json").read_text())
    assert rep["dataset"] == "nasa_super" and rep["runs"] == 2
    assert rep["largest_gain"]["variant"] == "SHQ_50" and rep["largest_gain"]["base"] == "SHQ_0"
