"""Mixed precision (``UNetConfig.mixed_precision``): off by default, and when on the model still gives float32
probabilities and a finite float32 loss.  Batched evaluation gives the predictions of one-by-one evaluation."""
from __future__ import annotations

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from dualsynth import segmentation as seg
from dualsynth.segmentation import UNetConfig, build_unet, compile_unet

ENC = "plain"  # the quick preset's U-Net; the segmentation-models encoders are checked without a training step


def test_mixed_precision_is_off_by_default():
    cfg = UNetConfig(num_classes=3)
    assert cfg.mixed_precision is False
    assert UNetConfig.from_dict(cfg.to_dict()).mixed_precision is False
    model = build_unet(UNetConfig(num_classes=3, encoder=ENC), input_size=32, seed=0)
    policies = {layer.dtype_policy.name for layer in seg.unet_core(model).layers}
    assert policies == {"float32"}
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_mixed_precision_on_keeps_float32_outputs_and_loss():
    cfg = UNetConfig(num_classes=3, encoder=ENC, mixed_precision=True)
    model = compile_unet(build_unet(cfg, input_size=32, seed=0), cfg)
    # the global policy is restored after the build: later models are float32 again
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    core_policies = {layer.dtype_policy.name for layer in seg.unet_core(model).layers}
    assert "mixed_float16" in core_policies
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    y = tf.one_hot(rng.integers(0, 3, (2, 32, 32)), 3, dtype=tf.float32)
    out = model(x, training=False)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().sum(-1), 1.0, atol=1e-5)
    loss = model.loss(y, model(x, training=True))
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    probs = seg.predict_proba(model, (x * 255).astype(np.uint8))
    assert probs.dtype == np.float32


def test_mixed_precision_with_a_segmentation_models_encoder():
    """The paper's kind of U-Net (an EfficientNet encoder) under mixed precision: float16 inside, float32
    probabilities out, a loss-scaling optimizer (its training step is the same Keras code as above)."""
    cfg = UNetConfig(num_classes=3, encoder="efficientnetb0", mixed_precision=True)
    model = compile_unet(build_unet(cfg, input_size=32, seed=0), cfg)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert "mixed_float16" in {layer.dtype_policy.name for layer in seg.unet_core(model).layers}
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    out = model(np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32), training=False)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().sum(-1), 1.0, atol=1e-3)


def test_resume_accepts_a_config_saved_before_mixed_precision_existed(tmp_path):
    cfg = UNetConfig(num_classes=3, encoder=ENC)
    saved = {k: v for k, v in cfg.to_dict().items() if k != "mixed_precision"}
    seg._check_resumable(tmp_path, "checkpoint", saved, "fp", cfg, "fp")  # no error
    with pytest.raises(ValueError, match="mixed_precision"):
        seg._check_resumable(tmp_path, "checkpoint", saved, "fp",
                             UNetConfig(num_classes=3, encoder=ENC, mixed_precision=True), "fp")


def test_batched_evaluation_equals_one_by_one():
    model = build_unet(UNetConfig(num_classes=4, encoder=ENC), seed=3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, (5, 64, 64), dtype=np.uint8)
    one = seg.predict_proba(model, images, batch_size=1)
    batched = seg.predict_proba(model, images)  # the default batch size
    assert batched.shape == one.shape == (5, 64, 64, 4)
    np.testing.assert_allclose(batched, one, atol=1e-5)
    np.testing.assert_array_equal(seg.predict(model, images), seg.predict(model, images, batch_size=1))
    a = seg.evaluate_model(model, images, masks, 4)
    b = seg.evaluate_model(model, images, masks, 4, batch_size=1)
    assert a["missing_class_iou"] == b["missing_class_iou"] and a["miou"] == b["miou"]
