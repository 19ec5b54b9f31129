"""06's update budget (fixed / epochs), matched-control run names and update counts (dualsynth.unet.budget)."""
import sys

import pytest

from dualsynth import config
from dualsynth.unet import budget as B
from dualsynth.variants import VariantError, control_name, parse_run

EPOCHS = dict(budget="epochs", epochs=20, batch_size=2, steps_per_epoch=0)
FIXED = dict(budget="fixed", epochs=10, batch_size=2, steps_per_epoch=16)


def test_budget_module_does_not_import_tensorflow():
    # the batch runner plans studies with it; TensorFlow would cost seconds and memory in the main process
    import subprocess

    code = "import sys, dualsynth.unet.budget, dualsynth.study; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("train_size,steps", [(16, 8), (17, 8), (32, 16), (33, 16), (3, 1), (1, 1)])
def test_updates_under_epochs_count_whole_batches(train_size, steps):
    # an epoch is train_size // batch_size whole batches (at least one): 17 images, batch 2 -> 8 updates per epoch
    assert B.epoch_steps(train_size, 2) == steps
    assert B.run_updates(train_size, **EPOCHS) == 20 * steps


def test_updates_under_fixed_ignore_the_training_set_size():
    assert {B.run_updates(n, **FIXED) for n in (1, 16, 17, 48, 144)} == {160}
    assert B.epoch_steps(48, 2, fixed=16) == 16


def test_control_names_round_trip_and_refuse_nonsense():
    assert control_name("SHQ_0", 320) == "SHQ_0@320"
    r = parse_run("SHQ_0@320")
    assert r.control and r.updates == 320 and r.variant.name == "SHQ_0" and r.name == "SHQ_0@320"
    plain = parse_run("SHQ_100")
    assert not plain.control and plain.updates is None and plain.variant.group == "mixed"
    with pytest.raises(VariantError, match=r"trains a base variant .*not SHQ_100"):
        parse_run("SHQ_100@320")
    for bad in ("SHQ_0@0", "SHQ_0@x", "SHQ_0@"):
        with pytest.raises(VariantError, match="number of updates"):
            parse_run(bad)
    with pytest.raises(VariantError, match="unknown variant"):
        parse_run("SHQ_60@320")


def test_matched_control_of_a_mixed_variant():
    # SHQ_100: 16 real + 16 synthetic = 32 images -> 16 steps x 20 epochs = 320 updates; SHQ_0 (16) gets 160
    assert B.matched_control("SHQ_100", 32, 16, **EPOCHS) == "SHQ_0@320"
    assert B.matched_control("BMQ_50", 72, 48, **EPOCHS) == "BMQ_0@720"
    # 17 vs 16 images: both 8 whole batches per epoch -> equal updates, the base is the control
    assert B.matched_control("SHQ_50", 17, 16, **EPOCHS) is None
    assert B.matched_control("SHQ_50", 18, 17, **EPOCHS) == "SHQ_0@180"
    # fixed budget: every run has 160 updates; a base variant has no control
    assert B.matched_control("SHQ_100", 32, 16, **FIXED) is None
    assert B.matched_control("SHQ_0", 16, 16, **EPOCHS) is None


def test_run_budget_of_plain_and_control_runs():
    plain = B.run_budget("SHQ_100", 33, **EPOCHS)
    assert (plain.updates, plain.steps_per_epoch, plain.config_steps) == (320, 16, None)  # the set decides, as before
    fixed = B.run_budget("SHQ_100", 33, **FIXED)
    assert (fixed.updates, fixed.steps_per_epoch, fixed.config_steps) == (160, 16, 16)
    control = B.run_budget("SHQ_0@320", 16, **EPOCHS)  # trains SHQ_0's 16 images with SHQ_100's 320 updates
    assert (control.updates, control.steps_per_epoch, control.config_steps) == (320, 16, 16)


@pytest.mark.parametrize("params,message", [
    ({"budget": "fixed", "steps_per_epoch": 0, "epochs": 10}, r"budget='fixed' with steps_per_epoch=0.*budget='epochs'"),
    ({"budget": "epochs", "steps_per_epoch": 16, "epochs": 10}, r"budget='epochs' with steps_per_epoch=16.*steps_per_epoch=0"),
    # under fixed a control run is needed only by PT_ variants; one with the fixed budget itself is the base
    ({"budget": "fixed", "steps_per_epoch": 16, "epochs": 10, "variant": "SHQ_0@160"},
     r"SHQ_0@160' is a matched control run with the 160 updates every run gets under budget='fixed'"),
    ({"budget": "fixed", "steps_per_epoch": 16, "epochs": 10, "variant": "SHQ_0@325"},
     r"325 updates are not a whole number .* over epochs=10"),
    ({"budget": "epochs", "steps_per_epoch": 0, "epochs": 20, "variant": "SHQ_0@330"},
     r"330 updates are not a whole number .* over epochs=20"),
    ({"budget": "steps", "steps_per_epoch": 0, "epochs": 20}, r"budget='steps': 'fixed' .* or 'epochs'"),
])
def test_inconsistent_budget_parameters_are_refused(params, message):
    with pytest.raises(config.ParamError, match=message):
        B.check_params(params)


def test_consistent_budget_parameters_pass():
    B.check_params({"budget": "fixed", "steps_per_epoch": 16, "epochs": 10, "variant": "SHQ_100"})
    B.check_params({"budget": "epochs", "steps_per_epoch": 0, "epochs": 20, "variant": "SHQ_0@320"})


def test_notebook_06_refuses_an_inconsistent_budget_before_writing(tmp_path):
    from dualsynth import batch

    params = {**batch.notebook_parameters("06_unet_training"), "outputs_dir": str(tmp_path), "experiment": "e",
              "budget": "fixed", "steps_per_epoch": 0}
    with pytest.raises(config.ParamError, match=r"bad parameters of 06_unet_training:\n  budget='fixed' with"):
        config.start_stage("06_unet_training", params)
    assert not (tmp_path / "e").exists()
    with pytest.raises(config.ParamError, match="budget='weekly'"):
        config.start_stage("06_unet_training", {**params, "budget": "weekly"})


def test_presets_choose_their_budget():
    from dualsynth import batch

    chosen = {p: batch.preset_params(p, "06_unet_training") for p in ("smoke", "quick", "paper")}
    assert {p: c["budget"] for p, c in chosen.items()} == {"smoke": "fixed", "quick": "fixed", "paper": "epochs"}
    defaults = batch.notebook_parameters("06_unet_training")
    for p, c in chosen.items():  # every preset's own combination is consistent
        B.check_params({**defaults, **c})
