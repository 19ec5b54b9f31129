"""The per-dataset ceiling (dualsynth.ceiling): identity of the data, lookup, measurement, and the report's line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dualsynth import ceiling, report
from dualsynth import variants as V
from dualsynth.config import DataConfig, TierSpec
from dualsynth.io import atomic_write_json
from dualsynth.palette import NDFEB_PALETTE
from dualsynth.patching import SourceImage, prepare_dataset


def _experiment(root, name="exp", seed=0):
    """01 + 05 (BMQ_0 only) of a tiny experiment with 32 px patches; the data is named 'tiny'."""
    rng = np.random.default_rng(seed)
    exp = root / name
    masks = np.zeros((128, 128), np.uint8)
    masks[20:60, 10:100] = 1
    masks[80:90, :] = 2
    img = (masks * 80 + rng.integers(0, 30, masks.shape)).astype(np.uint8)
    srcs = [SourceImage("m", img[..., None], masks, masks)]
    cfg = DataConfig("tiny", 1, NDFEB_PALETTE, {"kind": "pairs"}, TierSpec((2, 1), (6, 2), 3, 0))
    manifest = prepare_dataset(cfg, exp / "patches", patch_size=32, sources=srcs, progress=False)
    atomic_write_json(exp / "variants" / "BMQ_0.json", V.materialise("BMQ_0", manifest, {"items": []}))
    return exp


def test_split_key_follows_the_patch_ids(tmp_path):
    exp = _experiment(tmp_path)
    data = json.loads((exp / "variants" / "BMQ_0.json").read_text())
    m = json.loads((exp / "patches" / "manifest.json").read_text())["data"]
    key = ceiling.split_key(m, 32, data)
    assert key == ceiling.split_key(m, 32, json.loads(json.dumps(data)))
    assert key != ceiling.split_key(m, 64, data)
    moved = {**data, "test": data["test"][1:], "train": data["train"] + data["test"][:1]}
    assert key != ceiling.split_key(m, 32, moved)  # a test patch moved to training: another ceiling
    with pytest.raises(Exception, match="data name"):
        ceiling.ceiling_file("../x")


def test_lookup_needs_the_same_data_and_names_the_recipe(tmp_path):
    exp = _experiment(tmp_path)
    assert ceiling.lookup(exp, root=tmp_path) is None  # nothing measured yet
    name, key = ceiling._experiment_key(exp, "BMQ_0")
    record = {"dataset": name, "split_key": key, "recipe": {"encoder": "plain", "batch_size": 8},
              "missing_class_iou": 0.7, "updates": 2000, "seeds": [0]}
    atomic_write_json(ceiling.ceiling_file(name, tmp_path), record)
    found = ceiling.lookup(exp, {"encoder": "plain", "batch_size": 8, "seed": 3}, root=tmp_path)
    assert found["missing_class_iou"] == 0.7 and found["same_recipe"] is True
    other = ceiling.lookup(exp, {"encoder": "resnet18", "lr_schedule": "plateau"}, root=tmp_path)
    assert other["same_recipe"] is False and other["recipe_differs"] == ["encoder"]
    # the ceiling's own cosine schedule is not a difference
    same = ceiling.lookup(exp, {"encoder": "plain", "lr_schedule": "plateau", "warmup_fraction": 0.1}, root=tmp_path)
    assert same["same_recipe"] is True and same["recipe_differs"] == []
    atomic_write_json(ceiling.ceiling_file(name, tmp_path), {**record, "split_key": "other"})
    assert ceiling.lookup(exp, root=tmp_path) is None


@pytest.mark.slow
def test_measure_trains_and_scores_on_the_test_patches(tmp_path, no_grappler):
    exp = _experiment(tmp_path)
    params = {"encoder": "plain", "base_filters": 4, "batch_size": 2, "normalise": "patches", "experiment": "x",
              "budget": "fixed", "learning_rate": 3e-3}
    rec = ceiling.measure(exp, params, updates=12, seeds=(0,), rows=4, progress=False)
    assert rec["updates"] == 12 and rec["seeds"] == [0] and rec["dataset"] == "tiny"
    assert rec["recipe"] == {k: params[k] for k in ("encoder", "base_filters", "batch_size", "normalise",
                                                   "learning_rate")}
    assert 0.0 <= rec["missing_class_iou"] <= 1.0
    assert set(rec["per_class_iou_dataset"]) == set(NDFEB_PALETTE.names)
    assert rec["split_key"] == ceiling._experiment_key(exp, "BMQ_0")[1]
    with pytest.raises(Exception, match="at least"):
        ceiling.measure(exp, params, updates=3, rows=4)


def test_report_reads_base_variants_as_a_share_of_the_ceiling(tmp_path, monkeypatch):
    from test_report import fake_experiment

    exp = fake_experiment(tmp_path, "good", {"BMQ_0": {s: ([0.4, 0.5], {"matrix": 0.9, "pores": 0.1})
                                                       for s in range(2)}})
    ids = [f"p{i}" for i in range(6)]
    atomic_write_json(exp / "variants" / "BMQ_0.json", {"variant": "BMQ_0", "train": [{"id": i} for i in ids],
                                                        "val": [], "test": []})
    monkeypatch.setattr(ceiling, "project_root", lambda: tmp_path)
    rep = report.experiment_report(exp)
    assert rep["ceiling"] is None  # no file yet
    name, key = ceiling._experiment_key(exp, "BMQ_0")
    atomic_write_json(ceiling.ceiling_file(name), {"dataset": name, "split_key": key, "missing_class_iou": 0.9,
                                                   "recipe": {"encoder": "plain"}, "updates": 2000, "seeds": [0]})
    rep = report.experiment_report(exp)
    assert rep["ceiling"]["bases"]["BMQ_0"]["share"] == pytest.approx(0.45 / 0.9)
    text = report.report_markdown(rep)
    assert "Ceiling" in text and "BMQ_0 0.450 (50%)" in text


def test_reference_lines_and_the_figure(tmp_path, monkeypatch):
    from test_report import fake_experiment

    from dualsynth import plots

    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, :2] = 1
    exp = fake_experiment(tmp_path, "good", {"BMQ_0": {0: ([0.4, 0.5], {"matrix": 0.9, "pores": 0.1})}},
                          test_masks=masks)
    monkeypatch.setattr(ceiling, "project_root", lambda: tmp_path)
    refs = report.reference_lines(exp)
    assert set(refs) == {"majority baseline"}  # no ceiling measured
    atomic_write_json(exp / "variants" / "BMQ_0.json", {"variant": "BMQ_0", "train": [{"id": f"p{i}"} for i in
                                                                                      range(6)], "val": [],
                                                        "test": [{"id": "t0"}, {"id": "t1"}]})
    name, key = ceiling._experiment_key(exp, "BMQ_0")
    atomic_write_json(ceiling.ceiling_file(name), {"dataset": name, "split_key": key, "missing_class_iou": 0.8,
                                                   "recipe": {}, "updates": 2000, "seeds": [0]})
    refs = report.reference_lines(exp)
    assert refs["ceiling"] == 0.8 and 0 < refs["majority baseline"] < 0.8
    runs, summary, _, _ = report.study_tables(exp)
    fig = plots.plot_metric_vs_percent(summary, "missing_class_iou", references=refs)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "ceiling 0.80" in texts and any(t.startswith("majority baseline") for t in texts)


def test_cli_keeps_tensorflow_warning_lines_out_while_it_measures(tmp_path, monkeypatch, capsys):
    """Each seed's new model traces Keras's predict code again; on real data, from the third seed on, TensorFlow's
    Python logger printed "… triggered tf.function retracing" to the terminal (seen with q17-ndfeb_default, 4 seeds).
    The command line measures with that logger at ERROR, and writes the ceiling into the project's params/ceilings/
    (here a temporary project root)."""
    import logging

    exp = _experiment(tmp_path)
    seen = {}

    def fake_measure(experiment, params, updates, seeds):
        seen["warnings_on"] = logging.getLogger("tensorflow").isEnabledFor(logging.WARNING)
        seen["errors_on"] = logging.getLogger("tensorflow").isEnabledFor(logging.ERROR)
        return _record(exp, params, updates, {s: 0.5 for s in seeds})

    monkeypatch.setattr(ceiling, "measure", fake_measure)
    monkeypatch.setattr(ceiling, "project_root", lambda: tmp_path)
    before = logging.getLogger("tensorflow").level
    try:
        assert ceiling.main([str(exp), "--updates", "40", "--seeds", "0,1,2"]) == 0
    finally:
        logging.getLogger("tensorflow").setLevel(before)
    assert seen == {"warnings_on": False, "errors_on": True}
    monkeypatch.setenv("DUALSYNTH_VERBOSE", "1")  # everything, when asked for
    try:
        assert ceiling.main([str(exp), "--updates", "40", "--seeds", "0,1,2"]) == 0
    finally:
        logging.getLogger("tensorflow").setLevel(before)
    assert seen["warnings_on"]
    assert "tiny: ceiling Missing Class IoU 0.500 (40 updates, seeds [0, 1, 2])" in capsys.readouterr().out
    assert json.loads(ceiling.ceiling_file("tiny").read_text())["seeds"] == [0, 1, 2]


def _record(exp, params, updates, scores):
    """A ceiling record as :func:`ceiling.measure` returns it, with the given Missing Class IoU per seed."""
    name, key = ceiling._experiment_key(exp, "BMQ_0")
    per_seed = [{"seed": s, "missing_class_iou": v, "miou": v / 2, "per_class_iou_dataset": {"matrix": v, "eta": None},
                 "best_update": 8, "train_seconds": 1} for s, v in scores.items()]
    return ceiling._summarise({"format": 1, "dataset": name, "variant": "BMQ_0", "split_key": key,
                               "measured_on": exp.name, "recipe": {k: params[k] for k in ceiling.RECIPE_KEYS
                                                                    if k in params},
                               "updates": (updates // 40) * 40, "schedule": "cosine", "per_seed": per_seed},
                              ["matrix", "eta"])


def test_merge_pools_the_seeds_and_refuses_another_recipe(tmp_path):
    exp = _experiment(tmp_path)
    params = {"encoder": "plain", "learning_rate": 3e-3}
    a = _record(exp, params, 80, {0: 0.4, 1: 0.6})
    b = _record(exp, params, 80, {1: 0.8, 2: 0.3})
    m = ceiling.merge(a, b)
    assert m["seeds"] == [0, 1, 2]  # seed 1 measured again: the new run replaces the old one
    assert m["missing_class_iou"] == pytest.approx((0.4 + 0.8 + 0.3) / 3)
    assert m["per_class_iou_dataset"] == {"matrix": pytest.approx(0.5), "eta": None}
    with pytest.raises(ceiling.ParamError, match=r"x\.json: cannot add seeds .*learning_rate"):
        ceiling.merge(a, _record(exp, {**params, "learning_rate": 1e-3}, 80, {2: 0.3}), "x.json")
    with pytest.raises(ceiling.ParamError, match="updates: 80 there, 120 now"):
        ceiling.merge(a, _record(exp, params, 120, {2: 0.3}))


def test_cli_writes_each_seed_at_once_and_adds_seeds(tmp_path, monkeypatch, capsys):
    """Each seed trains for many minutes on a CPU: a measurement stopped after seed 0 keeps seed 0 in the file,
    ``--add`` adds seeds to it, and an --add whose recipe differs stops before anything trains."""
    exp = _experiment(tmp_path)
    calls = []

    def fake_measure(experiment, params, updates, seeds):
        calls.append(list(seeds))
        if seeds == [1] and len(calls) == 2:
            raise OSError("interrupted")
        return _record(exp, params, updates, {s: 0.1 * (s + 1) for s in seeds})

    monkeypatch.setattr(ceiling, "measure", fake_measure)
    monkeypatch.setattr(ceiling, "project_root", lambda: tmp_path)
    assert ceiling.main([str(exp), "--updates", "80", "--seeds", "0,1"]) == 2
    out = ceiling.ceiling_file("tiny")
    assert json.loads(out.read_text())["seeds"] == [0]
    assert ceiling.main([str(exp), "--updates", "80", "--seeds", "1,2", "--add"]) == 0
    rec = json.loads(out.read_text())
    assert rec["seeds"] == [0, 1, 2] and rec["missing_class_iou"] == pytest.approx(0.2)
    assert "tiny: ceiling Missing Class IoU 0.200 (80 updates, seeds [0, 1, 2])" in capsys.readouterr().out
    n = len(calls)
    assert ceiling.main([str(exp), "--updates", "80", "--seeds", "3", "--add", "--set", "learning_rate=0.01"]) == 2
    assert len(calls) == n and "cannot add seeds" in capsys.readouterr().err
    assert json.loads(out.read_text())["seeds"] == [0, 1, 2]
    # without --add a new measurement replaces the file
    assert ceiling.main([str(exp), "--updates", "80", "--seeds", "4"]) == 0
    assert json.loads(out.read_text())["seeds"] == [4]


@pytest.mark.parametrize("path", sorted((ceiling.project_root() / "params" / "ceilings").glob("*.json")),
                         ids=lambda p: p.stem)
def test_committed_ceilings_hold_the_quick_recipe(path):
    """A ceiling is read as "what this recipe reaches at length": one measured with another recipe makes every
    share in the report wrong (on 2026-12-04 the preset moved to 3e-3 and the default's SHQ_0 read 103 %). When the
    quick preset's 06 recipe changes, this fails until the ceilings are measured again."""
    from dualsynth.batch import notebook_parameters, preset_params

    params = {**notebook_parameters("06_unet_training"), **preset_params("quick", "06_unet_training")}
    rec = json.loads(path.read_text())
    differs = {k: (rec["recipe"][k], params[k]) for k in ceiling.recipe_differs(rec["recipe"], params)}
    assert not differs, (f"{path.name} was measured with {differs} (ceiling, quick preset): measure it again, "
                         f"python -m dualsynth.ceiling outputs/<experiment on {rec['dataset']}> "
                         f"--updates {rec['updates']} --seeds 0")
    assert set(ceiling.RECIPE_KEYS) - set(ceiling._OWN_SCHEDULE) - {"focal_weight"} <= set(rec["recipe"])
