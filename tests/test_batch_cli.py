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
