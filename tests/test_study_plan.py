"""The study plan (dualsynth.study): matched control runs added under budget=epochs, none under fixed, resumable."""
import json

import numpy as np
import pytest

from dualsynth import batch, study
from dualsynth.config import ParamError
from dualsynth.io import atomic_write_json, write_png
from dualsynth.variants import inputs_fingerprint, load_variant, parse_run, parse_variant, run_dir

EPOCHS = {"budget": "epochs", "epochs": 20, "batch_size": 2, "steps_per_epoch": 0}
FIXED = {"budget": "fixed", "epochs": 10, "batch_size": 2, "steps_per_epoch": 16}
SIZES = {"SHQ_0": (16, 0), "SHQ_50": (16, 8), "SHQ_100": (16, 16), "SHQ_300": (16, 48), "BMQ_0": (48, 0),
         "BMQ_100": (48, 48), "SyntMQ_100": (0, 48), "BMQ_aug": (48, 0)}


def fake_variants(exp, names=SIZES):
    """Variant files like 05 writes, with the sizes of the paper's tiers, all pointing at one tiny image pair."""
    write_png(exp / "i.png", np.zeros((4, 4), np.uint8))
    write_png(exp / "m.png", np.zeros((4, 4), np.uint8))
    pair = {"image": str(exp / "i.png"), "mask": str(exp / "m.png"), "source": "real", "id": "i"}
    for name in names:
        v = parse_variant(name)
        real, syn = SIZES[name]
        atomic_write_json(exp / "variants" / f"{name}.json", {
            "variant": name, "group": v.group, "tier": v.tier, "percent": v.percent, "augment": v.augment,
            "num_real_train": real, "num_synthetic_train": syn, "train": [pair] * (real + syn), "val": [pair],
            "test": [pair]})
    return exp


def finish(exp, run, seed, variant=None):
    """A complete metrics.json for ``run`` (fingerprint of the variant file it trains on)."""
    variant = variant or parse_run(run).variant.name
    d = run_dir(exp / "unet", run, seed)
    v = parse_variant(variant)
    atomic_write_json(d / "metrics.json", {
        "variant": run, "seed": seed, "group": "control" if parse_run(run).control else v.group, "tier": v.tier,
        "percent": v.percent, "complete": True, "accuracy": 0.5, "miou": 0.5, "miou_dataset": 0.5,
        "missing_class_iou": 0.5, "inputs_fingerprint": inputs_fingerprint(
            load_variant(exp / "variants" / f"{variant}.json"))})
    return d / "metrics.json"


def test_matched_controls_added_under_epochs(tmp_path):
    exp = fake_variants(tmp_path / "e")
    chosen = ["SHQ_0", "SHQ_50", "SHQ_100", "SHQ_300", "BMQ_100", "SyntMQ_100", "BMQ_aug"]
    plan = study.plan_study(exp, chosen, [0, 1], EPOCHS, matched_controls=True)
    # SHQ_50: 24 images -> 12 steps x 20 = 240; SHQ_100: 320; SHQ_300: 64 images -> 640; BMQ_100: 96 -> 960
    assert plan.controls == {"SHQ_50": "SHQ_0@240", "SHQ_100": "SHQ_0@320", "SHQ_300": "SHQ_0@640",
                             "BMQ_100": "BMQ_0@960"}
    assert plan.control_runs == ["SHQ_0@240", "SHQ_0@320", "SHQ_0@640", "BMQ_0@960"]
    runs = [(r["variant"], r["seed"]) for r in plan.runs]
    assert runs[:14] == [(v, s) for v in chosen for s in (0, 1)]  # the chosen runs first, as before
    assert runs[14:] == [(c, s) for c in plan.control_runs for s in (0, 1)]  # same seeds as the variants
    assert not any(r["done"] for r in plan.runs)
    # BMQ_0 was not chosen: the plan says the 'more updates' part needs it
    assert any("BMQ_0 is not among the variants" in n and "BMQ_100" in n for n in plan.notes)
    # without the flag: no control
    assert study.plan_study(exp, chosen, [0], EPOCHS).controls == {}


def test_no_controls_under_fixed(tmp_path):
    exp = fake_variants(tmp_path / "e")
    plan = study.plan_study(exp, ["SHQ_0", "SHQ_100", "SHQ_300"], [0, 1, 2], FIXED, matched_controls=True)
    assert plan.controls == {} and plan.control_runs == []
    assert [r["variant"] for r in plan.runs] == ["SHQ_0"] * 3 + ["SHQ_100"] * 3 + ["SHQ_300"] * 3
    assert any("budget fixed: every run gets 10 × 16 = 160 updates" in n for n in plan.notes)


def test_plan_refuses_an_inconsistent_budget_and_a_missing_base_file(tmp_path):
    exp = fake_variants(tmp_path / "e")
    with pytest.raises(ParamError, match="budget='epochs' with steps_per_epoch=16"):
        study.plan_study(exp, ["SHQ_100"], [0], {**EPOCHS, "steps_per_epoch": 16}, matched_controls=True)
    exp2 = fake_variants(tmp_path / "f", ["SHQ_100"])
    with pytest.raises(ParamError, match=r"SHQ_0@320 of SHQ_100 trains on .*SHQ_0.json, which is missing"):
        study.plan_study(exp2, ["SHQ_100"], [0], EPOCHS, matched_controls=True)


def test_finished_control_runs_are_not_redone(tmp_path, capsys):
    """`study --matched-controls` again over finished runs and controls: everything is skipped (no Dask started)."""
    exp = fake_variants(tmp_path / "e")
    done = [finish(exp, run, s) for run in ("SHQ_0", "SHQ_100", "SHQ_0@320") for s in (0, 1)]
    stamps = [f.stat().st_mtime_ns for f in done]
    plan = study.plan_study(exp, ["SHQ_0", "SHQ_100"], [0, 1], EPOCHS, matched_controls=True)
    assert all(r["done"] and not r["stale"] for r in plan.runs) and len(plan.runs) == 6
    overrides = {"budget": "epochs", "steps_per_epoch": 0, "epochs": 20}
    summary = batch.run_study("smoke", "e", "SHQ_0,SHQ_100", [0, 1], outputs_dir=str(tmp_path), overrides=overrides,
                              progress=False, matched_controls=True)
    assert summary["total"] == 6 and summary["skipped"] == 6 and summary["done"] == 0
    assert "(2 variants × 2 seeds + 1 matched control(s) × 2 seeds), 6 already complete, 0 to run" in \
        capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in done] == stamps
    # the control run's row is in metrics.csv, under its own name
    assert "SHQ_0@320" in (exp / "results" / "metrics.csv").read_text()
    # a control made from other data (05 re-run since) is refused like any finished run
    write_png(exp / "i.png", np.full((4, 4), 3, np.uint8))
    plan = study.plan_study(exp, ["SHQ_0", "SHQ_100"], [0], EPOCHS, matched_controls=True)
    assert [r["stale"] for r in plan.runs if r["variant"] == "SHQ_0@320"] == [True]


def test_cli_matched_controls_and_budget_refusal(tmp_path, capsys):
    exp = fake_variants(tmp_path / "e")
    for run in ("SHQ_0", "SHQ_100", "SHQ_0@320"):
        finish(exp, run, 0)
    args = ["study", "--preset", "smoke", "--experiment", "e", "--outputs-dir", str(tmp_path), "--variants",
            "SHQ_0,SHQ_100", "--set", "epochs=20"]
    # smoke is budget=fixed with 8 steps: under fixed nothing is added, and the note says why
    assert batch.main(args + ["--matched-controls"]) == 0
    out = capsys.readouterr().out
    assert "no control runs added" in out and "2 runs (2 variants × 1 seeds)" in out
    assert batch.main(args + ["--matched-controls", "--set", "budget=epochs", "--set", "steps_per_epoch=0"]) == 0
    assert "+ 1 matched control(s) × 1 seeds), 3 already complete, 0 to run" in capsys.readouterr().out
    # the old way to ask for the paper's design, without budget: refused with what to set, before any run
    assert batch.main(args + ["--set", "steps_per_epoch=0"]) == 2
    err = capsys.readouterr().err
    assert "budget='fixed' with steps_per_epoch=0" in err and "--set budget=epochs" in err


def test_collect_metrics_records_updates_and_predicted_share(tmp_path):
    exp = fake_variants(tmp_path / "e")
    f = finish(exp, "SHQ_0@320", 0)
    rec = json.loads(f.read_text())
    rec.update(updates=320, budget="epochs", num_real_train=16, class_names=["a", "b"], confusion=[[90, 5], [2, 3]])
    atomic_write_json(f, rec)
    old = finish(exp, "SHQ_100", 0)  # recorded before `updates` existed: from its unet_config.json
    rec = json.loads(old.read_text())
    rec.update(num_real_train=16, num_synthetic_train=17)
    atomic_write_json(old, rec)
    atomic_write_json(old.parent / "unet_config.json", {"epochs": 20, "batch_size": 2, "steps_per_epoch": None})
    runs = batch.collect_metrics(exp).set_index("variant")
    assert runs.loc["SHQ_0@320", "updates"] == 320 and runs.loc["SHQ_100", "updates"] == 20 * 16
    assert runs.loc["SHQ_0@320", "pred_max_share"] == pytest.approx(92 / 100)
    assert runs.loc["SHQ_0@320", "pred_max_class"] == "a"


def test_data_variant_and_recorded_updates_use_the_shared_helpers(tmp_path):
    from dualsynth.unet.budget import run_updates

    assert study.data_variant("SHQ_0@320") == "SHQ_0" and study.data_variant("SHQ_100") == "SHQ_100"
    assert study.data_variant("SHQ_0@320", {"data_variant": "SHQ_0"}) == "SHQ_0"
    assert study.data_variant("old-folder") == "old-folder"  # no variant: no file to compare, so trusted
    # a run from before `updates` was recorded, under a fixed budget: epochs × steps_per_epoch, as run_updates says
    atomic_write_json(tmp_path / "unet_config.json", {"epochs": 10, "batch_size": 2, "steps_per_epoch": 16})
    m = {"num_real_train": 16, "num_synthetic_train": 48}
    assert study.recorded_updates(m, tmp_path) == 160 == run_updates(64, budget="fixed", epochs=10, batch_size=2,
                                                                     steps_per_epoch=16)
    atomic_write_json(tmp_path / "unet_config.json", {"epochs": 20, "batch_size": 2, "steps_per_epoch": None})
    assert study.recorded_updates(m, tmp_path) == 640
    assert study.recorded_updates({"updates": 320}, tmp_path) == 320
    assert study.recorded_updates({}, tmp_path) is None  # no training-set size
