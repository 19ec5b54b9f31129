"""Pretrain on synthetic, then fine-tune on real: the PT_<tier>_<p> variants (names, files, budgets, study plan,
ranked table) and their two-stage training schedule (dualsynth.unet.pretrain)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dualsynth import config, stats, study
from dualsynth import variants as V
from dualsynth.palette import NDFEB_PALETTE
from dualsynth.unet import budget as B

from conftest import fake_pool as _pool

EPOCHS = dict(budget="epochs", epochs=20, batch_size=2, steps_per_epoch=0)
FIXED = dict(budget="fixed", epochs=10, batch_size=2, steps_per_epoch=16)


# --------------------------------------------------------------------------- names and parsing
def test_pt_names_parse_and_select():
    pt = V.pretrain_variants()
    assert len(pt) == 28 and {v.group for v in pt} == {"pretrain"}
    assert [v.name for v in pt[:2]] == ["PT_SHQ_50", "PT_SHQ_75"] and pt[-1].name == "PT_BMQ_300"
    v = V.parse_variant("PT_SHQ_100")
    assert (v.name, v.group, v.tier, v.percent, v.augment, v.synthetic_only) == ("PT_SHQ_100", "pretrain", "SHQ",
                                                                                 100, False, False)
    assert v.synthetic_count(16, 48) == 16  # p % of the tier's training size, as the mixed SHQ_100
    for bad in ("PT_SHQ_0", "PT_SHQ_60", "PT_SyntLQ_50", "PT_BMQ_aug", "pt_SHQ_50", "PT_SHQ"):
        with pytest.raises(V.VariantError, match="unknown variant"):
            V.parse_variant(bad)
    # a PT_ variant is no base: it has no control name of its own, and its base is <tier>_0
    with pytest.raises(V.VariantError, match="trains a base variant"):
        V.parse_run("PT_SHQ_100@320")
    assert V.parse_run("PT_SHQ_100").variant.group == "pretrain"
    assert stats.base_of("PT_BLQ_250") == "BLQ_0"
    # 'all' stays the paper's 47 (the study's default); 'pretrain' selects the 28; 05 writes all 75
    assert len(V.select("all")) == 47 and not any(n.startswith("PT_") for n in V.variant_names())
    assert [x.name for x in V.select("pretrain")] == [x.name for x in pt]
    assert len(V.select("all", with_pretrain=True)) == 75 == len(V.select("all,pretrain"))
    assert [x.name for x in V.select("SHQ_0,PT_SHQ_100,SHQ_0")] == ["SHQ_0", "PT_SHQ_100"]
    assert len(V.variant_names(include_pretrain=True)) == 75


def test_committed_pt_yamls():
    from conftest import ROOT

    for v in V.pretrain_variants():
        text = (ROOT / "params" / "variants" / f"{v.name}.yaml").read_text()
        assert text.endswith(f"variant: {v.name}\n") and "then fine-tune on the real" in text


# --------------------------------------------------------------------------- 05: the variant file
@pytest.fixture(scope="module")
def manifest(tiny_manifest):
    return tiny_manifest  # conftest's shared builder


def test_materialise_pt_variant(manifest, tmp_path):
    pool = _pool(30)
    base = V.materialise("SHQ_0", manifest, pool, tmp_path)
    mixed = V.materialise("SHQ_150", manifest, pool, tmp_path)
    pt = V.materialise("PT_SHQ_150", manifest, pool, tmp_path)
    # stage 2 trains, validates and is scored exactly as the base
    assert (pt["train"], pt["val"], pt["test"]) == (base["train"], base["val"], base["test"])
    assert all(t["source"] == "real" for t in pt["train"] + pt["val"] + pt["test"])
    # stage 1: the mixed variant's synthetic images (150 % of 4 = 6), the same pool prefix
    assert pt["pretrain"] == [t for t in mixed["train"] if t["source"] == "synthetic"]
    assert [t["id"] for t in pt["pretrain"]] == [f"s{i:03d}" for i in range(6)]
    assert (pt["variant"], pt["group"], pt["tier"], pt["percent"]) == ("PT_SHQ_150", "pretrain", "SHQ", 150)
    assert (pt["num_real_train"], pt["num_synthetic_train"]) == (4, 6)
    assert "pretrain" not in base and "pretrain" not in mixed
    with pytest.raises(V.VariantError, match="PT_BMQ_300 needs 24 synthetic images but the synthetic pool has 10"):
        V.materialise("PT_BMQ_300", manifest, _pool(10), tmp_path)


def test_pt_files_split_and_fingerprint(manifest, tmp_path):
    from dualsynth.io import write_png

    pool_dir = tmp_path / "synthetic"
    for i in range(6):
        write_png(pool_dir / "images" / f"s{i:03d}.png", np.full((8, 8, 3), 10 * i, np.uint8))
        write_png(pool_dir / "masks" / f"s{i:03d}.png", np.zeros((8, 8), np.uint8))
    paths = V.materialise_all(V.select("SHQ_0,PT_SHQ_50"), manifest, _pool(6), pool_dir, tmp_path / "variants")
    data = V.load_variant(paths[1])
    images, masks = V.load_split(data, "pretrain", 3, NDFEB_PALETTE)
    assert images.shape == (2, 8, 8, 3) and masks.shape == (2, 8, 8) and images[1].max() == 10
    with pytest.raises(V.VariantError, match="has no pretrain split"):
        V.load_split(V.load_variant(paths[0]), "pretrain", 3, NDFEB_PALETTE)
    # the fingerprint covers the pretraining images: a re-generated pool makes a finished PT_ run stale
    before = V.inputs_fingerprint(data)
    write_png(pool_dir / "images" / "s001.png", np.full((8, 8, 3), 99, np.uint8))
    V._cached_digest.cache_clear()
    assert V.inputs_fingerprint(data) != before


# --------------------------------------------------------------------------- budgets
def test_pt_budget_pretraining_then_the_base_budget():
    # epochs: pretraining = a plain run on the synthetic images, fine-tuning = the base run; updates = the sum
    b = B.run_budget("PT_SHQ_300", 16, pretrain_size=48, **EPOCHS)
    base = B.run_budget("SHQ_0", 16, **EPOCHS)
    assert (b.pretrain.updates, b.pretrain.steps_per_epoch, b.pretrain.config_steps) == (480, 24, None)
    assert (b.finetune_updates, b.steps_per_epoch, b.config_steps) == (base.updates, base.steps_per_epoch, None)
    assert b.updates == 480 + 160
    # fixed: both stages get epochs × steps_per_epoch
    f = B.run_budget("PT_SHQ_300", 16, pretrain_size=48, **FIXED)
    assert (f.pretrain.updates, f.pretrain.config_steps, f.finetune_updates, f.config_steps, f.updates) == \
        (160, 16, 160, 16, 320)
    # the record: budgets per stage and in all, and what early stopping left of them
    rec = b.record(epochs_run=15, pretrain_epochs_run=20)
    assert rec == {"updates": 640, "steps_per_epoch": 8, "updates_run": 480 + 120, "updates_pretrain": 480,
                   "updates_finetune": 160, "steps_per_epoch_pretrain": 24, "updates_run_pretrain": 480,
                   "updates_run_finetune": 120}
    assert base.record(20) == {"updates": 160, "steps_per_epoch": 8, "updates_run": 160}
    with pytest.raises(config.ParamError, match="pretrain_size ≥ 1"):
        B.run_budget("PT_SHQ_50", 16, **EPOCHS)


def test_pt_matched_control_under_both_budgets():
    # PT_ trains longer than its base under either budget: its control is <base>@<total>
    assert B.matched_control("PT_SHQ_100", 16, 16, pretrain_size=16, **EPOCHS) == "SHQ_0@320"
    assert B.matched_control("PT_SHQ_300", 16, 16, pretrain_size=48, **EPOCHS) == "SHQ_0@640"
    assert B.matched_control("PT_SHQ_50", 16, 16, pretrain_size=8, **FIXED) == "SHQ_0@320"
    assert B.matched_control("SHQ_50", 24, 16, **FIXED) is None  # mixed under fixed: the base is the control
    # a control run under fixed is a valid 06 run unless it is the base itself
    B.check_params({**FIXED, "variant": "SHQ_0@320"})
    assert B.run_budget("SHQ_0@320", 16, **FIXED) == B.RunBudget(320, 32, 32)
    with pytest.raises(config.ParamError, match="SHQ_0@160' is a matched control run with the 160 updates"):
        B.check_params({**FIXED, "variant": "SHQ_0@160"})


# --------------------------------------------------------------------------- the study plan and the ranked table
@pytest.mark.parametrize("params,control", [(FIXED, "SHQ_0@320"), (EPOCHS, "SHQ_0@80")])
def test_study_plans_pt_controls(manifest, tmp_path, params, control):
    exp = tmp_path / "e"
    V.materialise_all(V.select("SHQ_0,SHQ_100,PT_SHQ_100"), manifest, _pool(30), tmp_path, exp / "variants")
    plan = study.plan_study(exp, ["SHQ_0", "SHQ_100", "PT_SHQ_100"], [0, 1], params, matched_controls=True)
    # SHQ has 4 training images: under epochs SHQ_100 (8 images, 4 steps × 20) and PT_SHQ_100 (4 + 4 images:
    # 2 + 2 steps × 20) both get 80 updates and share one control; under fixed only PT_SHQ_100 needs one
    expected = {"PT_SHQ_100": control} | ({"SHQ_100": control} if params is EPOCHS else {})
    assert plan.controls == expected and plan.control_runs == [control]
    assert [(r["variant"], r["seed"]) for r in plan.runs][-2:] == [(control, 0), (control, 1)]


def test_ranked_table_compares_pt_with_base_and_matched_control(tmp_path):
    import pandas as pd

    rows = []
    for s in range(3):
        rows += [{"variant": "SHQ_0", "group": "base", "tier": "SHQ", "percent": 0, "seed": s, "updates": 160,
                  "missing_class_iou": 0.50 + 0.01 * s},
                 {"variant": "SHQ_0@320", "group": "control", "tier": "SHQ", "percent": 0, "seed": s,
                  "updates": 320, "missing_class_iou": 0.55 + 0.01 * s},
                 {"variant": "PT_SHQ_100", "group": "pretrain", "tier": "SHQ", "percent": 100, "seed": s,
                  "updates": 320, "missing_class_iou": 0.62 + 0.02 * s}]
    runs = pd.DataFrame(rows)
    ranked = stats.ranked_table(stats.summarise(runs, ["missing_class_iou"]), runs, tmp_path)
    r = ranked[ranked.variant == "PT_SHQ_100"].iloc[0]
    assert (r.base, r.control, r.control_kind, r.updates) == ("SHQ_0", "SHQ_0@320", "matched run", 320)
    assert r.gain_vs_base == pytest.approx(0.13)  # mean over seeds of (0.62, 0.64, 0.66) − (0.50, 0.51, 0.52)
    assert r.gain_updates == pytest.approx(0.05) and r.gain_synthetic == pytest.approx(0.08)
    assert r.gain_synthetic_n == 3 and r.gain_synthetic_ci_low > 0


def test_figure_draws_pt_variants():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from dualsynth import plots

    summary = pd.DataFrame([
        {"variant": "SHQ_0", "group": "base", "tier": "SHQ", "percent": 0, "missing_class_iou": 0.5},
        {"variant": "SHQ_100", "group": "mixed", "tier": "SHQ", "percent": 100, "missing_class_iou": 0.55},
        {"variant": "PT_SHQ_50", "group": "pretrain", "tier": "SHQ", "percent": 50, "missing_class_iou": 0.6},
        {"variant": "PT_SHQ_100", "group": "pretrain", "tier": "SHQ", "percent": 100, "missing_class_iou": 0.7}])
    fig = plots.plot_metric_vs_percent(summary, "missing_class_iou")
    line = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "synthetic pretraining → SHQ fine-tuning"]
    assert len(line) == 1 and list(line[0].get_ydata()) == [0.6, 0.7] and list(line[0].get_xdata()) == [50, 100]


# --------------------------------------------------------------------------- the two-stage schedule
class Killed(BaseException):
    """Stands for SIGKILL (not caught by `except Exception`)."""


def _squares(n, seed, bright=190):
    rng = np.random.default_rng(seed)
    m = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, 16, 2)
        m[i, y:y + 12, x:x + 12] = 1
    return (np.where(m == 1, bright, 40) + rng.integers(0, 40, m.shape)).astype(np.uint8)[..., None], m


@pytest.mark.slow
def test_pretrain_then_finetune_schedule_and_resume_in_stage_2(tmp_path, monkeypatch):
    """Stage 1 trains on the synthetic images for the pretraining budget, stage 2 on the real ones for exactly the
    base budget, starting from stage 1's best weights; killed in stage 2, the run resumes in stage 2 and does not
    train stage 1 again."""
    import tensorflow as tf

    from dualsynth.unet import files, pretrain, train
    from dualsynth.unet.model import UNetConfig

    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})  # as test_segmentation.py
    synthetic, real, val = _squares(4, 1, bright=230), _squares(2, 2), _squares(2, 3)
    # budget epochs, 2 epochs, batch 2: pretraining 4 synthetic images -> 2 steps/epoch = 4 updates; fine-tuning on
    # 2 real images -> 1 step/epoch = 2 updates, the base run's budget
    plan = B.run_budget("PT_SHQ_100", len(real[0]), pretrain_size=len(synthetic[0]),
                        **{**EPOCHS, "epochs": 2})
    assert (plan.pretrain.updates, plan.finetune_updates, plan.updates) == (4, 2, 6)
    cfg = UNetConfig(num_classes=2, in_channels=1, encoder="plain", base_filters=8, epochs=2,
                     steps_per_epoch=plan.config_steps)
    out = tmp_path / "run"

    stages = []  # (out_dir, cfg, training images, result, optimizer updates) of every train_unet call that returned
    real_train_unet = pretrain.train_unet

    def spy(c, tr, va, o, **kw):
        res = real_train_unet(c, tr, va, o, **kw)
        stages.append((Path(o), c, tr[0], res, int(res.model.optimizer.iterations.numpy())))
        return res

    initial = []  # weights of every fresh (not resumed) stage-2 model, right after it was built
    real_build = train.build_unet

    def build(c, *a, **kw):
        model = real_build(c, *a, **kw)
        if c.encoder_weights is not None:
            initial.append(model.get_weights())
        return model

    real_history = files.write_history_csv

    def kill_in_stage_2(path, history):
        real_history(path, history)
        if Path(path).parent == out and len(history["epoch"]) == 1:  # stage 2's epoch 1 is committed
            raise Killed()

    monkeypatch.setattr(pretrain, "train_unet", spy)
    monkeypatch.setattr(train, "build_unet", build)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(files, "write_history_csv", kill_in_stage_2)
            with pytest.raises(Killed):
                pretrain.train_pretrain_finetune(cfg, synthetic, real, val, out, progress=False, keep_checkpoint=False,
                                                 pretrain_steps_per_epoch=plan.pretrain.config_steps)
        # stage 1 ran alone in out/pretrain on the synthetic images, with the pretraining budget, and finished
        assert len(stages) == 1
        pre_dir, pre_cfg, pre_x, pre_res, pre_updates = stages[0]
        assert pre_dir == out / pretrain.PRETRAIN_DIR and pre_x is synthetic[0]
        assert pre_res.epochs_run == 2 and pre_updates == plan.pretrain.updates == 4
        assert dataclasses.replace(pre_cfg, steps_per_epoch=cfg.steps_per_epoch) == cfg
        assert (pre_dir / "model.h5").is_file() and (pre_dir / "train_summary.json").is_file()
        # stage 2 started from stage 1's best weights (the whole U-Net, BatchNorm statistics included)
        assert len(initial) == 1
        pretrained = pre_res.model.get_weights()
        assert len(initial[0]) == len(pretrained)
        assert all(np.array_equal(a, b) for a, b in zip(initial[0], pretrained))
        assert json.loads((out / "checkpoint" / "state.json").read_text())["epochs_done"] == 1

        stages.clear()
        res = pretrain.train_pretrain_finetune(cfg, synthetic, real, val, out, progress=False, keep_checkpoint=False,
                                               pretrain_steps_per_epoch=plan.pretrain.config_steps)
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})
    # resumed in stage 2: stage 1 returned its finished run without training, stage 2 continued from epoch 1
    assert res.pretrain.resumed_from == res.pretrain.epochs_run == 2
    assert res.pretrain.history["epoch"] == [1, 2] == pre_res.history["epoch"]
    assert res.pretrain.history["loss"] == pytest.approx(pre_res.history["loss"])
    assert len(initial) == 1  # no second fresh stage-2 model: the resume read stage 2's checkpoint
    assert res.finetune.resumed_from == 1 and res.epochs_run == 2 and res.history["epoch"] == [1, 2]
    ft_dir, ft_cfg, ft_x, _, _ = stages[1]
    assert ft_dir == out and ft_x is real[0]
    assert dataclasses.replace(ft_cfg, encoder_weights=None) == cfg  # exactly the base run's config
    assert ft_cfg.encoder_weights == str(out / pretrain.PRETRAIN_DIR / "model.h5")
    # stage 2's optimizer (fresh in stage 2, restored on resume) made exactly the base budget's updates
    assert int(res.finetune.model.optimizer.iterations.numpy()) == plan.finetune_updates == 2
    assert res.model is res.finetune.model and res.best_epoch == res.finetune.best_epoch
    assert plan.record(res.epochs_run, res.pretrain.epochs_run) == {
        "updates": 6, "steps_per_epoch": 1, "updates_run": 6, "updates_pretrain": 4, "updates_finetune": 2,
        "steps_per_epoch_pretrain": 2, "updates_run_pretrain": 4, "updates_run_finetune": 2}
    assert not (out / "checkpoint").exists() and not (out / pretrain.PRETRAIN_DIR / "checkpoint").exists()
