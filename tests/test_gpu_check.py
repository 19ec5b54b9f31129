"""``bench/gpu_check.py`` (issue 18, item 4): the paper study's counts and projection, the time budget, and the
``--cpu-smoke`` path end to end (one fresh process per configuration, as on a GPU machine; two runs of the script
side by side, each measuring part of the models, started when the session starts: ``start_early``)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from conftest import ROOT, BackgroundProcess

SCRIPT = ROOT / "bench" / "gpu_check.py"
KEYS = {"benchmark", "mode", "gpu", "warning", "summary", "machine", "setup", "configurations", "projection",
        "projection_counts", "notes", "total_seconds"}
STATUSES = {"ok", "failed", "timeout", "crashed", "skipped", "unsupported"}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _script(folder, name: str, args: list[str]) -> BackgroundProcess:
    """The script with ``args`` (a run started early, beside the other tests: ``start_early``), its JSON
    ``<folder>/<name>.json`` and its console ``<folder>/<name>.log``."""
    return BackgroundProcess(f"gpu_check.py {' '.join(args)}",
                             [sys.executable, str(SCRIPT), "--out", str(folder / f"{name}.json"), *args],
                             folder / f"{name}.log")


def _checked(proc: BackgroundProcess, timeout: float) -> dict:
    """A run's JSON, once it has succeeded; a run without a GPU says so, on the console and in the JSON."""
    rc = proc.returncode(timeout)
    console = proc.log.read_text()
    assert rc == 0, console[-3000:]
    payload = json.loads(proc.log.with_suffix(".json").read_text())
    assert KEYS <= set(payload)
    if not payload["gpu"]:  # said plainly, on the console and in the JSON
        assert "NO GPU" in console and payload["warning"].startswith("NO GPU")
    return payload


def _start_budget_run(jobs) -> BackgroundProcess:
    """``--cpu-smoke`` with a budget of 1 s, used up before the first configuration (once per session)."""
    return jobs.start_job("gpu_check_budget", lambda folder: _script(folder, "gpu", ["--cpu-smoke", "--budget", "1"]))


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


def test_budget_used_up_skips_with_a_note(chain_processes):
    d = _checked(_start_budget_run(chain_processes), timeout=120)
    cfg = d["configurations"]
    assert {r["status"] for r in cfg.values()} == {"skipped", "unsupported"}
    assert cfg["unet"]["status"] == "skipped" and "budget" in cfg["unet"]["note"]
    assert cfg["vqvae+mixed"]["status"] == "unsupported"
    assert any("skipped for lack of time" in n for n in d["notes"])
    assert d["projection"]["paper_preset_config"]["total_hours"] is None


#: ``--cpu-smoke`` in two runs side by side (``--only``; every configuration still in its own fresh process): the
#: U-Net's four configurations, and the other models' six (plus their six ``unsupported`` mixed-precision entries)
PARTS = (("unet",), ("vqvae", "prior", "sampler"))
#: A child may take 450 s (default 120 s), the whole run 900 s (default 450 s): the U-Net's XLA compilation, ~30 s on
#: an idle CPU, overran 120 s with the two runs side by side on a busy machine, and they now run beside the other
#: tests at a lower priority (``start_early``).  The budget's rule itself: ``test_budget_used_up_skips_with_a_note``.
SMOKE_ARGS = [["--cpu-smoke", "--only", ",".join(p), "--child-timeout", "450", "--budget", "900"] for p in PARTS]
#: the step times each model gives the projection (``gpu_check._seconds_of``)
STEP_KEYS = {"vqvae": {"vqvae_step"}, "prior": {"prior_step"}, "sampler": {"sampler_batch"},
             "unet": {"unet_step", "unet_val_step", "unet_startup"}}


def _start_cpu_smoke(jobs) -> list[BackgroundProcess]:
    """The two ``--cpu-smoke`` runs of ``SMOKE_ARGS`` (once per session: ``jobs`` is ``chain_processes``)."""
    return [jobs.start_job(f"gpu_check{k}", lambda folder, args=args: _script(folder, "gpu", args))
            for k, args in enumerate(SMOKE_ARGS)]


def start_early(jobs, tmp_path_factory, selected: set[str]) -> None:
    """Called by conftest when the session starts: the script's runs (~2-3 min) go on beside the other tests."""
    if "test_budget_used_up_skips_with_a_note" in selected:
        _start_budget_run(jobs)
    if "test_cpu_smoke_writes_measurements_and_projection" in selected:
        _start_cpu_smoke(jobs)


@pytest.mark.slow
def test_cpu_smoke_writes_measurements_and_projection(chain_processes):
    g = _module()
    preset = g.load_preset()
    parts = [_checked(proc, timeout=1200) for proc in _start_cpu_smoke(chain_processes)]
    cfg = {}
    for models, d in zip(PARTS, parts):
        assert d["mode"] == "cpu-smoke" and d["total_seconds"] <= d["setup"]["budget_seconds"] + 30
        assert d["setup"]["models"] == list(models)
        assert set(d["configurations"]) == {g.config_name(*c) for c in g.ORDER if c[0] in models}
        # a partial run's projection: incomplete, naming the step times of the models it did not measure
        for p in d["projection"].values():
            assert p["total_hours"] is None and set(p["missing"]) == set().union(
                *(STEP_KEYS[m] for m in g.MODELS if m not in models))
        # the JSON's projection is the script's function of its measurements
        assert d["projection"] == g.projections(d["configurations"], d["projection_counts"], preset)
        cfg.update(d["configurations"])
    assert parts[0]["projection_counts"] == parts[1]["projection_counts"]
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

    # all the measurements together: the complete projection
    counts = parts[0]["projection_counts"]
    proj = g.projections(cfg, counts, preset)
    assert set(proj) == {"paper_preset_config", "fastest_measured"}
    for p in proj.values():
        assert p["total_hours"] > 0 and all(v > 0 for v in p["hours"].values()) and not p["missing"]
    assert proj["paper_preset_config"]["configurations"] == {"vqvae": "vqvae", "prior": "prior",
                                                             "sampler": "sampler+xla", "unet": "unet"}
    # the projection is the measured medians times the counts, and doubles when they double
    seconds = proj["paper_preset_config"]["seconds"]
    assert seconds["unet_step"] == cfg["unet"]["median_seconds"]
    doubled = g.project({k: 2 * v for k, v in seconds.items()}, counts)
    assert doubled["total_hours"] == pytest.approx(2 * proj["paper_preset_config"]["total_hours"])
