"""The batch command line: ``--set`` overrides are parsed as YAML and refused when no selected stage declares them."""
import pytest

from dualsynth import batch
from dualsynth.config import ParamError


def test_parse_overrides_reads_yaml_values():
    got = batch._parse_overrides(["epochs=3", "mask_encoding=onehot", "encoder_weights=null", "lr=0.001"])
    assert got == {"epochs": 3, "mask_encoding": "onehot", "encoder_weights": None, "lr": 0.001}


@pytest.mark.parametrize("item", ["epochs", "=3", "x=[1,"])
def test_parse_overrides_refuses_malformed(item):
    with pytest.raises(ParamError, match="--set"):
        batch._parse_overrides([item])


def test_chain_refuses_an_override_no_selected_stage_declares(tmp_path):
    with pytest.raises(ParamError, match="epochz"):
        batch.run_chain("smoke", experiment="t", stages="01", outputs_dir=str(tmp_path), overrides={"epochz": 3})
    assert not (tmp_path / "t").exists()  # nothing written for a refused command


def test_chain_refuses_an_override_of_an_unselected_stage(tmp_path):
    # `epochs` belongs to 06_unet_training, not to 01_patching
    with pytest.raises(ParamError, match="epochs"):
        batch.run_chain("smoke", experiment="t", stages="01", outputs_dir=str(tmp_path), overrides={"epochs": 3})


def test_cli_set_error_exits_2(capsys, tmp_path):
    rc = batch.main(["chain", "--preset", "smoke", "--stages", "01", "--outputs-dir", str(tmp_path), "--set", "nokey"])
    assert rc == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_record_timings_keeps_stages_not_rerun(tmp_path):
    path = tmp_path / "chain_timings.json"
    batch.record_timings(path, "quick", [{"notebook": "01_patching", "seconds": 11.0},
                                         {"notebook": "07_results_plots", "seconds": 9.0}])
    rec = batch.record_timings(path, "quick", [{"notebook": "07_results_plots", "seconds": 23.0}])
    assert [(t["notebook"], t["seconds"]) for t in rec["stages"]] == [("01_patching", 11.0), ("07_results_plots", 23.0)]
    assert rec["total_seconds"] == 34.0


def test_fork_experiment_shares_data_not_runs(tmp_path, capsys):
    """study --from-experiment: a new experiment on the same patches/pool/variants, for other U-Net settings."""
    from dualsynth import batch
    from dualsynth.config import ParamError

    src = tmp_path / "a"
    for f in ("patches/manifest.json", "variants/SHQ_0.json", "synthetic/pool.json", "vqvae/summary.json",
              "vqvae/checkpoint/big.bin", "unet/SHQ_0/seed0/metrics.json"):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text(f)
    dst = batch.fork_experiment(tmp_path, "a", "b")
    assert (dst / "variants" / "SHQ_0.json").read_text() == "variants/SHQ_0.json"
    assert (dst / "vqvae" / "summary.json").is_file() and not (dst / "vqvae" / "checkpoint").exists()
    assert not (dst / "unet").exists() and not (tmp_path / "b.fork.tmp").exists()
    assert batch.fork_experiment(tmp_path, "a", "b") == dst  # again from the same source: nothing to do
    with pytest.raises(ParamError, match=r"b was forked from .*a, not .*c"):
        (tmp_path / "c" / "variants").mkdir(parents=True)
        (tmp_path / "c" / "patches").mkdir()
        (tmp_path / "c" / "patches" / "manifest.json").write_text("{}")
        batch.fork_experiment(tmp_path, "c", "b")
    with pytest.raises(ParamError, match=r"d already holds x: fork into a new experiment name"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "x").write_text("")
        batch.fork_experiment(tmp_path, "a", "d")
    with pytest.raises(ParamError, match=r"e has no patches/manifest.json, variants: run 01–05"):
        (tmp_path / "e").mkdir()
        batch.fork_experiment(tmp_path, "e", "f")
    # the CLI: a source without data is an error (exit 2); from a source with data it forks, then the study stops
    # at the 46 variant files the fake source lacks
    assert batch.main(["study", "--preset", "smoke", "--experiment", "g", "--from-experiment", "e",
                       "--outputs-dir", str(tmp_path)]) == 2
    assert "e has no patches/manifest.json" in capsys.readouterr().err
    assert batch.main(["study", "--preset", "smoke", "--experiment", "h", "--from-experiment", "a",
                       "--outputs-dir", str(tmp_path)]) == 2
    assert (tmp_path / "h" / "forked_from.json").is_file() and "have no file in" in capsys.readouterr().err


# --------------------------------------------------------------------------- issue 15: bad command lines named
@pytest.fixture
def no_notebooks(monkeypatch):
    """No notebook may run in these tests: a command that got past its checks fails loudly."""
    def refuse(*a, **k):
        raise AssertionError("a notebook was started")

    monkeypatch.setattr(batch, "run_notebook", refuse)
    monkeypatch.setattr(batch, "run_study", refuse)


@pytest.mark.parametrize("args,first", [
    (["--seeds", "a,b"], "error: --seeds 'a,b': 'a' is not a number ≥ 0 or a range like 2-4; write e.g. 0,1,2 or 0-4"),
    (["--seeds", "1-"], "error: --seeds '1-': '1-' is not a number ≥ 0 or a range like 2-4"),
    (["--seeds", "0..2"], "error: --seeds '0..2': '0..2' is not a number ≥ 0"),
    (["--seeds", "-1"], "error: --seeds '-1': '-1' is not a number ≥ 0"),
    (["--seeds", "4-2"], "error: --seeds '4-2': the range '4-2' runs backwards"),
    (["--stages", "1-x"], "error: --stages '1-x': '1-x' is not a number ≥ 0 or a range like 2-4; write e.g. 01-04"),
    (["--experiment", "x" * 300], "error: experiment name of 300 characters (xxxxxxxxxxxxxxxxxxxx…): use at most 100"),
    (["--stages", "06", "--workers", "0"], "error: --workers 0: the number of Dask worker processes, an integer ≥ 1"),
    (["--stages", "05-06", "--variants", "BMQ_5O"], "error: unknown variant 'BMQ_5O'"),
    (["--stages", "06", "--variants", ","], "error: --variants ',' selects no variant"),
])
def test_chain_bad_options_one_line_error(capsys, tmp_path, no_notebooks, args, first):
    """Issue 15 items 5, 9, 11: bad --seeds / --stages / --workers / --variants and a 300-character experiment name
    are a one-line error (exit 2, no traceback) before any stage runs or anything is written."""
    rc = batch.main(["chain", "--preset", "smoke", "--outputs-dir", str(tmp_path), "--stages", "01"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(first) and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,first", [
    (["--workers", "0"], "error: --workers 0: the number of Dask worker processes, an integer ≥ 1"),
    (["--workers", "-1"], "error: --workers -1:"),
    (["--threads", "-2"], "error: --threads -2: TensorFlow threads per run, an integer ≥ 1"),
    (["--variants", ","], "error: --variants ',' selects no variant"),
    (["--variants", "BMQ_5O"], "error: unknown variant 'BMQ_5O'"),
])
def test_study_bad_workers_and_empty_variants(capsys, tmp_path, args, first):
    """Issue 15 items 3 and 5: `study --workers 0` (or -1) no longer waits forever, `--variants ","` no longer runs 0
    runs and rewrites metrics.csv empty: both are an error before any cluster starts."""
    exp = tmp_path / "e"
    (exp / "results").mkdir(parents=True)
    (exp / "results" / "metrics.csv").write_text("variant,seed\nSHQ_0,0\n")
    rc = batch.main(["study", "--preset", "smoke", "--experiment", "e", "--outputs-dir", str(tmp_path)] + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(first), err
    assert (exp / "results" / "metrics.csv").read_text() == "variant,seed\nSHQ_0,0\n"
    with pytest.raises(ParamError, match="workers"):
        batch.run_study("smoke", "e", "SHQ_0", workers=0, outputs_dir=str(tmp_path))


def test_chain_checks_later_stages_before_the_first(tmp_path, no_notebooks, capsys):
    """Issue 15 item 11: a variant typo for 05 (--set variants=…) or 06 (--variants) is refused before 01–05 run;
    patch_size=2048 on the embedded default is a warning printed before 01 starts (it would generate for minutes)."""
    from dualsynth.variants import VariantError

    with pytest.raises(VariantError, match="BMQ_5O"):
        batch.run_chain("smoke", experiment="t", stages="05-06", outputs_dir=str(tmp_path), variants="BMQ_5O")
    with pytest.raises(VariantError, match="SHQ_6"):
        batch.run_chain("smoke", experiment="t", stages="05", outputs_dir=str(tmp_path),
                        overrides={"variants": "SHQ_0,SHQ_6"})
    assert not (tmp_path / "t").exists()
    with pytest.raises(AssertionError, match="a notebook was started"):
        batch.run_chain("smoke", experiment="t", stages="01", outputs_dir=str(tmp_path), overrides={"patch_size": 2048})
    assert "warning: patch_size=2048 makes the generated image 22016×17664 px" in capsys.readouterr().err
