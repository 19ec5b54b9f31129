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
