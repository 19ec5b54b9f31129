"""Adaptive seeds until a verdict: ``study --until-decided --max-seeds N`` (issue 13; after seed 002's adaptive
sampling).

A **comparison** is a variant with synthetic data against the run it is judged by: its matched control run
``<base>@<updates>`` when the study plans one (:func:`dualsynth.study.plan_study` under ``budget: epochs``), else
its base (at equal updates — always under ``budget: fixed``; a synthetic-only variant under ``epochs`` against its
base as it is, it has no control).  The study first runs every chosen variant (and control) on the seeds given; then,
one round at a time, adds the next seed only to the comparisons not yet decided.  A comparison is **decided** when
the 95 % interval of its per-seed gains — :func:`dualsynth.stats.seed_gain`, the code the report's intervals come
from — excludes 0; it **stops** there, or undecided when it has ``max_seeds`` seeds.

:func:`plan_round` is pure (a table of finished runs in; the state of every comparison and the runs to add out), so
the stopping rule is tested on synthetic metric tables; :func:`run_until_decided` is the loop: run a round with
:func:`dualsynth.batch.run_study`, collect the finished runs, plan again, and write ``results/adaptive.json``
(:func:`adaptive_record`).  Every decision is re-derived from the runs on disk, so a killed round re-run continues
where it stopped, and a finished run is never re-trained or left out: every seed both runs of a comparison have
counts, also seeds finished before (by a fixed grid, say).

With ``futility`` (``study --until-decided --futility``) a comparison also **stops for futility**, undecided, when
at the spread its seeds show so far even ``max_seeds`` seeds would not decide the gain seen so far: |gain| < the
projected 95 % half-width t(0.975, N − 1) · sd / √N at N = ``max_seeds`` (sd from its n ≥ 2 seeds).  It can only
stop a comparison early as *inconclusive*, never call one decided, so it does not make a false "helps" likelier; it
may stop one that more seeds would have decided (the sd of a few seeds is itself noisy).

The interval is not corrected for looking after every round: stopping at the first interval that excludes 0 makes
a false "decided" more likely than 5 % (at most one look per added seed).  The report's verdict ``helps`` also needs
the Holm-adjusted paired test over the test images, which the stopping rule does not look at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .config import ParamError
from .variants import parse_run

__all__ = ["Comparison", "ComparisonState", "RoundPlan", "comparisons", "seed_sequence", "plan_round",
           "projected_half_width",
           "adaptive_record", "load_record", "run_until_decided", "study_runner", "RECORD", "METRIC"]

METRIC = "missing_class_iou"
#: where the record goes, under the experiment folder
RECORD = Path("results") / "adaptive.json"


@dataclass(frozen=True)
class Comparison:
    """``variant`` against ``against`` (its matched control run, ``kind="matched run"``, or its base, ``"base"``)."""

    variant: str
    against: str
    kind: str


@dataclass
class ComparisonState:
    """Where one comparison stands: the seeds its gain rests on (both runs finished), the gain and its 95 %
    interval over them, ``decided`` (the interval excludes 0), ``stopped`` (decided, or ``max_seeds`` reached),
    ``why`` in words, ``needs``: its runs ``(run, seed)`` to add next (empty once stopped), and ``futile``: stopped
    early because ``max_seeds`` seeds could not decide it (``futility``)."""

    comparison: Comparison
    seeds: list[int]
    gain: float | None
    ci_low: float | None
    ci_high: float | None
    decided: bool
    stopped: bool
    why: str
    needs: list[tuple[str, int]] = field(default_factory=list)
    futile: bool = False


@dataclass
class RoundPlan:
    """Every comparison's state and the runs of the next round, each ``(run, seed)`` once (a base or control
    several comparisons need is trained once)."""

    states: list[ComparisonState]
    next_runs: list[tuple[str, int]]

    @property
    def done(self) -> bool:
        return all(s.stopped for s in self.states)

    def study_calls(self) -> list[tuple[list[str], list[int]]]:
        """The round as ``(variants, seeds)`` calls of :func:`dualsynth.batch.run_study` (with matched controls):
        a needed control run is asked for through its comparison's variant (``run_study`` adds the control; the
        variant's own run of that seed is needed too, or finished and skipped).  Seeds needing the same variants
        share one call, so a normal round is one call and starts one Dask cluster."""
        per_seed: dict[int, list[str]] = {}
        for st in self.states:
            for run, seed in st.needs:
                name = st.comparison.variant if parse_run(run).control else run
                names = per_seed.setdefault(seed, [])
                if name not in names:
                    names.append(name)
        calls: dict[tuple[str, ...], list[int]] = {}
        for seed in sorted(per_seed):
            calls.setdefault(tuple(per_seed[seed]), []).append(seed)
        return [(list(v), s) for v, s in calls.items()]


def comparisons(variants: Sequence[str], controls: Mapping[str, str]) -> list[Comparison]:
    """The comparisons of a study of ``variants``: each one with synthetic data (not a base, an augmentation
    baseline or a control run) against its matched control in ``controls`` (``StudyPlan.controls``), else its base."""
    from .stats import base_of

    out = []
    for v in variants:
        r = parse_run(v)
        if r.control or r.variant.group in ("base", "augment"):
            continue
        c = controls.get(r.name)
        out.append(Comparison(r.name, c, "matched run") if c else Comparison(r.name, base_of(r.name), "base"))
    return out


def seed_sequence(start: Sequence[int], max_seeds: int) -> list[int]:
    """The seeds in the order they are added: ``start`` as given, then the next integers above its largest, up to
    ``max_seeds`` in all (``[0, 1]``, 5 → ``[0, 1, 2, 3, 4]``)."""
    start = [int(s) for s in dict.fromkeys(start)]
    if not start or min(start) < 0:
        raise ParamError(f"--seeds {start}: give at least one seed ≥ 0 to start from")
    if int(max_seeds) < max(2, len(start)):
        raise ParamError(f"--max-seeds {max_seeds}: at least 2 (an interval needs two seeds) and at least the "
                         f"{len(start)} seed(s) given in --seeds")
    extra = range(max(start) + 1, max(start) + 1 + int(max_seeds) - len(start))
    return start + list(extra)


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _interval(lo, hi) -> str:
    return "no interval" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"


def projected_half_width(ci_low: float, ci_high: float, n: int, n_target: int) -> float:
    """The 95 % half-width a gain's interval would have at ``n_target`` seeds if the spread stayed as it is at ``n``
    seeds (the interval [``ci_low``, ``ci_high``] of :func:`dualsynth.stats.seed_gain`: t(0.975, n − 1) · sd / √n)."""
    from scipy.stats import t

    if n < 2 or n_target < 2:
        raise ValueError(f"a half-width needs at least 2 seeds (n={n}, n_target={n_target})")
    sd = (ci_high - ci_low) / 2 * math.sqrt(n) / float(t.ppf(0.975, n - 1))
    return float(t.ppf(0.975, n_target - 1)) * sd / math.sqrt(n_target)


def plan_round(runs, comps: Sequence[Comparison], start: Sequence[int], max_seeds: int,
               metric: str = METRIC, futility: bool = False) -> RoundPlan:
    """The state of every comparison after the finished runs in ``runs`` (columns ``variant``, ``seed``,
    ``metric``: :func:`dualsynth.results.collect_metrics`) and the runs of the next round.

    A comparison whose starting seeds are not all finished needs them first.  Otherwise, over every seed both its
    runs have: decided when the 95 % interval of the per-seed gains excludes 0; stopped undecided when it has
    ``max_seeds`` seeds; else it needs its two runs of the next seed of :func:`seed_sequence` it lacks (only those
    not finished).  ``futility``: also stopped undecided when ``max_seeds`` seeds could not decide it at the spread
    seen so far (|gain| < :func:`projected_half_width` at ``max_seeds``).  Pure: nothing is read or written.
    """
    from .stats import seed_gain

    sequence = seed_sequence(start, max_seeds)
    have = set()
    if len(runs):
        have = {(str(v), int(s)) for v, s in zip(runs["variant"], runs["seed"])}
    states, next_runs = [], []
    for c in comps:
        g = (seed_gain(runs, c.variant, c.against, metric) if len(runs)
             else {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "seeds": []})
        seeds = list(g["seeds"])
        gain, lo, hi = _finite(g["mean"]), _finite(g["ci_low"]), _finite(g["ci_high"])
        n = len(seeds)
        waiting = [s for s in sequence[:len(dict.fromkeys(start))] if s not in seeds]
        decided = stopped = futile = False
        target: list[int] = []
        if waiting:
            target, why = waiting, f"waiting for the starting seed(s) {waiting}"
        elif lo is not None and (lo > 0 or hi < 0):
            decided = stopped = True
            why = (f"decided at {n} seeds: the 95 % interval {_interval(lo, hi)} lies "
                   f"{'above' if lo > 0 else 'below'} 0")
        elif n >= max_seeds:
            stopped = True
            why = (f"not decided: stopped at {n} seeds (--max-seeds {max_seeds}); the 95 % interval "
                   f"{_interval(lo, hi)} includes 0")
        elif futility and n >= 2 and gain is not None and lo is not None \
                and abs(gain) < (hw := projected_half_width(lo, hi, n, max_seeds)):
            stopped = futile = True
            why = (f"not decided: stopped for futility at {n} seeds — the 95 % interval {_interval(lo, hi)} "
                   f"includes 0, and at this spread even {max_seeds} seeds would give ±{hw:.3f}, more than the "
                   f"gain {gain:+.3f}")
        else:
            nxt = next(s for s in sequence if s not in seeds)
            target = [nxt]
            why = f"undecided at {n} seed(s) ({_interval(lo, hi)} includes 0): seed {nxt} next"
        needs = [(run, s) for s in target for run in (c.variant, c.against) if (run, s) not in have]
        states.append(ComparisonState(c, seeds, gain, lo, hi, decided, stopped, why, needs, futile))
        next_runs += [r for r in needs if r not in next_runs]
    return RoundPlan(states, next_runs)


def adaptive_record(plan: RoundPlan, runs, study_runs: Sequence[str], start: Sequence[int], max_seeds: int,
                    metric: str = METRIC, futility: bool = False) -> dict[str, Any]:
    """The JSON record of an adaptive study (``results/adaptive.json``): per comparison the seeds used, decided
    yes/no and why; how many runs the study holds against a fixed grid of ``study_runs × max_seeds``."""
    names = set(study_runs)
    held = 0
    if len(runs):
        held = len({(str(v), int(s)) for v, s in zip(runs["variant"], runs["seed"]) if str(v) in names})
    grid = len(names) * int(max_seeds)
    return {
        "rule": "add one seed per round to each comparison whose 95 % interval over seeds includes 0; stop it when "
                "the interval excludes 0 (decided) or at max_seeds"
                + ("; or, undecided, when at its spread so far max_seeds seeds could not decide its gain (futility)"
                   if futility else ""),
        "futility": bool(futility), "metric": metric, "start_seeds": [int(s) for s in dict.fromkeys(start)],
        "max_seeds": int(max_seeds),
        "seed_sequence": seed_sequence(start, max_seeds), "study_runs": list(study_runs),
        "comparisons": [{"variant": s.comparison.variant, "against": s.comparison.against,
                         "kind": s.comparison.kind, "seeds": s.seeds, "n": len(s.seeds), "gain": s.gain,
                         "ci_low": s.ci_low, "ci_high": s.ci_high, "decided": s.decided, "stopped": s.stopped,
                         "futile": s.futile, "why": s.why} for s in plan.states],
        "runs": held, "fixed_grid_runs": grid, "share_of_grid": round(held / grid, 4) if grid else None,
        "pending": [[r, s] for r, s in plan.next_runs], "complete": plan.done,
    }


def load_record(experiment_path: str | Path) -> dict[str, Any] | None:
    """``results/adaptive.json`` of an experiment, or None (no adaptive study, or an unreadable record)."""
    from .io import DataError, read_json

    f = Path(experiment_path) / RECORD
    if not f.is_file():
        return None
    try:
        rec = read_json(f)
    except DataError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("comparisons"), list) else None


def study_runner(max_seeds: int | None, futility: bool = False) -> Callable[..., dict[str, Any]]:
    """What the ``study`` / ``chain`` commands call: :func:`dualsynth.batch.run_study` (``max_seeds`` None), or
    :func:`run_until_decided` with ``max_seeds`` and ``futility`` (``--until-decided [--futility]``), taking
    ``run_study``'s arguments; its
    ``matched_controls`` is then implied (the adaptive study always plans them)."""
    from . import batch

    if max_seeds is None:
        return batch.run_study

    def adaptive_study(preset, experiment=None, variants="all", seeds=(0,), workers=1, threads_per_worker=None,
                       scheduler=None, outputs_dir="outputs", overrides=None, progress=True, matched_controls=True,
                       adopt_from=None):
        return run_until_decided(preset, experiment, variants, seeds, max_seeds, workers, threads_per_worker,
                                 scheduler, outputs_dir, overrides, progress, futility=futility, adopt_from=adopt_from)

    return adaptive_study


def run_until_decided(preset: str, experiment: str | None = None, variants: str | Sequence[str] | None = "all",
                      seeds: Sequence[int] = (0, 1), max_seeds: int = 5, workers: int = 1,
                      threads_per_worker: int | None = None, scheduler: str | None = None,
                      outputs_dir: str = "outputs", overrides: Mapping[str, Any] | None = None, progress: bool = True,
                      run_study: Callable[..., dict[str, Any]] | None = None,
                      collect: Callable[[Path], Any] | None = None, futility: bool = False,
                      adopt_from: str | None = None) -> dict[str, Any]:
    """``study --until-decided``: the study of ``variants`` on ``seeds``, then rounds of one more seed for the
    undecided comparisons (:func:`plan_round`) until all stop or a run fails; resumable.

    Matched controls are always planned (under ``budget: fixed`` none is added: the base is the control), so a
    comparison is decided at equal updates wherever the study can make one.  ``run_study`` / ``collect`` default to
    :func:`dualsynth.batch.run_study` / :func:`dualsynth.results.collect_metrics` (tests pass fakes).  Returns the
    last ``run_study`` summary with ``failed`` over all rounds, ``rounds`` (rounds run after the start) and
    ``record`` (what ``results/adaptive.json`` holds).  ``adopt_from``: as for :func:`dualsynth.batch.run_study`,
    in every round.
    """
    from . import batch, results
    from .config import experiment_dir, experiment_lock
    from .io import atomic_write_json
    from .study import plan_study
    from .variants import select

    run_study = run_study or batch.run_study
    collect = collect or results.collect_metrics
    experiment = experiment or preset
    start = [int(s) for s in dict.fromkeys(seeds)]
    seed_sequence(start, max_seeds)  # refuse bad --seeds / --max-seeds before anything runs
    chosen = [v.name for v in select(variants)]
    if not comparisons(chosen, {}):
        raise ParamError(f"--until-decided: --variants {variants!r} holds no variant with synthetic data, so there "
                         "is nothing to decide; add mixed or synthetic variants (e.g. SHQ_0,SHQ_100)")
    kw = dict(workers=workers, threads_per_worker=threads_per_worker, scheduler=scheduler, outputs_dir=outputs_dir,
              overrides=dict(overrides or {}), progress=progress, matched_controls=True,
              **({"adopt_from": adopt_from} if adopt_from else {}))
    exp = experiment_dir(outputs_dir, experiment)
    with experiment_lock(exp):  # held across the rounds, so no other batch writes between them (re-entrant)
        summary = run_study(preset, experiment, chosen, start, **kw)  # the start: every run on the seeds given
        failed = list(summary.get("failed", []))
        nb = batch.STUDY_NOTEBOOK  # 06's parameters as run_study gives them: defaults, preset, overrides
        params = {**batch.notebook_parameters(nb), **batch.preset_params(preset, nb), **(overrides or {})}
        plan = plan_study(exp, chosen, start, params, matched_controls=True)
        comps = comparisons(chosen, plan.controls)
        study_names = chosen + plan.control_runs
        rounds = 0
        while True:
            runs = collect(exp)
            rp = plan_round(runs, comps, start, max_seeds, futility=futility)
            record = adaptive_record(rp, runs, study_names, start, max_seeds, futility=futility)
            atomic_write_json(exp / RECORD, record)
            if rp.done or failed:
                break
            rounds += 1
            print(f"adaptive round {rounds}: {len(rp.next_runs)} run(s) for {sum(bool(s.needs) for s in rp.states)} "
                  f"undecided comparison(s): " + ", ".join(f"{r} seed {s}" for r, s in rp.next_runs), flush=True)
            for names, round_seeds in rp.study_calls():
                # notes=False: the start printed the study's notes; a round's subset would print wrong ones
                # ("SHQ_0 is not among the variants" when only SHQ_0's comparisons are undecided)
                summary = run_study(preset, experiment, names, round_seeds, notes=False, **kw)
                failed += list(summary.get("failed", []))
            if not failed and len(collect(exp)) <= len(runs):  # nothing new finished: stop rather than loop
                failed.append({"run": "adaptive round", "error": "the round finished no run",
                               "log": str(exp / "logs")})
    decided = sum(s.decided for s in rp.states)
    futile = sum(s.futile for s in rp.states)
    print(f"until decided: {decided} of {len(rp.states)} comparison(s) decided, "
          + (f"{futile} stopped for futility, " if futility else "")
          + f"{sum(s.stopped and not s.decided and not s.futile for s in rp.states)} stopped at --max-seeds "
          f"{max_seeds}; "
          f"{record['runs']} runs against {record['fixed_grid_runs']} for a fixed grid of {max_seeds} seeds; "
          f"record: {exp / RECORD}", flush=True)
    return {**summary, "failed": failed, "rounds": rounds, "record": record}
