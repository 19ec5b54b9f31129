#!/usr/bin/env python
"""Benchmark: codes/second of ``sample_fast`` vs ``sample_naive`` (dualsynth.pixelcnn).

64x64 code maps, K=10, untrained priors of the default size, batch 1/16/64,
both kinds ("pixelcnn", "gated"), and at batch 16 only the class-fraction-
conditioned gated prior ("gated_cond": ``num_conditions=4``, a different random
fraction vector per sample; fast and naive only).  Not a test.

* fast  = ``sample_fast`` with its defaults (method="cached", loop="graph",
  jit_compile=True i.e. XLA), timed on complete 64x64 maps after one warm-up run
  (tracing + compilation, reported as first_call_seconds).
* naive = ``sample_naive`` (whole map through the model at every position).
  It is far too slow for complete 64x64 maps, so it is timed on the first
  ``--naive-positions`` raster positions (default 64) and codes/s is
  extrapolated: its cost per position does not depend on the position (the
  whole map is evaluated every time), so codes/s = batch / (seconds per
  position).  Marked ``"extrapolated": true`` in the JSON.
* extras at batch 16, all without XLA: the cached sampler as a plain TF graph
  (``jit_compile=False``), with a Python loop over a compiled per-position step
  (``loop="python"``), and the window trick (``method="window"``); the last two
  are timed on the first rows only and extrapolated likewise (their cost per
  position does not depend on the row).

The machine is shared, so the load changes during the run.  To keep the
fast/naive ratio meaningful, the timed runs of all samplers of one (kind, batch)
are interleaved in one process (fast, naive, extras, fast, naive, ...); each
ratio is the median of the per-round ratios, codes/s are medians over the
rounds.  Peak memory is measured separately, one fresh subprocess per sampler
(warm-up + one run; ``ru_maxrss``, TensorFlow runtime included, and its increase
over the RSS after importing TensorFlow and building the model).

Output: ``bench/results/sampler.json`` (written atomically by
``dualsynth.io.atomic_write_json``).

Usage:  python bench/bench_sampler.py [--quick] [--out PATH] [--kinds pixelcnn,gated,gated_cond]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import os
import platform
import resource
import statistics
import sys
import time

import dualsynth  # noqa: F401  (before TensorFlow)
from dualsynth import pixelcnn as pc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HEIGHT = WIDTH = 64
K = 10
#: Kinds benchmarked; "gated_cond" is the gated prior conditioned on NUM_CONDITIONS class fractions.
KINDS = ("pixelcnn", "gated", "gated_cond")
NUM_CONDITIONS = 4
#: The conditioned prior is timed at this batch only (fast vs naive).
COND_BATCH = 16
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sampler.json")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE / 2**20


_FAST_DEFAULTS = {name: p.default for name, p in inspect.signature(pc.sample_fast).parameters.items()
                  if name in ("method", "loop", "jit_compile")}


def _fast_options(spec: dict) -> dict:
    return dict(method=spec.get("method", _FAST_DEFAULTS["method"]),
                loop=spec.get("loop", _FAST_DEFAULTS["loop"]),
                jit_compile=spec.get("jit", _FAST_DEFAULTS["jit_compile"]))


def _label(spec: dict) -> str:
    if spec["sampler"] == "naive":
        return "naive"
    o = _fast_options(spec)
    return f"fast[{o['method']},{o['loop']}{',xla' if o['jit_compile'] else ''}]"


def _make_model(kind: str):
    if kind == "gated_cond":
        return pc.make_prior("gated", K, num_conditions=NUM_CONDITIONS)
    return pc.make_prior(kind, K)


def _condition(model, batch: int):
    """A different random class-fraction vector per sample (None for an unconditioned prior)."""
    if not model.num_conditions:
        return None
    return np.random.default_rng(0).dirichlet([0.5] * model.num_conditions, size=batch).astype(np.float32)


def _runner(model, batch, spec):
    """(callable, positions covered) for one sampler spec."""
    cond = _condition(model, batch)
    if spec["sampler"] == "naive":
        n = spec["positions"]
        return (lambda: pc.sample_naive(model, batch, HEIGHT, WIDTH, seed=0, batch_size=batch,
                                        max_positions=n, condition=cond)), n
    rows = spec.get("rows", HEIGHT)
    kw = _fast_options(spec)
    return (lambda: pc.sample_fast(model, batch, rows, WIDTH, seed=0, batch_size=batch,
                                   condition=cond, **kw)), rows * WIDTH


def time_interleaved(kind: str, batch: int, specs: list, rounds: int) -> list:
    """Warm up every sampler, then time them round-robin ``rounds`` times."""
    model = _make_model(kind)
    runners, warm = [], []
    for spec in specs:
        fn, positions = _runner(model, batch, spec)
        if spec["sampler"] == "naive":          # warm-up on 2 positions only
            warm_fn, _ = _runner(model, batch, dict(spec, positions=2))
        else:
            warm_fn = fn
        t0 = time.perf_counter()
        warm_fn()
        warm.append(time.perf_counter() - t0)
        runners.append((fn, positions))
    times = [[] for _ in specs]
    for _ in range(rounds):
        for n, (fn, _) in enumerate(runners):
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
    out = []
    for spec, (fn, positions), ts, w in zip(specs, runners, times, warm):
        per_pos = [t / positions for t in ts]
        med = statistics.median(per_pos)
        rec = dict(kind=kind, batch=batch, sampler=spec["sampler"], label=_label(spec),
                   positions_timed=positions, extrapolated=positions < HEIGHT * WIDTH,
                   seconds_all=[round(t, 4) for t in ts], seconds_per_position=med,
                   codes_per_s=batch / med, seconds_per_64x64_batch=med * HEIGHT * WIDTH,
                   first_call_seconds=round(w, 2),
                   codes_per_s_per_round=[batch / p for p in per_pos])
        if spec["sampler"] == "fast":
            rec.update(_fast_options(spec))
        out.append(rec)
    return out


def measure_memory(kind: str, batch: int, spec: dict) -> dict:
    model = _make_model(kind)
    fn, _ = _runner(model, batch, spec)
    rss0 = _rss_mb()
    fn()          # includes tracing, like a first real call
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(peak_rss_mb=round(peak, 1), rss_increase_mb=round(peak - rss0, 1))


def _run_task(task: dict):
    tf.get_logger().setLevel("ERROR")
    if task["task"] == "time":
        return time_interleaved(task["kind"], task["batch"], task["specs"], task["rounds"])
    return measure_memory(task["kind"], task["batch"], task["spec"])


def _fmt(rec):
    ex = f" (extrapolated from {rec['positions_timed']} positions)" if rec["extrapolated"] else ""
    mem = ""
    if rec.get("peak_rss_mb") is not None:
        mem = f"  peak RSS {rec['peak_rss_mb']:.0f} MB (+{rec['rss_increase_mb']:.0f})"
    ratio = f"  ratio {rec['ratio_vs_naive']:.1f}x" if "ratio_vs_naive" in rec else ""
    return (f"  {rec['kind']:8s} B={rec['batch']:<3d} {rec['label']:24s} "
            f"{rec['codes_per_s']:10.1f} codes/s {rec['seconds_per_64x64_batch']:9.2f} "
            f"s/64x64-batch{mem}{ratio}{ex}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds / positions")
    ap.add_argument("--out", default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma list of {KINDS} (gated_cond: at batch {COND_BATCH} only)")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds per sampler (default 3, quick 2)")
    ap.add_argument("--naive-positions", type=int, default=None,
                    help="raster positions timed for the naive sampler (default 64, quick 32)")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the no-XLA / python-loop / window measurements at batch 16")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        C.child_main(args.child, _run_task)
        return None
    rounds = args.repeats or (2 if args.quick else 3)
    naive_pos = args.naive_positions or (32 if args.quick else 64)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"--kinds: unknown {unknown}; choose from {KINDS}")
    batches = [int(b) for b in args.batches.split(",")]
    fast_spec = dict(sampler="fast")
    naive_spec = dict(sampler="naive", positions=naive_pos)
    extras = [dict(sampler="fast", jit=False),
              dict(sampler="fast", jit=False, loop="python", rows=4 if args.quick else 8),
              dict(sampler="fast", jit=False, method="window", rows=2 if args.quick else 4)]

    results, summary, models_info = [], [], {}
    t_start = time.perf_counter()
    for kind in kinds:
        model = _make_model(kind)
        n_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        models_info[kind] = dict(config=model.config, parameters=n_params,
                                 receptive_field=model.receptive_field._asdict())
        print(f"{kind}: {n_params} parameters, receptive field {model.receptive_field}",
              flush=True)
        for batch in batches:
            if kind == "gated_cond" and batch != COND_BATCH:
                continue
            specs = [fast_spec, naive_spec]
            if batch == 16 and not args.no_extras and kind != "gated_cond":
                specs += extras
            recs = C.run_child(__file__, dict(task="time", kind=kind, batch=batch, specs=specs, rounds=rounds))
            fast, naive = recs[0], recs[1]
            for spec, rec in zip(specs[:2], (fast, naive)):
                mem = (dict(peak_rss_mb=None, rss_increase_mb=None) if args.no_memory else
                       C.run_child(__file__, dict(task="memory", kind=kind, batch=batch, spec=spec)))
                rec.update(mem)
            for rec in [fast] + recs[2:]:
                rec["ratio_vs_naive"] = statistics.median(
                    f / n for f, n in zip(rec["codes_per_s_per_round"],
                                          naive["codes_per_s_per_round"]))
            for rec in recs:
                print(_fmt(rec), flush=True)
            results += recs
            summary.append(dict(kind=kind, batch=batch, fast_codes_per_s=fast["codes_per_s"],
                                naive_codes_per_s=naive["codes_per_s"],
                                ratio_fast_naive=fast["ratio_vs_naive"],
                                fast_peak_rss_mb=fast["peak_rss_mb"],
                                naive_peak_rss_mb=naive["peak_rss_mb"]))

    payload = dict(
        meta=dict(
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            python=platform.python_version(), tensorflow=tf.__version__,
            machine=platform.machine(), cpu_count=os.cpu_count(),
            load_average_end=list(os.getloadavg()),
            quick=args.quick, rounds=rounds, naive_positions=naive_pos,
            height=HEIGHT, width=WIDTH, num_embeddings=K,
            total_seconds=round(time.perf_counter() - t_start, 1),
            notes=[
                f"fast = sample_fast defaults ({_FAST_DEFAULTS}), timed on complete 64x64 "
                "maps after a warm-up call (first_call_seconds includes tracing/compilation).",
                f"naive = sample_naive timed on the first {naive_pos} raster positions only; "
                "codes/s EXTRAPOLATED (its cost per position does not depend on the "
                "position).",
                "other records with extrapolated=true were timed on the first rows only "
                "(positions_timed) and extrapolated the same way.",
                "all samplers of one (kind, batch) are timed round-robin in one process; "
                "codes/s = median over rounds, ratio = median of per-round ratios.",
                "peak_rss_mb: ru_maxrss of a separate subprocess running that sampler "
                "(warm-up + one run), TensorFlow runtime included; rss_increase_mb: peak "
                "minus the RSS after importing TensorFlow and building the model.",
                "shared 2-core CPU machine: absolute numbers vary with the load of other jobs.",
                f"gated_cond = the gated prior with num_conditions={NUM_CONDITIONS} (class fractions), a "
                f"different Dirichlet(0.5) fraction vector per sample; timed at batch {COND_BATCH} only, "
                "fast and naive, no extras.",
            ]),
        models=models_info, summary=summary, results=results)
    C.write_result(args.out, payload)
    print(f"total {payload['meta']['total_seconds']} s")
    return payload


if __name__ == "__main__":
    main()
