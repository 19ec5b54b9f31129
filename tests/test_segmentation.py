"""Tests of dualsynth.segmentation (small encoders, 32x32 / 64x64 inputs, CPU).

Grappler's graph optimisation costs ~15-40 s per traced U-Net training graph
on this CPU while the tiny steps gain nothing from it, so this module switches
it off for its own duration (restored afterwards).
"""
from __future__ import annotations

import csv
import json

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from dualsynth import segmentation as seg
from dualsynth.metrics import evaluate
from dualsynth.segmentation import (
    HISTORY_COLUMNS,
    UNetConfig,
    build_augmentation,
    build_unet,
    evaluate_model,
    load_unet,
    load_weights_h5,
    make_dataset,
    predict,
    predict_proba,
    train_unet,
)

from conftest import squares  # noqa: E402

ENC = "efficientnetb0"  # the smallest EfficientNet; the paper's b3 is too slow for tests


pytestmark = pytest.mark.usefixtures("no_grappler")


@pytest.fixture(scope="module")
def models() -> dict[int, tf.keras.Model]:
    """Randomly initialised 4-class U-Nets for grey and RGB input (built once)."""
    return {c: build_unet(UNetConfig(num_classes=4, in_channels=c, encoder=ENC), seed=c) for c in (1, 3)}


@pytest.fixture(scope="module")
def spare() -> tf.keras.Model:
    """Another RGB 4-class U-Net (other seed) to load weights into."""
    return build_unet(UNetConfig(num_classes=4, in_channels=3, encoder=ENC), seed=99)


# --------------------------------------------------------------------------- config
def test_config_validation_and_round_trip():
    cfg = UNetConfig(num_classes=4)
    assert (cfg.encoder, cfg.epochs, cfg.batch_size, cfg.val_batch_size) == ("efficientnetb3", 200, 2, 1)
    assert (cfg.learning_rate, cfg.early_stopping_patience, cfg.reduce_lr_patience) == (1e-3, 15, 5)
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(num_classes=1), dict(num_classes=4, in_channels=2), dict(num_classes=4, encoder="nope"),
                dict(num_classes=4, learning_rate=0), dict(num_classes=4, reduce_lr_factor=1.0),
                dict(num_classes=4, focal_weight=float("nan")), dict(num_classes=4, seed=-1)):
        with pytest.raises(ValueError):
            UNetConfig(**bad)
    with pytest.raises(ValueError, match="imagenet"):
        UNetConfig(num_classes=4, encoder_weights="pretrained")
    for none in (None, "none", "null", "None"):
        assert seg._resolve_encoder_weights(none) == ("none", None)
    assert seg._resolve_encoder_weights("ImageNet") == ("imagenet", None)


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("channels", [1, 3])
def test_model_output_is_softmax(models, channels):
    model = models[channels]
    assert model.input_shape == (None, None, None, channels)
    assert model.output_shape == (None, None, None, 4)
    x = np.random.default_rng(1).integers(0, 256, (2, 64, 64, channels), dtype=np.uint8)
    p = predict_proba(model, x)
    assert p.shape == (2, 64, 64, 4) and p.dtype == np.float32
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    labels = predict(model, x, batch_size=1)
    assert labels.shape == (2, 64, 64) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, p.argmax(-1))
    # sizes that are no multiple of 32 are padded and cropped back
    odd = predict(model, x[:, :40, :50], batch_size=2)
    assert odd.shape == (2, 40, 50) and odd.max() < 4


def test_grey_model_equals_rgb_model_on_repeated_grey(models, tmp_path):
    """Grey input is repeated to RGB inside the model: same weights -> same output."""
    path = tmp_path / "grey.h5"
    models[1].save_weights(str(path))
    report = load_weights_h5(models[3], path, strict=True)
    assert report["complete"]
    grey = np.random.default_rng(2).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    p1 = predict_proba(models[1], grey)
    p3 = predict_proba(models[3], np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_allclose(p1, p3, atol=1e-5)
    # a grey image given to an RGB model is repeated, RGB to a grey model is refused
    np.testing.assert_allclose(predict_proba(models[3], grey), p3, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        predict(models[1], np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        predict(models[1], np.zeros((1, 32, 32), np.float32))


def test_encoder_weights_from_own_h5_reproduce_predictions(models, spare, tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    want = predict_proba(models[3], x)
    assert not np.allclose(predict_proba(spare, x), want)  # another seed differs: the test can fail
    # Keras 2 HDF5 (by name) through UNetConfig.encoder_weights
    path = tmp_path / "unet.h5"
    models[3].save_weights(str(path))
    loaded = build_unet(UNetConfig(num_classes=4, in_channels=3, encoder=ENC, encoder_weights=str(path)), seed=99)
    np.testing.assert_array_equal(predict_proba(loaded, x), want)
    # Keras 3 '.weights.h5' (by structure), from a dualsynth model and from a plain sm.Unet
    for name, source in (("unet.weights.h5", models[3]), ("plain.weights.h5", seg.unet_core(models[3])),
                         ("plain.h5", seg.unet_core(models[3]))):
        spare.set_weights([np.zeros_like(w) for w in spare.get_weights()])
        source.save_weights(str(tmp_path / name))
        assert load_weights_h5(spare, tmp_path / name, strict=True)["complete"]
        np.testing.assert_array_equal(predict_proba(spare, x), want)
    # a 3-class model takes everything but the head from a 4-class HDF5 file ...
    three = build_unet(UNetConfig(num_classes=3, encoder=ENC), seed=5)
    report = load_weights_h5(three, path)
    assert not report["complete"]
    assert report["shape_mismatch"] and all(m.startswith("final_conv/") for m in report["shape_mismatch"])
    assert report["loaded"] == report["total"] - 2  # final_conv kernel and bias
    with pytest.raises(ValueError, match="does not fit"):
        load_weights_h5(three, path, strict=True)
    # ... but not from a structure-matched Keras 3 file, and a failed load leaves the model as it was
    before = three.get_weights()
    with pytest.raises(ValueError, match="does not fit"):
        load_weights_h5(three, tmp_path / "unet.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(before, three.get_weights()))


def test_encoder_weights_from_classifier_file(tmp_path):
    """An ImageNet-style classifier weight file (efficientnet naming) fills the encoder."""
    import efficientnet.tfkeras as efn

    tf.keras.utils.set_random_seed(7)
    backbone = efn.EfficientNetB0(weights=None, include_top=False, input_shape=(None, None, 3))
    path = tmp_path / "efficientnet-b0_notop.h5"
    backbone.save_weights(str(path))
    model = build_unet(UNetConfig(num_classes=2, encoder=ENC, encoder_weights=str(path)), seed=1)
    core = seg.unet_core(model)
    for name in ("stem_conv", "block1a_dwconv", "block6a_expand_conv", "top_conv"):
        for got, want in zip(core.get_layer(name).get_weights(), backbone.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_encoder_weights_errors(models, tmp_path):
    missing = tmp_path / "nowhere" / "weights.h5"
    cfg = UNetConfig(num_classes=2, encoder=ENC, encoder_weights=str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_unet(cfg)
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("hello")
    with pytest.raises(ValueError, match="HDF5"):
        build_unet(UNetConfig(num_classes=2, encoder=ENC, encoder_weights=str(not_h5)))
    unrelated = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, name="some_dense")])
    path = tmp_path / "unrelated.h5"
    unrelated.save_weights(str(path))
    before = models[3].get_weights()
    with pytest.raises(ValueError, match="no weight"):
        load_weights_h5(models[3], path)
    assert all(np.array_equal(a, b) for a, b in zip(before, models[3].get_weights()))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_unet(UNetConfig(num_classes=2, encoder=ENC), input_size=48)


# --------------------------------------------------------------------------- data
def test_make_dataset_shapes_and_one_hot():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 3, (5, 32, 32), dtype=np.uint8)
    batches = list(make_dataset(x, y, 3, 2, shuffle=False))
    assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]
    xb, yb = batches[0]
    assert xb.dtype == tf.float32 and yb.dtype == tf.float32
    assert tuple(xb.shape) == (2, 32, 32, 3) and tuple(yb.shape) == (2, 32, 32, 3)
    np.testing.assert_array_equal(xb.numpy(), x[:2].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(yb.numpy().sum(-1), 1.0)
    np.testing.assert_array_equal(yb.numpy().argmax(-1), y[:2])
    # grey (N, H, W) gets a channel axis
    xg, _ = next(iter(make_dataset(x[..., 0], y, 3, 4, shuffle=False)))
    assert tuple(xg.shape) == (4, 32, 32, 1)
    # steps_per_epoch: full batches only; shuffled order depends on (seed, epoch) only
    x[:, 0, 0, 0] = np.arange(5)  # pixel (0, 0) names the image

    def ids(ds, n):
        return [tuple(np.round(b[0].numpy()[:, 0, 0, 0] * 255).astype(int)) for b in ds.take(n)]

    order = ids(make_dataset(x, y, 3, 2, shuffle=True, repeat=True, steps_per_epoch=2, seed=3), 8)
    assert all(len(o) == 2 for o in order)
    assert len(set(order[0::2])) > 1  # epochs are shuffled differently
    assert order == ids(make_dataset(x, y, 3, 2, shuffle=True, repeat=True, steps_per_epoch=2, seed=3), 8)
    assert order != ids(make_dataset(x, y, 3, 2, shuffle=True, repeat=True, steps_per_epoch=2, seed=4), 8)
    resumed = make_dataset(x, y, 3, 2, shuffle=True, repeat=True, steps_per_epoch=2, seed=3, first_epoch=1)
    assert ids(resumed, 6) == order[2:]
    assert ids(make_dataset(x, y, 3, 2, shuffle=False, repeat=True), 6) == [(0, 1), (2, 3), (4,)] * 2
    # epoch 0 of a shuffled pass is a permutation of all images
    first = np.concatenate([b[0].numpy() for b in make_dataset(x, y, 3, 2, shuffle=True, seed=3)])
    assert sorted(map(bytes, (first * 255).round().astype(np.uint8))) == sorted(map(bytes, x))
    with pytest.raises(ValueError, match="outside"):
        make_dataset(x, y + 2, 3, 2, shuffle=False)
    with pytest.raises(ValueError, match="shape"):
        make_dataset(x, y[:, :16], 3, 2, shuffle=False)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_is_photometric_and_keeps_masks(channels):
    x, y = squares(6, 64, seed=5, channels=channels)
    plain = list(make_dataset(x, y, 2, 3, shuffle=False))
    aug = list(make_dataset(x, y, 2, 3, shuffle=False, augment=True, seed=1))
    aug2 = list(make_dataset(x, y, 2, 3, shuffle=False, augment=True, seed=1))
    changed = 0
    for (xp, yp), (xa, ya), (xa2, _) in zip(plain, aug, aug2):
        np.testing.assert_array_equal(ya.numpy(), yp.numpy())  # masks untouched
        xa = xa.numpy()
        assert xa.dtype == np.float32 and xa.shape == xp.shape
        assert xa.min() >= 0.0 and xa.max() <= 1.0
        np.testing.assert_array_equal(np.round(xa * 255), xa * 255)  # still whole uint8 steps
        np.testing.assert_array_equal(xa, xa2.numpy())  # reproducible for a seed
        changed += int(np.sum(np.any(xa != xp.numpy(), axis=(1, 2, 3))))
    assert changed >= 4  # most of the 6 images are altered
    # the raw albumentations pipeline: uint8 in, uint8 out, same shape; grey stays grey
    pipe = build_augmentation(channels, seed=0)
    out = pipe(image=x[0], mask=y[0])
    assert out["image"].dtype == np.uint8 and out["image"].shape == x[0].shape
    np.testing.assert_array_equal(out["mask"], y[0])


def test_geometric_augmentation_moves_mask_with_image():
    x, y = squares(8, 64, seed=6)
    x = np.where(y == 1, 230, 25).astype(np.uint8)[..., None]  # image = mask, as contrast
    pipe = build_augmentation(1, seed=2, geometric=True)
    moved = 0
    for img, mask in zip(x, y):
        out = pipe(image=img, mask=mask)
        assert out["image"].shape == img.shape and out["mask"].shape == mask.shape
        bright = out["image"][..., 0] > 127
        agree = np.mean(bright == (out["mask"] == 1))
        assert agree > 0.85  # noise + CLAHE blur the two levels a little
        if not np.array_equal(out["mask"], mask):
            moved += 1
            assert agree > np.mean(bright == (mask == 1))  # the moved mask fits better than the old one
    assert moved >= 3


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 epochs, then the same run extended to 3 epochs on the same out_dir."""
    out = tmp_path_factory.mktemp("unet_run")
    train, val = squares(8, seed=10), squares(4, seed=11)
    cfg2 = UNetConfig(num_classes=2, in_channels=1, encoder=ENC, epochs=2)
    first = train_unet(cfg2, train, val, out, progress=False)
    cfg3 = UNetConfig(num_classes=2, in_channels=1, encoder=ENC, epochs=3)
    second = train_unet(cfg3, train, val, out, progress=False)
    return dict(out=out, train=train, val=val, cfg3=cfg3, first=first, second=second)


@pytest.mark.slow
def test_training_learns_bright_vs_dark(trained):
    res = trained["second"]
    assert res.epochs_run == 3
    vals = res.history["val_iou_score"]
    assert all(np.isfinite(vals))  # the monitored metric exists under this name
    assert max(vals) > 0.7
    test_x, test_y = squares(6, seed=12)
    scores = evaluate_model(res.model, test_x, test_y, 2, class_names=["dark", "bright"])
    # chance: the best constant prediction (all dark / all bright)
    chance = max(evaluate(test_y, np.full_like(test_y, c), 2)["missing_class_iou"] for c in (0, 1))
    assert chance < 0.5
    assert scores["missing_class_iou"] > 0.75
    assert scores["missing_class_iou"] > chance + 0.25
    assert scores["per_class"]["bright"] > 0.5


@pytest.mark.slow
def test_resume_extends_without_duplicate_epochs(trained):
    out, first, second = trained["out"], trained["first"], trained["second"]
    assert first.epochs_run == 2 and first.resumed_from == 0
    assert second.resumed_from == 2
    assert second.history["epoch"] == [1, 2, 3]
    assert second.history["loss"][:2] == first.history["loss"]
    assert set(second.history) == set(HISTORY_COLUMNS)
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert json.loads((out / "unet_config.json").read_text())["epochs"] == 3
    assert 1 <= second.best_epoch <= 3
    assert second.best_val_iou_score == pytest.approx(max(second.history["val_iou_score"]))
    # the saved best weights are the returned model's
    x = trained["val"][0]
    np.testing.assert_array_equal(predict_proba(load_unet(out), x), predict_proba(second.model, x))
    # a finished run is not trained again
    again = train_unet(trained["cfg3"], trained["train"], trained["val"], out, progress=False)
    assert again.history["epoch"] == [1, 2, 3] and again.resumed_from == 3
    np.testing.assert_array_equal(predict_proba(again.model, x), predict_proba(second.model, x))
    # without its checkpoint a finished run is still returned, but cannot be extended
    train_unet(trained["cfg3"], trained["train"], trained["val"], out, progress=False, keep_checkpoint=False)
    assert not (out / "checkpoint").exists()
    done = train_unet(trained["cfg3"], trained["train"], trained["val"], out, progress=False)
    assert done.history["epoch"] == [1, 2, 3] and done.best_epoch == second.best_epoch
    np.testing.assert_array_equal(predict_proba(done.model, x), predict_proba(second.model, x))
    with pytest.raises(ValueError, match="cannot be extended"):
        train_unet(UNetConfig(num_classes=2, in_channels=1, encoder=ENC, epochs=4),
                   trained["train"], trained["val"], out, progress=False)
    # another config or other data cannot continue this run
    with pytest.raises(ValueError, match="batch_size"):
        train_unet(UNetConfig(num_classes=2, in_channels=1, encoder=ENC, epochs=4, batch_size=1),
                   trained["train"], trained["val"], out, progress=False)
    with pytest.raises(ValueError, match="other data"):
        train_unet(trained["cfg3"], squares(8, seed=99), trained["val"], out, progress=False)


@pytest.mark.slow
def test_nan_loss_raises_and_keeps_last_good_weights(tmp_path):
    cfg = UNetConfig(num_classes=2, in_channels=1, encoder="plain", base_filters=8, epochs=3, learning_rate=1e38)
    model_before = build_unet(cfg, seed=cfg.seed)
    x = squares(2, seed=13)[0]
    expected = predict_proba(model_before, x)
    with pytest.raises(FloatingPointError, match="NaN") as info:
        train_unet(cfg, squares(4, seed=13), squares(1, seed=14), tmp_path, progress=False)
    result = info.value.result
    assert result.epochs_run == 0
    assert all(np.all(np.isfinite(w)) for w in result.model.get_weights())
    # no epoch finished: the model keeps its initial weights
    np.testing.assert_allclose(predict_proba(result.model, x), expected, atol=1e-6)
    assert not (tmp_path / "history.csv").exists()
