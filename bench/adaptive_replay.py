"""How many U-Net runs would `study --until-decided` have needed, with and without `--futility`, from other start
seeds?  A replay of the stopping rule on the runs an adaptive study already finished.

For each experiment given (with ``results/adaptive.json`` from ``study --until-decided``), the rule
(:func:`dualsynth.adaptive.plan_round`, the code the study runs) is started from ``--start`` seeds and shown only the
runs it has asked for so far, round by round, as the study would have been; each run's score is the one that study
recorded.  A replay that asks for a run the study did not train stops there and says so (it cannot be replayed
further).  Runs of one experiment are deterministic on one machine, so the replay gives the same decisions the
rule would have made live; the runs counted are those of the study's variants and controls, as the record counts them.

    .venv/bin/python bench/adaptive_replay.py outputs/s8-nasa-epochs outputs/q17-nasa_super ... [--out FILE]

Writes ``bench/results/adaptive_replay.json`` (merged with an existing file) and prints one line per replay.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dualsynth import adaptive, results
from dualsynth.io import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]


def replay(exp: Path, start: list[int], max_seeds: int, futility: bool) -> dict:
    rec = adaptive.load_record(exp)
    if rec is None:
        raise SystemExit(f"{exp}: no results/adaptive.json (run study --until-decided there first)")
    comps = [adaptive.Comparison(c["variant"], c["against"], c["kind"]) for c in rec["comparisons"]]
    names = list(rec["study_runs"])
    done = results.collect_metrics(exp)
    available = {(str(v), int(s)) for v, s in zip(done["variant"], done["seed"])}
    have = {(r, s) for r in names for s in start} & available
    missing: list = sorted({(r, s) for r in names for s in start} - available)
    rounds = 0
    while not missing:
        mask = [(str(v), int(s)) in have for v, s in zip(done["variant"], done["seed"])]
        rp = adaptive.plan_round(done[mask], comps, start, max_seeds, futility=futility)
        if rp.done:
            break
        missing = [r for r in rp.next_runs if r not in available]
        have |= {r for r in rp.next_runs if r in available}
        rounds += 1
    counted = {(r, s) for r, s in have if r in set(names)}
    return {"start": start, "max_seeds": max_seeds, "futility": futility, "rounds": rounds,
            "runs": len(counted), "fixed_grid_runs": len(names) * max_seeds,
            "replayed_to_the_end": not missing, "missing_runs": [list(r) for r in missing],
            "comparisons": [{"variant": s.comparison.variant, "against": s.comparison.against, "seeds": s.seeds,
                             "gain": s.gain, "ci_low": s.ci_low, "ci_high": s.ci_high, "decided": s.decided,
                             "futile": s.futile, "why": s.why} for s in rp.states] if not missing else []}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="+", type=Path)
    ap.add_argument("--max-seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adaptive_replay.json")
    args = ap.parse_args(argv)
    out = read_json(args.out) if args.out.is_file() else {}
    for exp in args.experiments:
        entries = []
        for start in ([0, 1], [0, 1, 2]):
            for futility in (False, True):
                r = replay(exp, start, args.max_seeds, futility)
                entries.append(r)
                verdicts = ", ".join(f"{c['variant']}: {'decided' if c['decided'] else 'futile' if c['futile'] else 'undecided'}"
                                     f" at {len(c['seeds'])}" for c in r["comparisons"])
                print(f"{exp.name} start {start} futility {futility}: {r['runs']} / {r['fixed_grid_runs']} runs"
                      + ("" if r["replayed_to_the_end"] else f" (stopped: needs {r['missing_runs'][:3]})")
                      + (f" — {verdicts}" if verdicts else ""), flush=True)
        out[exp.name] = entries
        atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
