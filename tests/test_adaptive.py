"""Adaptive seeds until a verdict (dualsynth.adaptive): the stopping rule on synthetic metric tables, and the loop
with a fake run_study that writes metrics.json records (no TensorFlow, no Dask)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dualsynth import adaptive, batch, study
from dualsynth.adaptive import Comparison, plan_round
from dualsynth.config import ParamError
from dualsynth.io import atomic_write_json, write_png
from dualsynth.variants import parse_run, run_dir

FIXED = [Comparison("SHQ_100", "SHQ_0", "base"), Comparison("SHQ_300", "SHQ_0", "base")]


def table(scores):
    """A metric table like collect_metrics's: ``scores`` {run: {seed: Missing Class IoU}}."""
    rows = [{"variant": run, "seed": s, "missing_class_iou": v} for run, per in scores.items() for s, v in per.items()]
    return pd.DataFrame(rows, columns=["variant", "seed", "missing_class_iou"])


def with_gains(gains, base="SHQ_0", variant="SHQ_100", seeds=None):
    """Base 0.5 + 0.01·seed, the variant that plus ``gains[i]`` on the i-th seed."""
    seeds = list(range(len(gains))) if seeds is None else seeds
    return {base: {s: 0.5 + 0.01 * s for s in seeds}, variant: {s: 0.5 + 0.01 * s + g for s, g in zip(seeds, gains)}}


def test_seed_sequence_and_refusals():
    assert adaptive.seed_sequence([0, 1], 5) == [0, 1, 2, 3, 4]
    assert adaptive.seed_sequence([3], 3) == [3, 4, 5]
    assert adaptive.seed_sequence([2, 0, 2], 4) == [2, 0, 3, 4]
    with pytest.raises(ParamError, match="at least 2"):
        adaptive.seed_sequence([0], 1)
    with pytest.raises(ParamError, match="at least the 3 seed"):
        adaptive.seed_sequence([0, 1, 2], 2)


def test_comparisons_are_against_the_matched_control_else_the_base():
    got = adaptive.comparisons(["SHQ_0", "SHQ_100", "SHQ_300", "SyntMQ_50", "BMQ_aug", "SHQ_0@320"],
                               {"SHQ_100": "SHQ_0@320"})
    assert got == [Comparison("SHQ_100", "SHQ_0@320", "matched run"), Comparison("SHQ_300", "SHQ_0", "base"),
                   Comparison("SyntMQ_50", "BMQ_0", "base")]


def test_decides_when_the_interval_excludes_zero():
    # two seeds, gains 0.05 and 0.07: ±12.71·0.0141/√2 = ±0.127 includes 0 -> seed 2 for both runs
    rp = plan_round(table(with_gains([0.05, 0.07])), FIXED[:1], [0, 1], 5)
    (st,) = rp.states
    assert not st.decided and not st.stopped and st.seeds == [0, 1]
    assert rp.next_runs == [("SHQ_100", 2), ("SHQ_0", 2)] and "seed 2 next" in st.why
    # a third seed at 0.06: sd 0.01, ±0.0248 -> [0.035, 0.085] lies above 0: decided, nothing more to run
    rp = plan_round(table(with_gains([0.05, 0.07, 0.06])), FIXED[:1], [0, 1], 5)
    (st,) = rp.states
    assert st.decided and st.stopped and rp.done and rp.next_runs == []
    assert st.gain == pytest.approx(0.06) and (st.ci_low, st.ci_high) == pytest.approx((0.06 - 0.024841,
                                                                                          0.06 + 0.024841), abs=1e-5)
    assert st.why == "decided at 3 seeds: the 95 % interval [+0.035, +0.085] lies above 0"
    # the same code as the report's interval
    from dualsynth.stats import seed_gain

    g = seed_gain(table(with_gains([0.05, 0.07, 0.06])), "SHQ_100", "SHQ_0")
    assert (st.ci_low, st.ci_high) == (g["ci_low"], g["ci_high"])
    # below 0 decides too
    rp = plan_round(table(with_gains([-0.05, -0.07, -0.06])), FIXED[:1], [0, 1], 5)
    assert rp.states[0].decided and "lies below 0" in rp.states[0].why


def test_stops_at_max_seeds_undecided():
    gains = [0.05, -0.04, 0.03]
    rp = plan_round(table(with_gains(gains)), FIXED[:1], [0, 1], 3)
    (st,) = rp.states
    assert st.stopped and not st.decided and rp.done and rp.next_runs == []
    assert st.why.startswith("not decided: stopped at 3 seeds (--max-seeds 3)")
    # one seed fewer: it would go on
    assert plan_round(table(with_gains(gains[:2])), FIXED[:1], [0, 1], 3).next_runs == [("SHQ_100", 2), ("SHQ_0", 2)]


def test_projected_half_width_is_the_interval_at_more_seeds():
    from scipy.stats import t

    gains = [0.05, -0.04, 0.03]
    (st,) = plan_round(table(with_gains(gains)), FIXED[:1], [0, 1, 2], 5).states
    sd = float(np.std(gains, ddof=1))
    assert (st.ci_high - st.ci_low) / 2 == pytest.approx(t.ppf(0.975, 2) * sd / np.sqrt(3))
    assert adaptive.projected_half_width(st.ci_low, st.ci_high, 3, 5) == pytest.approx(t.ppf(0.975, 4) * sd / np.sqrt(5))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        adaptive.projected_half_width(0.0, 0.1, 1, 5)


def test_futility_stops_what_max_seeds_could_not_decide_and_never_decides():
    # gain +0.013 with sd 0.047 at 3 seeds: at 5 seeds ±2.776·0.047/√5 = ±0.059 > 0.013 -> futile (only with futility on)
    noisy = table(with_gains([0.05, -0.04, 0.03]))
    (st,) = plan_round(noisy, FIXED[:1], [0, 1, 2], 5).states
    assert not st.stopped and not st.futile
    rp = plan_round(noisy, FIXED[:1], [0, 1, 2], 5, futility=True)
    (st,) = rp.states
    assert st.stopped and st.futile and not st.decided and rp.done and rp.next_runs == []
    assert st.why.startswith("not decided: stopped for futility at 3 seeds") and "even 5 seeds would give ±0.059" in st.why
    # a gain that more seeds could decide goes on: +0.06 with sd 0.047 at 3 seeds: ±0.117 now, ±0.059 at 5
    promising = table(with_gains([0.10, 0.01, 0.07]))
    (st,) = plan_round(promising, FIXED[:1], [0, 1, 2], 5, futility=True).states
    assert not st.stopped and not st.futile and st.ci_low < 0
    assert abs(st.gain) >= adaptive.projected_half_width(st.ci_low, st.ci_high, 3, 5)
    # decided comes first and is never turned into futile; at max_seeds the plain stop applies
    (st,) = plan_round(table(with_gains([0.05, 0.07, 0.06])), FIXED[:1], [0, 1, 2], 5, futility=True).states
    assert st.decided and not st.futile
    (st,) = plan_round(table(with_gains([0.05, -0.04, 0.03, 0.0, 0.01])), FIXED[:1], [0, 1], 5,
                       futility=True).states
    assert st.stopped and not st.futile and "--max-seeds 5" in st.why
    # the record says which rule ran
    rec = adaptive.adaptive_record(rp, noisy, ["SHQ_0", "SHQ_100"], [0, 1, 2], 5, futility=True)
    assert rec["futility"] and "futility" in rec["rule"] and rec["comparisons"][0]["futile"]


def test_never_drops_or_reruns_a_finished_run():
    # seeds 0-4 finished by an earlier fixed grid: all five count, even past --max-seeds 3 and the sequence
    runs = table(with_gains([0.05, -0.04, 0.03, -0.02, 0.01]))
    (st,) = plan_round(runs, FIXED[:1], [0, 1], 3).states
    assert st.seeds == [0, 1, 2, 3, 4] and st.stopped
    # a seed finished for the variant only: just the base's run of that seed is added
    scores = with_gains([0.05, 0.07])
    scores["SHQ_100"][2] = 0.6
    rp = plan_round(table(scores), FIXED[:1], [0, 1], 5)
    assert rp.next_runs == [("SHQ_0", 2)]
    # a seed outside the sequence counts as well (seed 7), and the next seed is the sequence's first missing one
    rp = plan_round(table(with_gains([0.05, 0.07, 0.0], seeds=[0, 1, 7])), FIXED[:1], [0, 1], 5)
    assert rp.states[0].seeds == [0, 1, 7] and rp.next_runs == [("SHQ_100", 2), ("SHQ_0", 2)]
    # a starting seed not finished (a failed run) is asked for first
    scores = with_gains([0.05, 0.07])
    del scores["SHQ_0"][1]
    rp = plan_round(table(scores), FIXED[:1], [0, 1], 5)
    assert rp.next_runs == [("SHQ_0", 1)] and "waiting for the starting seed(s) [1]" in rp.states[0].why


def test_a_base_shared_by_two_comparisons_is_planned_once():
    scores = with_gains([0.05, 0.07]) | {"SHQ_300": {0: 0.52, 1: 0.49}}
    rp = plan_round(table(scores), FIXED, [0, 1], 5)
    assert rp.next_runs == [("SHQ_100", 2), ("SHQ_0", 2), ("SHQ_300", 2)]
    assert rp.study_calls() == [(["SHQ_100", "SHQ_0", "SHQ_300"], [2])]
    # a control run is asked for through its variant (run_study adds it); a decided comparison adds nothing
    comps = [Comparison("SHQ_100", "SHQ_0@320", "matched run"), Comparison("SHQ_300", "SHQ_0@640", "matched run")]
    scores = {"SHQ_0@320": {s: 0.5 for s in range(3)}, "SHQ_100": {0: 0.55, 1: 0.57, 2: 0.56},
              "SHQ_0@640": {0: 0.5, 1: 0.5}, "SHQ_300": {0: 0.52, 1: 0.47, 2: 0.5}}
    rp = plan_round(table(scores), comps, [0, 1], 5)
    assert [s.decided for s in rp.states] == [True, False]
    assert rp.next_runs == [("SHQ_0@640", 2)] and rp.study_calls() == [(["SHQ_300"], [2])]


def test_record_counts_runs_against_the_fixed_grid():
    runs = table(with_gains([0.05, 0.07, 0.06]) | {"SHQ_300": {0: 0.52, 1: 0.49}})
    rp = plan_round(runs, FIXED, [0, 1], 5)
    rec = adaptive.adaptive_record(rp, runs, ["SHQ_0", "SHQ_100", "SHQ_300"], [0, 1], 5)
    json.dumps(rec, allow_nan=False)
    assert (rec["runs"], rec["fixed_grid_runs"], rec["share_of_grid"]) == (8, 15, round(8 / 15, 4))
    c100, c300 = rec["comparisons"]
    assert c100["decided"] and c100["seeds"] == [0, 1, 2] and c100["n"] == 3
    assert not c300["decided"] and not c300["stopped"] and rec["pending"] == [["SHQ_300", 2]]
    assert not rec["complete"]


# --------------------------------------------------------------------------- the loop, with a fake run_study
EPOCHS = {"budget": "epochs", "steps_per_epoch": 0, "epochs": 20}
SIZES = {"SHQ_0": (16, 0), "SHQ_100": (16, 16), "SHQ_300": (16, 48)}
GAINS = {"SHQ_100": [0.05, 0.07, 0.06, 0.0, 0.0], "SHQ_300": [0.05, -0.04, 0.03, -0.02, 0.01]}


def fake_variants(exp):
    write_png(exp / "i.png", np.zeros((4, 4), np.uint8))
    pair = {"image": str(exp / "i.png"), "mask": str(exp / "i.png"), "source": "real", "id": "i"}
    for name, (real, syn) in SIZES.items():
        v = parse_run(name).variant
        atomic_write_json(exp / "variants" / f"{name}.json", {
            "variant": name, "group": v.group, "tier": v.tier, "percent": v.percent, "augment": False,
            "num_real_train": real, "num_synthetic_train": syn, "train": [pair] * (real + syn), "val": [pair],
            "test": [pair]})
    return exp


class FakeStudy:
    """``run_study`` that "trains" the planned runs by writing their metrics.json (score: 0.5 + 0.01·seed, plus
    GAINS for a variant); ``kill_after`` runs it raises KeyboardInterrupt, leaving the next one half-written."""

    def __init__(self, kill_after=None):
        self.kill_after, self.trained, self.calls = kill_after, [], []

    def __call__(self, preset, experiment, variants, seeds, outputs_dir, matched_controls, notes=True, **kw):
        exp = Path(outputs_dir) / experiment
        self.calls.append((list(variants), list(seeds)))
        self.notes = getattr(self, "notes", []) + [notes]
        plan = study.plan_study(exp, list(variants), seeds, {**EPOCHS, "batch_size": 2}, matched_controls)
        for r in plan.runs:
            if r["done"]:
                continue
            d = run_dir(exp / "unet", r["variant"], r["seed"])
            if self.kill_after is not None and len(self.trained) >= self.kill_after:
                atomic_write_json(d / "metrics.json", {"variant": r["variant"], "complete": False})
                raise KeyboardInterrupt
            run = parse_run(r["variant"])
            score = 0.5 + 0.01 * r["seed"] + (0 if run.control or run.variant.group == "base"
                                              else GAINS[run.name][r["seed"]])
            atomic_write_json(d / "metrics.json", {
                "variant": run.name, "seed": r["seed"], "group": "control" if run.control else run.variant.group,
                "tier": run.variant.tier, "percent": run.variant.percent, "complete": True, "accuracy": score,
                "miou": score, "miou_dataset": score, "missing_class_iou": score})
            self.trained.append((r["variant"], r["seed"]))
        return {"total": len(plan.runs), "done": 0, "skipped": 0, "failed": []}


def _until_decided(tmp_path, fake, max_seeds=5):
    return adaptive.run_until_decided("smoke", "e", "SHQ_0,SHQ_100,SHQ_300", [0, 1], max_seeds,
                                      outputs_dir=str(tmp_path), overrides=EPOCHS, progress=False, run_study=fake)


def test_loop_adds_seeds_only_where_undecided_and_counts_runs(tmp_path):
    fake_variants(tmp_path / "e")
    fake = FakeStudy()
    out = _until_decided(tmp_path, fake)
    # start: 3 variants + SHQ_0@320 + SHQ_0@640 on seeds 0, 1; round 1: seed 2 for both comparisons;
    # SHQ_100 decided at 3 seeds; rounds 2, 3: seeds 3, 4 for SHQ_300 and its control only
    assert fake.calls == [(["SHQ_0", "SHQ_100", "SHQ_300"], [0, 1]), (["SHQ_100", "SHQ_300"], [2]),
                          (["SHQ_300"], [3]), (["SHQ_300"], [4])]
    assert fake.notes == [True, False, False, False]  # a round's subset prints no notes (they would be wrong)
    assert len(fake.trained) == len(set(fake.trained)) == 18 and out["rounds"] == 3
    rec = json.loads((tmp_path / "e" / "results" / "adaptive.json").read_text())
    assert rec == out["record"] and rec["complete"] and rec["pending"] == []
    assert (rec["runs"], rec["fixed_grid_runs"]) == (18, 25)  # 5 runs × 5 seeds for a fixed grid
    by = {c["variant"]: c for c in rec["comparisons"]}
    assert by["SHQ_100"]["against"] == "SHQ_0@320" and by["SHQ_100"]["decided"] and by["SHQ_100"]["seeds"] == [0, 1, 2]
    assert by["SHQ_300"]["against"] == "SHQ_0@640" and by["SHQ_300"]["stopped"] and not by["SHQ_300"]["decided"]
    assert by["SHQ_300"]["seeds"] == [0, 1, 2, 3, 4]
    # run again: everything is on disk, nothing is trained, the record is the same
    again = FakeStudy()
    assert _until_decided(tmp_path, again)["record"] == rec and again.trained == []


def test_resume_after_a_kill_in_the_middle_of_a_round(tmp_path):
    fake_variants(tmp_path / "e")
    killed = FakeStudy(kill_after=12)  # the 10 starting runs, then 2 of round 1's 4; the 3rd left half-written
    with pytest.raises(KeyboardInterrupt):
        _until_decided(tmp_path, killed)
    rec = json.loads((tmp_path / "e" / "results" / "adaptive.json").read_text())
    assert not rec["complete"] and len(rec["pending"]) == 4  # the record of the planned round 1
    resumed = FakeStudy()
    out = _until_decided(tmp_path, resumed)
    assert not set(killed.trained) & set(resumed.trained)  # no finished run is trained again
    assert resumed.trained[:2] == [("SHQ_0@320", 2), ("SHQ_0@640", 2)]  # the rest of the killed round first
    assert len(killed.trained) + len(resumed.trained) == 18  # as many runs as without the kill
    fresh = tmp_path / "fresh"
    fake_variants(fresh / "e")
    assert out["record"]["comparisons"] == _until_decided(fresh, FakeStudy())["record"]["comparisons"]


def test_refusals_and_the_cli(tmp_path, monkeypatch, capsys):
    fake_variants(tmp_path / "e")
    with pytest.raises(ParamError, match="holds no variant with synthetic data"):
        adaptive.run_until_decided("smoke", "e", "SHQ_0", [0, 1], 3, outputs_dir=str(tmp_path), run_study=FakeStudy())
    with pytest.raises(ParamError, match="--max-seeds 1"):
        _until_decided(tmp_path, FakeStudy(), max_seeds=1)
    assert adaptive.study_runner(None) is batch.run_study
    fake = FakeStudy()
    monkeypatch.setattr(batch, "run_study", fake)
    args = ["study", "--preset", "smoke", "--experiment", "e", "--outputs-dir", str(tmp_path), "--variants",
            "SHQ_0,SHQ_100,SHQ_300", "--seeds", "0,1", "--set", "budget=epochs", "--set", "steps_per_epoch=0",
            "--set", "epochs=20"]
    assert batch.main(args + ["--until-decided", "--max-seeds", "3"]) == 0
    assert "until decided: 1 of 2 comparison(s) decided, 1 stopped at --max-seeds 3" in capsys.readouterr().out
    rec = json.loads((tmp_path / "e" / "results" / "adaptive.json").read_text())
    assert rec["max_seeds"] == 3 and (rec["runs"], rec["fixed_grid_runs"]) == (14, 15)
    with pytest.raises(SystemExit):
        batch.main(args + ["--max-seeds", "3"])
    assert "--max-seeds goes with --until-decided" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        batch.main(args + ["--futility"])
    assert "--futility goes with --until-decided" in capsys.readouterr().err
    # --futility through the command line: the record says so, and a noisy comparison stops early
    exp2 = fake_variants(tmp_path / "f")
    args2 = [a if a != "e" else "f" for a in args]
    assert batch.main(args2 + ["--until-decided", "--max-seeds", "5", "--futility"]) == 0
    out = capsys.readouterr().out
    rec2 = json.loads((exp2 / "results" / "adaptive.json").read_text())
    assert rec2["futility"] and "stopped for futility" in out
    assert any(c["futile"] for c in rec2["comparisons"])
