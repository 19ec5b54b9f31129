"""Shared helpers of the benchmark scripts in ``bench/`` (not a test, not part of the library).

* ``machine()``: CPU model and its widest vector extension, cores, RAM, load average, Python/TensorFlow versions.
* ``peak_rss_mb()``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of this process in MiB (the
  high-water mark of the resident set since the process started, TensorFlow runtime included).
* ``run_child(script, task)``: run one measurement in a fresh Python process (needed for thread
  settings, which TensorFlow accepts only before its first op, and for a per-configuration peak RSS).
* ``write_result(path, payload)``: ``dualsynth.io.atomic_write_json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _vector_isa() -> str | None:
    """The widest x86 vector extension the CPU reports (``avx512``, ``avx2``, ``avx``), else None: the same 2-core
    EPYC name covers machines with and without AVX-512, which differ 3-6x in TensorFlow's speed here."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return None
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")):
        if flag in flags:
            return isa
    return None


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = dict(
        cpu_model=_cpu_model(), vector_isa=_vector_isa(), cores=os.cpu_count(), ram_gib=_ram_gib(),
        machine=platform.machine(),
        python=platform.python_version(), load_average=[round(v, 2) for v in os.getloadavg()],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # pragma: no cover
        pass
    return info


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def repeat(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_child(script: str, task: dict, env: dict | None = None, timeout: float | None = None) -> Any:
    """Run ``script --child JSON`` in a fresh interpreter; return the object it prints after ``RESULT ``.

    ``timeout`` (seconds): the child is killed and ``subprocess.TimeoutExpired`` raised when it runs longer."""
    cmd = [sys.executable, os.path.abspath(script), "--child", json.dumps(task)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(cmd[1:])} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"child {' '.join(cmd[1:])} printed no 'RESULT ' line; end of its output:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def child_main(args_child: str, fn: Callable[[dict], Any]) -> None:
    print("RESULT " + json.dumps(fn(json.loads(args_child))), flush=True)


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log y = a + b log x``: the exponent b, the factor e^a and R²."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((v - my) ** 2 for v in ly)
    ss_res = sum((v - (a + b * u)) ** 2 for u, v in zip(lx, ly))
    return dict(exponent=round(b, 3), factor=math.exp(a), r2=round(1 - ss_res / ss_tot, 4) if ss_tot else 1.0)


def write_result(path: str, payload: dict) -> None:
    import dualsynth  # noqa: F401  (sets the Keras environment before TensorFlow)
    from dualsynth.io import atomic_write_json

    atomic_write_json(path, payload)
    print(f"wrote {path}", flush=True)


def forward_flops(fn, input_spec) -> int | None:
    """Floating-point operations of one forward call, counted by ``tf.compat.v1.profiler`` on the traced graph.

    ``fn``: a Python callable of one tensor; ``input_spec``: its ``tf.TensorSpec`` (fixed shape).  The profiler
    counts the ops with a registered FLOP statistic (convolutions, matmuls, element-wise arithmetic), 2 per
    multiply-add.  A training step costs about 3x this (forward + backward, the usual estimate).
    """
    import tensorflow as tf

    try:
        concrete = tf.function(fn).get_concrete_function(input_spec)
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        prof = tf.compat.v1.profiler.profile(graph=concrete.graph, options=opts)
        return int(prof.total_float_ops)
    except Exception as e:  # pragma: no cover - profiler quirks
        print(f"FLOP count failed: {e}", file=sys.stderr)
        return None


def arg_parser(doc: str, out: str):
    """The options every benchmark script has: --quick, --out, --repeats and the hidden --child."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script works")
    ap.add_argument("--out", default=out, help="JSON output (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 3)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap
