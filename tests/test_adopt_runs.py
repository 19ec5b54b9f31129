"""Adopting finished runs from another experiment (dualsynth.study.adopt_runs, `study --adopt-from`): only runs of
the same data and the same 06 parameters are copied, each says where it came from, and the stale check still
accepts runs recorded with the fingerprint of before 2026-12-05."""
import json

import numpy as np
import pytest

from dualsynth import batch, study
from dualsynth.config import ParamError
from dualsynth.io import atomic_write_json, read_json, write_png
from dualsynth.variants import legacy_inputs_fingerprint, load_variant, run_dir

from test_study_plan import fake_variants, finish

NB = "06_unet_training"


def smoke_params():
    """06's parameters as `study --preset smoke` gives its runs (defaults, then the preset)."""
    return {**batch.notebook_parameters(NB), **batch.preset_params("smoke", NB)}


def record(exp, run, seed, **changed):
    """The run record 06 leaves in runs/ (its parameters as passed, with the experiment's own folders)."""
    params = {**batch.preset_params("smoke", NB), "experiment": exp.name, "outputs_dir": str(exp.parent),
              "tf_threads": 2, "variant": run, "seed": seed, **changed}
    atomic_write_json(exp / "runs" / f"run_{NB}-{run}-seed{seed}.json", {"stage": f"{NB}-{run}-seed{seed}",
                                                                          "git_commit": "abc", "params": params})


def two_experiments(tmp_path):
    """``a`` with finished SHQ_0 seeds 0 and 1 and their records; ``b`` the same data in its own folder."""
    a, b = fake_variants(tmp_path / "a"), fake_variants(tmp_path / "b")
    for s in (0, 1):
        finish(a, "SHQ_0", s)
        record(a, "SHQ_0", s)
    return a, b


def test_runs_of_the_same_data_and_parameters_are_adopted_with_their_origin(tmp_path):
    a, b = two_experiments(tmp_path)
    assert load_variant(a / "variants/SHQ_0.json") != load_variant(b / "variants/SHQ_0.json")  # other paths
    runs = study.study_runs(b, ["SHQ_0", "SHQ_100"], [0, 1])
    got = study.adopt_runs(b, a, runs, smoke_params())
    assert got["adopted"] == ["SHQ_0 seed 0", "SHQ_0 seed 1"]
    assert got["not_adopted"] == {"SHQ_100 seed 0": "not finished there", "SHQ_100 seed 1": "not finished there"}
    after = {(r["variant"], r["seed"]): r for r in study.study_runs(b, ["SHQ_0", "SHQ_100"], [0, 1])}
    assert after["SHQ_0", 0]["done"] and not after["SHQ_0", 0]["stale"] and not after["SHQ_100", 0]["done"]
    m = read_json(run_dir(b / "unet", "SHQ_0", 0) / "metrics.json")
    assert m["adopted_from"]["run"] == str(run_dir(a / "unet", "SHQ_0", 0))
    assert read_json(b / "runs" / f"run_{NB}-SHQ_0-seed0.json")["adopted_from"].startswith(str(a / "runs"))
    assert not list((b / "unet" / "SHQ_0").glob(".*"))  # no copy left half-way
    # the source is untouched, and adopting again changes nothing
    assert "adopted_from" not in read_json(run_dir(a / "unet", "SHQ_0", 0) / "metrics.json")
    assert study.adopt_runs(b, a, study.study_runs(b, ["SHQ_0"], [0, 1]), smoke_params())["adopted"] == []


def test_other_parameters_other_data_or_no_record_are_not_adopted(tmp_path):
    a, b = two_experiments(tmp_path)
    record(a, "SHQ_0", 1, learning_rate=0.1)  # seed 1 ran with another learning rate
    (a / "runs" / f"run_{NB}-SHQ_0-seed0.json").unlink()  # seed 0's parameters are unknown
    got = study.adopt_runs(b, a, study.study_runs(b, ["SHQ_0"], [0, 1]), smoke_params())
    assert got["adopted"] == []
    assert "no run record" in got["not_adopted"]["SHQ_0 seed 0"]
    assert got["not_adopted"]["SHQ_0 seed 1"].startswith("other parameters: learning_rate 0.1 there")
    # where and with how many threads it ran does not count
    record(a, "SHQ_0", 1, tf_threads=7, outputs_dir="/elsewhere")
    record(a, "SHQ_0", 0)
    write_png(b / "i.png", np.full((4, 4), 2, np.uint8))  # b's data now differ
    got = study.adopt_runs(b, a, study.study_runs(b, ["SHQ_0"], [0, 1]), smoke_params())
    assert got["adopted"] == [] and set(got["not_adopted"].values()) == {"trained on other data"}
    with pytest.raises(ParamError, match="names the experiment itself"):
        study.adopt_runs(a, a, [], smoke_params())
    with pytest.raises(ParamError, match="holds no U-Net runs"):
        study.adopt_runs(a, tmp_path / "nothing", [], smoke_params())


def test_runs_recorded_with_the_old_fingerprint_are_neither_stale_nor_refused(tmp_path):
    a, b = two_experiments(tmp_path)
    f = run_dir(a / "unet", "SHQ_0", 0) / "metrics.json"
    atomic_write_json(f, {**read_json(f), "inputs_fingerprint": legacy_inputs_fingerprint(
        load_variant(a / "variants/SHQ_0.json"))})
    assert [r["stale"] for r in study.study_runs(a, ["SHQ_0"], [0])] == [False]
    assert study.adopt_runs(b, a, study.study_runs(b, ["SHQ_0"], [0]), smoke_params())["adopted"] == ["SHQ_0 seed 0"]
    # a fingerprint of neither kind is stale
    atomic_write_json(f, {**read_json(f), "inputs_fingerprint": "0" * 64})
    assert [r["stale"] for r in study.study_runs(a, ["SHQ_0"], [0])] == [True]


def test_study_adopt_from_on_the_command_line(tmp_path, capsys):
    """Everything adoptable: nothing is trained (no Dask started) and the table holds the adopted runs."""
    a, b = two_experiments(tmp_path)
    args = ["study", "--preset", "smoke", "--experiment", "b", "--outputs-dir", str(tmp_path), "--variants",
            "SHQ_0", "--seeds", "0,1", "--adopt-from", "a"]
    assert batch.main(args) == 0
    out = capsys.readouterr().out
    assert "adopted 2 finished run(s) from a (same data, same parameters): SHQ_0 seed 0, SHQ_0 seed 1" in out
    assert "0 to run" in out
    assert (b / "results" / "metrics.csv").read_text().count("SHQ_0") == 2
    assert json.loads((b / "runs" / f"run_{NB}-SHQ_0-seed1.json").read_text())["git_commit"] == "abc"
