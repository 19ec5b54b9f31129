"""The paper's path at the paper's sizes on a CPU: 01 → 07 with the ``paper`` preset over two variants.

256 px patches, the paper's VQ-VAE (K = 10, D = 64, 128 hiddens, Sonnet's encoder ReLU, checkpoint on the training
error), the plain PixelCNN of the preset on un-augmented BMQ code maps, the paper's clean-up, an EfficientNetB3
U-Net in float32: only what costs time is overridden -- step and epoch counts, the pool size, the number of patches
(a smaller generated micrograph with proportionally smaller tiers, so 01 takes seconds instead of minutes), the
ImageNet weights (no download on the build machines) and the pre-test's judge: as in the paper, an existing model
(``pretest_model``: an EfficientNetB3 U-Net weight file made here, untrained) instead of a third B3 training.  So a change that breaks the paper path (a shape that
only 256 px reaches, a preset key a notebook lost, the B3 encoder, the grey mask channel, the training-error
checkpoint rule, the pooled generator split) fails here, not on the first GPU.  About 3 minutes on 2 CPU cores, in a
subprocess started when the session starts (``start_early``), beside the other tests.
"""
from __future__ import annotations

import json

import pytest
import yaml

from dualsynth import batch

from conftest import ROOT, RunChainProcess

#: what is overridden: counts only (every other value comes from params/presets/paper/)
OVERRIDES = {
    "steps": 4, "eval_every": 2, "checkpoint_every": 2, "snapshot_steps": [0, 4],  # 02 and 03
    "num_preview": 1,  # 03
    "pool_size": 4, "sample_batch": 4,  # 04: 50 % of the 8 BMQ training patches
    "variants": "BMQ_0,BMQ_50",  # 05
    "epochs": 1, "budget": "fixed", "steps_per_epoch": 2, "encoder_weights": None,  # 06
}


#: the paper's pre-test judges with an existing model: a bare .h5 of an EfficientNetB3 U-Net with 4 classes, made
#: (untrained) in the chain's process before the chain
JUDGE = """
from dualsynth import segmentation
segmentation.build_unet(segmentation.UNetConfig(num_classes=4, in_channels=3, encoder="efficientnetb3"),
                        seed=0).save_weights({path!r})
"""


def _paper_chain_process(tmp) -> RunChainProcess:
    data = yaml.safe_load((ROOT / "params" / "data" / "ndfeb_default.yaml").read_text())
    # 5 × 4 patches of 256 px from the main image (the paper's: 10 × 8), tiers shrunk in proportion
    data["source"].update(width=1280, height=1024)
    data["tiers"] = {"small": [4, 2], "big": [8, 4], "test_main": 2, "test_extra": 2}
    data_yaml = tmp / "ndfeb_small.yaml"
    data_yaml.write_text(yaml.safe_dump(data))
    judge = tmp / "expert_b3.h5"
    return RunChainProcess("p", tmp, dict(preset="paper", experiment="p", data=str(data_yaml), stages="all",
                                          overrides={**OVERRIDES, "pretest_model": str(judge)},
                                          variants="BMQ_0,BMQ_50", workers=2),  # the two B3 runs side by side:
                           prelude=JUDGE.format(path=str(judge)))  # tracing their graphs is single-threaded


def start_early(jobs, tmp_path_factory, selected: set[str]) -> None:
    """Called by conftest when the session starts: the chain (~3 min) runs beside the other tests."""
    if "test_paper_chain_runs_at_paper_sizes" in selected:
        jobs.start_job("paper", _paper_chain_process)


@pytest.fixture(scope="module")
def paper_chain(chain_processes):
    job = chain_processes.start_job("paper", _paper_chain_process)  # started early unless selected otherwise
    timings = job.wait()
    return job.out / "p", timings


@pytest.mark.slow
def test_paper_chain_runs_at_paper_sizes(paper_chain):
    import numpy as np

    exp, timings = paper_chain
    assert [t["notebook"] for t in timings] == list(batch.NOTEBOOKS)
    m = json.loads((exp / "patches" / "manifest.json").read_text())
    assert m["patch_size"] == 256 and m["channels"] == 3

    # 02: the paper's VQ-VAE on the pooled BMQ patches, 6 held out, best checkpoint by the training error
    cfg = json.loads((exp / "vqvae" / "checkpoint" / "config.json").read_text())
    assert cfg == {"in_channels": 3 + 1, "num_embeddings": 10, "embedding_dim": 64, "num_hiddens": 128,
                   "num_residual_layers": 2, "num_residual_hiddens": 32, "commitment_cost": 0.25, "use_ema": True,
                   "decay": 0.99, "encoder_final_relu": True, "downsample": 4}
    s2 = json.loads((exp / "vqvae" / "summary.json").read_text())
    split = s2["generator_split"]
    assert (len(split["train"]), len(split["val"]), split["val_patches"]) == (6, 6, 6)  # 8 + 4 BMQ patches pooled
    assert s2["checkpoint_on"] == "train" and s2["best_criterion"] == "train_recon_mse"
    assert s2["code_map_shape"] == [64, 64] and s2["mask_encoding"] == "grey" and s2["final_step"] == 4
    rule = json.loads((exp / "vqvae" / "checkpoint" / "training.json").read_text())
    assert rule["checkpoint_on"] == "train" and rule["checkpoint_every"] == 2

    # 03: a plain PixelCNN on all 12 generator maps, not augmented, not conditioned
    s3 = json.loads((exp / "pixelcnn" / "summary.json").read_text())
    assert s3["prior"] == "pixelcnn" and s3["condition"] == "none" and s3["num_conditions"] == 0
    assert s3["train_maps"] == 12 and s3["augment_dihedral"] is False and s3["val_held_out"] is False
    codes = np.load(exp / "pixelcnn" / "codes.npz")
    assert codes["train"].shape == (12, 64, 64) and codes["val"].shape == (6, 64, 64)

    # 04: the paper's clean-up on the grey channel; the pre-test scored against raw and cleaned masks
    pool = json.loads((exp / "synthetic" / "pool.json").read_text())
    assert pool["size"] == 4 and pool["cleanup"] == "paper" and pool["mask_encoding"] == "grey"
    assert pool["conditioned"] is False
    q = json.loads((exp / "synthetic" / "quality.json").read_text())
    pre = q["pretest"]
    assert pre["encoder"] == "efficientnetb3" and pre["model"].endswith("expert_b3.h5") and pre["epochs"] == 0
    assert 0 <= pre["missing_class_iou_synthetic_raw"] <= 1 and len(pre["per_image_synthetic_raw"]) == 4
    for fig in ("sample_grid", "cleanup_steps", "pretest"):
        assert (exp / "synthetic" / "figures" / f"{fig}.png").is_file()

    # 06: EfficientNetB3 in float32 on the real 256 px test patches, both variants
    for variant in ("BMQ_0", "BMQ_50"):
        run = exp / "unet" / variant / "seed0"
        met = json.loads((run / "metrics.json").read_text())
        assert met["complete"] and met["num_test"] == 4
        ucfg = json.loads((run / "unet_config.json").read_text())
        assert ucfg["encoder"] == "efficientnetb3" and ucfg["mixed_precision"] is False
    v50 = json.loads((exp / "variants" / "BMQ_50.json").read_text())
    assert v50["num_real_train"] == 8 and v50["num_synthetic_train"] == 4

    # 07: the paper's figures, including the per-image ones (BMQ_150 / BMQ_300 not run: the fallbacks)
    for fig in ("fig15_accuracy", "fig16_miou", "fig17_missing_class_iou", "fig19_per_class",
                "fig14_missing_class_iou_example", "fig18_predictions"):  # Fig. 18: BMQ_0, the one of three run
        assert (exp / "results" / f"{fig}.png").is_file(), fig
    for fig in ("fig20_per_image_scatter", "per_image_miou_histogram"):  # BMQ_50, the only mixed variant run
        assert (exp / "results" / f"{fig}.png").is_file(), fig
    nb = json.loads((exp / "notebooks" / "07_results_plots.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert "Fig. 18: BMQ_0" in text
