#!/usr/bin/env python
"""Benchmark: U-Net training images/second (tf.data pipeline vs compute-only) and batched evaluation.

The paper's U-Net (segmentation-models Unet, EfficientNetB3 encoder, random initialisation: the same compute as
ImageNet weights), 256 x 256 x 3 uint8 images, 4 classes, batch 2, Dice + focal loss, Adam
(``segmentation.compile_unet``).  Not a test.

Training (each loop = ``model.fit(..., epochs=1, steps_per_epoch=STEPS)``, the call ``train_unet`` makes):

* pipeline         = ``segmentation.make_dataset`` as ``train_unet`` builds it (shuffled, repeated, uint8 ->
  float32 / one-hot per batch, prefetch);
* pipeline_augment = the same with ``augment=True`` (the albumentations baseline, ``tf.numpy_function``);
* compute          = one constant batch (``Dataset.from_tensors(...).repeat()``): no input pipeline;
* compute_xla      = compute with ``compile(jit_compile=True)``;
* compute_mixed    = compute with ``UNetConfig(mixed_precision=True)`` (float16 compute; for GPUs).

Loops run round-robin after one warm-up each; images/s = medians over the rounds; ratios = medians of per-round
ratios.  Evaluation: ``evaluate_model`` on 27 test images, ``batch_size=8`` (the default) vs ``1``; the
probabilities of both are compared.  Scaling: compute-only step time at 128, 256, 512 px (exponent fitted by
least squares on log-log).  Peak memory: ``ru_maxrss`` of the process (TensorFlow runtime included; one process
per part).  FLOPs: forward FLOPs of one image counted by ``tf.compat.v1.profiler`` on the traced graph.

Output: ``bench/results/unet.json``.  Usage: ``python bench/bench_unet.py [--quick]``.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

OUT = os.path.join(C.RESULTS, "unet.json")
CLASSES = 4


def _data(n, size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, CLASSES, (n, size, size), dtype=np.uint8))


def _train_task(task: dict) -> dict:
    import dualsynth  # noqa: F401
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from dualsynth import segmentation as seg

    size, batch, steps, repeats = task["size"], task["batch"], task["steps"], task["repeats"]
    x, y = _data(task["n_train"], size)
    cfg = seg.UNetConfig(num_classes=CLASSES, encoder=task["encoder"], batch_size=batch)
    model = seg.compile_unet(seg.build_unet(cfg, seed=0), cfg)
    ds_pipe = seg.make_dataset(x, y, CLASSES, batch, shuffle=True, repeat=True, steps_per_epoch=steps)
    ds_aug = seg.make_dataset(x, y, CLASSES, batch, shuffle=True, augment=True, repeat=True,
                              steps_per_epoch=steps)
    const = next(iter(ds_pipe))
    ds_const = tf.data.Dataset.from_tensors(const).repeat()

    class Stamps(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            stamps.append(time.perf_counter())

    stamps: list = []

    def fit(m, ds):
        def run():
            stamps.clear()
            m.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Stamps()])
            # steady state: from the end of the first batch (iterator start, prefetch filled) to the last
            return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return run

    loops = {"pipeline": fit(model, ds_pipe), "pipeline_augment": fit(model, ds_aug),
             "compute": fit(model, ds_const)}
    errors = {}
    if task.get("xla", True):
        try:
            m_xla = seg.build_unet(cfg, seed=0)
            m_xla.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), loss=seg._make_loss(cfg),
                          jit_compile=True)
            loops["compute_xla"] = fit(m_xla, ds_const)
        except Exception as e:  # pragma: no cover
            errors["compute_xla"] = repr(e)
    if task.get("mixed", True):
        cfg_m = seg.UNetConfig(num_classes=CLASSES, encoder=task["encoder"], batch_size=batch, mixed_precision=True)
        loops["compute_mixed"] = fit(seg.compile_unet(seg.build_unet(cfg_m, seed=0), cfg_m), ds_const)
    first = {}
    for name, fn in list(loops.items()):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:
            errors[name] = (type(e).__name__ + ": " + str(e))[:600]
            del loops[name]
            continue
        first[name] = round(time.perf_counter() - t0, 2)
    per_step = {k: [] for k in loops}
    per_call = {k: [] for k in loops}
    for _ in range(repeats):
        for name, fn in loops.items():
            t0 = time.perf_counter()
            per_step[name].append(fn())
            per_call[name].append((time.perf_counter() - t0) / steps)
    res = dict(seconds_per_step=per_step, seconds_per_step_whole_fit_call=per_call, first_call_seconds=first,
               errors=errors,
               images_per_s={k: batch / C.median(v) for k, v in per_step.items()})
    res["ratios_vs_compute"] = {
        k: C.median([c / p for p, c in zip(v, per_step["compute"])]) for k, v in per_step.items() if k != "compute"}
    res["forward_flops_per_image"] = C.forward_flops(lambda t: model(t, training=False),
                                                     tf.TensorSpec([1, size, size, 3], tf.float32))
    res["parameters"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    res["peak_rss_mb"] = C.peak_rss_mb()
    return res


def _eval_task(task: dict) -> dict:
    import dualsynth  # noqa: F401
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from dualsynth import segmentation as seg

    x, y = _data(task["n_test"], task["size"], seed=1)
    cfg = seg.UNetConfig(num_classes=CLASSES, encoder=task["encoder"])
    model = seg.build_unet(cfg, seed=0)
    times = {"batched": [], "one_by_one": []}
    runs = {"batched": lambda: seg.evaluate_model(model, x, y, CLASSES),
            "one_by_one": lambda: seg.evaluate_model(model, x, y, CLASSES, batch_size=1)}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(task["repeats"]):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    p8 = seg.predict_proba(model, x)
    p1 = seg.predict_proba(model, x, batch_size=1)
    return dict(seconds=times, images_per_s={k: len(x) / C.median(v) for k, v in times.items()},
                speedup_batched=C.median([o / b for b, o in zip(times["batched"], times["one_by_one"])]),
                max_abs_probability_difference=float(np.abs(p8 - p1).max()),
                same_predicted_classes=bool((p8.argmax(-1) == p1.argmax(-1)).all()),
                pixels_with_other_class=int((p8.argmax(-1) != p1.argmax(-1)).sum()), pixels=int(p8[..., 0].size),
                batch_size_default=8, peak_rss_mb=C.peak_rss_mb())


def _scaling_task(task: dict) -> dict:
    import dualsynth  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from dualsynth import segmentation as seg

    cfg = seg.UNetConfig(num_classes=CLASSES, encoder=task["encoder"], batch_size=task["batch"])
    model = seg.compile_unet(seg.build_unet(cfg, seed=0), cfg)  # any H, W (multiples of 32)
    out = []
    for size in task["sizes"]:
        x, y = _data(task["batch"], size)
        batch = next(iter(seg.make_dataset(x, y, CLASSES, task["batch"], shuffle=False)))
        ds = tf.data.Dataset.from_tensors(batch).repeat()
        n = task["steps"]
        ts = C.repeat(lambda: model.fit(ds, epochs=1, steps_per_epoch=n, verbose=0), task["repeats"])
        out.append(dict(size=size, seconds_per_step=C.median(ts) / n, seconds_all=[t / n for t in ts]))
    return dict(results=out, peak_rss_mb=C.peak_rss_mb())


TASKS = {"train": _train_task, "eval": _eval_task, "scaling": _scaling_task}


def main(argv=None):
    ap = C.arg_parser(__doc__, OUT)
    args = ap.parse_args(argv)
    if args.child:
        task = __import__("json").loads(args.child)
        C.child_main(args.child, TASKS[task["kind"]])
        return None
    q = args.quick
    encoder = "efficientnetb0" if q else "efficientnetb3"
    size, batch, steps = (64, 2, 3) if q else (256, 2, 8)
    repeats = args.repeats or 3
    t_start = time.perf_counter()
    print("training loops ...", flush=True)
    train = C.run_child(__file__, dict(kind="train", encoder=encoder, size=size, batch=batch, steps=steps,
                                       repeats=repeats, n_train=8 if q else 32))
    for k, v in train["images_per_s"].items():
        r = train["ratios_vs_compute"].get(k)
        print(f"  {k:18s} {v:7.2f} images/s" + (f"  ratio vs compute {r:.3f}" if r else ""), flush=True)
    if train["errors"]:
        print(f"  errors: {train['errors']}", flush=True)
    print("evaluation of 27 images ...", flush=True)
    ev = C.run_child(__file__, dict(kind="eval", encoder=encoder, size=size, n_test=27, repeats=repeats))
    print(f"  batched {ev['images_per_s']['batched']:.2f} vs one-by-one {ev['images_per_s']['one_by_one']:.2f} "
          f"images/s, speed-up {ev['speedup_batched']:.2f}; max |dp| {ev['max_abs_probability_difference']:.2e}",
          flush=True)
    sizes = [32, 64, 128] if q else [128, 256, 512]
    print(f"scaling with patch size {sizes} ...", flush=True)
    sc = C.run_child(__file__, dict(kind="scaling", encoder=encoder, sizes=sizes, batch=batch,
                                    steps=2, repeats=3))
    sc["fit"] = C.fit_exponent([r["size"] for r in sc["results"]], [r["seconds_per_step"] for r in sc["results"]])
    print(f"  seconds/step {[round(r['seconds_per_step'], 3) for r in sc['results']]}; "
          f"exponent {sc['fit']['exponent']}", flush=True)
    flops = train.get("forward_flops_per_image") or 0
    summary = dict(
        images_per_s=train["images_per_s"], ratios_vs_compute=train["ratios_vs_compute"],
        target_within_10_percent=train["ratios_vs_compute"].get("pipeline", 0) >= 0.9,
        eval_images_per_s=ev["images_per_s"], eval_speedup_batched=ev["speedup_batched"],
        eval_identical_classes=ev["same_predicted_classes"],
        forward_gflops_per_image=flops / 1e9, train_step_gflops_estimate=3 * batch * flops / 1e9,
        patch_size_exponent=sc["fit"]["exponent"],
    )
    payload = dict(
        benchmark="unet", machine=C.machine(), quick=q,
        setup=dict(encoder=encoder, size=size, channels=3, classes=CLASSES, batch=batch, steps_per_repeat=steps,
                   repeats=repeats, n_test=27, warmup="one untimed call per loop"),
        notes=[
            "training loops = model.fit(epochs=1, steps_per_epoch) on the given dataset, round-robin, medians; "
            "seconds_per_step = steady state, from the end of the first batch to the end of the last "
            "(batch-end time stamps); seconds_per_step_whole_fit_call includes the fit call's set-up and the "
            "first batch (iterator start), paid once per fit() in train_unet, not per epoch.",
            "ratio vs compute = compute s/step / loop s/step (1 = no input-pipeline stall; >1 = faster).",
            "evaluation = segmentation.evaluate_model (predict_on_batch per batch + metrics) on 27 images.",
            "peak_rss_mb = ru_maxrss of the process of that part (TensorFlow runtime included).",
            "forward FLOPs by tf.compat.v1.profiler (2 per MAC); train step estimate = 3 x forward x batch.",
        ],
        summary=summary, training=train, evaluation=ev, scaling_patch_size=sc,
        total_seconds=round(time.perf_counter() - t_start, 1))
    C.write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
