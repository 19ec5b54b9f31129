"""Tests of dualsynth.pixelcnn: causality, blind spot, window trick, samplers, training."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from dualsynth import pixelcnn as pc

import tensorflow as tf  # noqa: E402

K = 10
KINDS = ("pixelcnn", "gated")
SMALL = {
    "pixelcnn": dict(hidden_channels=16, num_layers=3, first_kernel_size=5, kernel_size=3),
    "gated": dict(hidden_channels=8, num_layers=4, first_kernel_size=5, kernel_size=3),
}


@pytest.fixture(scope="module")
def models():
    return {kind: pc.make_prior(kind, K, seed=1, **SMALL[kind]) for kind in KINDS}


def _random_codes(shape, seed=0, k=K):
    return np.random.default_rng(seed).integers(0, k, size=shape).astype(np.int32)


def _perturb(codes, mask, rng, k=K):
    """Change every code where mask is True to a different code."""
    out = codes.copy()
    shift = rng.integers(1, k, size=codes.shape)
    out[mask] = (codes[mask] + shift[mask]) % k
    return out


def _dependence(model, codes, i, j, positions, k=K):
    """max |logits(i, j) change| when the codes at ``positions`` are changed."""
    rng = np.random.default_rng(123)
    mask = np.zeros(codes.shape, bool)
    for (r, c) in positions:
        mask[r, c] = True
    batch = np.stack([codes] + [_perturb(codes, mask, rng, k) for _ in range(3)])
    logits = model(batch).numpy()[:, i, j]
    return float(np.abs(logits[1:] - logits[0]).max())


# --------------------------------------------------------------------------- #
# Model structure
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_and_finite(models, kind):
    m = models[kind]
    logits = m(_random_codes((2, 7, 9))).numpy()
    assert logits.shape == (2, 7, 9, K)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # not constant: the input matters
    assert logits.std(axis=(1, 2)).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_causality(models, kind):
    """logits at (i, j) do not depend on codes at raster positions >= (i, j)
    but do depend on the previous position (so the test can fail)."""
    m = models[kind]
    H, W = 6, 7
    codes = _random_codes((H, W), seed=3)
    rng = np.random.default_rng(7)
    order = np.arange(H * W).reshape(H, W)
    batch, targets = [codes], []
    for p in range(H * W):
        batch.append(_perturb(codes, order >= p, rng))
        targets.append(divmod(p, W))
    logits = m(np.stack(batch)).numpy()
    for n, (i, j) in enumerate(targets, start=1):
        np.testing.assert_allclose(logits[n, i, j], logits[0, i, j], atol=1e-6,
                                   err_msg=f"{kind}: logits at {(i, j)} see the future")
    # sanity: the later positions DO change other logits (perturbation is effective)
    assert np.abs(logits[1, -1, -1] - logits[0, -1, -1]).max() > 1e-4
    # and the left neighbour / the one above are seen
    assert _dependence(m, codes, 3, 3, [(3, 2)]) > 1e-4
    assert _dependence(m, codes, 3, 3, [(2, 3)]) > 1e-4


def test_blind_spot_plain_but_not_gated():
    """3x3 kernels everywhere: the plain PixelCNN never sees (i-1, j+2) (blind
    spot), the gated one does once it has >= 2 layers."""
    plain = pc.make_prior("pixelcnn", K, hidden_channels=16, num_layers=4,
                          first_kernel_size=3, kernel_size=3)
    gated = pc.make_prior("gated", K, hidden_channels=8, num_layers=3,
                          first_kernel_size=3, kernel_size=3)
    codes = _random_codes((7, 9), seed=5)
    i, j = 4, 3
    assert _dependence(plain, codes, i, j, [(i - 1, j + 2)]) < 1e-6
    assert _dependence(plain, codes, i, j, [(i - 2, j + 4)]) < 1e-6
    assert _dependence(gated, codes, i, j, [(i - 1, j + 2)]) > 1e-4
    assert _dependence(gated, codes, i, j, [(i - 2, j + 3)]) > 1e-4
    # default plain net (7x7 first layer): blind spot at (i-1, j+4)
    plain7 = pc.make_prior("pixelcnn", K, hidden_channels=16, num_layers=4)
    codes = _random_codes((8, 12), seed=6)
    assert _dependence(plain7, codes, 5, 4, [(4, 7)]) > 1e-4
    assert _dependence(plain7, codes, 5, 4, [(4, 8)]) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_receptive_field_is_tight(models, kind):
    """Dependence on the corners of model.receptive_field, none just outside it."""
    m = models[kind]
    up, left, right = m.receptive_field
    H, W = up + 3, left + right + 5
    i, j = up + 1, left + 2
    codes = _random_codes((H, W), seed=9)
    inside = [(i - up, j), (i, j - left), (i - 1, j + right) if kind == "gated" else
              (i - right, j + right)]
    for pos in inside:
        assert _dependence(m, codes, i, j, [pos]) > 1e-6, pos
    outside = [(r, c) for r in range(H) for c in range(W)
               if r < i - up or c < j - left or c > j + right]
    assert _dependence(m, codes, i, j, outside) < 1e-7


def test_receptive_field_values():
    assert pc.make_prior("pixelcnn", K).receptive_field == (
        pc.DEFAULT_FIRST_KERNEL // 2 + pc.DEFAULT_PLAIN_BLOCKS,) * 3
    rf = pc.receptive_field(pc.make_prior("gated", K, num_layers=4, first_kernel_size=7))
    assert rf == pc.ReceptiveField(up=3 + 3 + 1, left=6, right=6)


@pytest.mark.parametrize("kind", KINDS)
def test_window_logits_equal_full_logits(models, kind):
    """The window trick (VALID convs + validity masks) is exact, borders included."""
    m = models[kind]
    rf = m.receptive_field
    H, W = 5, 7
    codes = _random_codes((2, H, W), seed=11)
    full = m(codes).numpy()
    padded = np.full((2, H + rf.up, W + rf.left + rf.right), -1, np.int32)
    padded[:, rf.up:, rf.left:rf.left + W] = codes
    rows = np.arange(rf.up + 1)
    cols = np.arange(rf.left + rf.right + 1)
    for i in range(H):
        for j in range(W):
            win = padded[:, i:i + rf.up + 1, j:j + rf.left + rf.right + 1].copy()
            win[:, -1, rf.left:] = -1  # current position and the rest of the row unknown
            valid = ((rows[:, None] + i - rf.up >= 0)
                     & (cols[None, :] + j - rf.left >= 0)
                     & (cols[None, :] + j - rf.left < W)).astype(np.float32)
            got = m.window_logits(tf.one_hot(win, K), valid[None, :, :, None]).numpy()
            np.testing.assert_allclose(got, full[:, i, j], atol=1e-5, err_msg=str((i, j)))


# --------------------------------------------------------------------------- #
# Samplers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_naive_and_fast_samplers_identical(models, kind, temperature):
    m = models[kind]
    args = (m, 3, 8, 8)
    naive = pc.sample_naive(*args, seed=4, temperature=temperature, batch_size=3)
    assert naive.shape == (3, 8, 8) and naive.dtype == np.int32
    for kw in (dict(), dict(jit_compile=False), dict(method="window", jit_compile=False)):
        fast = pc.sample_fast(*args, seed=4, temperature=temperature, batch_size=3, **kw)
        assert fast.shape == (3, 8, 8) and fast.dtype == np.int32
        np.testing.assert_array_equal(fast, naive, err_msg=str(kw))


def test_xla_failure_falls_back(models, monkeypatch):
    """If XLA cannot compile the sampler, sample_fast warns and runs without it."""
    m = pc.make_prior("pixelcnn", K, hidden_channels=8, num_layers=1, first_kernel_size=3)
    real = pc._graph_sampler

    def fake(engine, height, width, batch, jit_compile):
        if not jit_compile:
            return real(engine, height, width, batch, jit_compile)

        def broken(noise, temp):
            raise tf.errors.UnimplementedError(None, None, "no XLA here")
        return broken

    monkeypatch.setattr(pc, "_graph_sampler", fake)
    with pytest.warns(RuntimeWarning, match="XLA"):
        got = pc.sample_fast(m, 2, 3, 4, seed=1)
    np.testing.assert_array_equal(got, pc.sample_fast(m, 2, 3, 4, seed=1, jit_compile=False))


@pytest.mark.parametrize("kind", KINDS)
def test_fast_sampler_batching_and_python_loop(models, kind):
    """Results do not depend on batch_size (last chunk smaller) or on the loop."""
    m = models[kind]
    ref = pc.sample_fast(m, 5, 4, 6, seed=2, batch_size=5, jit_compile=False)
    np.testing.assert_array_equal(
        pc.sample_fast(m, 5, 4, 6, seed=2, batch_size=2, jit_compile=False), ref)
    np.testing.assert_array_equal(
        pc.sample_fast(m, 5, 4, 6, seed=2, batch_size=5, loop="python", jit_compile=False), ref)
    np.testing.assert_array_equal(pc.sample_naive(m, 5, 4, 6, seed=2, batch_size=3), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_seeds_ranges_and_logits_matter(models, kind):
    m = models[kind]
    a = pc.sample_fast(m, 4, 6, 6, seed=0)
    b = pc.sample_fast(m, 4, 6, 6, seed=1)
    assert a.min() >= 0 and a.max() < K
    assert (a != b).mean() > 0.5          # different seeds differ
    np.testing.assert_array_equal(a, pc.sample_fast(m, 4, 6, 6, seed=0))  # reproducible
    assert len(np.unique(a)) > 3
    # at low temperature the model's logits decide: another model gives other codes
    other = pc.make_prior(kind, K, seed=99, **SMALL[kind])
    cold = pc.sample_fast(m, 4, 6, 6, seed=0, temperature=0.01)
    cold_other = pc.sample_fast(other, 4, 6, 6, seed=0, temperature=0.01)
    assert (cold != cold_other).mean() > 0.3


def test_invalid_arguments(models):
    m = models["pixelcnn"]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            pc.sample_fast(m, 1, 4, 4, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            pc.sample_naive(m, 1, 4, 4, temperature=bad)
    with pytest.raises(ValueError, match="num_samples"):
        pc.sample_fast(m, 0, 4, 4)
    with pytest.raises(ValueError, match="height"):
        pc.sample_naive(m, 1, 0, 4)
    with pytest.raises(ValueError, match="method"):
        pc.sample_fast(m, 1, 4, 4, method="magic")
    with pytest.raises(ValueError, match="loop"):
        pc.sample_fast(m, 1, 4, 4, loop="while")
    with pytest.raises(ValueError, match="unknown prior kind"):
        pc.make_prior("transformer", K)
    with pytest.raises(ValueError, match="kernel_size"):
        pc.make_prior("pixelcnn", K, kernel_size=4)
    with pytest.raises(ValueError, match="num_embeddings"):
        pc.make_prior("gated", 1)
    with pytest.raises(ValueError, match="codes"):
        m(np.zeros((4, 4), np.int32))
    codes = _random_codes((4, 5, 5))
    with pytest.raises(ValueError, match="0..9"):
        pc.train_prior(m, codes + K, None, steps=1, batch_size=2, progress=False)
    with pytest.raises(TypeError, match="integer"):
        pc.evaluate_nll(m, codes.astype(np.float32))
    with pytest.raises(ValueError, match="steps"):
        pc.train_prior(m, codes, None, steps=0, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="learning_rate"):
        pc.train_prior(m, codes, None, steps=1, batch_size=2, learning_rate=0.0,
                       progress=False)


# --------------------------------------------------------------------------- #
# Training, evaluation, checkpoints
# --------------------------------------------------------------------------- #
def _stripes(n, h, w, k, seed):
    """Vertical stripes of two codes with random width (1..2) and phase."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w), np.int32)
    for m in range(n):
        a, b = rng.choice(k, size=2, replace=False)
        width, phase = rng.integers(1, 3), rng.integers(0, 4)
        cols = np.where(((np.arange(w) + phase) // width) % 2 == 0, a, b)
        out[m] = np.broadcast_to(cols, (h, w))
    return out


def _vertical_agreement(codes):
    return float((codes[:, 1:] == codes[:, :-1]).mean())


def test_evaluate_nll_matches_manual(models):
    m = models["gated"]
    codes = _random_codes((5, 4, 6), seed=8)
    logp = tf.nn.log_softmax(m(codes)).numpy()
    manual = -np.take_along_axis(logp, codes[..., None], axis=-1).mean()
    assert pc.evaluate_nll(m, codes, batch_size=2) == pytest.approx(manual, rel=1e-5)
    assert pc.evaluate_nll(m, codes, bits=True) == pytest.approx(manual / math.log(2), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_training_learns_vertical_stripes(kind):
    k = 6
    kw = dict(hidden_channels=32, num_layers=2) if kind == "pixelcnn" else \
        dict(hidden_channels=16, num_layers=3)
    model = pc.make_prior(kind, k, first_kernel_size=5, seed=0, **kw)
    train, val = _stripes(64, 8, 8, k, seed=0), _stripes(16, 8, 8, k, seed=1)
    nll0 = pc.evaluate_nll(model, val)
    assert nll0 == pytest.approx(math.log(k), rel=0.2)  # untrained ~ uniform
    before = pc.sample_fast(model, 8, 8, 8, seed=3)
    records = []
    hist = pc.train_prior(model, train, val, steps=150, batch_size=16, learning_rate=3e-3,
                          log_every=50, callback=records.append, progress=False)
    assert hist.step == [50, 100, 150] and len(records) == 3
    assert len(hist.train_loss) == len(hist.val_nll) == 3
    assert hist.val_nll[-1] == pytest.approx(pc.evaluate_nll(model, val), rel=1e-5)
    # rows below the first are determined by the row above: NLL must drop a lot
    assert hist.val_nll[-1] < 0.35 * nll0, (nll0, hist.val_nll)
    after = pc.sample_fast(model, 8, 8, 8, seed=3)
    chance = 1.0 / k
    assert _vertical_agreement(before) < chance + 0.15
    assert _vertical_agreement(after) > 0.8, _vertical_agreement(after)


def test_train_callback_stops_and_resume(models):
    m = pc.make_prior("pixelcnn", K, hidden_channels=8, num_layers=1, first_kernel_size=3)
    codes = _random_codes((6, 4, 4), seed=1)
    hist = pc.train_prior(m, codes, None, steps=10, batch_size=4, log_every=2,
                          callback=lambda rec: True, progress=False)
    assert hist.step == [2] and math.isnan(hist.val_nll[0])
    steps_before = int(hist.optimizer.step.numpy())
    hist2 = pc.train_prior(m, codes, codes, steps=3, batch_size=4, log_every=5,
                           optimizer=hist.optimizer, progress=False)
    assert hist2.step == [3]
    assert int(hist.optimizer.step.numpy()) == steps_before + 3
    assert set(hist2.as_dict()) == {"step", "train_loss", "val_nll", "seconds"}


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_roundtrip(models, kind, tmp_path):
    m = models[kind]
    pc.save_prior(m, tmp_path / "prior")
    loaded = pc.load_prior(tmp_path / "prior")
    assert type(loaded) is type(m) and loaded.config == m.config
    codes = _random_codes((2, 5, 6), seed=12)
    np.testing.assert_array_equal(loaded(codes).numpy(), m(codes).numpy())
    # a fresh model with another init differs, so the weights were really restored
    fresh = pc.make_prior(kind, K, seed=77, **SMALL[kind])
    assert np.abs(fresh(codes).numpy() - m(codes).numpy()).max() > 1e-3
    with pytest.raises(FileNotFoundError):
        pc.load_prior(tmp_path / "nothing")


def _assert_same_prior(loaded, model):
    codes = _random_codes((2, 5, 6), seed=12)
    assert type(loaded) is type(model) and loaded.config == model.config
    np.testing.assert_array_equal(loaded(codes).numpy(), model(codes).numpy())


def test_save_prior_after_kill_between_renames_loses_nothing(models, tmp_path, monkeypatch):
    """A save killed between the two renames of its folder swap leaves ``prior.old`` and a complete ``prior.tmp``
    and no ``prior``.  A re-run killed while writing its new tmp must not lose that complete prior."""
    from dualsynth import io as dio

    older, newer = models["pixelcnn"], models["gated"]
    pc.save_prior(older, tmp_path / "prior.old")
    pc.save_prior(newer, tmp_path / "prior.tmp")
    real_write = dio.atomic_write_json

    def killed_at_config(path, data):
        if Path(path).name == "prior.json":
            raise KeyboardInterrupt("killed while writing prior.tmp")
        return real_write(path, data)

    monkeypatch.setattr(dio, "atomic_write_json", killed_at_config)
    with pytest.raises(KeyboardInterrupt):
        pc.save_prior(pc.make_prior("pixelcnn", K, seed=9, **SMALL["pixelcnn"]), tmp_path / "prior")
    monkeypatch.undo()
    assert not (tmp_path / "prior.old").exists()
    _assert_same_prior(pc.load_prior(tmp_path / "prior"), newer)  # the swap was finished before tmp was reused
    pc.save_prior(older, tmp_path / "prior")  # the next save cleans up the incomplete tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"]
    _assert_same_prior(pc.load_prior(tmp_path / "prior"), older)


def test_load_prior_never_promotes_an_incomplete_tmp(models, tmp_path):
    """``prior.old`` complete, ``prior.tmp`` without ``prior.json`` (killed while written), no ``prior``: the old
    prior is restored, the incomplete one dropped."""
    good = models["pixelcnn"]
    pc.save_prior(good, tmp_path / "prior.old")
    pc.save_prior(models["gated"], tmp_path / "prior.tmp")
    (tmp_path / "prior.tmp" / "prior.json").unlink()
    _assert_same_prior(pc.load_prior(tmp_path / "prior"), good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"]


def test_fit_prior_resumes_and_keeps_best(tmp_path):
    from dualsynth.pixelcnn import fit_prior, load_prior

    train = _stripes(24, 6, 6, 4, seed=0)
    val = _stripes(8, 6, 6, 4, seed=1)
    m1 = pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, seed=0)
    first = fit_prior(m1, train, val, tmp_path / "ck", steps=20, batch_size=8, eval_every=10, progress=False)
    assert first["final_step"] == 20 and [r["step"] for r in first["history"]] == [10, 20]
    # resume into a fresh model: continues from step 20 to 40, history without duplicates
    m2 = pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, seed=5)
    second = fit_prior(m2, train, val, tmp_path / "ck", steps=40, batch_size=8, eval_every=10, progress=False)
    assert second["final_step"] == 40 and [r["step"] for r in second["history"]] == [10, 20, 30, 40]
    best = min(second["history"], key=lambda r: r["val_nll"])
    assert second["best_step"] == best["step"]
    assert pc.evaluate_nll(load_prior(tmp_path / "ck" / "best"), val) == pytest.approx(best["val_nll"], rel=1e-4)
    assert pc.evaluate_nll(m2, val) == pytest.approx(best["val_nll"], rel=1e-4)  # the model ends with the best weights
    # already done: returns at once with the same record
    again = fit_prior(pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1), train, val, tmp_path / "ck",
                      steps=40, batch_size=8, eval_every=10, progress=False)
    assert again["final_step"] == 40 and len(again["history"]) == 4


def test_fit_prior_early_stopping(tmp_path):
    from dualsynth.pixelcnn import fit_prior

    rng = np.random.default_rng(0)
    train = rng.integers(0, 4, (4, 6, 6))  # pure noise: the validation NLL can only get worse with overfitting
    val = rng.integers(0, 4, (8, 6, 6))
    m = pc.make_prior("pixelcnn", 4, hidden_channels=32, num_layers=2, seed=0)
    r = fit_prior(m, train, val, tmp_path / "ck", steps=400, batch_size=4, learning_rate=1e-2, eval_every=10,
                  patience=3, progress=False)
    assert r["stopped_early"] and r["final_step"] < 400
    assert r["final_step"] - r["best_step"] == 30
