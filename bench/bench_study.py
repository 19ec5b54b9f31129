#!/usr/bin/env python
"""Benchmark: the study batch (Dask workers x threads) and scaling with pool size and number of variants.

Everything runs in a temporary outputs folder (deleted at the end; ``--keep`` keeps it).  Not a test.

1. Stages 01-05 at the smoke preset (``python -m dualsynth.batch chain --preset smoke --stages 01-05``), timed per
   stage (its ``chain_timings.json``): the inputs of the study below.
2. Study configurations: the same ``--runs`` (default 2) smoke runs of ``06_unet_training`` (``--set steps_per_epoch=S`` so every
   run does the same work) with ``python -m dualsynth.batch study`` as 1 worker x 2 TensorFlow threads and as 2
   workers x 1 thread (``--oversubscribed``: also 2 x 2), alternating, ``repeats`` times each, the run folders cleared
   before each.  Wall time of the whole command (cluster start included).  Peak memory: ``ru_maxrss`` of the
   largest process of that command (``RUSAGE_CHILDREN`` of a wrapper process; one notebook kernel, TensorFlow
   included; the workers' kernels run side by side, so the machine holds about workers x that).
3. Scaling with the number of variants: 2, 4, 8 runs with the default configuration, once each; exponent of
   wall time ~ runs^b by least squares on log-log.
4. Scaling with the pool size: ``synthesis.generate_samples`` (fast sampler + VQ-VAE decoding + mask clean-up)
   of 36, 144, 576 images at the quick preset's scale (128 px patches -> 32 x 32 code maps, sample batch 48,
   the quick VQ-VAE and prior sizes, untrained weights: the same compute); medians of ``repeats`` runs after a
   warm-up; exponent as above.  Peak memory ``ru_maxrss`` of that process.

Patch-size scaling of a VQ-VAE and a U-Net training step is measured by bench_vqvae.py / bench_unet.py; this
script copies their fitted exponents into its summary when their JSON files exist.

Output: ``bench/results/study.json``.  Usage: ``python bench/bench_study.py [--quick] [--keep]``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

OUT = os.path.join(C.RESULTS, "study.json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "bench"


def _batch(*args: str) -> list[str]:
    return [sys.executable, "-m", "dualsynth.batch", *args]


def _timed_command(task: dict) -> dict:
    """(child) run one command; wall seconds and the largest descendant's ru_maxrss."""
    t0 = time.perf_counter()
    proc = subprocess.run(task["cmd"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    return dict(seconds=seconds, returncode=proc.returncode, stderr_tail=proc.stderr[-2000:] if proc.returncode else "",
                stdout_tail=proc.stdout[-1500:],
                peak_rss_mb_largest_process=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1))


def _pool_task(task: dict) -> dict:
    """(child) generate_samples for each pool size; medians over repeats after a warm-up."""
    import dualsynth  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from dualsynth import patching, pixelcnn, synthesis, vqvae

    manifest = patching.Manifest.load(task["patches"])
    palette = manifest.palette
    channels = manifest.channels + 1  # grey mask encoding
    tf.random.set_seed(0)
    gen = vqvae.VQVAE(in_channels=channels, num_embeddings=10, embedding_dim=64, num_hiddens=64,
                      num_residual_hiddens=32)
    prior = pixelcnn.make_prior("pixelcnn", 10, hidden_channels=64, num_layers=6)
    kw = dict(code_shape=(task["code"], task["code"]), batch_size=task["batch"], progress=False,
              min_object_px=synthesis.scaled_min_object_px(task["patch"]), image_channels=manifest.channels)
    synthesis.generate_samples(gen, prior, task["batch"], palette, seed=99, **kw)  # warm-up (compilation)
    out = []
    for n in task["sizes"]:
        ts = []
        for r in range(task["repeats"] if n <= task["max_repeated"] else 1):
            t0 = time.perf_counter()
            synthesis.generate_samples(gen, prior, n, palette, seed=r, **kw)
            ts.append(time.perf_counter() - t0)
        out.append(dict(pool_size=n, seconds=C.median(ts), seconds_all=ts, images_per_s=n / C.median(ts)))
    return dict(results=out, peak_rss_mb=C.peak_rss_mb())


def _clear_runs(exp: str) -> None:
    for sub in ("unet", "notebooks", "logs"):
        shutil.rmtree(os.path.join(exp, sub), ignore_errors=True)


def _study(out_dir: str, variants: list[str], workers: int, threads: int, steps: int) -> dict:
    exp = os.path.join(out_dir, EXPERIMENT)
    _clear_runs(exp)
    cmd = _batch("study", "--preset", "smoke", "--experiment", EXPERIMENT, "--variants", ",".join(variants),
                 "--workers", str(workers), "--threads", str(threads), "--outputs-dir", out_dir,
                 "--set", f"steps_per_epoch={steps}")
    r = C.run_child(__file__, dict(kind="cmd", cmd=cmd))
    if r["returncode"] != 0:
        raise RuntimeError(f"study failed ({workers} x {threads}):\n{r['stderr_tail']}\n{r['stdout_tail']}")
    return dict(workers=workers, threads=threads, runs=len(variants), seconds=r["seconds"],
                peak_rss_mb_largest_process=r["peak_rss_mb_largest_process"])


def main(argv=None):
    ap = C.arg_parser(__doc__, OUT)
    ap.add_argument("--keep", action="store_true", help="keep the temporary outputs folder")
    ap.add_argument("--runs", type=int, default=2, help="U-Net runs per study measurement (default 2)")
    ap.add_argument("--oversubscribed", action="store_true", help="also 2 workers x 2 threads")
    args = ap.parse_args(argv)
    if args.child:
        task = json.loads(args.child)
        C.child_main(args.child, _timed_command if task["kind"] == "cmd" else _pool_task)
        return None
    q = args.quick
    repeats = args.repeats or (1 if q else 3)
    steps = 2 if q else 8
    t_start = time.perf_counter()
    out_dir = tempfile.mkdtemp(prefix="dualsynth-bench-study-")
    try:
        print(f"stages 01-05 (smoke preset) in {out_dir} ...", flush=True)
        r = C.run_child(__file__, dict(kind="cmd", cmd=_batch("chain", "--preset", "smoke", "--experiment",
                                                              EXPERIMENT, "--stages", "01-05", "--outputs-dir",
                                                              out_dir)))
        if r["returncode"] != 0:
            raise RuntimeError(f"chain 01-05 failed:\n{r['stderr_tail']}")
        exp = os.path.join(out_dir, EXPERIMENT)
        with open(os.path.join(exp, "results", "chain_timings.json")) as fh:
            chain = json.load(fh)
        chain["wall_seconds"] = r["seconds"]
        print("  " + ", ".join(f"{s['notebook']} {s['seconds']} s" for s in chain["stages"]), flush=True)
        names = sorted(f[:-5] for f in os.listdir(os.path.join(exp, "variants")) if f.endswith(".json"))
        base = [n for n in names if n.endswith("_0")] + [n for n in names if not n.endswith("_0")]
        chosen = base[:args.runs]

        configs = [(1, 2), (2, 1)] + ([(2, 2)] if args.oversubscribed else [])
        study = {f"{w}x{t}": [] for w, t in configs}
        for rep in range(repeats):
            for w, t in configs:
                res = _study(out_dir, chosen, w, t, steps)
                study[f"{w}x{t}"].append(res)
                print(f"  study {len(chosen)} runs, {w} worker(s) x {t} thread(s): {res['seconds']:.1f} s", flush=True)
        study_summary = {k: dict(median_seconds=C.median([x["seconds"] for x in v]),
                                 seconds_all=[round(x["seconds"], 1) for x in v],
                                 seconds_per_run=C.median([x["seconds"] for x in v]) / len(chosen),
                                 peak_rss_mb_largest_process=max(x["peak_rss_mb_largest_process"] for x in v))
                         for k, v in study.items()}
        ref = study["1x2"]
        for k, v in study.items():
            study_summary[k]["speedup_vs_1x2"] = C.median([a["seconds"] / b["seconds"] for a, b in zip(ref, v)])
        fastest = min(study_summary, key=lambda k: study_summary[k]["median_seconds"])

        counts = [1, 2] if q else [2, 4, 8]
        var_scaling = []
        for n in counts:
            res = _study(out_dir, base[:n], 2, 1, steps)
            var_scaling.append(res)
            print(f"  {n} runs on 2 x 1: {res['seconds']:.1f} s", flush=True)
        var_fit = C.fit_exponent(counts, [x["seconds"] for x in var_scaling])

        sizes = [4, 8, 16] if q else [36, 144, 576]
        print(f"pool sizes {sizes} ...", flush=True)
        pool = C.run_child(__file__, dict(kind="pool", patches=os.path.join(exp, "patches"), sizes=sizes,
                                          repeats=2 if q else 3, max_repeated=144,
                                          code=8 if q else 32, patch=32 if q else 128, batch=4 if q else 48))
        pool["fit"] = C.fit_exponent(sizes, [x["seconds"] for x in pool["results"]])
        print("  " + ", ".join(f"{x['pool_size']}: {x['seconds']:.1f} s" for x in pool["results"])
              + f"; exponent {pool['fit']['exponent']}", flush=True)
    finally:
        if args.keep:
            print(f"kept {out_dir}")
        else:
            shutil.rmtree(out_dir, ignore_errors=True)

    patch = {}
    for name in ("vqvae", "unet"):
        path = os.path.join(C.RESULTS, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as fh:
                d = json.load(fh)
            if not d.get("quick"):
                patch[name] = dict(fit=d["scaling_patch_size"]["fit"],
                                   seconds_per_step={r["size"]: r["seconds_per_step"]
                                                     for r in d["scaling_patch_size"]["results"]})
    payload = dict(
        benchmark="study", machine=C.machine(), quick=q,
        setup=dict(preset="smoke", runs=len(chosen), variants=chosen, steps_per_epoch=steps, repeats=repeats,
                   pool=dict(code_map=8 if q else 32, sample_batch=4 if q else 48)),
        notes=[
            "study = wall time of `python -m dualsynth.batch study` (LocalCluster start, papermill kernels, "
            "training, scoring); run folders cleared before each; configurations alternate within a repeat.",
            "peak_rss_mb_largest_process = ru_maxrss (RUSAGE_CHILDREN) of the largest process of that command.",
            "variants scaling: one measurement per count (2 workers x 1 thread).",
            "pool scaling: generate_samples with untrained quick-size models; 576 timed once, others median "
            "of the repeats; peak_rss_mb = ru_maxrss of that process.",
        ],
        summary=dict(chain_smoke_seconds={s["notebook"]: s["seconds"] for s in chain["stages"]},
                     study=study_summary, fastest_study_config=fastest,
                     variants_exponent=var_fit, pool_exponent=pool["fit"],
                     patch_size_exponents={k: v["fit"] for k, v in patch.items()}),
        chain=chain, study=study, variants_scaling=var_scaling, pool_scaling=pool, patch_size_scaling=patch,
        total_seconds=round(time.perf_counter() - t_start, 1))
    C.write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
