#!/usr/bin/env python
"""GPU check: the paper preset's training steps on this machine, and the full paper study projected in hours.

One command for the first GPU machine (``bench/gpu_check.sh``, at most 8 minutes by default).  It measures, at the
sizes of ``params/presets/paper/`` (256 px dual images, K = 10, D = 64, batch 8; the plain PixelCNN prior on
64 x 64 code maps, batch 16; EfficientNetB3 U-Net, 256 x 256 x 3, batch 2 / validation batch 1), one library call
each:

* ``vqvae``   - one optimizer step of ``vqvae.make_train_step`` (the step ``train_vqvae`` runs) on a constant
  batch (the input pipeline measured ~500x faster than the step, BENCHMARKS.md section 2), host read of the loss;
* ``prior``   - one step of ``pixelcnn.train_prior`` itself (its tf.data input, compiled step, host read of the
  loss), timed by its per-step callback;
* ``sampler`` - ``pixelcnn.sample_fast`` drawing one batch of ``sample_batch`` complete code maps (04);
* ``unet``    - one ``model.fit`` step of ``segmentation.build_unet`` + ``compile_unet`` fed by
  ``segmentation.make_dataset`` (steady state, batch-end time stamps), one validation step
  (``test_on_batch`` at the validation batch size) and the start-up of a run (build, compile, first steps).

Configurations: mixed precision off / on and XLA off / on wherever the library has the switch -- the U-Net has
both (``UNetConfig(mixed_precision=True)``; ``model.jit_compile = True``), the VQ-VAE step and the sampler have XLA
(``jit_compile``), the prior's training step gets XLA as TensorFlow's process-global auto-clustering
(``tf.config.optimizer.set_jit``).  The VQ-VAE and the PixelCNN are Sonnet modules without a float16 path: their
mixed-precision configurations are listed as ``unsupported`` (on Ampere or newer GPUs their float32 convolutions
already run as TF32 on tensor cores, TensorFlow's default, recorded in the JSON).  Every configuration runs in its
own fresh process (mixed precision and auto-clustering are process-global; a crash or an out-of-memory error stays
in its process): a short warm-up (tracing, XLA compilation, cuDNN autotuning), then the median over a few timed
steps.  The run has a hard time budget (``--budget``, default 450 s): a configuration starts only when enough of it
is left, is killed when it overruns, and the ones left over are listed as ``skipped`` with a note.  The paper
preset's own configurations run first.

Projection (``projection`` in the JSON): hours of 02 (50,000 VQ-VAE updates), 03 (the preset's prior steps),
04 (the pool's sampler batches and the pre-test U-Net) and 06 (46 U-Nets x 200 epochs: the update budget of every
variant from ``dualsynth.variants`` and ``unet.budget.run_updates`` with the paper's training-set sizes, SHQ/SLQ
16 / 5 and BLQ/BMQ 48 / 12, plus one validation pass per epoch and the start-up of each run), once with the paper
preset's configuration and once with the fastest measured configuration per model.  200 epochs is the upper bound
(early stopping usually ends a run sooner).

Without a GPU it says so and still runs (the numbers are then this CPU's); ``--cpu-smoke`` runs tiny sizes with
1-2 steps each (a test that the script works, ``tests/test_gpu_check.py``).

Output: ``bench/results/gpu.json`` (``--cpu-smoke``: ``gpu_cpu_smoke.json``).
Usage: ``bench/gpu_check.sh [--budget S] [--only unet,vqvae] [--out PATH] [--cpu-smoke]``.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from typing import Any, Mapping

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "params", "presets", "paper")
OUT = os.path.join(C.RESULTS, "gpu.json")
OUT_SMOKE = os.path.join(C.RESULTS, "gpu_cpu_smoke.json")
MODELS = ("vqvae", "prior", "sampler", "unet")
CLASSES = 4
#: Each configuration: (model, mixed precision, XLA), in the order they run (the paper preset's own first).
ORDER = (("unet", False, False), ("vqvae", False, False), ("prior", False, False), ("sampler", False, True),
         ("unet", True, False), ("vqvae", False, True), ("sampler", False, False), ("prior", False, True),
         ("unet", False, True), ("unet", True, True))
SUPPORTS_MIXED = {"vqvae": False, "prior": False, "sampler": False, "unet": True}
#: Listed as ``unsupported`` (no float16 path in the library), so the JSON shows the whole on/off matrix.
ORDER += tuple((m, True, x) for m in MODELS if not SUPPORTS_MIXED[m] for x in (False, True))
RESERVE_S = 5.0  # kept back from the budget for writing the JSON


def config_name(model: str, mixed: bool, xla: bool) -> str:
    return model + ("+mixed" if mixed else "") + ("+xla" if xla else "")


def load_preset(folder: str = PRESET) -> dict[str, dict]:
    """The paper preset's YAMLs, by notebook (``02_vqvae`` -> its parameters)."""
    from dualsynth.paths import load_yaml

    return {f[:-5]: load_yaml(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".yaml")}


# --------------------------------------------------------------------------------------------------- projection

def study_counts(preset: Mapping[str, Mapping[str, Any]], tiers=None) -> dict[str, Any]:
    """Updates, validation steps and batches of the paper study, from the preset and the paper's tier sizes.

    The 46 U-Nets are ``variants.all_variants(include_aug=False)``; each trains on its tier's real set
    (``tiers.small`` for SHQ/SLQ, ``tiers.big`` for BLQ/BMQ; default :class:`dualsynth.dataconfig.TierSpec`, the
    paper's 16/5 and 48/12) plus ``Variant.synthetic_count`` synthetic images (synthetic-only: those alone,
    validated on the big tier's set); its updates are ``unet.budget.run_updates`` under 06's budget, and it
    validates once per epoch.  The pre-test judge of 04 (trained when ``pretest_model`` is null) trains like a
    base run on BMQ for ``pretest_epochs``."""
    from dualsynth.dataconfig import TierSpec
    from dualsynth.unet.budget import run_updates
    from dualsynth.variants import all_variants

    tiers = tiers or TierSpec()
    p02, p03, p04, p06 = (preset[k] for k in ("02_vqvae", "03_pixelcnn", "04_synthesis", "06_unet_training"))
    sizes = {"SHQ": tiers.small, "SLQ": tiers.small, "BLQ": tiers.big, "BMQ": tiers.big}
    big_train = tiers.big[0]
    epochs, batch, val_batch = int(p06["epochs"]), int(p06["batch_size"]), int(p06.get("val_batch_size", 1))
    kw = dict(budget=p06.get("budget", "epochs"), epochs=epochs, batch_size=batch,
              steps_per_epoch=int(p06.get("steps_per_epoch") or 0))
    runs = []
    for v in all_variants(include_aug=False):
        base_train, val = sizes[v.tier]
        n_syn = v.synthetic_count(base_train, big_train)
        train = n_syn if v.synthetic_only else base_train + n_syn
        runs.append(dict(variant=v.name, train_images=train, val_images=val,
                         updates=run_updates(train, **kw), val_steps=epochs * math.ceil(val / val_batch)))
    pretest = bool(p04.get("pretest")) and not p04.get("pretest_model")
    pre_epochs = int(p04.get("pretest_epochs", epochs))
    pre_train, pre_val = sizes["BMQ"]
    return dict(
        vqvae_updates=int(p02["steps"]), prior_updates=int(p03["steps"]),
        sampler_batches=math.ceil(int(p04["pool_size"]) / int(p04["sample_batch"])),
        pretest_updates=(run_updates(pre_train, **{**kw, "epochs": pre_epochs}) if pretest else 0),
        pretest_val_steps=(pre_epochs * math.ceil(pre_val / val_batch) if pretest else 0),
        pretest_runs=int(pretest), study_runs=len(runs),
        unet_updates=sum(r["updates"] for r in runs), unet_val_steps=sum(r["val_steps"] for r in runs),
        epochs=epochs, batch_size=batch, val_batch_size=val_batch, tiers=dict(small=list(tiers.small),
                                                                               big=list(tiers.big)),
        runs=runs)


#: What each stage costs: (stage, [(step-time key, count key), ...]).
STAGES = (
    ("02_vqvae", [("vqvae_step", "vqvae_updates")]),
    ("03_prior", [("prior_step", "prior_updates")]),
    ("04_sampling", [("sampler_batch", "sampler_batches")]),
    ("04_pretest_unet", [("unet_step", "pretest_updates"), ("unet_val_step", "pretest_val_steps"),
                         ("unet_startup", "pretest_runs")]),
    ("06_unet_steps", [("unet_step", "unet_updates")]),
    ("06_unet_validation", [("unet_val_step", "unet_val_steps")]),
    ("06_unet_startup", [("unet_startup", "study_runs")]),
)


def project(seconds: Mapping[str, float | None], counts: Mapping[str, Any]) -> dict[str, Any]:
    """Hours per stage = sum of step time x count (``STAGES``); ``total_hours`` is None when a time is missing.

    ``seconds``: ``vqvae_step``, ``prior_step``, ``sampler_batch`` (one batch of complete code maps), ``unet_step``,
    ``unet_val_step``, ``unet_startup`` (per run), in seconds.  Linear in every step time."""
    hours: dict[str, float | None] = {}
    missing = []
    for stage, terms in STAGES:
        total = 0.0
        for key, count in terms:
            n = counts[count]
            if not n:
                continue
            s = seconds.get(key)
            if s is None:
                total = None
                missing.append(key)
                break
            total += float(s) * n
        hours[stage] = None if total is None else total / 3600
    complete = all(v is not None for v in hours.values())
    return dict(hours=hours, total_hours=sum(hours.values()) if complete else None,
                missing=sorted(set(missing)), seconds=dict(seconds))


def _seconds_of(results: Mapping[str, dict], choice: Mapping[str, str]) -> dict[str, float | None]:
    """Step times of the chosen configuration per model (None where it did not run)."""
    def get(model, key):
        r = results.get(choice.get(model, ""))
        return r.get(key) if r and r.get("status") == "ok" else None

    return dict(vqvae_step=get("vqvae", "median_seconds"), prior_step=get("prior", "median_seconds"),
                sampler_batch=get("sampler", "median_seconds"), unet_step=get("unet", "median_seconds"),
                unet_val_step=get("unet", "val_median_seconds"), unet_startup=get("unet", "startup_seconds"))


def projections(results: Mapping[str, dict], counts: Mapping[str, Any], preset: Mapping[str, Mapping]) -> dict:
    """The projection with the paper preset's configuration and with the fastest measured one per model."""
    mixed06 = bool(preset["06_unet_training"].get("mixed_precision", False))
    configured = {"vqvae": "vqvae", "prior": "prior", "sampler": "sampler+xla",  # sample_fast's default: XLA
                  "unet": config_name("unet", mixed06, False)}
    fastest = {}
    for model in MODELS:
        ok = [(r["median_seconds"], name) for name, r in results.items()
              if r.get("model") == model and r.get("status") == "ok"]
        if ok:
            fastest[model] = min(ok)[1]
    out = {}
    for label, choice in (("paper_preset_config", configured), ("fastest_measured", fastest)):
        p = project(_seconds_of(results, choice), counts)
        p["configurations"] = dict(choice)
        out[label] = p
    return out


# ------------------------------------------------------------------------------------------------ measurements

def _time_calls(fn, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of ``steps`` calls after ``warmup`` calls in all)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return first, out


def _summary(first: float, times: list[float], per: int, unit: str) -> dict[str, Any]:
    med = C.median(times)
    return dict(median_seconds=med, seconds_all=[round(t, 5) for t in times], first_call_seconds=round(first, 3),
                unit=unit, items_per_s=per / med if med > 0 else None)


def _vqvae(task: dict, tf) -> dict:
    import numpy as np

    from dualsynth import vqvae as vq

    s, b = task["size"], task["batch"]
    tf.random.set_seed(0)
    model = vq.VQVAE(in_channels=task["channels"], **task["model_kw"])
    optimizer = vq._make_adam(task["learning_rate"])  # the optimizer train_vqvae makes
    optimizer.build(model.trainable_variables)
    x_np = np.random.default_rng(0).random((b, s, s, task["channels"]), dtype=np.float32)
    x = tf.constant(x_np)
    step = vq.make_train_step(model, optimizer, float(x_np.var()), jit_compile=task["xla"])
    losses = []
    first, times = _time_calls(lambda: losses.append(float(step(x)[0])), task["warmup"], task["steps"])
    res = _summary(first, times, b, f"per update (batch {b}, {s} x {s} x {task['channels']})")
    res["finite"] = all(math.isfinite(v) for v in losses)
    return res


def _prior_model(task: dict):
    from dualsynth import pixelcnn as pc

    return pc.make_prior(task["kind"], task["num_embeddings"], hidden_channels=task["hidden"],
                         num_layers=task["num_layers"], seed=0)


def _prior(task: dict, tf) -> dict:
    import numpy as np

    from dualsynth import pixelcnn as pc

    c, b = task["code"], task["batch"]
    model = _prior_model(task)
    codes = np.random.default_rng(0).integers(0, task["num_embeddings"], (task["maps"], c, c), dtype=np.int32)
    recs: list[dict] = []
    n = task["warmup"] + task["steps"]
    pc.train_prior(model, codes, None, steps=n, batch_size=b, learning_rate=task["learning_rate"], log_every=1,
                   callback=recs.append, progress=False)
    stamps = [r["seconds"] for r in recs]
    times = [stamps[k] - stamps[k - 1] for k in range(task["warmup"], n)]
    res = _summary(stamps[0], times, b, f"per update (batch {b}, {c} x {c} code maps)")
    res["finite"] = all(math.isfinite(r["train_loss"]) for r in recs)
    return res


def _sampler(task: dict, tf) -> dict:
    from dualsynth import pixelcnn as pc

    c, b = task["code"], task["sample_batch"]
    model = _prior_model(task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, times = _time_calls(lambda: pc.sample_fast(model, b, c, c, seed=0, batch_size=b,
                                                          jit_compile=task["xla"]), 1, task["repeats"])
    res = _summary(first, times, b * c * c, f"per batch of {b} complete {c} x {c} code maps")
    res["codes_per_s"] = res.pop("items_per_s")
    res["xla_fallback"] = any("falling back" in str(w.message) for w in caught)
    return res


def _unet(task: dict, tf) -> dict:
    import numpy as np

    from dualsynth import segmentation as seg

    s = task["size"]
    t_start = time.perf_counter()
    params = {k: v for k, v in task["unet_params"].items() if k != "steps_per_epoch"}
    cfg = seg.UNetConfig.from_params(params, num_classes=CLASSES, encoder=task["encoder"], encoder_weights=None,
                                     mixed_precision=task["mixed"], steps_per_epoch=None)
    model = seg.compile_unet(seg.build_unet(cfg, seed=0), cfg, total_updates=1000)
    if task["xla"]:
        model.jit_compile = True  # tf_keras: train and test functions compiled with XLA
    rng = np.random.default_rng(0)
    n = 8
    x = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, (n, s, s), dtype=np.uint8)
    steps = task["warmup"] + task["steps"]
    ds = seg.make_dataset(x, y, CLASSES, cfg.batch_size, shuffle=True, repeat=True, steps_per_epoch=steps)
    xv, yv = next(iter(seg.make_dataset(x[:cfg.val_batch_size], y[:cfg.val_batch_size], CLASSES,
                                        cfg.val_batch_size, shuffle=False)))
    stamps: list[float] = []
    losses: list[float] = []

    class Stamps(tf.keras.callbacks.Callback):  # numpy logs: one host sync per step, as a fit with a progress bar
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())
            losses.append(float((logs or {}).get("loss", float("nan"))))

    t_fit = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Stamps()])
    times = [stamps[k] - stamps[k - 1] for k in range(task["warmup"], steps)]
    res = _summary(stamps[0] - t_fit, times, cfg.batch_size,
                   f"per update (batch {cfg.batch_size}, {s} x {s} x 3, {task['encoder']})")
    val_first, val_times = _time_calls(lambda: model.test_on_batch(xv, yv), task["warmup"], task["steps"])
    res.update(val_median_seconds=C.median(val_times), val_seconds_all=[round(t, 5) for t in val_times],
               val_first_call_seconds=round(val_first, 3), val_batch_size=cfg.val_batch_size,
               finite=all(math.isfinite(v) for v in losses))
    # a run's start-up: build + compile + the first (tracing) steps of training and validation (warm-up included)
    res["startup_seconds"] = (time.perf_counter() - t_start) - sum(times) - sum(val_times)
    res["parameters"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return res


def _child(task: dict) -> dict:
    import dualsynth  # noqa: F401  (sets the Keras environment before TensorFlow)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except Exception:  # pragma: no cover
            pass
    if task.get("grappler_off"):  # --cpu-smoke only: Grappler costs tens of seconds per traced graph on a CPU
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if task["xla"] and task["model"] == "prior":
        tf.config.optimizer.set_jit("autoclustering")  # train_prior's step has no jit_compile switch
    t0 = time.perf_counter()
    try:
        res = {"vqvae": _vqvae, "prior": _prior, "sampler": _sampler, "unet": _unet}[task["model"]](task, tf)
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded, the other configurations go on
        msg = type(e).__name__ + ": " + str(e)  # TensorFlow puts the cause after a long traceback: keep both ends
        res = dict(status="failed", error=msg if len(msg) <= 1200 else msg[:300] + " [...] " + msg[-900:])
    res["child_seconds"] = round(time.perf_counter() - t0, 2)
    res["peak_rss_mb"] = C.peak_rss_mb()
    if tf.config.list_physical_devices("GPU"):
        try:
            res["gpu_peak_mb"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
        except Exception:  # pragma: no cover
            pass
    return res


# ------------------------------------------------------------------------------------------------------ parent

def _gpu_info() -> dict[str, Any]:
    import dualsynth  # noqa: F401
    import tensorflow as tf

    info: dict[str, Any] = dict(built_with_cuda=tf.test.is_built_with_cuda(), devices=[])
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            info["devices"].append(dict(name=gpu.name, **tf.config.experimental.get_device_details(gpu)))
        except Exception:  # pragma: no cover
            info["devices"].append(dict(name=gpu.name))
    try:
        info["tensor_float_32"] = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    except Exception:  # pragma: no cover
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
        except Exception:  # pragma: no cover
            pass
    return info


def _tasks(preset: Mapping[str, Mapping], smoke: bool, encoder: str | None) -> dict[str, dict]:
    """The measurement settings of each model: the paper preset's sizes, or tiny ones for ``--cpu-smoke``."""
    import inspect

    from dualsynth import vqvae as vq

    p01, p02, p03, p04, p06 = (preset[k] for k in ("01_patching", "02_vqvae", "03_pixelcnn", "04_synthesis",
                                                   "06_unet_training"))
    patch = int(p01["patch_size"])
    accepted = set(inspect.signature(vq.VQVAE).parameters) - {"in_channels", "name"}
    vq_kw = {k: v for k, v in p02.items() if k in accepted}
    # dual image = RGB micrograph + mask: one grey channel (the paper's) or one per class
    channels = 3 + (1 if p02.get("mask_encoding", "grey") == "grey" else CLASSES)
    code = patch // 4  # the encoder's two stride-2 convolutions
    prior = dict(kind=p03["prior"], num_embeddings=int(p02["num_embeddings"]), hidden=int(p03["hidden"]),
                 num_layers=int(p03["num_layers"]), code=code, learning_rate=float(p03["learning_rate"]))
    t = dict(
        vqvae=dict(size=patch, batch=int(p02["batch_size"]), channels=channels, model_kw=vq_kw,
                   learning_rate=float(p02["learning_rate"])),
        prior=dict(prior, batch=int(p03["batch_size"]), maps=62),  # the paper's 62 BMQ code maps
        sampler=dict(prior, sample_batch=int(p04["sample_batch"])),
        unet=dict(size=patch, encoder=encoder or p06["encoder"], unet_params=dict(p06)),
    )
    warm, steps, repeats = (1, 2, 1) if smoke else (3, 10, 3)
    for v in t.values():
        v.update(warmup=warm, steps=steps, repeats=repeats, grappler_off=smoke)
    if smoke:
        t["vqvae"].update(size=32, batch=2, model_kw=dict(vq_kw, num_hiddens=16, num_residual_hiddens=8))
        tiny = dict(code=8, hidden=16, num_layers=2)
        t["prior"].update(tiny, batch=4, maps=8)
        t["sampler"].update(tiny, sample_batch=2)
        t["unet"].update(size=32, encoder=encoder or "plain")
    return t


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny sizes, 1-2 steps each: checks that the script works (no GPU needed)")
    ap.add_argument("--out", default=None, help=f"JSON output (default {OUT}; --cpu-smoke: {OUT_SMOKE})")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="hard time budget of the whole run in seconds (default %(default)s: 7.5 min)")
    ap.add_argument("--child-timeout", type=float, default=None,
                    help="most seconds one configuration may take (default 150; --cpu-smoke 120)")
    ap.add_argument("--min-start", type=float, default=None,
                    help="seconds of budget a configuration needs to start (default 25; --cpu-smoke 5)")
    ap.add_argument("--only", default=",".join(MODELS), help="comma list of models to measure (%(default)s)")
    ap.add_argument("--unet-encoder", default=None,
                    help="U-Net encoder (default: the paper preset's efficientnetb3; --cpu-smoke: plain)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        C.child_main(args.child, _child)
        return None
    t_start = time.perf_counter()
    smoke = args.cpu_smoke
    out = args.out or (OUT_SMOKE if smoke else OUT)
    child_timeout = args.child_timeout or (120.0 if smoke else 150.0)
    min_start = args.min_start if args.min_start is not None else (5.0 if smoke else 25.0)
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(only) - set(MODELS))
    if unknown:
        ap.error(f"--only: unknown {unknown}; choose from {list(MODELS)}")

    machine = C.machine()
    machine["gpu_info"] = _gpu_info()
    gpu = bool(machine.get("gpus"))
    warning = None
    if not gpu:
        warning = ("NO GPU: TensorFlow sees no GPU on this machine, so every number here is this CPU's, not a "
                   "GPU's, and the projection is for this machine" + (" (and for tiny models: --cpu-smoke)"
                                                                       if smoke else ""))
        print(warning + ".", flush=True)
    else:
        print(f"GPU(s): {', '.join(d.get('device_name', d['name']) for d in machine['gpu_info']['devices'])}",
              flush=True)
    preset = load_preset()
    tasks = _tasks(preset, smoke, args.unet_encoder)
    counts = study_counts(preset)

    results: dict[str, dict] = {}
    notes: list[str] = []
    for model, mixed, xla in ORDER:
        if model not in only:
            continue
        name = config_name(model, mixed, xla)
        base = dict(model=model, mixed_precision=mixed, xla=xla)
        if mixed and not SUPPORTS_MIXED[model]:
            results[name] = dict(base, status="unsupported",
                                 note="a Sonnet module without a float16 path in the library (float32 only)")
            continue
        remaining = args.budget - (time.perf_counter() - t_start) - RESERVE_S
        if remaining < min_start:
            results[name] = dict(base, status="skipped",
                                 note=f"time budget ({args.budget:.0f} s) used up: {remaining:.0f} s left")
            print(f"{name:18s} skipped: time budget used up", flush=True)
            continue
        timeout = min(child_timeout, remaining)
        print(f"{name:18s} ...", end=" ", flush=True)
        task = dict(tasks[model], model=model, mixed=mixed, xla=xla)
        try:
            r = C.run_child(__file__, task, timeout=timeout)
        except subprocess.TimeoutExpired:
            r = dict(status="timeout", note=f"killed after {timeout:.0f} s (--child-timeout / budget)")
        except RuntimeError as e:  # the child died (e.g. a GPU out-of-memory abort)
            r = dict(status="crashed", error=str(e)[-1500:])
        results[name] = dict(base, **r)
        if r["status"] == "ok":
            extra = (f", validation {r['val_median_seconds'] * 1e3:.1f} ms, start-up {r['startup_seconds']:.0f} s"
                     if model == "unet" else "")
            print(f"{r['median_seconds'] * 1e3:9.1f} ms {r['unit']} (first call {r['first_call_seconds']:.1f} s"
                  f"{extra})", flush=True)
        else:
            why = r.get("error", r.get("note", ""))
            print(f"{r['status']}: {why if len(why) <= 400 else why[:120] + ' [...] ' + why[-280:]}", flush=True)
    skipped = [n for n, r in results.items() if r["status"] == "skipped"]
    if skipped:
        notes.append(f"skipped for lack of time (budget {args.budget:.0f} s): {', '.join(skipped)}; run again with "
                     f"--only or a larger --budget to measure them")

    proj = projections(results, counts, preset)
    for label, p in proj.items():
        tot = p["total_hours"]
        print(f"projection ({label}): " + ", ".join(f"{k} {v:.2f} h" for k, v in p["hours"].items() if v is not None)
              + (f"; total {tot:.1f} h" if tot is not None else f"; incomplete (missing {', '.join(p['missing'])})"),
              flush=True)
    notes += [
        "median_seconds: median over the timed steps after the warm-up (first_call_seconds: the first call, "
        "tracing / XLA compilation / cuDNN autotuning); one fresh process per configuration.",
        "vqvae: vqvae.make_train_step on a constant batch (train_vqvae's step; its tf.data input measured ~500x "
        "faster than the step on CPU); prior: pixelcnn.train_prior itself, per-step callback; sampler: "
        "pixelcnn.sample_fast, one batch of complete code maps; unet: model.fit on segmentation.make_dataset, "
        "batch-end time stamps, validation = test_on_batch at the validation batch size.",
        "XLA: jit_compile=True for the VQ-VAE step and the sampler, model.jit_compile=True for the U-Net, "
        "tf.config.optimizer.set_jit('autoclustering') for the prior's training step; mixed precision: "
        "UNetConfig(mixed_precision=True) (the Sonnet VQ-VAE and PixelCNN have no float16 path: 'unsupported').",
        "projection: step time x count per stage (counts in projection_counts); U-Nets: 46 variants x up to "
        f"{counts['epochs']} epochs (early stopping usually ends sooner: an upper bound), per-variant training sets "
        "of the paper's design (SHQ/SLQ 16, BLQ/BMQ 48 real; synthetic-only p % of 48), one validation pass per "
        "epoch, plus each run's start-up (build, compile, first steps; a notebook kernel's TensorFlow import and "
        "the scoring are not included); VQ-VAE evaluations and checkpoints (every 100 / 500 steps) and the "
        "prior's evaluations are not included (small).",
    ]
    if smoke:
        notes.append("--cpu-smoke: tiny models and sizes; the projection applies the paper's counts to the tiny "
                     "step times and means nothing beyond checking the arithmetic.")
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    summary = dict(total_hours={k: p["total_hours"] for k, p in proj.items()},
                   measured=[n for n, r in results.items() if r["status"] == "ok"],
                   not_measured={n: r["status"] for n, r in results.items() if r["status"] != "ok"})
    payload = dict(
        benchmark="gpu_check", mode="cpu-smoke" if smoke else "paper", gpu=gpu, warning=warning,
        summary=summary, machine=machine,
        setup=dict(budget_seconds=args.budget, child_timeout_seconds=child_timeout, min_start_seconds=min_start,
                   models=only, order=[config_name(*c) for c in ORDER],
                   tasks={k: {kk: vv for kk, vv in v.items() if kk != "unet_params"} for k, v in tasks.items()}),
        configurations=results, projection=proj, projection_counts=counts, notes=notes,
        total_seconds=round(time.perf_counter() - t_start, 1))
    C.write_result(out, payload)
    print(f"total {payload['total_seconds']} s", flush=True)
    return payload


if __name__ == "__main__":
    main()
