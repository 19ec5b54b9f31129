"""Image–mask consistency (dualsynth.quality.consistency) and pool curation (dualsynth.pretest.generate_pool)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dualsynth import config, metrics, pretest
from dualsynth.quality import balanced_consistency, consistency, per_image_consistency

K = 3


def masks_with_films(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Matrix (0) with a blob of class 1 and a thin film of class 2 in every image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), np.int64)
    for m in out:
        r, c = rng.integers(2, size - 12, 2)
        m[r:r + 10, c:c + 10] = 1
        m[rng.integers(0, size), 2:size - 2] = 2
    return out


def blur_prediction(masks: np.ndarray, seed: int) -> np.ndarray:
    """A judge that gets 90 % of the pixels right."""
    rng = np.random.default_rng(seed)
    p = masks.copy()
    flip = rng.random(masks.shape) < 0.1
    p[flip] = rng.integers(0, K, flip.sum())
    return p


def test_consistency_is_one_when_synthetic_agrees_like_real():
    real = masks_with_films(20, 0)
    syn = masks_with_films(30, 1)
    rec = consistency(syn, blur_prediction(syn, 2), real, blur_prediction(real, 3), K, ["m", "blob", "film"])
    assert rec["consistency"] == pytest.approx(1.0, abs=0.05)
    assert rec["classes"] == ["m", "blob", "film"]
    assert rec["failing_classes"] == []
    for c in rec["per_class"].values():
        assert c["ratio"] == pytest.approx(1.0, abs=0.1)
        assert c["fraction_ratio"] == pytest.approx(1.0, abs=0.15)


def test_dropping_a_class_lowers_consistency_where_missing_class_iou_would_rise():
    """The judge sees the films in the synthetic micrographs, but the synthetic masks label them matrix:
    consistency falls and names the class; the per-image Missing Class IoU (the old pre-test number) rises,
    because a class absent from a mask is not averaged."""
    real = masks_with_films(20, 0)
    syn = masks_with_films(30, 1)
    judge_syn = blur_prediction(syn, 2)
    judge_real = blur_prediction(real, 3)
    dropped = np.where(syn == 2, 0, syn)
    good = consistency(syn, judge_syn, real, judge_real, K, ["m", "blob", "film"])
    bad = consistency(dropped, judge_syn, real, judge_real, K, ["m", "blob", "film"])
    assert bad["consistency"] < good["consistency"] - 0.15  # about the film's share of the IoU sum
    assert bad["per_class"]["film"]["iou_synthetic"] == 0.0
    assert bad["per_class"]["film"]["fraction_ratio"] == 0.0
    assert "film" in bad["failing_classes"]
    old_good = metrics.evaluate(syn, judge_syn, K)["missing_class_iou"]
    old_bad = metrics.evaluate(dropped, judge_syn, K)["missing_class_iou"]
    assert old_bad > old_good  # the flaw the new definition removes


def test_balanced_consistency_lets_no_class_hide_another():
    """metaldam's case: synthetic masks easier than real for the matrix and the blobs (the judge agrees with them
    perfectly) and half the films missing.  The plain ratio rises above 1 — the easy classes make up for the
    films — while the balanced one caps each class at its real IoU, charges the films' missing half twice (IoU and
    fraction) and stays below 1."""
    real = masks_with_films(20, 0)
    judge_real = blur_prediction(real, 3)
    syn = masks_with_films(30, 1)
    judge_syn = syn.copy()  # the judge sees every film in the synthetic micrographs ...
    shrunk = syn.copy()
    shrunk[::2][shrunk[::2] == 2] = 0  # ... but every other synthetic mask labels them matrix
    rec = consistency(shrunk, judge_syn, real, judge_real, K, ["m", "blob", "film"])
    assert rec["consistency"] > 1.0
    film = rec["per_class"]["film"]
    assert film["fraction_ratio"] == pytest.approx(0.5, abs=0.1)
    assert rec["consistency_balanced"] < 0.9
    assert rec["consistency_balanced"] == pytest.approx(balanced_consistency(rec["per_class"]))
    # with the films kept, both are at their ceiling: the balanced measure does not punish a good pool
    full = consistency(syn, judge_syn, real, judge_real, K, ["m", "blob", "film"])
    assert full["consistency_balanced"] > 0.9 and full["consistency_balanced"] > rec["consistency_balanced"] + 0.1
    same = consistency(real, judge_real, real, judge_real, K)
    assert same["consistency"] == pytest.approx(1.0) and same["consistency_balanced"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_shrinking_a_class_never_raises_its_balanced_term(seed):
    """Relabelling ever more of an under-produced class as matrix never raises that class's term
    min(IoU syn, IoU real) × fraction agreement — first the film pixels the judge misses (which *raises* the film's
    IoU: without the fraction factor, or uncapped, the term would rise), then the ones it sees; dropping the class
    sets the term to 0."""
    rng = np.random.default_rng(seed)
    real = masks_with_films(20, seed)
    judge_real = blur_prediction(real, seed + 1)
    base = masks_with_films(30, seed + 2)
    base[::2][base[::2] == 2] = 0  # every other synthetic image without its film: under-produced from the start
    judge_syn = blur_prediction(base, seed + 3)
    syn = base.copy()
    syn[(rng.random(syn.shape) < 0.012) & (syn == 0)] = 2  # scattered film pixels the judge mostly misses
    film = np.flatnonzero(syn == 2)
    missed = film[judge_syn.ravel()[film] != 2]
    seen = film[judge_syn.ravel()[film] == 2]
    order = np.concatenate([rng.permutation(seen), rng.permutation(missed)])  # removed from the end: missed first
    terms, ious = [], []
    for keep in np.linspace(1.0, 0.0, 12):
        s = syn.copy().ravel()
        s[order[int(round(keep * len(order))):]] = 0
        pc = consistency(s.reshape(syn.shape), judge_syn, real, judge_real, K)["per_class"]["2"]
        if pc["fraction_ratio"] > 1:  # only below the real fraction is shrinking a loss
            continue
        terms.append(balanced_consistency({"2": pc}))
        ious.append(pc["iou_synthetic"])
    assert len(terms) >= 4
    assert max(ious) > ious[0] + 0.05  # the shrinking did raise the film's IoU: the test has something to catch
    assert all(b <= a + 1e-9 for a, b in zip(terms, terms[1:])), terms
    assert terms[-1] == 0.0


def test_balanced_consistency_edge_cases():
    ok = {"iou_synthetic": 0.5, "iou_real": 0.5, "fraction_synthetic": 0.1, "fraction_real": 0.1}
    assert balanced_consistency({"a": ok}) == pytest.approx(1.0)
    # a class the judge segments on real images but the real training masks lack: counted, agreement 0 or 1
    invented = {"iou_synthetic": 0.5, "iou_real": 0.5, "fraction_synthetic": 0.05, "fraction_real": 0.0}
    assert balanced_consistency({"a": ok, "b": invented}) == pytest.approx(0.5)
    assert balanced_consistency({"a": ok, "b": {**invented, "fraction_synthetic": 0.0}}) == pytest.approx(1.0)
    # without the fraction factor: the capped consistency
    half = {**ok, "fraction_synthetic": 0.05}
    assert balanced_consistency({"a": half}) == pytest.approx(0.5)
    assert balanced_consistency({"a": half}, fractions=False) == pytest.approx(1.0)
    # cannot be computed: None, never a number made up from a partial record
    assert balanced_consistency({}) is None
    assert balanced_consistency({"a": {**ok, "iou_real": 0.0}}) is None
    for bad in ({k: v for k, v in ok.items() if k != "fraction_synthetic"}, {**ok, "iou_synthetic": None},
                {**ok, "iou_synthetic": float("nan")}, {**ok, "fraction_real": -0.1}):
        assert balanced_consistency({"a": ok, "b": bad}) is None


def test_a_class_the_judge_cannot_segment_weighs_nothing():
    real = masks_with_films(20, 0)
    syn = masks_with_films(30, 1)
    judge_real = np.where(real == 2, 0, real)  # the judge never finds films, on real or synthetic images
    judge_syn = np.where(syn == 2, 0, syn)
    rec = consistency(syn, judge_syn, real, judge_real, K)
    assert rec["per_class"]["2"]["iou_real"] == 0.0 and rec["per_class"]["2"]["ratio"] is None
    assert rec["consistency"] == pytest.approx(1.0, abs=0.02)


def test_consistency_input_errors():
    real = masks_with_films(4, 0)
    with pytest.raises(ValueError, match="differ in shape"):
        consistency(real, real[:2], real, real, K)
    with pytest.raises(ValueError, match="outside 0..2"):
        consistency(real + 5, real, real, real, K)
    with pytest.raises(ValueError, match="no masks"):
        consistency(real[:0], real[:0], real, real, K)


def test_per_image_consistency():
    syn = masks_with_films(5, 1)
    pred = syn.copy()
    pred[2] = 0  # one image the judge sees as matrix only
    scores = per_image_consistency(syn, pred, K, reference=0.5)
    np.testing.assert_allclose(scores[[0, 1, 3, 4]], 2.0)
    assert scores[2] < 0.8
    with pytest.raises(ValueError, match="reference"):
        per_image_consistency(syn, pred, K, reference=0.0)


class FakeJudge(pretest.Judge):
    """Sees the template mask in bright images (good pairs) and matrix only in dark ones (bad pairs)."""

    template = masks_with_films(1, 9)[0]

    def predict(self, images):
        return np.stack([self.template if img.mean() > 0.5 else np.zeros_like(self.template) for img in images])

    @property
    def reference(self):
        return 1.0


def make_judge() -> FakeJudge:
    real = masks_with_films(4, 0)
    return FakeJudge(model=None, encoder="fake", epochs=0, real_images=real, real_masks=real, real_preds=real,
                     real_train_masks=real, num_classes=K, class_names=["m", "blob", "film"])


def fake_generate(bad_every: int):
    """Sample i (global index) is bad when i % bad_every == 0; every sample's mask is the judge's template."""
    template = FakeJudge.template
    calls = []

    def generate(n, start_index):
        calls.append((n, start_index))
        out = []
        for i in range(start_index, start_index + n):
            img = np.full((32, 32, 1), 0.0 if i % bad_every == 0 else 1.0)
            out.append(SimpleNamespace(image=img, cleaned=template.copy(), index=i))
        return out
    return generate, calls


def test_curation_drops_bad_pairs_and_draws_more():
    generate, calls = fake_generate(bad_every=3)
    samples, preds, rec = pretest.generate_pool(generate, 12, judge=make_judge(), min_consistency=0.5)
    assert len(samples) == 12 and len(preds) == 12
    assert all(s.index % 3 for s in samples)  # no bad one kept
    assert [s.index for s in samples] == sorted(s.index for s in samples)
    assert rec["drawn"] > 12 and rec["dropped"] == rec["drawn"] - 12
    assert rec["filled_below_threshold"] == 0
    assert calls[0] == (12, 0) and calls[1][1] == 12  # the second round continues the indices


def test_curation_without_threshold_keeps_the_first_draw():
    generate, calls = fake_generate(bad_every=3)
    samples, preds, rec = pretest.generate_pool(generate, 6, judge=make_judge(), min_consistency=0.0)
    assert [s.index for s in samples] == list(range(6)) and rec["dropped"] == 0 and len(calls) == 1
    samples, preds, rec = pretest.generate_pool(generate, 6, judge=None)
    assert preds is None and len(samples) == 6


def test_curation_fills_with_the_best_when_the_threshold_is_unreachable():
    generate, _ = fake_generate(bad_every=1)  # every sample is bad
    with pytest.warns(UserWarning, match="pass the curation"):
        samples, _, rec = pretest.generate_pool(generate, 4, judge=make_judge(), min_consistency=0.5, max_rounds=2)
    assert len(samples) == 4 and rec["filled_below_threshold"] == 4 and rec["rounds"] == 2
    with pytest.raises(ValueError, match="needs the pre-test judge"):
        pretest.generate_pool(generate, 4, judge=None, min_consistency=0.5)


def test_judge_record_scores_real_validation_patches_like_a_pool():
    """quality.json → pretest → real_reference: the judge's consistency on real patches it did not train on, with
    their own masks — what a pool as good as real data would score (plain, balanced, capped)."""
    import dataclasses

    template = FakeJudge.template
    bright = np.ones((3, 32, 32, 1))
    syn_masks = np.stack([template] * 4)
    judge = make_judge()
    rec = pretest.judge_record(judge, syn_masks, judge.predict(np.ones((4, 32, 32, 1))))
    assert "real_reference" not in rec  # a judge without validation patches: nothing to show
    judge = dataclasses.replace(judge, val_images=bright, val_masks=np.stack([template] * 3))
    rec = pretest.judge_record(judge, syn_masks, judge.predict(np.ones((4, 32, 32, 1))))
    ref = rec["real_reference"]
    want = consistency(np.stack([template] * 3), np.stack([template] * 3), judge.real_masks, judge.real_preds, K,
                       judge.class_names, real_train_masks=judge.real_train_masks)
    assert ref["num_patches"] == 3
    for k in ("consistency", "consistency_balanced", "consistency_capped"):
        assert ref[k] == pytest.approx(want[k]) and rec["consistency"][k] is not None
    # validation patches the judge segments as matrix only: the reference falls with them
    dark = dataclasses.replace(judge, val_images=np.zeros_like(bright))
    assert pretest.judge_record(dark, syn_masks, syn_masks)["real_reference"]["consistency"] < ref["consistency"]


def test_check_record_asks_a_judge_of_another_seed_about_the_kept_pool():
    calls = []

    def fake_train(manifest, folder, *, encoder, epochs, seed, unet, progress):
        calls.append({"folder": folder, "seed": seed, "encoder": encoder, "epochs": epochs, "unet": unet})
        return make_judge()

    generate, _ = fake_generate(bad_every=2)
    samples, preds, _ = pretest.generate_pool(generate, 6, judge=make_judge(), min_consistency=0.5)
    images = np.stack([s.image for s in samples])
    masks = np.stack([s.cleaned for s in samples])
    rec = pretest.check_record(None, "check", images, masks, encoder="plain", epochs=3, seed=7,
                               unet={"base_filters": 8}, progress=False, train=fake_train)
    assert calls == [{"folder": "check", "seed": 7 + pretest.CHECK_SEED_OFFSET, "encoder": "plain", "epochs": 3,
                      "unet": {"base_filters": 8}}]
    assert rec["judge_seed"] == 8 and rec["consistency"]["consistency"] == pytest.approx(1.0)
    # a pool the second judge disagrees with: dark images, where the fake judge sees matrix only
    rec = pretest.check_record(None, "check", np.zeros_like(images), masks, encoder="plain", epochs=3, seed=7,
                               progress=False, train=fake_train)
    assert rec["consistency"]["consistency"] < 0.5
    with pytest.raises(ValueError, match="6 images but 5 masks"):
        pretest.check_record(None, "check", images, masks[:5], encoder="plain", epochs=3, seed=7, train=fake_train)
    assert len(calls) == 2  # refused before a judge is trained


def test_min_consistency_needs_the_pretest():
    ns = {"experiment": "x", "outputs_dir": "outputs", "seed": 0, "pool_size": 4, "temperature": 1.0,
          "sample_batch": 4, "min_object_px": -1, "use_kmeans": True, "cleanup": "thin", "min_object_len": -1.0,
          "rim_px": 1, "min_consistency": 0.8, "max_fraction_error": -1.0, "max_curation_rounds": 3, "rare_boost": 0.0, "pretest": False,
          "pretest_encoder": "efficientnetb0", "pretest_epochs": 1, "pretest_unet": {}, "pretest_model": None, "match_fractions": False, "pool_candidates": 2.0,
          "check_judge": True, "save_figures": False}
    with pytest.raises(config.ParamError, match="min_consistency > 0 needs pretest=True"):
        config.start_stage("04_synthesis", ns)
    with pytest.raises(config.ParamError, match="pretest_unet=.*wrong type"):
        config.start_stage("04_synthesis", {**ns, "pretest": True, "pretest_unet": "plain16"})


def test_judge_config_takes_the_u_net_settings_and_refuses_unknown_or_fixed_keys():
    cfg = pretest.judge_config({"base_filters": 8, "batch_size": 4, "bn_momentum": 0.9}, num_classes=3,
                               in_channels=1, encoder="plain", epochs=7, seed=2)
    assert (cfg.base_filters, cfg.batch_size, cfg.bn_momentum, cfg.epochs, cfg.encoder, cfg.seed) == \
        (8, 4, 0.9, 7, "plain", 2)
    with pytest.raises(ValueError, match=r"unknown U-Net setting\(s\) \['base_filter'\]"):
        pretest.judge_config({"base_filter": 8}, num_classes=3, in_channels=1, encoder="plain", epochs=1, seed=0)
    with pytest.raises(ValueError, match=r"\['epochs'\] are set by 04 itself"):
        pretest.judge_config({"epochs": 3}, num_classes=3, in_channels=1, encoder="plain", epochs=1, seed=0)
    # the allowed list leaves out what 04 sets itself
    with pytest.raises(ValueError, match=r"pretest_unet: unknown .*\['bogus', 'ephocs'\]; allowed: \[") as e:
        pretest.judge_config({"bogus": 1, "ephocs": 3}, num_classes=3, in_channels=1, encoder="plain", epochs=1,
                             seed=0)
    allowed = str(e.value).split("allowed: ")[1]
    assert "'base_filters'" in allowed and not any(f"'{k}'" in allowed for k in pretest.JUDGE_FIXED)


def test_unet_config_from_params_strict_names_unknown_keys():
    """Issue 17: UNetConfig.from_params ignores keys that are no U-Net setting (a notebook's ``experiment``, …)
    unless ``strict=True``, which names them in a ValueError (what judge_config uses instead of its own list)."""
    from dualsynth.unet.model import UNetConfig, UnknownSettings

    params = {"base_filters": 8, "experiment": "x", "budget": "epochs"}
    assert UNetConfig.from_params(params, num_classes=3, encoder="plain").base_filters == 8  # lenient by default
    with pytest.raises(UnknownSettings, match=r"unknown U-Net setting\(s\) \['budget', 'experiment'\]") as e:
        UNetConfig.from_params(params, strict=True, num_classes=3, encoder="plain")
    assert isinstance(e.value, ValueError) and e.value.unknown == ["budget", "experiment"]
    assert "base_filters" in e.value.allowed and "num_classes" not in e.value.allowed  # fixed keys are not allowed
    cfg = UNetConfig.from_params({"base_filters": 8, "epochs": 2}, strict=True, num_classes=3, encoder="plain",
                                 epochs=5)
    assert (cfg.base_filters, cfg.epochs) == (8, 5)  # fixed wins, as without strict


def test_quick_judge_uses_the_quick_study_recipe():
    """The quick preset's judge is 06's quick U-Net (same architecture, batch, updates per epoch, BatchNorm), only
    trained longer: a change to one preset that forgets the other fails here."""
    import yaml

    root = config.project_root()
    p04 = yaml.safe_load((root / "params/presets/quick/04_synthesis.yaml").read_text())
    p06 = yaml.safe_load((root / "params/presets/quick/06_unet_training.yaml").read_text())
    assert p04["pretest_encoder"] == p06["encoder"]
    for key in ("base_filters", "encoder_weights", "batch_size", "steps_per_epoch", "bn_momentum"):
        assert p04["pretest_unet"][key] == p06[key], key
    assert p04["pretest_epochs"] >= p06["epochs"]
    pretest.judge_config(p04["pretest_unet"], num_classes=4, in_channels=1, encoder=p04["pretest_encoder"],
                         epochs=p04["pretest_epochs"], seed=0)


# --------------------------------------------------------------------------- target fractions for a conditioned prior
def test_condition_source_for_an_unconditional_prior(tmp_path):
    from dualsynth.synthesis import ConditionSource

    prior = SimpleNamespace(num_conditions=0)
    src = ConditionSource.for_prior(prior, tmp_path)
    assert not src.active and src.draw(5) is None and src.describe() == "unconditional"
    with pytest.raises(ValueError, match="rare_boost=1.0 need.s. a prior conditioned"):
        ConditionSource.for_prior(prior, tmp_path, rare_boost=1.0)
    with pytest.raises(ValueError, match="max_fraction_error=0.05 need.s. a prior conditioned.*max_fraction_error=-1"):
        ConditionSource.for_prior(prior, tmp_path, max_fraction_error=0.05)
    assert not ConditionSource.for_prior(prior, tmp_path, max_fraction_error=-1.0).active  # -1: off


def test_condition_source_draws_real_training_fractions(tmp_path):
    from dualsynth.io import DataError
    from dualsynth.prior import save_conditions
    from dualsynth.synthesis import ConditionSource

    rng = np.random.default_rng(0)
    train = rng.dirichlet([5, 1, 1], size=20).astype(np.float32)
    save_conditions(tmp_path / "conditions.npz", train, train[:4], ["a", "b", "c"])
    prior = SimpleNamespace(num_conditions=3)
    src = ConditionSource.for_prior(prior, tmp_path, seed=1)
    first, again, more = src.draw(10, 0), src.draw(10, 0), src.draw(10, 10)
    assert first.shape == (10, 3)
    np.testing.assert_array_equal(first, again)  # fixed by seed and index
    assert not np.array_equal(first, more)  # a later curation round gets other targets
    assert all(any(np.allclose(row, t) for t in train) for row in first)  # each a real map's fractions
    with pytest.raises(DataError, match="conditions.npz"):
        ConditionSource.for_prior(prior, tmp_path / "nowhere")
    with pytest.raises(DataError, match="fractions of 3 classes but the prior is conditioned on 4"):
        ConditionSource.for_prior(SimpleNamespace(num_conditions=4), tmp_path)


def test_generate_samples_checks_conditions_against_the_prior():
    from dualsynth.synthesis import generate_samples

    gen = SimpleNamespace(config={"num_embeddings": 4})
    plain = SimpleNamespace(num_embeddings=4, num_conditions=0)
    cond = SimpleNamespace(num_embeddings=4, num_conditions=3)
    kw = dict(code_shape=(4, 4), progress=False)
    with pytest.raises(ValueError, match="the prior is not conditioned"):
        generate_samples(gen, plain, 2, None, conditions=np.ones((2, 3)) / 3, **kw)
    with pytest.raises(ValueError, match="pass conditions"):
        generate_samples(gen, cond, 2, None, **kw)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        generate_samples(gen, cond, 2, None, conditions=np.ones((2, 4)) / 4, **kw)


def test_curation_by_fraction_error_keeps_samples_that_match_their_target():
    """A conditioned prior does not hit its target fractions exactly; max_fraction_error keeps the samples that do."""
    from dualsynth.pretest import fraction_error

    mask = np.zeros((10, 10), np.int64)
    mask[:, :3] = 1  # fractions (0.7, 0.3, 0)

    def generate(n, start_index):
        out = []
        for i in range(start_index, start_index + n):
            target = np.array([0.7, 0.3, 0.0]) if i % 2 else np.array([0.2, 0.8, 0.0])  # odd: on target
            out.append(SimpleNamespace(image=np.ones((10, 10, 1)), cleaned=mask.copy(), condition=target, index=i))
        return out

    assert fraction_error(generate(1, 1)[0], K) == pytest.approx(0.0)
    assert fraction_error(generate(1, 0)[0], K) == pytest.approx(0.5)
    samples, preds, rec = pretest.generate_pool(generate, 6, max_fraction_error=0.1, num_classes=K)
    assert preds is None and len(samples) == 6 and all(s.index % 2 for s in samples)
    assert rec["dropped"] == rec["drawn"] - 6 and rec["fraction_error_mean_kept"] == pytest.approx(0.0)
    assert rec["fraction_error_mean_drawn"] > 0.1
    unconditioned = lambda n, start: [SimpleNamespace(image=None, cleaned=mask, condition=None)] * n  # noqa: E731
    with pytest.raises(ValueError, match="needs a prior conditioned"):
        pretest.generate_pool(unconditioned, 2, max_fraction_error=0.1, num_classes=K)
    with pytest.raises(ValueError, match="num_classes"):
        pretest.generate_pool(generate, 2, max_fraction_error=0.1)


def test_rounds_of_a_curated_pool_never_reuse_a_sampling_seed(monkeypatch):
    """generate_samples seeds each batch by the global index of its first sample, so the rounds of a curated pool
    (start_index = samples drawn so far, any sizes) never repeat a batch's noise."""
    from dualsynth import pixelcnn, synthesis, vqvae
    from dualsynth.palette import NDFEB_PALETTE

    seeds = []

    def fake_sample(prior, n, h, w, *, seed, **kw):
        seeds.append(seed)
        return np.zeros((n, h, w), np.int32)

    monkeypatch.setattr(pixelcnn, "sample_fast", fake_sample)
    monkeypatch.setattr(vqvae, "decode_codes", lambda g, codes: np.zeros((len(codes), 8, 8, 1 + 4), np.float32))
    gen = SimpleNamespace(config={"num_embeddings": 4})
    prior = SimpleNamespace(num_embeddings=4, num_conditions=0)
    drawn = 0
    for n in (10, 20, 10, 7, 9):  # the sizes of successive curation rounds
        out = synthesis.generate_samples(gen, prior, n, NDFEB_PALETTE, code_shape=(2, 2), batch_size=16,
                                         encoding="onehot", image_channels=1, progress=False, start_index=drawn,
                                         seed=3, min_object_px=0)
        assert len(out) == n
        drawn += n
    assert len(seeds) == len(set(seeds)) == 6  # 1 + 2 + 1 + 1 + 1 batches, no seed twice
    assert seeds[0] == 3  # the first batch of a pool keeps the pool's seed


# --------------------------------------------------------------------------- a pool matched to the real fractions
def test_match_fractions_picks_the_subset_whose_mean_hits_the_target():
    rng = np.random.default_rng(0)
    # a generator that over-draws class 0: most candidates hold 90 % of it, a few are rich in the rare class 2
    common = np.tile([0.9, 0.08, 0.02], (80, 1)) + rng.normal(0, 0.01, (80, 3))
    rare = np.tile([0.5, 0.1, 0.4], (20, 1)) + rng.normal(0, 0.01, (20, 3))
    f = np.clip(np.vstack([common, rare]), 0, None)
    target = np.array([0.75, 0.085, 0.165])
    pick = pretest.match_fractions(f, target, 40)
    assert len(pick) == 40 and len(set(pick)) == 40 and np.all(np.diff(pick) > 0)
    got = f[pick].mean(axis=0)
    assert np.all(np.abs(got - target) / target < 0.05), got  # every class within 5 % (relative)
    first40 = f[:40].mean(axis=0)
    assert abs(first40[2] - target[2]) / target[2] > 0.8  # the draw order alone misses the rare class badly
    with pytest.raises(ValueError, match="cannot choose 5 of 3"):
        pretest.match_fractions(f[:3], target, 5)


def test_generate_pool_matches_fractions_from_twice_the_candidates():
    k = 3

    def generate(n, start):  # sample i is rich in class 2 (27 %) when i % 3 == 0, else 90 % class 0
        out = []
        for i in range(start, start + n):
            m = np.zeros((10, 10), np.int64)
            m[:, :3 if i % 3 == 0 else 0] = 2
            m[0, :] = 1
            out.append(SimpleNamespace(cleaned=m, image=np.zeros((10, 10), np.uint8), condition=None))
        return out

    target = np.array([0.75, 0.10, 0.15])
    plain, _, rec0 = pretest.generate_pool(generate, 8, num_classes=k)
    assert rec0["fraction_match"] is None and rec0["drawn"] == 8
    samples, _, rec = pretest.generate_pool(generate, 8, num_classes=k, fraction_target=target, candidates=2.0)
    fm = rec["fraction_match"]
    assert rec["drawn"] >= 16 and fm["candidates"] >= 16 and len(samples) == 8
    kept = quality_fractions(samples, k)
    assert abs(kept[2] - 0.15) < 0.02 < abs(quality_fractions(plain, k)[2] - 0.15)  # draw order: 0.10
    assert np.allclose(fm["mean_kept"], kept)
    assert rec["dropped_by_match"] == fm["candidates"] - 8 and rec0["dropped_by_match"] == 0
    with pytest.warns(UserWarning, match="only 8 candidates for a pool of 8 \\(wanted 16\\)"):
        _, _, rec1 = pretest.generate_pool(generate, 8, num_classes=k, fraction_target=target, candidates=2.0,
                                           max_rounds=1)
    assert rec1["fraction_match"]["candidates"] == 8 and rec1["fraction_match"]["wanted"] == 16
    for bad in ([0.5, 0.5], [0.7, 0.1, np.nan], [1.2, -0.1, -0.1], [0.5, 0.1, 0.1]):
        with pytest.raises(ValueError, match="must be 3 class fractions >= 0 summing to 1"):
            pretest.generate_pool(generate, 8, num_classes=k, fraction_target=np.array(bad))
    with pytest.raises(ValueError, match="fraction_target needs num_classes"):
        pretest.generate_pool(generate, 8, fraction_target=target)
    with pytest.raises(ValueError, match="candidates must be a number >= 1"):
        pretest.generate_pool(generate, 8, num_classes=k, fraction_target=target, candidates=0.5)


def quality_fractions(samples, k):
    from dualsynth.quality import per_patch_fractions

    return per_patch_fractions(np.stack([s.cleaned for s in samples]), k).mean(axis=0)
