"""Synthetic masks against their micrographs: the image–mask consistency of the synthetic pool, read back for the
report and notebook 07, with each failing class said in words.

04_synthesis stores :func:`dualsynth.quality.consistency` (the pre-test judge's IoU against the synthetic masks on
their micrographs ÷ its IoU against real masks on real test images, per class and overall, beside the class
fraction ratio) in ``synthetic/quality.json`` → ``pretest`` → ``consistency``.  Older experiments have no
``quality.json``, a ``quality.json`` without ``pretest`` (04 run with ``pretest: false`` or before it existed), or a
``pretest`` without ``consistency``: the entry then says "not measured" and why.  A pool curated with
``min_consistency`` also has ``pretest_check`` (:func:`dualsynth.pretest.check_record`: a second judge that did not
pick the pool); its record is the one reported, the curating judge's figure beside it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..io import read_json
from ..quality import balanced_consistency

__all__ = ["experiment_consistency", "consistency_table", "consistency_lines", "consistency_reason",
           "consistency_cell"]

FAIL_BELOW = 0.8  # quality.consistency's default, for records that do not carry theirs
COLUMNS = ["class", "iou_synthetic", "iou_real", "iou_ratio", "fraction_synthetic_%", "fraction_real_%",
           "fraction_ratio", "fails", "how"]


def _not_measured(why: str) -> dict[str, Any]:
    return {"measured": False, "note": f"not measured: {why}", "consistency": None, "classes": [], "per_class": {},
            "failing_classes": [], "fail_below": None, "failures": {}, "unjudged": {}, "judge": None}


def experiment_consistency(experiment_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``consistency`` entry of the report: the record of :func:`dualsynth.quality.consistency` as 04 stored it
    (``consistency`` overall, ``per_class``, ``failing_classes``, ``fail_below`` …, so
    :func:`dualsynth.plots.plot_consistency` draws it), plus ``measured``; ``note`` (why not, else None);
    ``failures`` {failing class: how it fails, in words}; ``unjudged`` {class the judge cannot segment on real
    images but that does not fail: words}; ``judge`` (encoder, epochs, its Missing Class IoU on real test images and
    on the synthetic pool).  A ``quality.json`` older than ``pool.json`` (04 stopped after writing a new pool) is
    not the current pool's and counts as not measured."""
    syn = Path(experiment_dir) / "synthetic"
    q, pool = syn / "quality.json", syn / "pool.json"
    if not q.is_file():
        return _not_measured("no synthetic/quality.json (04_synthesis has not run here)")
    if pool.is_file() and q.stat().st_mtime_ns < pool.stat().st_mtime_ns:
        return _not_measured("synthetic/quality.json is older than the pool (pool.json): it describes another pool")
    pretest = read_json(q).get("pretest")
    if not isinstance(pretest, Mapping):
        return _not_measured("synthetic/quality.json has no pre-test (04_synthesis ran with pretest: false, or "
                             "before the pre-test existed)")
    record = pretest.get("consistency")
    if not isinstance(record, Mapping) or not isinstance(record.get("per_class"), Mapping):
        return _not_measured("the pre-test in synthetic/quality.json predates the image–mask consistency "
                             "(re-run 04_synthesis to measure it)")
    keys = ("encoder", "epochs", "missing_class_iou_real_test", "missing_class_iou_synthetic", "real_reference")
    check = read_json(q).get("pretest_check")
    if isinstance(check, Mapping) and isinstance((check.get("consistency") or {}).get("per_class"), Mapping):
        # a pool curated by its judge: the number of a second judge that did not pick it (pretest.check_record)
        return _entry(check["consistency"], {**{k: check.get(k) for k in keys}, "independent": True,
                                             "judge_seed": check.get("judge_seed"),
                                             "curating_consistency": record.get("consistency")})
    return _entry(record, {k: pretest.get(k) for k in keys})


def _entry(record: Mapping, judge: Mapping | None = None) -> dict[str, Any]:
    """A stored record of :func:`dualsynth.quality.consistency` with the report's keys added."""
    lo = record.get("fail_below") or FAIL_BELOW
    per = record.get("per_class") or {}
    failing = list(record.get("failing_classes") or [])
    balanced = record.get("consistency_balanced")
    if balanced is None and per:  # a record written before the balanced measure: its per-class entries suffice
        balanced = balanced_consistency(per)
    return {**record, "consistency_balanced": balanced, "measured": True, "note": None, "fail_below": lo,
            "failing_classes": failing,
            "classes": list(record.get("classes") or per),
            "failures": {c: _how(per[c], lo) for c in failing if c in per},
            "unjudged": {c: _how(p, lo) for c, p in per.items() if c not in failing and p.get("ratio") is None},
            "judge": dict(judge) if judge else None}


# --------------------------------------------------------------------------- words
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _fraction_words(pc: Mapping, lo: float, short: bool = False) -> str | None:
    """How the class's share of the synthetic mask pixels is off (None when within [lo, 1/lo])."""
    fs, fr, q = pc.get("fraction_synthetic"), pc.get("fraction_real"), pc.get("fraction_ratio")
    vs = f"{_pct(fs)} vs {_pct(fr)} real" if short else f"{_pct(fs)} of synthetic mask pixels vs {_pct(fr)} real"
    if q is None:
        return (f"absent from the real training masks ({_pct(fs)} of synthetic mask pixels), so its fraction "
                "ratio is undefined" if not short else "absent from the real training masks")
    if not fs:
        return f"missing from the synthetic masks ({vs})"
    if q < lo:
        return f"under-produced, {vs} (ratio {q:.2f})" if not short else f"under-produced ({vs})"
    if q > 1 / lo:
        return f"over-produced, {vs} (ratio {q:.2f})" if not short else f"over-produced ({vs})"
    return None


def _how(pc: Mapping, lo: float) -> str:
    """One class in words, e.g. ``under-produced, 3.1 % of synthetic mask pixels vs 7.7 % real (ratio 0.40)``."""
    frac, r = _fraction_words(pc, lo), pc.get("ratio")
    if r is None:  # the judge scores 0 on real images: the IoU ratio says nothing
        judge = (f"the judge cannot segment it on real images (IoU {pc.get('iou_real') or 0:.2f}), so its "
                 "consistency cannot be judged")
        q = pc.get("fraction_ratio")
        return f"{judge}; {frac}" if frac else f"{judge}; fraction ratio {q:.2f}" if q is not None else judge
    parts = [frac] if frac else []
    if r < lo:
        parts.append(f"its synthetic masks disagree with their micrographs: the judge's IoU {pc['iou_synthetic']:.2f} "
                     f"on synthetic vs {pc['iou_real']:.2f} on real images (IoU ratio {r:.2f})")
    return "; ".join(parts) if parts else f"IoU ratio {r:.2f}, fraction ratio {pc.get('fraction_ratio') or 0:.2f}"


def _short(name: str, pc: Mapping, lo: float) -> str:
    parts = []
    if pc.get("ratio") is None:
        parts.append("not segmentable by the judge on real images")
    elif pc["ratio"] < lo:
        parts.append(f"disagreeing with its micrographs (IoU ratio {pc['ratio']:.2f})")
    frac = _fraction_words(pc, lo, short=True)
    return f"{name} " + " and ".join(parts + ([frac] if frac else []))


def consistency_reason(entry: Mapping | None) -> str | None:
    """The reason the verdict gives when synthetic data does not help: the failing classes (or an overall
    consistency below ``fail_below``), in one clause; None when measured and fine, or not measured."""
    if not entry or not entry.get("measured"):
        return None
    lo, overall, per = entry["fail_below"], entry.get("consistency"), entry["per_class"]
    failing = [c for c in entry["failing_classes"] if c in per]
    low = overall is not None and overall < lo
    if not failing and not low:
        return None
    if overall is None:
        head = "the image–mask consistency cannot be computed"
    elif low:
        head = (f"the synthetic masks match their micrographs less well than real masks (image–mask consistency "
                f"{overall:.2f}, below {lo:.2f})")
    else:
        head = f"the image–mask consistency is {overall:.2f} overall"
    b = entry.get("consistency_balanced")
    if overall is not None and not low and b is not None and b < lo:
        head += f" (balanced {b:.2f}: no class making up for another)"
    if failing:
        head += (" and " if low or overall is None else " but ") + "the synthetic masks fail for " + ", ".join(
            _short(c, per[c], lo) for c in failing)
    return head


def consistency_cell(entry: Mapping | None) -> str:
    """The cross-experiment table's cell: ``0.83``, ``0.71 (fails: nd_rich, eta)`` or ``not measured``."""
    if not entry or not entry.get("measured"):
        return "not measured"
    c, b = entry.get("consistency"), entry.get("consistency_balanced")
    fails = entry.get("failing_classes") or []
    return (("n/a" if c is None else f"{c:.2f}") + ("" if b is None else f", balanced {b:.2f}")
            + (f" (fails: {', '.join(fails)})" if fails else ""))


# --------------------------------------------------------------------------- the per-class table
def _rows(entry: Mapping) -> list[dict[str, Any]]:
    failing = set(entry["failing_classes"])
    rows = []
    for c, pc in entry["per_class"].items():
        fs, fr = pc.get("fraction_synthetic"), pc.get("fraction_real")
        rows.append({"class": c, "iou_synthetic": pc.get("iou_synthetic"), "iou_real": pc.get("iou_real"),
                     "iou_ratio": pc.get("ratio"), "fraction_synthetic_%": None if fs is None else 100 * fs,
                     "fraction_real_%": None if fr is None else 100 * fr, "fraction_ratio": pc.get("fraction_ratio"),
                     "fails": c in failing,
                     "how": entry["failures"].get(c) or entry["unjudged"].get(c) or ""})
    return rows


def consistency_table(source) -> "pd.DataFrame":
    """The per-class table of the image–mask consistency as a DataFrame (one row per class: the judge's IoU on
    synthetic and on real, their ratio, the class fraction of synthetic and real masks in %, their ratio, whether
    the class fails and how).  ``source``: an experiment folder, a report dict or its ``consistency`` entry.  When
    not measured the table is empty and ``df.attrs["note"]`` says why; ``df.attrs["consistency"]`` is the overall
    ratio, ``df.attrs["consistency_balanced"]`` the balanced one."""
    import pandas as pd

    if isinstance(source, Mapping):
        entry = source["consistency"] if isinstance(source.get("consistency"), Mapping) else source
        if "measured" not in entry:  # a bare record of quality.consistency, or a report that predates the entry
            entry = _entry(entry) if "per_class" in entry else _not_measured("no image–mask consistency entry")
    else:
        entry = experiment_consistency(source)
    df = pd.DataFrame(_rows(entry) if entry.get("measured") else [], columns=COLUMNS)
    df.attrs.update(note=entry.get("note"), consistency=entry.get("consistency"),
                    consistency_balanced=entry.get("consistency_balanced"))
    return df


def _r(x, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def consistency_lines(entry: Mapping | None) -> list[str]:
    """The report section "Synthetic masks against their micrographs" in markdown lines."""
    head = ["### Synthetic masks against their micrographs", ""]
    if not entry or not entry.get("measured"):
        note = (entry or {}).get("note") or "not measured"
        return head + [f"Image–mask consistency {note}.", ""]
    lo, overall = entry["fail_below"], entry.get("consistency")
    n_cls = len(entry["per_class"])
    real = f"the {entry['num_real']} real test images" if entry.get("num_real") is not None else "the real test images"
    syn = f"the {entry['num_synthetic']} synthetic pairs" if entry.get("num_synthetic") is not None else "the synthetic pairs"
    if overall is None:
        first = (f"Image–mask consistency cannot be computed: the judge scores IoU 0 on every class of {real}, so "
                 "it cannot tell whether a mask matches its micrograph.")
    else:
        first = (f"Image–mask consistency **{overall:.2f}**: the judge's IoU against the masks of {syn} on their "
                 f"micrographs ÷ its IoU against the real masks on {real}, summed over the {n_cls} classes of the "
                 "real masks (1 = the synthetic masks fit their micrographs as well as real masks fit theirs).")
        b = entry.get("consistency_balanced")
        if b is not None:
            first += (f" Balanced consistency **{b:.2f}**: each class's IoU capped at its real one and scaled by how "
                      "well its fraction matches the real one, so no class makes up for another and a shrunk or "
                      "missing class costs its own share, if the judge can segment it on real images (at most 1).")
    j = entry.get("judge") or {}
    if j.get("encoder"):
        epochs = f", {j['epochs']} epoch(s)" if j.get("epochs") is not None else ""
        first += (f" Judge: the pre-test U-Net ({j['encoder']}{epochs}) trained on the real base set; Missing Class "
                  f"IoU {_r(j.get('missing_class_iou_real_test'), '{:.3f}')} on the real test images, "
                  f"{_r(j.get('missing_class_iou_synthetic'), '{:.3f}')} on the synthetic pool.")
    ref = j.get("real_reference")
    if isinstance(ref, Mapping) and ref.get("consistency") is not None:
        first += (f" For scale, real patches scored the same way ({ref.get('num_patches')} validation patches with "
                  f"their own masks): {_r(ref.get('consistency'))}, balanced {_r(ref.get('consistency_balanced'))}, "
                  f"capped {_r(ref.get('consistency_capped'))} — a pool as good as real data scores about that.")
    if j.get("independent"):
        first += (f" The pool was curated by another judge (`min_consistency`), which keeps the pairs it agrees "
                  f"with, so these numbers come from a second judge (seed {j.get('judge_seed')}) that did not pick "
                  f"the pool; the curating judge's own consistency is {_r(j.get('curating_consistency'))}, biased "
                  "upwards.")
    lines = head + [first, "", "| class | judge IoU synthetic / real | IoU ratio | fraction synthetic | "
                    "fraction real | fraction ratio | fails |", "|---|---|---|---|---|---|---|"]
    for r in _rows(entry):
        lines.append(f"| {r['class']} | {_r(r['iou_synthetic'])} / {_r(r['iou_real'])} | {_r(r['iou_ratio'])} | "
                     f"{_r(r['fraction_synthetic_%'], '{:.1f} %')} | {_r(r['fraction_real_%'], '{:.1f} %')} | "
                     f"{_r(r['fraction_ratio'])} | {'**yes**' if r['fails'] else 'no'} |")
    band = f"IoU ratio below {lo:.2f}, or fraction ratio outside {lo:.2f}–{1 / lo:.2f}"
    if entry["failures"]:
        lines += ["", f"Failing classes ({band}):", ""] + [f"- {c}: {how}" for c, how in entry["failures"].items()]
    else:
        lines += ["", f"No class fails ({band})."]
    if entry["unjudged"]:
        lines += ["", "Not judged:", ""] + [f"- {c}: {how}" for c, how in entry["unjudged"].items()]
    return lines + [""]
