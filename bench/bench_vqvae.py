#!/usr/bin/env python
"""Benchmark: VQ-VAE training images/second, ``train_vqvae`` vs a compute-only step (dualsynth.vqvae).

256 x 256 x 4 dual images (micrograph RGB + mask), batch 8, the paper's model (K=10, D=64, 128 hiddens,
32 residual hiddens, 2 residual layers, EMA codebook).  Not a test.

* pipeline     = ``vqvae.train_vqvae`` itself (its tf.data index pipeline, gather from the in-memory
  tensor, prefetch, the compiled step, the per-step host sync of the loss values), checkpoint_dir=None,
  no progress bar.  Its own ``history.seconds_per_step`` excludes the first (tracing) step; it includes
  the one evaluation at the final step, which is timed separately on the same validation images and
  subtracted (both numbers are in the JSON).
* compute      = the same model and optimizer (``vqvae._make_adam``), the same step function, on one
  constant batch: no input pipeline at all.  Same per-step host sync as ``train_vqvae``.
* compute_xla  = the same with ``tf.function(jit_compile=True)`` (XLA).
* pipeline_only = iterating ``train_vqvae``'s dataset (indices -> gather -> prefetch) without compute.

Every (intra-op, inter-op) TensorFlow thread setting runs in its own fresh process (TensorFlow takes thread
settings only before its first op): 0/0 = TensorFlow's default, then 1/1, 1/2, 2/1, 2/2 (XLA only at 0/0).  In one process the
loops are timed round-robin (pipeline, compute, compute_xla, pipeline, ...) ``repeats`` times after one
warm-up each; images/s are medians over the rounds, ratios medians of the per-round ratios.  Peak memory:
``ru_maxrss`` of that process (TensorFlow runtime included).

Also: forward FLOPs of one image (tf.compat.v1.profiler on the traced forward graph), for the projection in
BENCHMARKS.md, and the scaling of the compute-only step with the patch size (128, 256, 512; see
bench_study.py for the fitted exponent, which reads it from here).

Output: ``bench/results/vqvae.json``.  Usage: ``python bench/bench_vqvae.py [--quick]``.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

OUT = os.path.join(C.RESULTS, "vqvae.json")
PAPER_MODEL = dict(num_embeddings=10, embedding_dim=64, num_hiddens=128, num_residual_hiddens=32,
                   num_residual_layers=2, use_ema=True)
QUICK_MODEL = dict(PAPER_MODEL, num_hiddens=32, num_residual_hiddens=8)


def _task(task: dict) -> dict:
    import dualsynth  # noqa: F401
    import numpy as np
    import tensorflow as tf

    intra, inter = task["threads"]
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    tf.get_logger().setLevel("ERROR")
    from dualsynth import vqvae as vq

    size, batch, steps, repeats = task["size"], task["batch"], task["steps"], task["repeats"]
    rng = np.random.default_rng(0)
    train = rng.random((task["n_train"], size, size, 4), dtype=np.float32)
    val = rng.random((batch, size, size, 4), dtype=np.float32)
    var = float(train.var())
    tf.random.set_seed(0)
    model = vq.VQVAE(in_channels=4, **task["model"])

    def make_step(jit: bool):  # the step of train_vqvae (vqvae.make_train_step), its own optimizer
        optimizer = vq._make_adam(3e-4)
        optimizer.build(model.trainable_variables)
        return vq.make_train_step(model, optimizer, var, jit_compile=jit)

    x_const = tf.constant(train[:batch])

    def compute_loop(step_fn):
        def run():
            for _ in range(steps):
                loss, recon, vql, perp = (float(t) for t in step_fn(x_const))  # host sync as train_vqvae
        return run

    eval_t = []

    def pipeline():
        t0 = time.perf_counter()
        vq._evaluate(model, val, 2 * batch)
        eval_t.append(time.perf_counter() - t0)
        # steps + 1: train_vqvae excludes its first (tracing) step from seconds_per_step
        h = vq.train_vqvae(model, train, val, steps=steps + 1, batch_size=batch, eval_every=10**9,
                           progress=False, data_variance=var)
        return h.seconds_per_step * steps - eval_t[-1], h.seconds_per_step

    def pipeline_only():
        train_tensor = tf.constant(train)
        ds = vq._make_dataset(len(train), batch, 0, 0)
        ds = ds.map(lambda idx: tf.gather(train_tensor, idx), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        t0 = time.perf_counter()
        for n, x in enumerate(ds):
            if n + 1 >= steps * 4:
                break
        return (time.perf_counter() - t0) / (steps * 4)

    loops = {"compute": compute_loop(make_step(False))}
    if task.get("xla", True):
        loops["compute_xla"] = compute_loop(make_step(True))
    first_call = {}
    for name, fn in loops.items():   # warm-up (trace/compile) once
        t0 = time.perf_counter()
        fn()
        first_call[name] = round(time.perf_counter() - t0, 2)
    pipeline()                       # warm-up: eval graph, tf.data
    pipeline_only()
    per_step = {k: [] for k in ["pipeline", "pipeline_raw", *loops, "pipeline_only"]}
    for _ in range(repeats):
        net, raw = pipeline()
        per_step["pipeline"].append(net / steps)
        per_step["pipeline_raw"].append(raw)
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn()
            per_step[name].append((time.perf_counter() - t0) / steps)
        per_step["pipeline_only"].append(pipeline_only())
    res = dict(threads=dict(intra=intra, inter=inter), seconds_per_step=per_step,
               eval_seconds=eval_t, first_call_seconds=first_call,
               images_per_s={k: batch / C.median(v) for k, v in per_step.items()},
               peak_rss_mb=C.peak_rss_mb())
    res["ratio_pipeline_vs_compute"] = C.median(
        [c / p for p, c in zip(per_step["pipeline"], per_step["compute"])])
    if "compute_xla" in loops:
        res["ratio_xla_vs_compute"] = C.median(
            [c / x for x, c in zip(per_step["compute_xla"], per_step["compute"])])
    if task.get("flops"):
        res["forward_flops_per_image"] = C.forward_flops(
            lambda x: model(x, is_training=False)["x_recon"], tf.TensorSpec([1, size, size, 4], tf.float32))
        res["parameters"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return res


def _scaling_task(task: dict) -> dict:
    """Compute-only step time (no XLA) at several patch sizes, default threads, one process."""
    import dualsynth  # noqa: F401
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from dualsynth import vqvae as vq

    out = []
    for size in task["sizes"]:
        tf.random.set_seed(0)
        model = vq.VQVAE(in_channels=4, **task["model"])
        optimizer = vq._make_adam(3e-4)
        optimizer.build(model.trainable_variables)
        x = tf.constant(np.random.default_rng(0).random((task["batch"], size, size, 4), dtype=np.float32))
        step = vq.make_train_step(model, optimizer, 1.0)
        n = task["steps"]
        ts = C.repeat(lambda: [float(step(x)[0]) for _ in range(n)], task["repeats"])
        out.append(dict(size=size, seconds_per_step=C.median(ts) / n, seconds_all=[t / n for t in ts]))
    return dict(results=out, peak_rss_mb=C.peak_rss_mb())


def main(argv=None):
    ap = C.arg_parser(__doc__, OUT)
    ap.add_argument("--threads", default="0/0,1/1,1/2,2/1,2/2", help="intra/inter settings, 0 = TF default")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per loop and repeat (default 4)")
    args = ap.parse_args(argv)
    if args.child:
        task = __import__("json").loads(args.child)
        C.child_main(args.child, _scaling_task if task.get("kind") == "scaling" else _task)
        return None
    q = args.quick
    size, batch = (64, 4) if q else (256, 8)
    steps = args.steps or (3 if q else 4)
    repeats = args.repeats or (3 if q else 3)
    model = QUICK_MODEL if q else PAPER_MODEL
    settings = [tuple(int(v) for v in s.split("/")) for s in args.threads.split(",")]
    if q:
        settings = settings[:2]
    t_start = time.perf_counter()
    runs = []
    for n, (intra, inter) in enumerate(settings):
        task = dict(threads=[intra, inter], size=size, batch=batch, steps=steps, repeats=repeats,
                    n_train=4 * batch if q else 64, model=model, flops=(n == 0), xla=(n == 0))
        print(f"threads intra={intra} inter={inter} ...", flush=True)
        r = C.run_child(__file__, task)
        ips = r["images_per_s"]
        print(f"  images/s pipeline {ips['pipeline']:.2f}  compute {ips['compute']:.2f}  "
              f"xla {ips.get('compute_xla', float('nan')):.2f}  pipeline-only {ips['pipeline_only']:.0f}; "
              f"pipeline/compute {r['ratio_pipeline_vs_compute']:.3f}  xla speed-up "
              f"{r.get('ratio_xla_vs_compute', float('nan')):.3f}  peak {r['peak_rss_mb']:.0f} MB", flush=True)
        runs.append(r)
    sizes = [32, 64, 128] if q else [128, 256, 512]
    print(f"scaling with patch size {sizes} ...", flush=True)
    scaling = C.run_child(__file__, dict(kind="scaling", sizes=sizes, batch=batch, steps=2,
                                         repeats=3, model=model))
    scaling["fit"] = C.fit_exponent([r["size"] for r in scaling["results"]],
                                    [r["seconds_per_step"] for r in scaling["results"]])
    print(f"  seconds/step {[round(r['seconds_per_step'], 3) for r in scaling['results']]}; "
          f"exponent {scaling['fit']['exponent']}", flush=True)
    default = runs[0]
    summary = dict(
        images_per_s_pipeline=default["images_per_s"]["pipeline"],
        images_per_s_compute=default["images_per_s"]["compute"],
        images_per_s_compute_xla=default["images_per_s"].get("compute_xla"),
        ratio_pipeline_vs_compute=default["ratio_pipeline_vs_compute"],
        target_within_10_percent=default["ratio_pipeline_vs_compute"] >= 0.9,
        ratio_xla_vs_compute=default.get("ratio_xla_vs_compute"),
        best_threads=max(runs, key=lambda r: r["images_per_s"]["pipeline"])["threads"],
        forward_gflops_per_image=(default.get("forward_flops_per_image") or 0) / 1e9,
        train_step_gflops_estimate=3 * batch * (default.get("forward_flops_per_image") or 0) / 1e9,
    )
    payload = dict(
        benchmark="vqvae_training", machine=C.machine(), quick=q,
        setup=dict(size=size, channels=4, batch=batch, steps_per_repeat=steps, repeats=repeats, model=model,
                   n_train=task["n_train"], warmup="one untimed call per loop (tracing/compilation)"),
        notes=[
            "pipeline = train_vqvae (tf.data indices -> gather -> prefetch, compiled step, host sync per step); "
            "its final-step evaluation is timed separately and subtracted (pipeline_raw keeps it).",
            "compute = the same step on one constant batch (no input pipeline); compute_xla = jit_compile=True.",
            "per thread setting one fresh process; loops round-robin; medians over repeats; ratios = median "
            "of per-round ratios (pipeline/compute = compute s/step / pipeline s/step, 1 = no stall).",
            "peak_rss_mb = ru_maxrss of that process (TensorFlow runtime included).",
            "forward FLOPs counted by tf.compat.v1.profiler on the traced forward graph (2 per MAC); "
            "train_step_gflops_estimate = 3 x forward x batch.",
        ],
        summary=summary, runs=runs, scaling_patch_size=scaling,
        total_seconds=round(time.perf_counter() - t_start, 1))
    C.write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
