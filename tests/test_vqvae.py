"""Tests of dualsynth.vqvae (tiny models on 32x32 inputs; CPU, seconds each)."""
from __future__ import annotations

import csv
import json
import warnings

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from dualsynth.vqvae import (
    HISTORY_COLUMNS,
    VQVAE,
    check_trained_on,
    checkpoint_step,
    data_variance,
    decode_codes,
    encode_dataset,
    load_vqvae,
    train_vqvae,
)

SMALL = dict(num_hiddens=16, embedding_dim=8, num_residual_hiddens=8)


def small_model(seed: int = 0, in_channels: int = 2, **kw) -> VQVAE:
    tf.random.set_seed(seed)
    return VQVAE(in_channels, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    """4 structured 32x32 dual images: grey micrograph channel + binary mask channel."""
    x = np.zeros((4, 32, 32, 2), np.float32)
    yy, xx = np.mgrid[:32, :32]
    x[0, 4:20, 6:26, 0] = 0.8
    x[1, ..., 0] = xx / 31.0
    x[2, ..., 0] = ((yy // 8 + xx // 8) % 2) * 0.7 + 0.1
    x[3, ..., 0] = np.exp(-((yy - 16) ** 2 + (xx - 12) ** 2) / 40.0)
    x[..., 1] = (x[..., 0] > 0.5).astype(np.float32)
    return x


def val_mse(model: VQVAE, x: np.ndarray) -> float:
    return float(np.mean((model.reconstruct(x).numpy().astype(np.float64) - x) ** 2))


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [2, 4])
@pytest.mark.parametrize("use_ema", [True, False])
def test_shapes_and_code_values(in_channels, use_ema):
    k, d = 6, 8
    model = small_model(in_channels=in_channels, num_embeddings=k, use_ema=use_ema)
    x = np.random.default_rng(0).random((3, 32, 32, in_channels), dtype=np.float32)
    out = model(x, is_training=True)
    assert out["x_recon"].shape == (3, 32, 32, in_channels)
    assert out["encoding_indices"].shape == (3, 8, 8)
    assert out["encoding_indices"].dtype == tf.int32
    assert out["quantize"].shape == (3, 8, 8, d)
    assert out["vq_loss"].shape == () and np.isfinite(out["vq_loss"].numpy())
    assert 1.0 <= float(out["perplexity"]) <= k + 1e-4
    idx = out["encoding_indices"].numpy()
    assert idx.min() >= 0 and idx.max() < k
    assert model.codebook.shape == (d, k)
    # the codebook is learned by the loss only without EMA
    trainable = {id(v) for v in model.trainable_variables}
    assert (id(model.vq.embeddings) in trainable) == (not use_ema)


@pytest.mark.parametrize("use_ema", [True, False])
def test_encode_decode_round_trip(use_ema):
    model = small_model(in_channels=4, num_embeddings=5, use_ema=use_ema)
    x = np.random.default_rng(1).random((2, 32, 32, 4), dtype=np.float32)
    codebook_before = model.codebook.numpy().copy()
    codes = model.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == tf.int32
    np.testing.assert_array_equal(codes.numpy(), model.encode(x).numpy())  # deterministic
    np.testing.assert_array_equal(model.codebook.numpy(), codebook_before)  # no EMA update
    np.testing.assert_array_equal(codes.numpy(), model(x, is_training=False)["encoding_indices"].numpy())
    recon = model.decode_indices(codes)
    assert recon.shape == (2, 32, 32, 4)
    # decoding the codes is exactly the deterministic reconstruction
    np.testing.assert_allclose(recon.numpy(), model.reconstruct(x).numpy(), rtol=1e-5, atol=1e-6)
    # and a training call moves the EMA codebook (sanity check of the above)
    model(x, is_training=True)
    assert np.array_equal(model.codebook.numpy(), codebook_before) == (not use_ema)


def test_batched_dataset_helpers():
    model = small_model(in_channels=2, num_embeddings=7)
    x = np.random.default_rng(2).random((5, 32, 32, 2), dtype=np.float32)
    codes = encode_dataset(model, x, batch_size=2)
    assert codes.shape == (5, 8, 8) and codes.dtype == np.int32
    np.testing.assert_array_equal(codes, model.encode(x).numpy())
    recon = decode_codes(model, codes, batch_size=3)
    assert recon.shape == (5, 32, 32, 2) and recon.dtype == np.float32
    np.testing.assert_allclose(recon, model.decode_indices(codes).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        decode_codes(model, np.full((1, 8, 8), 7))
    with pytest.raises(ValueError, match="channels"):
        encode_dataset(model, x[..., :1])
    with pytest.raises(ValueError, match="255"):
        encode_dataset(model, (x * 255).astype(np.uint8))


def test_config_round_trip():
    model = small_model(in_channels=4, num_embeddings=12, use_ema=False, commitment_cost=0.5)
    cfg = json.loads(json.dumps(model.config))
    assert cfg["in_channels"] == 4 and cfg["num_embeddings"] == 12 and cfg["use_ema"] is False
    rebuilt = VQVAE(**cfg)
    assert rebuilt.config == model.config
    assert [v.shape for v in rebuilt.variables] == [v.shape for v in model.variables]


def test_data_variance():
    x = np.random.default_rng(3).random((130, 8, 8, 2), dtype=np.float32)
    assert data_variance(x, chunk=16) == pytest.approx(float(np.var(x.astype(np.float64))), rel=1e-9)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_overfit_small_patches(patches):
    model = small_model(seed=0, num_hiddens=32, embedding_dim=16, num_residual_hiddens=16)
    before = val_mse(model, patches)
    hist = train_vqvae(
        model, patches, patches, steps=100, batch_size=4, learning_rate=2e-3, eval_every=50,
        progress=False,
    )
    after = val_mse(model, patches)
    assert hist.final_step == 100
    assert list(hist.steps) == [50, 100]
    assert set(hist.rows[0]) == set(HISTORY_COLUMNS)
    assert hist["val_recon_mse"][-1] == pytest.approx(after, rel=1e-4)
    assert after * 3 <= before, (before, after)
    assert 0 < hist["codes_used"][-1] <= 1


def _history_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(patches, tmp_path):
    kw = dict(batch_size=2, learning_rate=2e-3, eval_every=10, progress=False, snapshot_steps=(0, 10, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dead-code warnings of the tiny model
        full = train_vqvae(small_model(seed=1), patches, patches, steps=40,
                           checkpoint_dir=tmp_path / "full", **kw)
        part = train_vqvae(small_model(seed=1), patches, patches, steps=20,
                           checkpoint_dir=tmp_path / "resumed", **kw)
        assert part.final_step == 20 and list(part.steps) == [10, 20]
        # a fresh model with another init: everything must come from the checkpoint
        resumed = train_vqvae(small_model(seed=7), patches, patches, steps=40,
                              checkpoint_dir=tmp_path / "resumed", **kw)
    assert resumed.resumed_from_step == 20
    assert full.final_step == resumed.final_step == 40
    assert list(full.steps) == list(resumed.steps) == [10, 20, 30, 40]
    assert checkpoint_step(tmp_path / "resumed", "last") == 40
    # same batches, same optimizer/EMA state -> the same trajectory
    for col in ("val_recon_mse", "train_loss", "codes_used"):
        np.testing.assert_allclose(resumed[col], full[col], rtol=1e-4, err_msg=col)
    # snapshots of both sessions survive the resume
    assert sorted(resumed.snapshots) == [0, 10, 30]
    assert resumed.snapshots[30].shape == (4, 32, 32, 2)
    np.testing.assert_allclose(resumed.snapshots[30], full.snapshots[30], rtol=1e-4, atol=1e-5)
    # history.csv on disk: same rows, no duplicates
    rows = _history_csv(tmp_path / "resumed" / "history.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert json.loads((tmp_path / "resumed" / "config.json").read_text()) == small_model().config

    # already at `steps`: returns with the stored history and trains no step (history.csv untouched)
    mtime = (tmp_path / "resumed" / "history.csv").stat().st_mtime_ns
    again = train_vqvae(small_model(seed=3), patches, patches, steps=40,
                        checkpoint_dir=tmp_path / "resumed", **kw)
    assert again.resumed_from_step == 40
    assert (tmp_path / "resumed" / "history.csv").stat().st_mtime_ns == mtime
    assert again.final_step == 40 and list(again.steps) == [10, 20, 30, 40]
    assert len(_history_csv(tmp_path / "resumed" / "history.csv")) == 4


@pytest.mark.slow
def test_best_checkpoint_is_lowest_val_mse(tmp_path):
    # Train towards bright images, validate on dark ones: the validation MSE
    # grows while training, so the best checkpoint is an early one, not the last.
    rng = np.random.default_rng(4)
    train = np.clip(0.9 + 0.05 * rng.standard_normal((4, 32, 32, 2)), 0, 1).astype(np.float32)
    val = np.full((3, 32, 32, 2), 0.1, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hist = train_vqvae(small_model(seed=2), train, val, steps=30, batch_size=2, learning_rate=3e-3,
                           eval_every=5, checkpoint_dir=tmp_path, progress=False)
    mses = hist["val_recon_mse"]
    best_step = int(hist.steps[np.argmin(mses)])
    assert hist.best_step == best_step
    assert best_step != 30, mses  # the test is only meaningful if best != last
    assert checkpoint_step(tmp_path, "best") == best_step
    assert checkpoint_step(tmp_path, "last") == 30
    best = load_vqvae(tmp_path, "best", expect=dict(num_embeddings=10, embedding_dim=8, in_channels=2))
    last = load_vqvae(tmp_path, "last")
    assert val_mse(best, val) == pytest.approx(mses.min(), rel=1e-4)
    assert val_mse(last, val) == pytest.approx(mses[-1], rel=1e-4)


@pytest.mark.slow
def test_config_mismatch_raises(patches, tmp_path):
    train_vqvae(small_model(), patches, patches, steps=2, batch_size=2, eval_every=2,
                checkpoint_dir=tmp_path, progress=False, tensorboard_dir=tmp_path / "tb")
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    tags = {
        v.tag
        for e in tf.compat.v1.train.summary_iterator(str(events[0]))
        for v in e.summary.value
        if v.metadata.plugin_data.plugin_name == "scalars"
    }
    assert {"val_recon_mse", "train_loss", "codes_used"} <= tags
    assert isinstance(load_vqvae(tmp_path, expect=dict(num_embeddings=10, in_channels=2)), VQVAE)
    with pytest.raises(ValueError, match="num_embeddings.*12"):
        load_vqvae(tmp_path, expect=dict(num_embeddings=12, embedding_dim=8))
    with pytest.raises(ValueError, match="in_channels"):
        load_vqvae(tmp_path, which="last", expect=dict(in_channels=4))
    # resuming into a different architecture is refused
    with pytest.raises(ValueError, match="embedding_dim"):
        train_vqvae(small_model(embedding_dim=4), patches, patches, steps=4, batch_size=2,
                    checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="'best' or 'last'"):
        load_vqvae(tmp_path, which="latest")


@pytest.mark.slow
def test_nan_stops_training_and_keeps_last_checkpoint(patches, tmp_path):
    kw = dict(batch_size=2, eval_every=5, checkpoint_dir=tmp_path, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        train_vqvae(small_model(), patches, patches, steps=5, learning_rate=1e-3, **kw)
        good = val_mse(load_vqvae(tmp_path, "last"), patches)
        model = small_model(seed=5)
        with pytest.raises(FloatingPointError, match=r"at step \d+") as err:
            # the learning rate given on resume overrides the restored one: blows up
            train_vqvae(model, patches, patches, steps=40, learning_rate=1e7, **kw)
    assert "ckpt-5" in str(err.value)
    assert checkpoint_step(tmp_path, "last") == 5
    restored = load_vqvae(tmp_path, "last")
    assert all(np.isfinite(v.numpy()).all() for v in restored.variables)
    assert val_mse(restored, patches) == pytest.approx(good, rel=1e-5)
    # the in-memory model was reset to the good checkpoint
    assert val_mse(model, patches) == pytest.approx(good, rel=1e-5)
    assert [int(r["step"]) for r in _history_csv(tmp_path / "history.csv")] == [5]


def test_bad_training_data_rejected(patches):
    bad = patches.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_vqvae(small_model(), bad, patches, steps=1, progress=False)


@pytest.mark.slow
def test_dead_codes_warn(patches):
    with pytest.warns(RuntimeWarning, match="codes are used"):
        hist = train_vqvae(small_model(seed=3, num_embeddings=64), patches, patches, steps=2,
                           batch_size=2, eval_every=2, progress=False)
    assert hist["codes_used"][-1] < 0.5


# --------------------------------------------------------------------------
# options of the paper preset: encoder ReLU, checkpoint rule, generator split
# --------------------------------------------------------------------------


def test_encoder_final_relu_is_an_option_without_weights(patches):
    import inspect

    from dualsynth.vqvae import MODEL_DEFAULTS

    plain, relu = small_model(seed=0), small_model(seed=0, encoder_final_relu=True)
    assert plain.config["encoder_final_relu"] is False and relu.config["encoder_final_relu"] is True
    assert VQVAE(**json.loads(json.dumps(relu.config))).config == relu.config
    # the same variables (a ReLU has none), so checkpoints of either load into the other
    assert [v.shape for v in plain.variables] == [v.shape for v in relu.variables]
    for a, b in zip(plain.variables, relu.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    h_plain, h_relu = plain.encoder._enc_3, relu.encoder._enc_3
    assert h_plain is not h_relu
    x = tf.constant(patches)
    z_plain = plain.encoder(x).numpy()
    z_relu = relu.encoder(x).numpy()
    assert not np.allclose(z_plain, z_relu)  # the ReLU changes what the residual stack's skip path carries
    # MODEL_DEFAULTS are the constructor's defaults
    sig = inspect.signature(VQVAE.__init__).parameters
    assert {k: sig[k].default for k in MODEL_DEFAULTS} == MODEL_DEFAULTS


def test_downsample_2_gives_codes_of_2x2_pixels_with_the_same_variables_and_learns(patches, tmp_path):
    coarse, fine = small_model(seed=0), small_model(seed=0, downsample=2)
    assert coarse.config["downsample"] == 4 and fine.config["downsample"] == 2
    assert VQVAE(**json.loads(json.dumps(fine.config))).config == fine.config
    assert [v.shape for v in coarse.variables] == [v.shape for v in fine.variables]
    assert fine.encode(patches).shape == (4, 16, 16) and coarse.encode(patches).shape == (4, 8, 8)
    assert fine.reconstruct(patches).shape == patches.shape
    codes = fine.encode(patches).numpy()
    assert decode_codes(fine, codes).shape == patches.shape
    assert decode_codes(fine, codes[:0]).shape == (0, *patches.shape[1:])  # an empty batch too
    for bad in (1, 3, 8):
        with pytest.raises(ValueError, match="downsample must be one of"):
            small_model(downsample=bad)
    before = val_mse(fine, patches)
    hist = train_vqvae(fine, patches, patches, steps=30, batch_size=4, eval_every=10, learning_rate=3e-3,
                       checkpoint_dir=tmp_path, progress=False)
    assert val_mse(fine, patches) < 0.5 * before, (before, hist.rows[-1])
    # the same variables, so only the saved config tells the two apart: neither resumes into nor loads as the other
    assert load_vqvae(tmp_path).config["downsample"] == 2
    with pytest.raises(ValueError, match="downsample"):
        train_vqvae(small_model(), patches, patches, steps=40, batch_size=4, eval_every=10, checkpoint_dir=tmp_path,
                    progress=False)
    with pytest.raises(ValueError, match="downsample"):
        load_vqvae(tmp_path, expect=dict(downsample=4))


#: a 1-layer SMALL model's checkpoint keys (tf.train.Checkpoint(model=...)) as written before the residual stack
#: gained its grappler barrier (issue 16): the barrier has no variables, so checkpoints written before it load
OLD_CHECKPOINT_KEYS = sorted(
    [f"{part}/{name}/{wb}" for part, names in (("encoder", ("_enc_1", "_enc_2", "_enc_3")),
                                               ("decoder", ("_dec_1", "_dec_2", "_dec_3")))
     for name in names + ("_residual_stack/_layers/0/0", "_residual_stack/_layers/0/1") for wb in "bw"]
    + ["pre_vq_conv/b", "pre_vq_conv/w", "vq/embeddings"]
    + [f"vq/{ema}/{part}" for ema in ("ema_cluster_size", "ema_dw") for part in ("_counter", "_hidden", "average")])


def test_residual_stack_barrier_changes_no_value_gradient_or_checkpoint_key(patches, tmp_path, monkeypatch):
    """Issue 16: the residual stack's ReLUs read their input through ``_unfusable`` (an EnsureShape), which keeps
    grappler's remapper from failing; outputs and gradients in a tf.function equal the plain stack's, run eagerly
    (no grappler at all), and the checkpoint keys are those of the stack without it."""
    from dualsynth.vqvae import model as vqvae_model

    model = small_model(seed=5, num_residual_layers=3)
    x = tf.constant(patches)
    variables = model.trainable_variables

    def loss_and_grads(run):
        with tf.GradientTape() as tape:
            out = run(x)
            loss = tf.reduce_mean((out - x) ** 2)
        return [loss.numpy()] + [g.numpy() for g in tape.gradient(loss, variables)]

    fused = loss_and_grads(tf.function(lambda t: model(t, is_training=False)["x_recon"]))
    recon = model.reconstruct(x).numpy()
    monkeypatch.setattr(vqvae_model, "_unfusable", lambda h: h)  # the stack as it was, run eagerly
    plain = loss_and_grads(lambda t: model(t, is_training=False)["x_recon"])
    np.testing.assert_allclose(recon, model(x, is_training=False)["x_recon"].numpy(), atol=1e-6, rtol=0)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)

    one_layer = small_model(seed=0, num_residual_layers=1)
    path = tf.train.Checkpoint(model=one_layer).write(str(tmp_path / "ckpt"))
    keys = sorted(k.removeprefix("model/").removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
                  for k, _ in tf.train.list_variables(path) if k.startswith("model/"))
    assert keys == OLD_CHECKPOINT_KEYS
    assert "vqvae/decoder/residual_stack/res1x1_0/w:0" in {v.name for v in one_layer.variables}


_REMAPPER_SCRIPT = """
import dualsynth
import numpy as np
import tensorflow as tf
from dualsynth.vqvae import model as vqvae_model
if {plain}:  # the control: the stack without its barrier
    vqvae_model._unfusable = lambda h: h
tf.random.set_seed(0)
m = vqvae_model.VQVAE(in_channels=3, num_embeddings=4, embedding_dim=4, num_hiddens=8, num_residual_hiddens=4)
x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
m.reconstruct(x)  # tf.function'd forward pass: encoder and decoder stacks
variables = m.trainable_variables

@tf.function
def step(x):  # a training step's graph (forward, gradients, update)
    with tf.GradientTape() as tape:
        out = m(x, is_training=True)
        loss = tf.reduce_mean((out["x_recon"] - x) ** 2) + out["vq_loss"]
    for v, g in zip(variables, tape.gradient(loss, variables)):
        v.assign_sub(1e-3 * g)
    return loss

print(float(step(x)))
"""


@pytest.mark.slow
def test_no_remapper_failure_line_from_the_vqvae_graphs():
    """Issue 16: with TensorFlow's log lines on (DUALSYNTH_VERBOSE=1), a tf.function'd VQ-VAE forward pass and
    training step print no ``remapper failed … Mutation::Apply error`` line; the stack without its barrier, run
    beside it, does (the control that the check means something on this TensorFlow)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "DUALSYNTH_VERBOSE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _REMAPPER_SCRIPT.format(plain=plain)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for plain in (False, True)]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for started in procs:
                started.kill()
            raise
        results.append((proc.returncode, out, err))
    (code, _, err), (control_code, _, control_err) = results
    assert code == 0, err[-3000:]
    assert "remapper failed" not in err and "Mutation::Apply" not in err, err[-3000:]
    assert control_code == 0, control_err[-3000:]
    if "remapper failed" not in control_err:
        pytest.skip("this TensorFlow's remapper does not fail on the stack without the barrier either")


@pytest.mark.slow
def test_config_written_before_encoder_relu_still_loads_and_resumes(patches, tmp_path):
    train_vqvae(small_model(), patches, patches, steps=2, batch_size=2, eval_every=2, checkpoint_dir=tmp_path,
                progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["encoder_final_relu"], cfg["downsample"]  # as written before the options existed
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "training.json").unlink()  # and before the checkpoint rule was recorded
    assert load_vqvae(tmp_path, expect=dict(encoder_final_relu=False)).config["encoder_final_relu"] is False
    assert load_vqvae(tmp_path, expect=dict(downsample=4)).config["downsample"] == 4
    hist = train_vqvae(small_model(), patches, patches, steps=4, batch_size=2, eval_every=2,
                       checkpoint_dir=tmp_path, progress=False)
    assert hist.resumed_from_step == 2 and hist.final_step == 4
    with pytest.raises(ValueError, match="encoder_final_relu"):
        train_vqvae(small_model(encoder_final_relu=True), patches, patches, steps=6, batch_size=2, eval_every=2,
                    checkpoint_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_checkpoint_on_train_keeps_lowest_training_error(tmp_path):
    """The paper's rule: best = lowest mean training reconstruction MSE since the previous checkpoint, checkpointed
    every ``checkpoint_every`` steps; validation only every ``eval_every`` steps."""
    from dualsynth.vqvae import checkpoint_rule

    rng = np.random.default_rng(4)
    train = np.clip(0.9 + 0.05 * rng.standard_normal((4, 32, 32, 2)), 0, 1).astype(np.float32)
    val = np.full((3, 32, 32, 2), 0.1, np.float32)  # moves away from training: val and train rules disagree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hist = train_vqvae(small_model(seed=2), train, val, steps=30, batch_size=2, learning_rate=3e-3,
                           eval_every=10, checkpoint_on="train", checkpoint_every=5, checkpoint_dir=tmp_path,
                           progress=False)
    assert list(hist.steps) == [5, 10, 15, 20, 25, 30]
    val_mse_col = hist["val_recon_mse"]
    assert np.isfinite(val_mse_col[[1, 3, 5]]).all() and np.isnan(val_mse_col[[0, 2, 4]]).all()
    assert np.isfinite(hist["train_recon_mse"]).all()
    assert hist.best_column == "train_recon_mse"
    best = int(hist.steps[np.argmin(hist["train_recon_mse"])])
    assert hist.best_step == best and checkpoint_step(tmp_path, "best") == best
    assert best != int(hist.steps[np.nanargmin(val_mse_col)])  # meaningful only if the two rules differ
    assert checkpoint_rule(tmp_path) == {"checkpoint_on": "train", "checkpoint_every": 5, "eval_every": 10,
                                         "pixel_weights": None}
    rows = _history_csv(tmp_path / "history.csv")
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30] and rows[0]["val_recon_mse"] == "nan"
    # resuming under the other rule would mix two rules in one best/: refused
    with pytest.raises(ValueError, match="checkpoint_on"):
        train_vqvae(small_model(seed=2), train, val, steps=40, batch_size=2, eval_every=10, checkpoint_dir=tmp_path,
                    progress=False)
    with pytest.raises(ValueError, match="checkpoint_on must be"):
        train_vqvae(small_model(), train, val, steps=1, checkpoint_on="test", progress=False)


class _FakeManifest:
    def __init__(self, train, val):
        self._t = {"BMQ": {"train": [{"id": f"p{i}", "mask": "lq"} for i in range(train)],
                           "val": [{"id": f"p{train + i}", "mask": "hq"} for i in range(val)]}}

    def entries(self, tier, split):
        return list(self._t[tier][split])


def test_generator_split():
    from dualsynth.vqvae import GeneratorSplit, generator_split

    m = _FakeManifest(48, 12)
    own = generator_split(m, "BMQ")
    assert (len(own.train), len(own.val), own.val_patches) == (48, 12, 0)
    assert own.train == m.entries("BMQ", "train") and own.val == m.entries("BMQ", "val")
    paper = generator_split(m, "BMQ", 6, seed=0)
    assert (len(paper.train), len(paper.val)) == (54, 6)  # the paper: 56 / 6 of its 62 BMQ patches
    ids = [e["id"] for e in paper.train + paper.val]
    assert sorted(ids) == sorted(e["id"] for e in own.train + own.val)  # a partition of the tier's patches
    assert paper == generator_split(m, "BMQ", 6, seed=0) and paper != generator_split(m, "BMQ", 6, seed=1)
    assert [e["id"] for e in paper.train] == sorted((e["id"] for e in paper.train), key=lambda s: int(s[1:]))
    assert GeneratorSplit.from_dict(json.loads(json.dumps(paper.as_dict()))) == paper
    assert GeneratorSplit.of_experiment(m, {"train_tier": "BMQ"}) == own  # a summary.json written before the split
    assert "54 train / 6 val" in paper.describe()
    with pytest.raises(ValueError, match="hold out fewer"):
        generator_split(m, "BMQ", 60)
    with pytest.raises(ValueError, match=">= 0"):
        generator_split(m, "BMQ", -1)


def test_no_sonnet_module_declares_a_class_level_tf_function():
    """A ``@tf.function`` method of an ``snt.Module`` gets Sonnet's name-scope wrapper inside TensorFlow's method
    binding, which once failed a chain run with "'TfMethodTarget' object has no attribute 'name_scope'". The graphs are
    built per instance from bound methods instead; this walks every Sonnet module class of the library and fails on a
    class-level tf.function (and checks the VQ-VAE's per-instance graphs still give the eager results)."""
    import importlib
    import pkgutil

    import sonnet as snt

    import dualsynth as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix="dualsynth."):
        if not info.name.endswith("__main__"):  # command-line entry points run on import
            importlib.import_module(info.name)
    tf_function_type = type(tf.function(lambda: None, autograph=False))

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = [c for c in subclasses(snt.Module) if c.__module__.startswith("dualsynth.")]
    assert VQVAE in ours
    offenders = [f"{c.__module__}.{c.__qualname__}.{name}" for c in ours for name, value in vars(c).items()
                 if isinstance(value, tf_function_type)]
    assert not offenders, f"class-level tf.function on an snt.Module: {offenders}"

    model = small_model()
    x = tf.random.stateless_uniform([2, 16, 16, 2], seed=[1, 2])
    out = model(x, is_training=False)
    np.testing.assert_array_equal(model.encode(x).numpy(), out["encoding_indices"].numpy())
    np.testing.assert_allclose(model.reconstruct(x).numpy(), out["x_recon"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.decode_indices(out["encoding_indices"]).numpy(), out["x_recon"].numpy(),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# class-weighted reconstruction loss (rare classes the generator would otherwise ignore)
# --------------------------------------------------------------------------


def _rare_class_patches() -> tuple[np.ndarray, np.ndarray]:
    """8 one-hot dual images (grey + 3 classes): two halves and three 4×4 specks of a rare class (5 % of pixels)
    that the micrograph channel shows only faintly."""
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 32, 32), np.int64)
    masks[:, :, 16:] = 1
    for m in masks:
        for _ in range(3):
            r, c = rng.integers(2, 28, size=2)
            m[r:r + 4, c:c + 4] = 2
    grey = np.where(masks == 1, 0.7, 0.2) + np.where(masks == 2, 0.15, 0.0)
    x = np.concatenate([grey[..., None], np.eye(3)[masks]], axis=-1).astype(np.float32)
    return x, masks


def _rare_iou(model, x, masks) -> float:
    pred = model.reconstruct(x).numpy()[..., 1:].argmax(-1)
    inter = ((pred == 2) & (masks == 2)).sum()
    return float(inter / max(((pred == 2) | (masks == 2)).sum(), 1))


@pytest.mark.slow
def test_class_weighted_loss_reconstructs_a_rare_class_the_plain_loss_drops(tmp_path):
    """Same model, data, seed and steps: with the plain loss the rare class is all but lost in the reconstruction;
    weighted (power 0.5), it comes back. The history's reconstruction error stays the unweighted one."""
    from dualsynth.dual import class_pixel_weights

    x, masks = _rare_class_patches()
    w, _ = class_pixel_weights(masks, 3, power=0.5)
    kw = dict(steps=200, batch_size=4, learning_rate=2e-3, eval_every=200, progress=False)
    wide = dict(in_channels=4, num_hiddens=32, embedding_dim=16, num_residual_hiddens=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = small_model(seed=0, **wide)
        train_vqvae(plain, x, x, **kw)
        weighted = small_model(seed=0, **wide)
        hist = train_vqvae(weighted, x, x, pixel_weights=w, checkpoint_dir=tmp_path, **kw)
    iou_plain, iou_weighted = _rare_iou(plain, x, masks), _rare_iou(weighted, x, masks)
    # measured (seeds 0/1/2): plain 0.005 / 0.000 / 0.031, weighted 0.636 / 0.647 / 0.832
    assert iou_weighted >= iou_plain + 0.4, (iou_plain, iou_weighted)
    assert hist["val_recon_mse"][-1] == pytest.approx(val_mse(weighted, x), rel=1e-4)
    # 03 checks the generator was trained on its patches: the weights do not change what it was trained on
    check_trained_on(tmp_path, x, x)
    # other weights are another objective: the checkpoint is not resumed with them, and the error says so
    with pytest.raises(ValueError, match="pixel_weights"):
        train_vqvae(small_model(seed=0, **wide), x, x, pixel_weights=np.ones_like(w),
                    checkpoint_dir=tmp_path, **{**kw, "steps": 210})
    with pytest.raises(ValueError, match="pixel_weights"):
        train_vqvae(small_model(seed=0, **wide), x, x, checkpoint_dir=tmp_path, **{**kw, "steps": 210})
    # the same weights resume it
    again = train_vqvae(small_model(seed=3, **wide), x, x, pixel_weights=w, checkpoint_dir=tmp_path,
                        **{**kw, "steps": 210, "eval_every": 10})
    assert again.resumed_from_step == 200 and again.final_step == 210
    with pytest.raises(ValueError, match="pixel_weights must have the shape"):
        train_vqvae(small_model(seed=0, **wide), x, x, pixel_weights=w[:, :16], **kw)
    with pytest.raises(ValueError, match="not all 0"):
        train_vqvae(small_model(seed=0, **wide), x, x, pixel_weights=np.zeros_like(w), **kw)


def test_class_weights_on_the_mask_channels_leave_the_micrograph_error_unweighted():
    """``weighted_from_channel``: the weights multiply the squared error of the channels from it on; the channels
    before it (the micrograph's) keep weight 1.  Each loss is taken on the first step of a fresh, identical model."""
    from dualsynth.vqvae.training import make_train_step

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, 16, 16, 4)).astype(np.float32))  # 1 image channel + 3 mask channels

    def first_loss(w=None, from_channel=0):
        model = small_model(seed=0, in_channels=4)
        step = make_train_step(model, tf.keras.optimizers.Adam(0.0), 1.0, weighted=w is not None,
                               weighted_from_channel=from_channel)
        loss, recon_mse, vq, _ = step(x) if w is None else step(x, tf.constant(w, tf.float32))
        return float(loss), float(recon_mse), float(vq)

    plain, recon, vq = first_loss()
    zeros, ones = np.zeros((2, 16, 16)), np.ones((2, 16, 16))
    none_weighed, _, vq0 = first_loss(zeros, 0)  # every channel weighted by 0: only the VQ loss is left
    image_only, recon_m, _ = first_loss(zeros, 1)  # the mask channels weighted by 0: the micrograph's error is left
    assert none_weighed == pytest.approx(vq0, rel=1e-5)
    assert recon_m == pytest.approx(recon, rel=1e-6)  # the reported error stays unweighted
    assert vq0 < image_only < plain
    assert first_loss(ones, 1)[0] == pytest.approx(plain, rel=1e-6)  # weight 1 is the plain loss
    with pytest.raises(ValueError, match="weighted_from_channel must lie in"):
        train_vqvae(small_model(seed=0, in_channels=4), x.numpy(), x.numpy(), steps=1, pixel_weights=ones,
                    weighted_from_channel=4, progress=False)


def test_many_models_in_one_process_do_not_warn_of_retracing():
    """Each VQ-VAE traces its own graphs once; loading several (a notebook comparing generators) must not print
    TensorFlow's "triggered tf.function retracing" warning."""
    import logging

    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = tf.get_logger()
    handler = Catch()
    logger.addHandler(handler)
    try:
        x = np.zeros((1, 8, 8, 2), np.float32)
        for seed in range(7):
            model = small_model(seed=seed)
            model.decode_indices(model.encode(x))
            model.reconstruct(x)
    finally:
        logger.removeHandler(handler)
    assert not [m for m in records if "retracing" in m], records
