#!/usr/bin/env python
"""Render the tables of BENCHMARKS.md from bench/results/*.json.

BENCHMARKS.md holds hand-written prose and generated blocks between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; this script replaces each block's content with the table rendered from
``bench/results/NAME.json`` (a block whose JSON file is missing is left as it is).  ``--print`` writes the tables
to stdout instead.  Usage: ``python bench/render.py [--print]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

DOC = os.path.join(os.path.dirname(C.RESULTS), os.pardir, "BENCHMARKS.md")


def _n(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _machine(m: dict) -> str:
    return (f"*{m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, "
            f"TensorFlow {m.get('tensorflow')}, GPUs: {m.get('gpus') or 'none'}; load average at the end "
            f"{m.get('load_average')}; {m.get('created')}.*")


def _yes(ok) -> str:
    return "**met**" if ok else "**not met**"


def render_vqvae(d: dict) -> str:
    s, runs = d["summary"], d["runs"]
    setup = d["setup"]
    lines = [f"{setup['size']} × {setup['size']} × {setup['channels']}, batch {setup['batch']}, model "
             f"{setup['model']['num_hiddens']} hiddens; {setup['steps_per_repeat']} steps × {setup['repeats']} "
             "repeats, medians.", "",
             "| TF threads intra/inter | train_vqvae img/s | compute-only img/s | compute-only + XLA img/s | "
             "pipeline / compute | XLA speed-up | pipeline alone img/s | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        t, ips = r["threads"], r["images_per_s"]
        name = "default (0/0)" if not t["intra"] and not t["inter"] else f"{t['intra']}/{t['inter']}"
        xla = r.get("ratio_xla_vs_compute")
        lines.append(f"| {name} | {_n(ips['pipeline'])} | {_n(ips['compute'])} | {_n(ips.get('compute_xla'))} | "
                     f"{r['ratio_pipeline_vs_compute']:.2f} | {f'{xla:.2f}×' if xla else '–'} | "
                     f"{_n(ips['pipeline_only'])} | {r['peak_rss_mb']:,.0f} MB |")
    sc = d["scaling_patch_size"]
    lines += ["", f"Whole `train_vqvae` calls vs compute-only at the default threads: ratio "
              f"{s['ratio_pipeline_vs_compute']:.2f} (start-up included; the steady state is bench_vqvae_steady.py). "
              f"Forward pass {s['forward_gflops_per_image']:.2f} GFLOP "
              f"per image (profiler count), training step ≈ {s['train_step_gflops_estimate']:.0f} GFLOP (3 × forward × "
              "batch).", "",
              "Compute-only step vs patch size: " + ", ".join(
                  f"{r['size']} px {r['seconds_per_step']:.3f} s" for r in sc["results"])
              + f"; time ∝ size^{sc['fit']['exponent']:.2f} (R² {sc['fit']['r2']:.3f}).", "", _machine(d["machine"])]
    return "\n".join(lines)


def render_unet(d: dict) -> str:
    s, tr, ev = d["summary"], d["training"], d["evaluation"]
    setup = d["setup"]
    label = {"pipeline": "tf.data pipeline (`make_dataset`)", "pipeline_augment": "pipeline + augmentation",
             "compute": "compute-only (constant batch)", "compute_xla": "compute-only + XLA",
             "compute_mixed": "compute-only, mixed precision"}
    lines = [f"{setup['encoder']}, {setup['size']} × {setup['size']} × {setup['channels']}, {setup['classes']} "
             f"classes, batch {setup['batch']}; {setup['steps_per_repeat']} steps × {setup['repeats']} repeats, "
             f"medians; peak RSS of the process {tr['peak_rss_mb']:,.0f} MB.", "",
             "| training loop | images/s | ratio vs compute-only |", "|---|---|---|"]
    for k, v in tr["images_per_s"].items():
        r = tr["ratios_vs_compute"].get(k)
        lines.append(f"| {label.get(k, k)} | {_n(v)} | {f'{r:.2f}' if r else '1'} |")
    for k, e in tr.get("errors", {}).items():
        lines.append(f"| {label.get(k, k)} | fails: {e.split(':')[0]} ({'unsupported op ResizeNearestNeighborGrad' if 'ResizeNearestNeighborGrad' in e else e[:80]}) | – |")
    sc = d["scaling_patch_size"]
    lines += ["", f"Target (pipeline within 10 % of compute-only): {_yes(s['target_within_10_percent'])} "
              f"(ratio {s['ratios_vs_compute'].get('pipeline', 0):.2f}).", "",
              "| evaluation of 27 test images | images/s | speed-up |", "|---|---|---|",
              f"| batched (`batch_size=8`, the default) | {_n(ev['images_per_s']['batched'])} | "
              f"{ev['speedup_batched']:.2f}× |",
              f"| one by one (`batch_size=1`) | {_n(ev['images_per_s']['one_by_one'])} | 1 |", "",
              f"Largest difference of the probabilities batched vs one by one {ev['max_abs_probability_difference']:.1e}"
              f"; same predicted classes: {ev['same_predicted_classes']}"
              + (f" ({ev['pixels_with_other_class']} of {ev['pixels']:,} pixels differ)" if "pixels" in ev else "")
              + f"; peak RSS {ev['peak_rss_mb']:,.0f} MB. "
              f"Forward pass {s['forward_gflops_per_image']:.1f} GFLOP per image, training step ≈ "
              f"{s['train_step_gflops_estimate']:.0f} GFLOP.", "",
              "Compute-only step vs patch size: " + ", ".join(
                  f"{r['size']} px {r['seconds_per_step']:.3f} s" for r in sc["results"])
              + f"; time ∝ size^{sc['fit']['exponent']:.2f} (R² {sc['fit']['r2']:.3f}).", "", _machine(d["machine"])]
    return "\n".join(lines)


def render_study(d: dict) -> str:
    s = d["summary"]
    lines = ["Stages 01–05 at the smoke preset (inputs of the study): " + ", ".join(
        f"{k[:2]} {v:.0f} s" for k, v in s["chain_smoke_seconds"].items()) + ".", "",
             f"| {d['setup']['runs']} smoke U-Nets | median wall s | all repeats | s per run | speed-up vs 1 × 2 | "
             "peak RSS (largest process) |", "|---|---|---|---|---|---|"]
    for k, v in s["study"].items():
        w, t = k.split("x")
        lines.append(f"| {w} worker(s) × {t} thread(s) | {v['median_seconds']:.0f} | {v['seconds_all']} | "
                     f"{v['seconds_per_run']:.0f} | {v['speedup_vs_1x2']:.2f}× | "
                     f"{v['peak_rss_mb_largest_process']:,.0f} MB |")
    vs, ps = d["variants_scaling"], d["pool_scaling"]
    lines += ["", f"Fastest here: **{s['fastest_study_config'].replace('x', ' worker(s) × ')} thread(s)**.", "",
              "| scaling | sizes | seconds | fitted exponent (R²) |", "|---|---|---|---|",
              f"| study runs (2 × 1) | {', '.join(str(x['runs']) for x in vs)} | "
              f"{', '.join('%.0f' % x['seconds'] for x in vs)} | {s['variants_exponent']['exponent']:.2f} "
              f"({s['variants_exponent']['r2']:.3f}) |",
              f"| synthetic pool (generate_samples) | {', '.join(str(x['pool_size']) for x in ps['results'])} | "
              f"{', '.join('%.1f' % x['seconds'] for x in ps['results'])} | {s['pool_exponent']['exponent']:.2f} "
              f"({s['pool_exponent']['r2']:.3f}) |"]
    for name, v in d.get("patch_size_scaling", {}).items():
        secs = v["seconds_per_step"]
        lines.append(f"| {'VQ-VAE' if name == 'vqvae' else 'U-Net'} training step (patch px) | "
                     f"{', '.join(secs)} | {', '.join('%.3f' % x for x in secs.values())} | "
                     f"{v['fit']['exponent']:.2f} ({v['fit']['r2']:.3f}) |")
    lines += ["", f"Peak RSS of the pool process {ps['peak_rss_mb']:,.0f} MB.", "", _machine(d["machine"])]
    return "\n".join(lines)


RENDER = {"vqvae": render_vqvae, "unet": render_unet, "study": render_study}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--print", action="store_true", help="print the tables instead of editing BENCHMARKS.md")
    ap.add_argument("--results", default=C.RESULTS)
    args = ap.parse_args(argv)
    tables = {}
    for name, fn in RENDER.items():
        path = os.path.join(args.results, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as fh:
                tables[name] = fn(json.load(fh))
    if args.print:
        for name, t in tables.items():
            print(f"## {name}\n\n{t}\n")
        return
    doc = os.path.normpath(DOC)
    with open(doc, encoding="utf-8") as fh:
        text = fh.read()
    for name, t in tables.items():
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        text, n = pat.subn(lambda m: m.group(1) + t + "\n" + m.group(2), text)
        print(f"{name}: {'updated' if n else 'no block in BENCHMARKS.md'}")
    from dualsynth.io import atomic_write_text

    atomic_write_text(doc, text)


if __name__ == "__main__":
    main()
