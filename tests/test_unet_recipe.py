"""The quick U-Net recipe's parts: plain U-Net, warm-up + cosine schedule, input z-scoring, class weights."""
from __future__ import annotations

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from dualsynth.unet import train as unet_train
from dualsynth.unet.infer import load_unet, predict, predict_proba
from dualsynth.unet.model import UNetConfig, build_unet, input_affine
from dualsynth.unet.plain import plain_unet
from dualsynth.unet.pretext import corrupt, pretrain_plain
from dualsynth.unet.recipe import WarmupCosine, class_weights, input_stats
from dualsynth.unet.train import train_unet

from conftest import squares


pytestmark = pytest.mark.usefixtures("no_grappler")


def test_warmup_cosine_curve():
    s = WarmupCosine(1e-3, total_steps=100, warmup_steps=10)
    lr = np.array([float(s(i)) for i in range(101)])
    assert lr[0] == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr[9] == pytest.approx(1e-3)
    assert lr[10] == pytest.approx(1e-3)
    assert np.all(np.diff(lr[:10]) > 0) and np.all(np.diff(lr[10:]) <= 1e-12)
    assert lr[55] == pytest.approx(5e-4, rel=1e-3)  # half-way down the cosine
    assert lr[100] == pytest.approx(0.0, abs=1e-9)
    assert WarmupCosine.from_config(s.get_config()).get_config() == s.get_config()
    with pytest.raises(ValueError):
        WarmupCosine(1e-3, total_steps=0)


def test_input_stats_and_affine():
    img = np.zeros((2, 4, 4, 1), np.uint8)
    img[0] = 100
    img[1] = 200
    mean, std = input_stats(img)
    assert mean == [150.0] * 3 and std == [50.0] * 3
    flat = np.full((1, 4, 4, 3), 7, np.uint8)  # a constant channel: std 1, so the z-score stays finite
    assert input_stats(flat)[1] == [1.0, 1.0, 1.0]
    cfg = UNetConfig(num_classes=2, in_channels=1, encoder="plain", normalise="patches", input_stats=[mean, std])
    m, b = input_affine(cfg)
    np.testing.assert_allclose(np.array([200.0] * 3) @ m + b, [1.0] * 3)
    with pytest.raises(ValueError, match="input_stats"):
        input_affine(UNetConfig(num_classes=2, encoder="plain", normalise="patches"))
    with pytest.raises(ValueError, match="input_stats"):
        UNetConfig(num_classes=2, encoder="plain", input_stats=[[0, 0, 0], [1, 0, 1]])


def test_class_weights_favour_rare_classes_and_skip_absent_ones():
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, :1, :] = 1  # 10 %
    masks[0, 1:2, :1] = 2  # 1 %
    w = class_weights(masks, 4)
    assert w[3] == 0  # absent: nothing to learn
    assert w[2] > w[1] > w[0] > 0
    assert w[:3].mean() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(np.sqrt(0.89 / 0.01), rel=1e-5)


def test_config_rejects_unknown_recipe_values():
    for bad in (dict(lr_schedule="step"), dict(class_weighting="inverse"), dict(normalise="imagenet"),
                dict(warmup_fraction=1.0), dict(encoder="plainer"), dict(base_filters=0)):
        with pytest.raises(ValueError):
            UNetConfig(num_classes=2, **bad)
    with pytest.raises(ValueError, match="ImageNet"):
        build_unet(UNetConfig(num_classes=2, encoder="plain", encoder_weights="imagenet"))


def test_plain_unet_shapes_and_layer_names():
    model = plain_unet(3, base_filters=4, depth=3)
    assert model.output_shape == (None, None, None, 3)
    out = model(np.zeros((2, 32, 48, 3), np.float32))
    assert out.shape == (2, 32, 48, 3)
    np.testing.assert_allclose(out.numpy().sum(-1), 1.0, atol=1e-5)
    names = {layer.name for layer in model.layers}
    assert {"enc0_conv1", "enc2_conv2", "bottom_conv1", "dec0_conv2", "final_conv"} <= names
    with pytest.raises(ValueError):
        plain_unet(0)


@pytest.mark.slow
def test_plain_unet_with_the_recipe_learns_and_reloads(tmp_path):
    train, val = squares(16, seed=1), squares(4, seed=2)
    cfg = UNetConfig(num_classes=2, in_channels=1, encoder="plain", base_filters=8, epochs=6, steps_per_epoch=5,
                     batch_size=4, lr_schedule="cosine", normalise="patches", class_weighting="sqrt_inverse",
                     learning_rate=3e-3, bn_momentum=0.9)
    res = train_unet(cfg, train, val, tmp_path / "run", progress=False)
    assert res.config.input_stats is not None and res.config.input_stats[0][0] == pytest.approx(
        float(train[0].mean()), rel=1e-6)
    assert max(res.history["val_iou_score"]) > 0.7
    assert res.history["lr"][-1] < res.history["lr"][1] <= 3e-3 + 1e-9  # the cosine has come down
    # the folder's config carries the statistics: the reloaded model predicts the same
    x = val[0]
    np.testing.assert_allclose(predict_proba(load_unet(tmp_path / "run"), x), predict_proba(res.model, x),
                               atol=1e-6)
    assert (predict(res.model, x) == val[1]).mean() > 0.9


@pytest.mark.slow
def test_cosine_schedule_resumes_on_its_curve(tmp_path, monkeypatch):
    train, val = squares(8, seed=3), squares(2, seed=4)
    cfg = UNetConfig(num_classes=2, in_channels=1, encoder="plain", base_filters=4, epochs=4, steps_per_epoch=3,
                     batch_size=2, lr_schedule="cosine", warmup_fraction=0.25, early_stopping_patience=100)
    whole = train_unet(cfg, train, val, tmp_path / "whole", progress=False)
    original = unet_train._Recorder.on_epoch_end

    def killed_after_second(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(unet_train._Recorder, "on_epoch_end", killed_after_second)
    with pytest.raises(KeyboardInterrupt):
        train_unet(cfg, train, val, tmp_path / "cut", progress=False)
    monkeypatch.setattr(unet_train._Recorder, "on_epoch_end", original)
    resumed = train_unet(cfg, train, val, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 2
    np.testing.assert_allclose(resumed.history["lr"], whole.history["lr"], rtol=1e-6)
    assert resumed.history["lr"][2] < resumed.history["lr"][1]
    import dataclasses

    with pytest.raises(ValueError, match="cosine schedule"):  # more epochs would be another curve
        train_unet(dataclasses.replace(cfg, epochs=6), train, val, tmp_path / "cut", progress=False)


def test_corrupt_makes_holes_and_keeps_range():
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).random((3, 32, 32, 1)).astype(np.float32)
    y, holes = corrupt(x, rng, holes=2, hole_frac=0.25, noise=0.0)
    assert holes.shape == (3, 32, 32, 1) and 0 < holes.mean() < 0.5
    inside = holes[..., 0] == 1
    for i in range(3):  # holes carry the image mean, the rest is untouched without noise
        np.testing.assert_allclose(y[i][inside[i]], x[i].mean(), rtol=1e-6)
        np.testing.assert_array_equal(y[i][~inside[i]], x[i][~inside[i]])


@pytest.mark.slow
def test_pretext_weights_load_into_the_segmentation_unet(tmp_path):
    images = squares(12, seed=5)[0]
    summary = pretrain_plain(images, tmp_path / "pre.h5", base_filters=4, updates=30, batch_size=4,
                             progress=False)
    assert summary["loss_last"] < summary["loss_first"]  # it learns to inpaint
    cfg = UNetConfig(num_classes=3, in_channels=1, encoder="plain", base_filters=4,
                     encoder_weights=str(tmp_path / "pre.h5"))
    model = build_unet(cfg, seed=1)
    fresh = build_unet(UNetConfig(num_classes=3, in_channels=1, encoder="plain", base_filters=4), seed=1)
    core, core0 = model.get_layer("unet"), fresh.get_layer("unet")
    # every layer but the classifier head comes from the file
    np.testing.assert_array_equal(core.get_layer("enc0_conv1").get_weights()[0],
                                  _h5_kernel(tmp_path / "pre.h5", "enc0_conv1"))
    assert not np.array_equal(core.get_layer("enc0_conv1").get_weights()[0],
                              core0.get_layer("enc0_conv1").get_weights()[0])
    np.testing.assert_array_equal(core.get_layer("final_conv").get_weights()[0],
                                  core0.get_layer("final_conv").get_weights()[0])


def _h5_kernel(path, layer: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        g = f[layer]
        names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
        return np.asarray(g[[n for n in names if n.endswith("kernel:0")][0]])


def test_pretext_images_never_include_test_patches(tmp_path):
    """The pretext task sees only patches outside the test set: no test id and no patch marked ``role: test``."""
    import json

    from PIL import Image

    from dualsynth.unet.pretext import pretext_images

    (tmp_path / "images").mkdir()
    patches = {}
    for i, role in enumerate(["train", "train", "test", "test", "train"]):
        pid = f"p{i}"
        Image.fromarray(np.full((32, 32), 10 * i + 1, np.uint8)).save(tmp_path / "images" / f"{pid}.png")
        patches[pid] = {"source": "main" if i < 4 else "other", "role": role, "image": f"images/{pid}.png"}
    patches["p1"]["role"] = "train"  # listed as a test patch below although its role says train
    manifest = {"format": 1, "patch_size": 32, "channels": 1, "seed": 0, "patches": patches, "tiers": {},
                "test": [{"id": "p1", "mask": "hq"}, {"id": "p2", "mask": "hq"}, {"id": "p3", "mask": "hq"}],
                "data": {"name": "t", "classes": [{"name": "a", "color": [0, 0, 0]},
                                                {"name": "b", "color": [255, 255, 255]}]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    got = pretext_images(tmp_path)
    assert sorted(int(v) for v in got[:, 0, 0, 0]) == [1, 41]  # p0 and p4 only
    for pid in ("p0", "p4"):
        patches[pid]["role"] = "test"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no patch image"):
        pretext_images(tmp_path)


def test_quick_preset_holds_the_recipe_chosen_on_validation():
    """The quick preset's 06 settings are the recipe with the best validation mean in the latest recipe search
    (``bench/unet_recipe.py``): a preset edited without a search, or a search whose winner was not adopted, fails."""
    import importlib.util

    import yaml

    from dualsynth import config

    root = config.project_root()
    spec = importlib.util.spec_from_file_location("unet_recipe_bench", root / "bench" / "unet_recipe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.validation_means([root / "bench" / "results" / "unet_recipe_2026-12-04.json"])
    assert len(rows) >= 2 and all(len(r["val"]) == 3 for r in rows)  # every recipe on the three datasets
    best = rows[0]
    assert best["mean"] > rows[1]["mean"]
    overrides, updates, batch = bench.RECIPES[best["recipe"]]
    quick = yaml.safe_load((root / "params/presets/quick/06_unet_training.yaml").read_text())
    recipe = {**bench.COMMON, **overrides}
    defaults = UNetConfig(num_classes=2)
    for key in ("encoder", "base_filters", "learning_rate", "lr_schedule", "warmup_fraction", "class_weighting",
                "normalise", "bn_momentum"):
        assert quick.get(key, getattr(defaults, key)) == recipe.get(key, getattr(defaults, key)), key
    assert quick["batch_size"] == batch and quick["epochs"] * quick["steps_per_epoch"] == updates
