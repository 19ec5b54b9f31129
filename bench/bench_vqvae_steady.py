#!/usr/bin/env python
"""Benchmark: steady-state VQ-VAE step fed by ``train_vqvae``'s input pipeline vs a constant batch.

Complements bench_vqvae.py, whose *pipeline* loop calls ``train_vqvae`` afresh each repetition (new optimizer,
new trace, evaluation) and so also times per-call start-up over only a few steps.  Here one compiled step
(``vqvae.make_train_step``, paper model, 256 x 256 x 4, batch 8, default threads) is fed, round-robin, by
``train_vqvae``'s dataset (indices -> parallel gather -> AUTOTUNE prefetch), by the same without tf.data
autotuning (map serial, prefetch 2), and by one constant batch (compute only); each loop takes one untimed batch
(iterator start) and then ``--steps`` timed steps with the per-step host read of the losses, as ``train_vqvae``.
Output ``bench/results/vqvae_steady.json``.  Usage: ``python bench/bench_vqvae_steady.py [--quick]``.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

OUT = os.path.join(C.RESULTS, "vqvae_steady.json")


def main(argv=None):
    ap = C.arg_parser(__doc__, OUT)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 10)")
    args = ap.parse_args(argv)
    import dualsynth  # noqa: F401
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from dualsynth import vqvae as vq

    q = args.quick
    size, batch, n = (64, 4, 3) if q else (256, 8, args.steps or 10)
    repeats = args.repeats or (3 if q else 5)
    model_kw = dict(num_hiddens=32, num_residual_hiddens=8) if q else {}
    train = np.random.default_rng(0).random((8 * batch, size, size, 4), dtype=np.float32)
    tf.random.set_seed(0)
    model = vq.VQVAE(in_channels=4, **model_kw)
    opt = vq._make_adam(3e-4)
    opt.build(model.trainable_variables)
    step = vq.make_train_step(model, opt, float(train.var()))
    tt, xc = tf.constant(train), tf.constant(train[:batch])

    def ds_library():  # as train_vqvae builds it
        ds = vq._make_dataset(len(train), batch, 0, 0)
        return ds.map(lambda i: tf.gather(tt, i), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def ds_fixed():
        ds = vq._make_dataset(len(train), batch, 0, 0).map(lambda i: tf.gather(tt, i)).prefetch(2)
        opts = tf.data.Options()
        opts.autotune.enabled = False
        return ds.with_options(opts)

    def fed(make):
        def run():
            it = iter(make())
            [float(t) for t in step(next(it))]
            t0 = time.perf_counter()
            for _ in range(n):
                [float(t) for t in step(next(it))]
            return (time.perf_counter() - t0) / n
        return run

    def compute():
        [float(t) for t in step(xc)]
        t0 = time.perf_counter()
        for _ in range(n):
            [float(t) for t in step(xc)]
        return (time.perf_counter() - t0) / n

    loops = {"pipeline": fed(ds_library), "pipeline_no_autotune": fed(ds_fixed), "compute": compute}
    for fn in loops.values():
        fn()  # warm-up
    per_step = {k: [] for k in loops}
    for _ in range(repeats):
        for k, fn in loops.items():
            per_step[k].append(fn())
    ratios = {k: C.median([c / p for p, c in zip(v, per_step["compute"])]) for k, v in per_step.items()
              if k != "compute"}
    payload = dict(benchmark="vqvae_steady", machine=C.machine(), quick=q,
                   setup=dict(size=size, batch=batch, steps=n, repeats=repeats, model=model.config),
                   seconds_per_step=per_step, images_per_s={k: batch / C.median(v) for k, v in per_step.items()},
                   ratios_vs_compute=ratios, target_within_10_percent=ratios["pipeline"] >= 0.9,
                   peak_rss_mb=C.peak_rss_mb(),
                   notes=["ratio = compute s/step / loop s/step, median of per-round ratios",
                          "peak_rss_mb = ru_maxrss of this process"])
    print({k: round(v, 3) for k, v in payload["images_per_s"].items()}, ratios, flush=True)
    C.write_result(args.out, payload)


if __name__ == "__main__":
    main()
