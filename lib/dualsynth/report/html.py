"""``report.html``: an experiment's executed notebooks and its results statement, as pages a person opens.

:func:`write_html_report` renders every executed notebook the batch saved under ``<experiment>/notebooks/`` (01–07,
one 06 per variant and seed) with nbconvert — code, figures, tables, printed output — into ``report/<notebook>.html``,
one self-contained page each (figures embedded), and writes the index ``report.html`` beside them: the results
statement of ``results/report.md`` (07 writes it; so does ``python -m dualsynth.report``) followed by a table of
the notebooks with their status and time, linking to the pages.

**Only the latest attempt of each notebook**: a failed attempt leaves ``<name>-failed.ipynb`` beside the last good
``<name>.ipynb`` (:func:`dualsynth.runner.failed_notebook_path`), and a later successful run does not remove it.  Of
the two, the one started last (papermill's ``start_time``, else the file's modification time) is the notebook's
status and page; the other is named in small print (*an earlier attempt failed*, or *the last successful run* when
the latest attempt failed) and not rendered (:func:`latest_attempts`).

**One index with a page per notebook, not one file**: the quick preset's study alone saves 47 executed 06 notebooks
(30 MB with their figures), the paper's grid with seeds several times that; as one file the report would take long to
open, while the index opens at once and each page holds one notebook.  Keep ``report.html`` and ``report/``
together when copying the report.

The pages are written into ``report.tmp/`` and put in place of ``report/`` as a whole (:func:`dualsynth.io.replace_dir`),
then the index is written atomically: a report killed half-way leaves the previous one readable.
"""
from __future__ import annotations

import datetime as _dt
import html
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import nbformat

from ..io import DataError, atomic_write_text, recover_dir, replace_dir

__all__ = ["REPORT_HTML", "PAGES_DIR", "FAILED_SUFFIX", "Attempt", "executed_notebooks", "latest_attempts",
           "write_html_report"]

REPORT_HTML = "report.html"
PAGES_DIR = "report"
FAILED_SUFFIX = "-failed"  # what dualsynth.runner.failed_notebook_path appends to a failed attempt's stem


class _NoAltTextNotice(logging.Filter):
    """nbconvert notes every figure without alternative text (all of matplotlib's); it gives them a generic one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Alternative text is missing")


_QUIET_LOG = logging.getLogger(__name__)
_QUIET_LOG.addFilter(_NoAltTextNotice())


def _natural(path: Path) -> list:
    """Sort key: numbers by value (``BLQ_50`` before ``BLQ_100``)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name) if t]


def _executed(nb: nbformat.NotebookNode) -> bool:
    """A notebook a kernel ran: papermill's record, or a code cell with an execution count or outputs."""
    if nb.metadata.get("papermill", {}).get("start_time"):
        return True
    return any(c.cell_type == "code" and (c.get("execution_count") is not None or c.get("outputs"))
               for c in nb.cells)


def _failed(path: Path, nb: nbformat.NotebookNode) -> bool:
    return (path.stem.endswith(FAILED_SUFFIX) or bool(nb.metadata.get("papermill", {}).get("exception"))
            or any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", [])))


def executed_notebooks(experiment_dir: str | os.PathLike) -> list[tuple[Path, nbformat.NotebookNode]]:
    """The executed notebooks under ``<experiment>/notebooks/``, by name (hidden files — papermill's running
    copies — skipped); a :class:`~dualsynth.io.DataError` naming the folder when there are none."""
    exp = Path(experiment_dir)
    folder = exp / "notebooks"
    hint = (f"run the workflow for this experiment first (make run EXPERIMENT={exp.name}, or python -m dualsynth.batch "
            f"chain --experiment {exp.name}); the batch saves every executed notebook there")
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder, so there are no executed notebooks to report; {hint}")
    out = []
    for p in sorted(folder.glob("*.ipynb"), key=_natural):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            nb = nbformat.read(p, as_version=4)
        except Exception as e:  # a notebook cut short on disk is not worth failing the whole report for
            raise DataError(f"{p}: not a readable notebook ({type(e).__name__}: {e}); remove it or re-run its stage") from e
        if _executed(nb):
            out.append((p, nb))
    if not out:
        raise DataError(f"{folder}: no executed notebooks (*.ipynb that a kernel ran) in this folder; {hint}")
    return out


class Attempt(NamedTuple):
    """The latest attempt at one notebook: its file, contents, its name without ``-failed``, and the other attempt
    it won over (``None`` when there was only one)."""
    path: Path
    nb: nbformat.NotebookNode
    name: str
    superseded: Path | None


def _adoption(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """``metadata.dualsynth`` of an adopted run's notebook (``adopted_from``: the notebook it was copied from,
    ``adopted_at``: when), else ``{}``."""
    meta = nb.metadata.get("dualsynth")
    return meta if isinstance(meta, dict) else {}


def _started(path: Path, nb: nbformat.NotebookNode) -> _dt.datetime:
    """When an attempt started: papermill's ``start_time`` (naive times read as UTC), else the file's mtime; for
    an adopted run's notebook, when it was adopted (``metadata.dualsynth.adopted_at``: it supersedes any attempt
    made here before)."""
    raw = _adoption(nb).get("adopted_at") or nb.metadata.get("papermill", {}).get("start_time")
    if isinstance(raw, str):
        try:
            t = _dt.datetime.fromisoformat(raw)
        except ValueError:
            t = None
        if t is not None:
            return t if t.tzinfo is not None else t.replace(tzinfo=_dt.timezone.utc)
    return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)


def latest_attempts(notebooks: list[tuple[Path, nbformat.NotebookNode]]) -> list[Attempt]:
    """One entry per notebook, in the order given: of ``<name>.ipynb`` and ``<name>-failed.ipynb`` the one started
    last (a tie goes to the successful run); the other is kept as ``superseded``."""
    by_name: dict[str, list[tuple[Path, nbformat.NotebookNode]]] = {}
    for path, nb in notebooks:
        name = path.stem[:-len(FAILED_SUFFIX)] if path.stem.endswith(FAILED_SUFFIX) else path.stem
        by_name.setdefault(name, []).append((path, nb))
    out, seen = [], set()
    for path, _ in notebooks:
        name = path.stem[:-len(FAILED_SUFFIX)] if path.stem.endswith(FAILED_SUFFIX) else path.stem
        if name in seen:
            continue
        seen.add(name)
        tries = sorted(by_name[name], key=lambda t: (_started(*t), not t[0].stem.endswith(FAILED_SUFFIX)))
        latest_path, latest_nb = tries[-1]
        out.append(Attempt(latest_path, latest_nb, name, tries[-2][0] if len(tries) > 1 else None))
    return out


def _earlier(attempt: Attempt) -> str:
    """Small print about the attempt the latest one superseded ('' when there was none)."""
    if attempt.superseded is None:
        return ""
    what = ("an earlier attempt failed" if attempt.superseded.stem.endswith(FAILED_SUFFIX)
            else "the last successful run")
    return f"<small>({what}: <code>notebooks/{_cell(attempt.superseded.name)}</code>)</small>"


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _duration(nb: nbformat.NotebookNode) -> str:
    d = nb.metadata.get("papermill", {}).get("duration")
    if not isinstance(d, (int, float)):
        return "–"
    return f"{d:.0f} s" if d < 120 else f"{d / 60:.1f} min"


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _page(exp_name: str, attempt: Attempt, status: str) -> nbformat.NotebookNode:
    """A copy of the notebook with one line on top: back to the index, where it came from, its status and time
    (and the attempt it superseded, in small print)."""
    path, nb = attempt.path, attempt.nb
    page = nbformat.from_dict(nb)
    adopted = _adoption(nb).get("adopted_from")
    head = (f"[← report of `{exp_name}`](../{REPORT_HTML}) · `notebooks/{path.name}` · **{status}** · "
            f"{_duration(nb)}" + (f" {_earlier(attempt)}" if attempt.superseded is not None else "")
            + (f" · **adopted**: trained in another experiment, this is its notebook `{adopted}`" if adopted else ""))
    page.cells.insert(0, nbformat.v4.new_markdown_cell(head))
    return page


def _status(page: dict[str, Any]) -> str:
    return page["status"] + (f" {page['earlier']}" if page["earlier"] else "")


def _index_markdown(exp: Path, pages: list[dict[str, Any]], statement: str | None, statement_path: Path) -> list[str]:
    """The index's markdown cells: heading, results statement (or why there is none), notebook tables."""
    written = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    failed = sum(p["status"] == "failed" for p in pages)
    cells = [f"# Report · {exp.name}\n\nExperiment folder `{exp}` · {len(pages)} executed notebook(s)"
             + (f", **{failed} failed**" if failed else "") + f" · written {written}.\n\n"
             "The results statement first, then [every executed notebook](#notebooks) as a page of its own "
             "(figures embedded)."]
    if statement is not None:
        cells.append(f"# Results (`{statement_path}`)\n\n{statement}")
    else:
        cells.append(f"# Results\n\nNo results statement yet: `{statement_path}` is written by 07_results_plots at the "
                     f"end of the study, or by `python -m dualsynth.report {exp}`.")
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in pages:
        groups.setdefault(p["stage"], []).append(p)
    rows = ['<a id="notebooks"></a>', "", "# Notebooks", "", "| notebook | title | status | time |", "|---|---|---|---|"]
    runs = []
    for stage, items in groups.items():
        single = len(items) == 1 and items[0]["run"] is None
        if single:
            p = items[0]
            rows.append(f"| [{_cell(p['name'])}]({p['href']}) | {_cell(p['title'])} | {_status(p)} | {p['time']} |")
        else:
            n_failed = sum(p["status"] == "failed" for p in items)
            rows.append(f"| [{_cell(stage)}](#{quote(stage)}) | {_cell(items[0]['title'])} | {len(items)} runs"
                        + (f", {n_failed} failed" if n_failed else "") + " | – |")
            runs.append(f'<a id="{html.escape(stage)}"></a>\n\n## {stage}: {len(items)} runs\n\n'
                        "| run | status | time |\n|---|---|---|\n"
                        + "\n".join(f"| [{_cell(p['run'] or p['name'])}]({p['href']}) | {_status(p)} | {p['time']} |"
                                    for p in items))
    cells.append("\n".join(rows))
    cells += runs
    return cells


def write_html_report(experiment_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      statement: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` and ``report/`` (one page per executed notebook) into ``out_dir`` (default: the
    experiment folder); return the path of ``report.html``.

    ``statement``: the markdown results statement to put first (default ``<experiment>/results/report.md``; the
    index says how to make it when it is absent)."""
    from nbconvert import HTMLExporter  # (imports in about a second; only this function needs it)

    exp = Path(experiment_dir)
    out = Path(out_dir) if out_dir is not None else exp
    notebooks = executed_notebooks(exp)
    statement_path = Path(statement) if statement is not None else exp / "results" / "report.md"
    text = statement_path.read_text(encoding="utf-8") if statement_path.is_file() else None

    out.mkdir(parents=True, exist_ok=True)
    target = out / PAGES_DIR
    recover_dir(target)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    exporter = HTMLExporter(log=_QUIET_LOG)
    pages = []
    try:
        for attempt in latest_attempts(notebooks):
            path, nb = attempt.path, attempt.nb
            status = "failed" if _failed(path, nb) else "ok"
            stage, _, run = attempt.name.partition("-")
            body, _ = exporter.from_notebook_node(_page(exp.name, attempt, status),
                                                  resources={"metadata": {"name": f"{exp.name} · {path.stem}"}})
            (tmp / f"{path.stem}.html").write_text(body, encoding="utf-8")
            pages.append({"name": attempt.name, "stage": stage, "run": run or None, "title": _title(nb, path.stem),
                          "status": status, "earlier": _earlier(attempt), "time": _duration(nb),
                          "href": f"{PAGES_DIR}/{quote(path.stem)}.html"})
        index = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(c)
                                                for c in _index_markdown(exp, pages, text, statement_path)])
        body, _ = exporter.from_notebook_node(index, resources={"metadata": {"name": f"Report · {exp.name}"}})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous report stays as it was
        raise
    replace_dir(tmp, target)
    return atomic_write_text(out / REPORT_HTML, body)
