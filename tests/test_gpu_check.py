"""``bench/gpu_check.py`` (issue 18, item 4): the paper study's counts and projection, the time budget, and the
``--cpu-smoke`` path end to end (one fresh process per configuration, as on a GPU machine)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.py"
KEYS = {"benchmark", "mode", "gpu", "warning", "summary", "machine", "setup", "configurations", "projection",
        "projection_counts", "notes", "total_seconds"}
STATUSES = {"ok", "failed", "timeout", "crashed", "skipped", "unsupported"}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, *args: str, timeout: float) -> dict:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert KEYS <= set(payload)
    if not payload["gpu"]:  # said plainly, on the console and in the JSON
        assert "NO GPU" in proc.stdout and payload["warning"].startswith("NO GPU")
    return payload


def test_study_counts_follow_the_paper_design():
    g = _module()
    preset = g.load_preset()
    c = g.study_counts(preset)
    assert len(c["runs"]) == c["study_runs"] == 46
    assert c["vqvae_updates"] == 50000 and c["epochs"] == 200 and c["batch_size"] == 2
    assert c["prior_updates"] == preset["03_pixelcnn"]["steps"]
    p04 = preset["04_synthesis"]
    assert c["sampler_batches"] == math.ceil(p04["pool_size"] / p04["sample_batch"])
    runs = {r["variant"]: r for r in c["runs"]}
    # SHQ_50 = 16 real + 8 synthetic; BMQ_300 = 48 + 144; SyntLQ_50 = 24 synthetic; 200 epochs of train // 2 steps
    assert (runs["SHQ_50"]["train_images"], runs["BMQ_300"]["train_images"], runs["SyntLQ_50"]["train_images"]) == \
        (24, 192, 24)
    assert runs["SHQ_50"]["updates"] == 200 * 12 and runs["SHQ_0"]["val_images"] == 5
    assert runs["SyntMQ_100"]["val_images"] == 12
    assert c["unet_updates"] == sum(200 * (r["train_images"] // 2) for r in c["runs"]) == 354400
    assert c["unet_val_steps"] == 200 * (16 * 5 + 30 * 12)
    assert c["pretest_updates"] == 200 * 24 and c["pretest_runs"] == 1


def test_projection_is_linear_in_the_step_times():
    g = _module()
    c = g.study_counts(g.load_preset())
    s = dict(vqvae_step=0.01, prior_step=0.02, sampler_batch=1.5, unet_step=0.03, unet_val_step=0.01,
             unet_startup=20.0)
    p = g.project(s, c)
    assert p["total_hours"] > 0 and all(v > 0 for v in p["hours"].values())
    assert p["hours"]["02_vqvae"] == pytest.approx(0.01 * 50000 / 3600)
    p2 = g.project({k: 2 * v for k, v in s.items()}, c)
    assert p2["total_hours"] == pytest.approx(2 * p["total_hours"])
    p3 = g.project(dict(s, unet_step=0.06), c)  # only the U-Net stages grow
    assert p3["hours"]["02_vqvae"] == p["hours"]["02_vqvae"]
    assert p3["hours"]["06_unet_steps"] == pytest.approx(2 * p["hours"]["06_unet_steps"])
    missing = g.project(dict(s, prior_step=None), c)
    assert missing["total_hours"] is None and missing["missing"] == ["prior_step"]
    assert missing["hours"]["03_prior"] is None and missing["hours"]["02_vqvae"] == p["hours"]["02_vqvae"]


def test_budget_used_up_skips_with_a_note(tmp_path):
    d = _run(tmp_path, "--cpu-smoke", "--budget", "1", timeout=120)
    cfg = d["configurations"]
    assert {r["status"] for r in cfg.values()} == {"skipped", "unsupported"}
    assert cfg["unet"]["status"] == "skipped" and "budget" in cfg["unet"]["note"]
    assert cfg["vqvae+mixed"]["status"] == "unsupported"
    assert any("skipped for lack of time" in n for n in d["notes"])
    assert d["projection"]["paper_preset_config"]["total_hours"] is None


@pytest.mark.slow
def test_cpu_smoke_writes_measurements_and_projection(tmp_path):
    g = _module()
    d = _run(tmp_path, "--cpu-smoke", timeout=600)
    assert d["mode"] == "cpu-smoke" and d["total_seconds"] <= d["setup"]["budget_seconds"] + 30
    cfg = d["configurations"]
    assert set(cfg) == {g.config_name(*c) for c in g.ORDER}
    assert {r["status"] for r in cfg.values()} <= STATUSES
    for name in ("unet", "vqvae", "prior", "sampler+xla", "unet+mixed", "vqvae+xla", "sampler", "prior+xla"):
        r = cfg[name]
        assert r["status"] == "ok", (name, r)
        assert r["median_seconds"] > 0 and len(r["seconds_all"]) >= 1 and r["first_call_seconds"] > 0
    assert cfg["unet"]["val_median_seconds"] > 0 and cfg["unet"]["startup_seconds"] > 0
    for name in ("unet+xla", "unet+mixed+xla"):  # XLA of the U-Net's gradient can fail on a CPU: recorded, not fatal
        assert cfg[name]["status"] in {"ok", "failed"}
        assert cfg[name]["status"] == "ok" or cfg[name]["error"]

    proj = d["projection"]
    assert set(proj) == {"paper_preset_config", "fastest_measured"}
    for p in proj.values():
        assert p["total_hours"] > 0 and all(v > 0 for v in p["hours"].values()) and not p["missing"]
    assert proj["paper_preset_config"]["configurations"] == {"vqvae": "vqvae", "prior": "prior",
                                                             "sampler": "sampler+xla", "unet": "unet"}
    # the projection is the measured medians times the counts, and doubles when they double
    counts = d["projection_counts"]
    again = g.projections(cfg, counts, g.load_preset())
    assert again["paper_preset_config"]["total_hours"] == pytest.approx(proj["paper_preset_config"]["total_hours"])
    seconds = proj["paper_preset_config"]["seconds"]
    assert seconds["unet_step"] == cfg["unet"]["median_seconds"]
    doubled = g.project({k: 2 * v for k, v in seconds.items()}, counts)
    assert doubled["total_hours"] == pytest.approx(2 * proj["paper_preset_config"]["total_hours"])
