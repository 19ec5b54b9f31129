"""Tests of the class-fraction-conditioned Gated PixelCNN (dualsynth.prior): model, training, exact sampling,
saving, draw_conditions and conditions.npz."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from dualsynth import prior as pr
from dualsynth.io import DataError

import tensorflow as tf  # noqa: E402

K = 5
C = 3
SMALL = dict(hidden_channels=8, num_layers=3, first_kernel_size=5, kernel_size=3)


@pytest.fixture(scope="module")
def cond_model():
    return pr.make_prior("gated", K, seed=1, num_conditions=C, **SMALL)


def _codes(shape, seed=0, k=K):
    return np.random.default_rng(seed).integers(0, k, size=shape).astype(np.int32)


def _fractions(n, seed=0, c=C, alpha=0.7):
    return np.random.default_rng(seed).dirichlet([alpha] * c, size=n).astype(np.float32)


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #
def test_shapes_variables_and_config(cond_model):
    """C > 0 adds exactly two bias-free projections (C -> 2*hidden) per layer; the other variables start with the
    values of the unconditioned model of the same seed; num_conditions=0 is today's model."""
    plain = pr.make_prior("gated", K, seed=1, **SMALL)
    zero = pr.make_prior("gated", K, seed=1, num_conditions=0, **SMALL)
    assert [v.name for v in zero.variables] == [v.name for v in plain.variables]
    assert plain.config["num_conditions"] == 0 and cond_model.config["num_conditions"] == C
    by_name = {v.name: v for v in cond_model.variables}
    extra = by_name.keys() - {v.name for v in plain.variables}
    assert len(extra) == 2 * SMALL["num_layers"]
    assert all(("v_cond" in n or "h_cond" in n) for n in extra)
    for n in extra:
        assert tuple(by_name[n].shape) == (1, 1, C, 2 * SMALL["hidden_channels"])
    for v in plain.variables:
        np.testing.assert_array_equal(by_name[v.name].numpy(), v.numpy())
    codes = _codes((2, 6, 7))
    logits = cond_model(codes, condition=_fractions(2)).numpy()
    assert logits.shape == (2, 6, 7, K) and np.isfinite(logits).all()


def test_condition_changes_every_position_but_not_causality(cond_model):
    """Another condition changes the logits everywhere, (0, 0) included; the logits at (i, j) still do not depend
    on the codes at raster positions >= (i, j)."""
    codes = _codes((6, 7), seed=3)
    a = cond_model(np.stack([codes, codes]), condition=np.array([[1, 0, 0], [0, 0, 1]], np.float32)).numpy()
    assert np.abs(a[0] - a[1]).max(axis=-1).min() > 1e-4  # at every position, (0, 0) included
    h = np.array([[0.2, 0.5, 0.3]], np.float32)
    ref = cond_model(codes[None], condition=h).numpy()[0]
    rng = np.random.default_rng(0)
    order = np.arange(42).reshape(6, 7)
    for p in (0, 9, 20, 41):
        i, j = divmod(p, 7)
        changed = np.where(order >= p, (codes + rng.integers(1, K, codes.shape)) % K, codes)
        got = cond_model(changed[None], condition=h).numpy()[0]
        np.testing.assert_allclose(got[i, j], ref[i, j], atol=1e-6)
        if p < 41:
            assert np.abs(got[-1, -1] - ref[-1, -1]).max() > 1e-5  # the perturbation is effective


def test_window_logits_with_condition_equal_full_logits(cond_model):
    rf = cond_model.receptive_field
    H, W = 4, 6
    codes = _codes((2, H, W), seed=11)
    h = _fractions(2, seed=1)
    full = cond_model(codes, condition=h).numpy()
    padded = np.full((2, H + rf.up, W + rf.left + rf.right), -1, np.int32)
    padded[:, rf.up:, rf.left:rf.left + W] = codes
    rows, cols = np.arange(rf.up + 1), np.arange(rf.left + rf.right + 1)
    for i in range(H):
        for j in range(W):
            win = padded[:, i:i + rf.up + 1, j:j + rf.left + rf.right + 1].copy()
            win[:, -1, rf.left:] = -1
            valid = ((rows[:, None] + i - rf.up >= 0) & (cols[None, :] + j - rf.left >= 0)
                     & (cols[None, :] + j - rf.left < W)).astype(np.float32)
            got = cond_model.window_logits(tf.one_hot(win, K), valid[None, :, :, None], condition=h).numpy()
            np.testing.assert_allclose(got, full[:, i, j], atol=1e-5, err_msg=str((i, j)))


def test_condition_errors(cond_model):
    codes = _codes((2, 4, 4))
    with pytest.raises(ValueError, match="condition is required.*num_conditions=3"):
        cond_model(codes)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        cond_model(codes, condition=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="2 code maps"):
        cond_model(codes, condition=np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="negative"):
        cond_model(codes, condition=np.array([[1, -0.1, 0.1]] * 2, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        cond_model(codes, condition=np.array([[np.nan, 0.5, 0.5]] * 2, np.float32))
    unconditioned = pr.make_prior("gated", K, **SMALL)
    with pytest.raises(ValueError, match="num_conditions=0"):
        unconditioned(codes, condition=np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="num_conditions=2: the plain PixelCNN takes no condition"):
        pr.make_prior("pixelcnn", K, num_conditions=2)
    with pytest.raises(ValueError, match="num_conditions"):
        pr.make_prior("gated", K, num_conditions=-1)
    with pytest.raises(ValueError, match="condition is required"):
        pr.sample_fast(cond_model, 2, 3, 3)
    with pytest.raises(ValueError, match="condition is required"):
        pr.sample_naive(cond_model, 2, 3, 3)
    with pytest.raises(ValueError, match="3 rows but there are 2"):
        pr.sample_fast(cond_model, 2, 3, 3, condition=_fractions(3))
    with pytest.raises(ValueError, match="conditions_train is required"):
        pr.train_prior(cond_model, codes, None, steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="conditions_val has 1 rows but there are 2"):
        pr.train_prior(cond_model, codes, codes, steps=1, batch_size=2, progress=False,
                       conditions_train=_fractions(2), conditions_val=_fractions(1))
    with pytest.raises(ValueError, match="conditions"):
        pr.evaluate_nll(cond_model, codes)


def test_depth_has_one_name_for_both_kinds():
    """Issue 17: ``num_layers`` is the depth of both priors and their config key; ``num_blocks`` (the plain
    prior's older name) is a deprecated alias that warns, naming the caller's line."""
    import warnings

    plain = pr.make_prior("pixelcnn", K, hidden_channels=8, num_layers=3)
    assert plain.num_layers == 3 and plain.config["num_layers"] == 3 and "num_blocks" not in plain.config
    assert pr.make_prior("gated", K, hidden_channels=8, num_layers=3).config["num_layers"] == 3
    assert pr.PixelCNN(K, 8, 3).config == plain.config  # the third positional argument is the depth, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented name does not warn
        pr.make_prior("pixelcnn", K, hidden_channels=8, num_layers=3)
    with pytest.warns(DeprecationWarning, match="num_blocks is deprecated.*num_layers") as seen:
        old = pr.make_prior("pixelcnn", K, hidden_channels=8, num_blocks=3)
    assert old.config == plain.config
    assert [w.filename for w in seen] == [__file__]  # this line, not the library's
    with pytest.warns(DeprecationWarning, match="num_blocks is deprecated"):
        assert plain.num_blocks == 3
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="num_blocks=2 and num_layers=3"):
        pr.make_prior("pixelcnn", K, num_blocks=2, num_layers=3)


def test_prior_saved_with_the_old_depth_key_loads_and_resumes(tmp_path):
    """A ``prior.json`` written when the plain prior's config key was ``num_blocks`` loads (no warning: the folder
    is not the reader's to fix), and fit_prior resumes its checkpoint as the same configuration."""
    import warnings

    train, val = _codes((8, 5, 5), seed=0, k=4), _codes((4, 5, 5), seed=1, k=4)
    make = lambda: pr.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, first_kernel_size=3)  # noqa: E731
    kw = dict(batch_size=4, eval_every=2, progress=False)
    first = pr.fit_prior(make(), train, val, tmp_path / "ck", steps=2, **kw)
    cfg_file = tmp_path / "ck" / "best" / "prior.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["num_blocks"] = cfg.pop("num_layers")  # as written before
    cfg_file.write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loaded = pr.load_prior(tmp_path / "ck" / "best")
        again = pr.fit_prior(make(), train, val, tmp_path / "ck", steps=4, **kw)
    assert loaded.num_layers == 1 and loaded.config == make().config
    assert first["final_step"] == 2 and again["final_step"] == 4
    assert pr.current_config({"kind": "pixelcnn", "num_blocks": 2}) == {"kind": "pixelcnn", "num_layers": 2}
    with pytest.raises(ValueError, match="two depths"):
        pr.current_config({"num_blocks": 2, "num_layers": 3})


# --------------------------------------------------------------------------- #
# Exact fast sampling
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_fast_sampler_equals_naive_with_conditions(cond_model):
    """Different conditions per sample, batch sizes that do not divide num_samples: every fast method gives the
    naive sampler's codes; and the conditions matter (other conditions, other codes)."""
    n, H, W = 5, 6, 7
    h = _fractions(n, seed=2)
    naive = pr.sample_naive(cond_model, n, H, W, seed=4, batch_size=3, condition=h)
    assert naive.shape == (n, H, W) and naive.dtype == np.int32
    for kw in (dict(batch_size=2), dict(batch_size=3, jit_compile=False), dict(batch_size=4, loop="python",
                                                                                jit_compile=False),
               dict(batch_size=2, method="window", jit_compile=False), dict(batch_size=3, method="window")):
        fast = pr.sample_fast(cond_model, n, H, W, seed=4, condition=h, **kw)
        np.testing.assert_array_equal(fast, naive, err_msg=str(kw))
    other = pr.sample_fast(cond_model, n, H, W, seed=4, condition=h[::-1].copy(), batch_size=2, temperature=0.05)
    same = pr.sample_fast(cond_model, n, H, W, seed=4, condition=h, batch_size=2, temperature=0.05)
    assert (other != same).mean() > 0.1


# --------------------------------------------------------------------------- #
# Saving, training, fingerprints
# --------------------------------------------------------------------------- #
def test_save_load_roundtrip_and_old_config(cond_model, tmp_path):
    pr.save_prior(cond_model, tmp_path / "prior")
    loaded = pr.load_prior(tmp_path / "prior")
    assert loaded.config == cond_model.config and loaded.num_conditions == C
    codes, h = _codes((2, 5, 6), seed=12), _fractions(2, seed=5)
    np.testing.assert_array_equal(loaded(codes, condition=h).numpy(), cond_model(codes, condition=h).numpy())
    fresh = pr.make_prior("gated", K, seed=77, num_conditions=C, **SMALL)
    assert np.abs(fresh(codes, condition=h).numpy() - cond_model(codes, condition=h).numpy()).max() > 1e-3
    # a gated prior saved before conditioning existed (no num_conditions in prior.json) still loads
    old = pr.make_prior("gated", K, seed=3, **SMALL)
    pr.save_prior(old, tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "prior.json").read_text())
    del cfg["num_conditions"]
    (tmp_path / "old" / "prior.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(pr.load_prior(tmp_path / "old")(codes).numpy(), old(codes).numpy())


@pytest.mark.slow
def test_fit_prior_with_conditions_fingerprint_and_resume(tmp_path):
    """Conditions are part of the checkpoint's input fingerprint; the same ones resume."""
    train, val = _codes((16, 5, 5), seed=0, k=4), _codes((4, 5, 5), seed=1, k=4)
    ct, cv = _fractions(16, seed=0), _fractions(4, seed=1)

    def make():
        return pr.make_prior("gated", 4, hidden_channels=4, num_layers=1, first_kernel_size=3, num_conditions=C)

    kw = dict(batch_size=8, eval_every=5, progress=False)
    first = pr.fit_prior(make(), train, val, tmp_path / "ck", steps=5, conditions_train=ct, conditions_val=cv,
                         **kw)
    assert first["final_step"] == 5
    with pytest.raises(DataError, match="made from other data"):
        pr.fit_prior(make(), train, val, tmp_path / "ck", steps=10, conditions_train=ct[::-1].copy(),
                     conditions_val=cv, **kw)
    m = make()
    again = pr.fit_prior(m, train, val, tmp_path / "ck", steps=10, conditions_train=ct, conditions_val=cv, **kw)
    assert [r["step"] for r in again["history"]] == [5, 10]
    assert pr.evaluate_nll(m, val, conditions=cv) == pytest.approx(again["best_val_nll"], rel=1e-4)


@pytest.mark.slow
def test_fit_prior_resumes_gated_checkpoint_saved_before_conditioning(tmp_path):
    """best/prior.json without num_conditions (written before it existed) is the same architecture."""
    train, val = _codes((16, 5, 5), seed=0, k=4), _codes((4, 5, 5), seed=1, k=4)
    make = lambda: pr.make_prior("gated", 4, hidden_channels=4, num_layers=1, first_kernel_size=3)  # noqa: E731
    kw = dict(batch_size=8, eval_every=5, progress=False)
    pr.fit_prior(make(), train, val, tmp_path / "ck", steps=5, **kw)
    cfg_file = tmp_path / "ck" / "best" / "prior.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["num_conditions"]
    cfg_file.write_text(json.dumps(cfg))
    assert pr.fit_prior(make(), train, val, tmp_path / "ck", steps=10, **kw)["final_step"] == 10
    # a conditioned prior is refused (its inputs differ before its architecture is compared)
    with pytest.raises(ValueError, match=r"ck holds a prior .*delete .*ck or pass a new experiment name"):
        pr.fit_prior(pr.make_prior("gated", 4, hidden_channels=4, num_layers=1, first_kernel_size=3,
                                   num_conditions=C), train, val, tmp_path / "ck", steps=15,
                     conditions_train=_fractions(16), conditions_val=_fractions(4), **kw)


def _iid_maps(fractions, size, seed):
    """Code maps whose pixels are i.i.d. draws from each map's class probabilities."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(len(p), size=(size, size), p=p / p.sum()) for p in fractions]).astype(np.int32)


def _map_fractions(codes, k):
    return np.stack([np.bincount(c.ravel(), minlength=k) / c.size for c in codes])


@pytest.mark.slow
def test_conditioning_controls_the_class_fractions():
    """8x8 maps, K=3, pixels i.i.d. with per-map class probabilities from Dirichlet(0.5) (fractions vary strongly
    across maps); condition = each map's empirical fractions.  After 300 steps a small conditional gated prior
    samples maps whose fractions follow the requested vector: mean absolute error per class, averaged over 24
    sampled maps, < 0.1 for each of two very different requests (a map of 64 i.i.d. pixels alone deviates
    ~0.04 per class), and the two requests give clearly different fractions (> 0.4 apart in classes 0 and 2)."""
    k = 3
    probs = np.random.default_rng(0).dirichlet([0.5] * k, size=768)
    maps = _iid_maps(probs, 8, seed=1)
    frac = _map_fractions(maps, k).astype(np.float32)
    train, val, ct, cv = maps[:640], maps[640:], frac[:640], frac[640:]
    model = pr.make_prior("gated", k, hidden_channels=16, num_layers=2, first_kernel_size=3, seed=0,
                          num_conditions=k)
    hist = pr.train_prior(model, train, val, steps=300, batch_size=32, learning_rate=1e-2, log_every=300,
                          progress=False, conditions_train=ct, conditions_val=cv)
    unconditioned_nll = -np.sum(frac.mean(0) * np.log(frac.mean(0)))  # entropy of the pooled class shares
    assert hist.val_nll[-1] < 0.8 * unconditioned_nll, (hist.val_nll, unconditioned_nll)
    requests = np.array([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]], np.float32)
    got = []
    for req in requests:
        samples = pr.sample_fast(model, 24, 8, 8, seed=5, condition=np.repeat(req[None], 24, axis=0))
        f = _map_fractions(samples, k)
        mae = float(np.abs(f - req).mean())
        assert mae < 0.1, (req, f.mean(0), mae)
        got.append(f.mean(0))
    assert got[0][0] - got[1][0] > 0.4 and got[1][2] - got[0][2] > 0.4, got


# --------------------------------------------------------------------------- #
# draw_conditions, conditions.npz
# --------------------------------------------------------------------------- #
def _skewed_fractions():
    """200 maps of 3 classes; class 2 is rare overall (< 10 %) but rich in a few maps."""
    rng = np.random.default_rng(0)
    rare = np.where(rng.random(200) < 0.15, rng.uniform(0.1, 0.4, 200), rng.uniform(0, 0.02, 200))
    a = rng.uniform(0.3, 0.7, 200) * (1 - rare)
    return np.stack([a, 1 - rare - a, rare], axis=1).astype(np.float32)


def test_rare_classes_auto():
    fr = _skewed_fractions()
    assert fr[:, 2].mean() < pr.RARE_FRACTION
    assert pr.rare_classes(fr).tolist() == [2]
    assert pr.rare_classes(fr, threshold=0.6).tolist() == [0, 1, 2]


def test_draw_conditions_default_reproduces_the_empirical_distribution():
    fr = _skewed_fractions()
    drawn = pr.draw_conditions(fr, 20000, seed=1)
    assert drawn.shape == (20000, 3) and drawn.dtype == np.float32
    rows = {r.tobytes(): i for i, r in enumerate(fr)}
    idx = np.array([rows[r.tobytes()] for r in drawn])  # every draw is a real training map's vector
    counts = np.bincount(idx, minlength=len(fr))
    expected = 20000 / len(fr)
    assert abs(counts.std() - np.sqrt(expected)) < 0.3 * np.sqrt(expected)  # binomial spread of a uniform draw
    np.testing.assert_allclose(drawn.mean(0), fr.mean(0), atol=0.01)
    np.testing.assert_array_equal(drawn, pr.draw_conditions(fr, 20000, seed=1))  # deterministic by seed
    assert (pr.draw_conditions(fr, 50, seed=2) != drawn[:50]).any()


def test_draw_conditions_rare_boost_raises_the_rare_share():
    fr = _skewed_fractions()
    base = pr.draw_conditions(fr, 5000, seed=3)[:, 2].mean()
    boosted = [pr.draw_conditions(fr, 5000, rare_boost=b, seed=3)[:, 2].mean() for b in (0.5, 1.5)]
    assert base < boosted[0] < boosted[1]
    assert boosted[1] > 2 * base
    # explicit rare classes: boosting class 0 instead raises its share
    assert pr.draw_conditions(fr, 5000, rare_boost=1.0, rare_classes=[0], seed=3)[:, 0].mean() > fr[:, 0].mean() + 0.03
    with pytest.warns(RuntimeWarning, match="no rare class"):
        flat = pr.draw_conditions(np.full((10, 2), 0.5, np.float32), 5, rare_boost=1.0, seed=0)
    assert flat.shape == (5, 2)
    with pytest.raises(ValueError, match="rare_boost"):
        pr.draw_conditions(fr, 5, rare_boost=-1)
    with pytest.raises(ValueError, match="rare_classes"):
        pr.draw_conditions(fr, 5, rare_boost=1, rare_classes=[3])
    with pytest.raises(ValueError, match="num_samples"):
        pr.draw_conditions(fr, 0)
    with pytest.raises(ValueError, match="train_fractions"):
        pr.draw_conditions(fr[:, :, None], 5)


def test_conditions_npz_roundtrip(tmp_path):
    fr = _skewed_fractions()
    saved = pr.save_conditions(tmp_path / "conditions.npz", fr[:150], fr[150:], ["matrix", "grain", "pore"])
    back = pr.load_conditions(tmp_path / "conditions.npz")
    assert back.class_names == ("matrix", "grain", "pore") == saved.class_names and back.num_conditions == 3
    np.testing.assert_array_equal(back.train, fr[:150])
    np.testing.assert_array_equal(back.val, fr[150:])
    with np.load(tmp_path / "conditions.npz") as z:
        assert sorted(z.files) == ["class_names", "train", "val"]
    with pytest.raises(DataError, match="condition='class_fractions'"):
        pr.load_conditions(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"train fractions must have shape \(N, 2\)"):
        pr.save_conditions(tmp_path / "bad.npz", fr, fr, ["a", "b"])


def test_notebook_03_refuses_class_fractions_without_gated_prior(tmp_path):
    from dualsynth import batch, config

    params = {**batch.notebook_parameters("03_pixelcnn"), "outputs_dir": str(tmp_path)}
    assert params["condition"] == "class_fractions" and params["prior"] == "gated"  # the defaults (README)
    with pytest.raises(config.ParamError, match=r"condition='class_fractions' needs prior='gated'"):
        config.start_stage("03_pixelcnn", {**params, "prior": "pixelcnn", "condition": "class_fractions"})
    with pytest.raises(config.ParamError, match=r"condition='fractions': none or class_fractions"):
        config.start_stage("03_pixelcnn", {**params, "prior": "gated", "condition": "fractions"})
    assert not any(tmp_path.iterdir())  # refused before anything was written
    config.start_stage("03_pixelcnn", {**params, "prior": "gated", "condition": "class_fractions"})
