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


def adopt(b, a, names, seeds, **params):
    return study.adopt_runs(b, a, study.study_runs(b, names, seeds), {**smoke_params(), **params},
                            batch.notebook_parameters(NB))


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
    got = adopt(b, a, ["SHQ_0", "SHQ_100"], [0, 1])
    assert got["adopted"] == ["SHQ_0 seed 0", "SHQ_0 seed 1"] and got["commits"] == ["abc"]
    assert got["not_adopted"] == {"SHQ_100 seed 0": "no such run there", "SHQ_100 seed 1": "no such run there"}
    after = {(r["variant"], r["seed"]): r for r in study.study_runs(b, ["SHQ_0", "SHQ_100"], [0, 1])}
    assert after["SHQ_0", 0]["done"] and not after["SHQ_0", 0]["stale"] and not after["SHQ_100", 0]["done"]
    m = read_json(run_dir(b / "unet", "SHQ_0", 0) / "metrics.json")
    assert m["adopted_from"] == str(run_dir(a / "unet", "SHQ_0", 0))
    assert read_json(b / "runs" / f"run_{NB}-SHQ_0-seed0.json")["adopted_from"].startswith(str(a / "runs"))
    assert not list((b / "unet" / "SHQ_0").glob(".*"))  # no copy left half-way
    # the source is untouched, and adopting again changes nothing
    assert "adopted_from" not in read_json(run_dir(a / "unet", "SHQ_0", 0) / "metrics.json")
    assert adopt(b, a, ["SHQ_0"], [0, 1])["adopted"] == [] and not adopt(b, a, ["SHQ_0"], [0, 1])["not_adopted"]
    # adopted again from b, a run still names the folder where it was trained
    c = fake_variants(tmp_path / "c")
    assert adopt(c, b, ["SHQ_0"], [0])["adopted"] == ["SHQ_0 seed 0"]
    assert read_json(run_dir(c / "unet", "SHQ_0", 0) / "metrics.json")["adopted_from"] == str(
        run_dir(a / "unet", "SHQ_0", 0))


def test_other_parameters_software_data_or_no_record_are_not_adopted(tmp_path):
    a, b = two_experiments(tmp_path)
    record(a, "SHQ_0", 1, learning_rate=0.1)  # seed 1 ran with another learning rate
    (a / "runs" / f"run_{NB}-SHQ_0-seed0.json").unlink()  # seed 0's parameters are unknown
    got = adopt(b, a, ["SHQ_0"], [0, 1])
    assert got["adopted"] == []
    assert "run record is missing or unreadable" in got["not_adopted"]["SHQ_0 seed 0"]
    assert got["not_adopted"]["SHQ_0 seed 1"].startswith("other parameters: learning_rate 0.1 there")
    # a parameter an old record does not list had the notebook's default, not this study's value
    record(a, "SHQ_0", 0)
    rec = a / "runs" / f"run_{NB}-SHQ_0-seed0.json"
    atomic_write_json(rec, {**read_json(rec), "params": {k: v for k, v in read_json(rec)["params"].items()
                                                         if k != "warmup_fraction"}})
    assert "warmup_fraction" in adopt(b, a, ["SHQ_0"], [0], warmup_fraction=0.3)["not_adopted"]["SHQ_0 seed 0"]
    # other package versions: not the same software
    atomic_write_json(rec, {**read_json(rec), "versions": {"tensorflow": "0.1"}})
    assert "other software: " in adopt(b, a, ["SHQ_0"], [0])["not_adopted"]["SHQ_0 seed 0"]
    # where, with how many threads and with which figures it ran does not count
    record(a, "SHQ_0", 0, tf_threads=7, outputs_dir="/elsewhere", save_figures=False)
    assert adopt(b, a, ["SHQ_0"], [0])["adopted"] == ["SHQ_0 seed 0"]
    write_png(b / "i.png", np.full((4, 4), 2, np.uint8))  # b's data now differ
    got = adopt(b, a, ["SHQ_0"], [1])
    assert got["adopted"] == [] and got["not_adopted"] == {"SHQ_0 seed 1": "trained on other data"}
    with pytest.raises(ParamError, match="names the experiment itself"):
        study.adopt_runs(a, a, [], smoke_params())
    with pytest.raises(ParamError, match="holds no U-Net runs"):
        study.adopt_runs(a, tmp_path / "nothing", [], smoke_params())


def test_a_failed_copy_leaves_nothing_and_an_interrupted_run_is_left_to_resume(tmp_path, monkeypatch):
    a, b = two_experiments(tmp_path)
    real_copytree = study.shutil.copytree

    def copy_then_fail(src, dst, **kw):
        real_copytree(src, dst, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(study.shutil, "copytree", copy_then_fail)
    got = adopt(b, a, ["SHQ_0"], [0])
    assert got["adopted"] == [] and "the copy failed (OSError: disk full)" in got["not_adopted"]["SHQ_0 seed 0"]
    assert not (b / "unet" / "SHQ_0").exists() or not list((b / "unet" / "SHQ_0").iterdir())
    assert not (b / "runs").exists()  # no record of a run that is not there
    monkeypatch.undo()
    run_dir(b / "unet", "SHQ_0", 1).mkdir(parents=True)  # an interrupted run here: it resumes, not replaced
    got = adopt(b, a, ["SHQ_0"], [0, 1])
    assert got["adopted"] == ["SHQ_0 seed 0"] and "interrupted" in got["not_adopted"]["SHQ_0 seed 1"]


def test_a_matched_control_run_is_adopted_under_its_own_name(tmp_path):
    a, b = two_experiments(tmp_path)
    finish(a, "SHQ_0@320", 0)
    record(a, "SHQ_0@320", 0)
    assert adopt(b, a, ["SHQ_0@320"], [0])["adopted"] == ["SHQ_0@320 seed 0"]
    assert [r["done"] and not r["stale"] for r in study.study_runs(b, ["SHQ_0@320"], [0])] == [True]


def test_runs_recorded_with_the_old_fingerprint_are_neither_stale_nor_refused(tmp_path):
    a, b = two_experiments(tmp_path)
    f = run_dir(a / "unet", "SHQ_0", 0) / "metrics.json"
    atomic_write_json(f, {**read_json(f), "inputs_fingerprint": legacy_inputs_fingerprint(
        load_variant(a / "variants/SHQ_0.json"))})
    assert [r["stale"] for r in study.study_runs(a, ["SHQ_0"], [0])] == [False]
    assert adopt(b, a, ["SHQ_0"], [0])["adopted"] == ["SHQ_0 seed 0"]
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
    assert "note: the adopted runs were made by commit abc" in out
    import pandas as pd
    table = pd.read_csv(b / "results" / "metrics.csv")
    assert sorted(table["seed"]) == [0, 1] and set(table["variant"]) == {"SHQ_0"}
    assert sorted(table["adopted_from"]) == [str(run_dir(a / "unet", "SHQ_0", s)) for s in (0, 1)]
    assert json.loads((b / "runs" / f"run_{NB}-SHQ_0-seed1.json").read_text())["git_commit"] == "abc"


def test_chain_refuses_adopt_from_before_anything_runs(tmp_path, capsys):
    a, b = two_experiments(tmp_path)
    base = ["chain", "--preset", "smoke", "--experiment", "b", "--outputs-dir", str(tmp_path)]
    assert batch.main(base + ["--stages", "05-07", "--adopt-from", "nosuch"]) == 2
    assert "holds no U-Net runs" in capsys.readouterr().err
    assert batch.main(base + ["--stages", "07", "--adopt-from", "a"]) == 2
    assert "which --stages does not select" in capsys.readouterr().err
    assert not (b / "runs").exists()  # refused before 05 ran


def _executed(text, start="2026-12-01T08:00:00", failed=False):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    outputs = [new_output("stream", name="stdout", text=text + "\n")]
    if failed:
        outputs.append(new_output("error", ename="RuntimeError", evalue="boom", traceback=["boom"]))
    nb = new_notebook(cells=[new_code_cell("print(1)", execution_count=1, outputs=outputs)])
    nb.metadata["papermill"] = {"start_time": start, "duration": 90.0, "exception": True if failed else None}
    return nb


def test_the_adopted_runs_executed_notebook_comes_along_and_its_report_page_says_so(tmp_path):
    import nbformat

    from dualsynth.report.html import PAGES_DIR, REPORT_HTML, write_html_report

    a, b = two_experiments(tmp_path)
    finish(a, "SHQ_0", 2)
    record(a, "SHQ_0", 2)
    there = study.executed_study_notebook(a, "SHQ_0", 0)
    there.parent.mkdir(parents=True)
    nbformat.write(_executed("trained in a"), there)
    (a / "notebooks" / f"{NB}-SHQ_0-seed1.ipynb").write_text("{ not json")  # neither of these is copied
    (a / "notebooks" / f"{NB}-SHQ_0-seed2.ipynb").write_text('{"metadata": []}')  # JSON, not a notebook
    # here: a failed attempt at seed 0 started after the source's run, and a stale notebook of an unfinished one
    (b / "notebooks").mkdir()
    nbformat.write(_executed("failed here", start="2026-12-02T09:00:00", failed=True),
                   b / "notebooks" / f"{NB}-SHQ_0-seed0-failed.ipynb")
    here = study.executed_study_notebook(b, "SHQ_0", 0)
    nbformat.write(_executed("stale attempt here", start="2026-12-02T09:30:00"), here)
    got = adopt(b, a, ["SHQ_0"], [0, 1, 2])
    assert got["adopted"] == ["SHQ_0 seed 0", "SHQ_0 seed 1", "SHQ_0 seed 2"]  # the runs whatever their notebooks
    copied = nbformat.read(here, as_version=4)
    assert copied.metadata["dualsynth"]["adopted_from"] == str(there) and copied.metadata["dualsynth"]["adopted_at"]
    assert copied.cells[0].outputs[0].text == "trained in a\n"  # the stale notebook replaced
    for seed in (1, 2):
        assert not study.executed_study_notebook(b, "SHQ_0", seed).exists()
    assert not [p.name for p in (b / "notebooks").iterdir() if p.name.startswith(".")]  # no temporary file left
    assert "dualsynth" not in nbformat.read(there, as_version=4).metadata  # the source untouched
    write_html_report(b)
    page = (b / PAGES_DIR / f"{here.stem}.html").read_text()
    assert "<strong>adopted</strong>" in page and str(there) in page and "trained in a" in page
    assert "failed here" not in page  # the adoption supersedes the failed attempt made here before
    index = (b / REPORT_HTML).read_text()
    assert "failed</strong>" not in index  # no run counted as failed in the index's heading
    # adopted again into a third experiment: the origin is still the folder where the run was trained
    c = fake_variants(tmp_path / "c")
    adopt(c, b, ["SHQ_0"], [0])
    again = nbformat.read(study.executed_study_notebook(c, "SHQ_0", 0), as_version=4)
    assert again.metadata["dualsynth"]["adopted_from"] == str(there)


def test_a_notebook_that_was_not_adopted_has_no_adopted_heading(tmp_path):
    import nbformat

    from dualsynth.report.html import PAGES_DIR, write_html_report

    exp = fake_variants(tmp_path / "adopted-named")  # the word in the path must not pass the check
    path = study.executed_study_notebook(exp, "SHQ_0", 0)
    path.parent.mkdir(parents=True)
    nbformat.write(_executed("trained here"), path)
    write_html_report(exp)
    page = (exp / PAGES_DIR / f"{path.stem}.html").read_text()
    assert "trained here" in page and "<strong>adopted</strong>" not in page
