"""The run record ``metrics.json`` (issue 17 item 3): built by one library function (``dualsynth.unet.record``,
called by notebook 06), accepted as complete by the study and read by the results table with the same field list."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from dualsynth import batch, metrics, results, study
from dualsynth.io import atomic_write_json, write_png
from dualsynth.unet import budget as unet_budget
from dualsynth.unet import record as R
from dualsynth.variants import inputs_fingerprint, metrics_complete, parse_run, run_dir


def _experiment(tmp_path, names=("SHQ_0", "PT_SHQ_50")):
    """Variant files (as 05 writes them) pointing at one tiny real pair."""
    exp = tmp_path / "e"
    write_png(exp / "i.png", np.zeros((4, 4), np.uint8))
    write_png(exp / "m.png", np.zeros((4, 4), np.uint8))
    pair = {"image": str(exp / "i.png"), "mask": str(exp / "m.png"), "source": "real", "id": "i"}
    for name in names:
        v = parse_run(name).variant
        data = {"variant": name, "group": v.group, "tier": v.tier, "percent": v.percent, "augment": v.augment,
                "num_real_train": 16, "num_synthetic_train": 8 if v.group == "pretrain" else 0,
                "train": [pair] * 16, "val": [pair], "test": [pair] * 3}
        if v.group == "pretrain":
            data["pretrain"] = [pair] * 8
        atomic_write_json(exp / "variants" / f"{name}.json", data)
    return exp


def _record(exp, name, seed=0):
    """What 06's last cell builds for run ``name``: a real budget plan, scores of metrics.evaluate, a training
    result (for a PT_ run with its pretraining stage)."""
    run = parse_run(name)
    data = json.loads((exp / "variants" / f"{run.variant.name}.json").read_text())
    pretrain = len(data.get("pretrain", []))
    plan = unet_budget.run_budget(name, len(data["train"]), budget="epochs", epochs=2, batch_size=2,
                                  pretrain_size=pretrain)
    rng = np.random.default_rng(seed)
    gts = rng.integers(0, 3, (3, 8, 8))
    scores = metrics.evaluate(gts, np.where(rng.random((3, 8, 8)) < 0.8, gts, 0), 3, ["a", "b", "c"])
    result = SimpleNamespace(epochs_run=2, best_epoch=1, seconds=12.5)
    if pretrain:
        result.pretrain = SimpleNamespace(epochs_run=2)
    return R.metrics_record(run, data, plan, result, scores, seed=seed, encoder="plain", budget="epochs",
                            inputs_fingerprint=inputs_fingerprint(data))


def test_a_written_record_is_complete_and_read_by_the_table(tmp_path):
    exp = _experiment(tmp_path)
    for name in ("SHQ_0", "PT_SHQ_50"):
        rec = _record(exp, name)
        assert set(R.RECORD_FIELDS) <= set(rec) and rec["complete"] is True
        f = R.write_metrics(run_dir(exp / "unet", name, 0), rec)
        assert f.name == "metrics.json" and metrics_complete(f) and R.metrics_complete(f)
        assert json.loads(f.read_text()) == json.loads(json.dumps(rec))
    pt = json.loads((run_dir(exp / "unet", "PT_SHQ_50", 0) / "metrics.json").read_text())
    assert pt["updates"] == pt["updates_pretrain"] + pt["updates_finetune"] == 4 * 2 + 8 * 2  # per-stage budgets
    assert [r["done"] for r in study.study_runs(exp, ["SHQ_0", "PT_SHQ_50"], [0])] == [True, True]
    table = results.collect_metrics(exp).set_index("variant")
    assert sorted(table.index) == ["PT_SHQ_50", "SHQ_0"]
    row, rec = table.loc["SHQ_0"], _record(exp, "SHQ_0")
    for k in R.TABLE_FIELDS[1:] + R.SCORE_COLUMNS:  # variant: the index
        assert row[k] == rec[k], k
    assert row["updates"] == 2 * 8 and row["num_test"] == 3 and table.loc["PT_SHQ_50", "updates_pretrain"] == 8
    assert row["mciou_a"] == rec["per_class"]["a"]
    assert results.METRIC_COLUMNS == R.SCORE_COLUMNS and batch.METRIC_COLUMNS == R.SCORE_COLUMNS


@pytest.mark.parametrize("field", R.REQUIRED_FIELDS)
def test_a_record_missing_a_field_is_not_a_finished_run(tmp_path, field):
    exp = _experiment(tmp_path, ["SHQ_0"])
    rec = _record(exp, "SHQ_0")
    f = R.write_metrics(run_dir(exp / "unet", "SHQ_0", 0), rec)
    assert len(results.collect_metrics(exp)) == 1
    partial = {k: v for k, v in rec.items() if k != field}
    with pytest.raises(ValueError, match=rf"not a complete run record \(missing \['{field}'\]\)"):
        R.write_metrics(f.parent, partial)
    atomic_write_json(f, partial)  # as an older or interrupted writer would leave it
    assert not metrics_complete(f) and not R.record_complete(partial)
    assert results.collect_metrics(exp).empty
    assert study.study_runs(exp, ["SHQ_0"], [0])[0]["done"] is False  # the study runs it again


def test_unfinished_or_corrupt_records_are_not_complete(tmp_path):
    exp = _experiment(tmp_path, ["SHQ_0"])
    rec = _record(exp, "SHQ_0")
    f = run_dir(exp / "unet", "SHQ_0", 0) / "metrics.json"
    atomic_write_json(f, {**rec, "complete": False})
    assert not metrics_complete(f)
    f.write_text("{not json")
    assert not metrics_complete(f) and R.read_complete(f) is None
    assert not metrics_complete(f.with_name("missing.json"))
    with pytest.raises(ValueError, match=r"the metrics record lacks \['accuracy'"):
        R.metrics_record(parse_run("SHQ_0"), json.loads((exp / "variants" / "SHQ_0.json").read_text()),
                         unet_budget.run_budget("SHQ_0", 16, budget="epochs", epochs=2, batch_size=2),
                         SimpleNamespace(epochs_run=2, best_epoch=1, seconds=1.0), {"num_images": 3}, seed=0,
                         encoder="plain", budget="epochs", inputs_fingerprint="x")


def test_notebook_06_builds_its_record_with_the_library():
    cells = json.loads((ROOT / "notebooks" / "06_unet_training.ipynb").read_text(encoding="utf-8"))["cells"]
    src = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "unet_record.metrics_record(" in src and "unet_record.write_metrics(run, record)" in src
    assert '"metrics.json"' not in src and "atomic_write_json" not in src
