"""Issue 16 item 3: ``report.html`` — an experiment's executed notebooks rendered with their figures, and its
results statement (``python -m dualsynth.report outputs/X --html``, ``make report``), on a tiny fake experiment."""
import base64
import io

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from dualsynth.io import DataError
from dualsynth.report import cli
from dualsynth.report.html import PAGES_DIR, REPORT_HTML, write_html_report


def _png(colour) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 6, 3), colour, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _notebook(heading, png=None, executed=True, failed=False, text="done"):
    code = new_code_cell("print('x')", execution_count=1 if executed else None)
    if executed:
        code.outputs = [new_output("stream", name="stdout", text=text + "\n")]
        if png:
            code.outputs.append(new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}))
        if failed:
            code.outputs.append(new_output("error", ename="PatchingError", evalue="no patch left",
                                           traceback=["PatchingError: no patch left"]))
    nb = new_notebook(cells=[new_markdown_cell(f"# {heading}\n\nSome words."), code])
    if executed:
        nb.metadata["papermill"] = {"start_time": "2026-12-03T18:07:14", "duration": 75.0 if not failed else 3.0,
                                    "exception": True if failed else None}
    return nb


PNG_01, PNG_A50, PNG_A100 = _png((200, 30, 30)), _png((30, 200, 30)), _png((30, 30, 200))


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "outputs" / "tiny"
    nbdir = exp / "notebooks"
    nbdir.mkdir(parents=True)
    nbformat.write(_notebook("01 · Patching of the tiny set", PNG_01, text="hello from 01"), nbdir / "01_patching.ipynb")
    nbformat.write(_notebook("06 · U-Net run", PNG_A50, text="run A_50"), nbdir / "06_unet_training-A_50-seed0.ipynb")
    nbformat.write(_notebook("06 · U-Net run", PNG_A100, failed=True, text="run A_100"),
                   nbdir / "06_unet_training-A_100-seed0.ipynb")
    nbformat.write(_notebook("05 · never run", executed=False), nbdir / "05_datasets.ipynb")
    nbformat.write(_notebook("07 · half written"), nbdir / ".07_results_plots.123.running.ipynb")
    (exp / "results").mkdir()
    (exp / "results" / "report.md").write_text("## tiny (`tiny`)\n\n**Verdict: inconclusive** — A_50 vs A_0.\n\n"
                                               "| class | gain |\n|---|---|\n| matrix | +0.031 |\n")
    return exp


def test_report_html_holds_every_executed_notebook_with_its_figures(experiment):
    path = write_html_report(experiment)
    assert path == experiment / REPORT_HTML and path.is_file()
    index = path.read_text()
    pages = experiment / PAGES_DIR
    assert sorted(p.name for p in pages.iterdir()) == ["01_patching.html", "06_unet_training-A_100-seed0.html",
                                                       "06_unet_training-A_50-seed0.html"]
    # the results statement, its table rendered
    assert "Verdict: inconclusive" in index and "<table>" in index and "+0.031" in index
    # links to each page, runs in natural order (50 before 100), the failed run marked
    for name in ("01_patching", "06_unet_training-A_50-seed0", "06_unet_training-A_100-seed0"):
        assert f'href="{PAGES_DIR}/{name}.html"' in index
    assert index.index("A_50-seed0.html") < index.index("A_100-seed0.html")
    assert "2 runs, 1 failed" in index
    assert "05_datasets" not in index and "123.running" not in index  # never executed; papermill's running copy
    # each page: the notebook's heading, its printed output and its own figure embedded as a data URI
    for name, heading, png, printed in (("01_patching", "01 · Patching of the tiny set", PNG_01, "hello from 01"),
                                        ("06_unet_training-A_50-seed0", "06 · U-Net run", PNG_A50, "run A_50"),
                                        ("06_unet_training-A_100-seed0", "06 · U-Net run", PNG_A100, "run A_100")):
        page = (pages / f"{name}.html").read_text()
        assert heading in page and printed in page
        assert f"data:image/png;base64,{png}" in page
        assert f'href="../{REPORT_HTML}"' in page
    assert "PatchingError" in (pages / "06_unet_training-A_100-seed0.html").read_text()
    assert not (experiment / f"{PAGES_DIR}.tmp").exists()


def test_rewritten_as_a_whole_and_kept_when_writing_fails(experiment, monkeypatch):
    write_html_report(experiment)
    (experiment / "notebooks" / "06_unet_training-A_100-seed0.ipynb").unlink()
    (experiment / "results" / "report.md").unlink()
    write_html_report(experiment)
    pages = sorted(p.name for p in (experiment / PAGES_DIR).iterdir())
    assert pages == ["01_patching.html", "06_unet_training-A_50-seed0.html"]  # no stale page left behind
    index = (experiment / REPORT_HTML).read_text()
    assert "No results statement yet" in index and "python -m dualsynth.report" in index
    before = (experiment / REPORT_HTML).read_bytes(), (experiment / PAGES_DIR / "01_patching.html").read_bytes()

    from nbconvert import HTMLExporter

    calls = []
    real = HTMLExporter.from_notebook_node

    def failing(self, nb, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed half-way")
        return real(self, nb, *a, **kw)

    monkeypatch.setattr(HTMLExporter, "from_notebook_node", failing)
    nbformat.write(_notebook("01 · Patching, changed", PNG_A100), experiment / "notebooks" / "01_patching.ipynb")
    with pytest.raises(RuntimeError, match="killed half-way"):
        write_html_report(experiment)
    assert ((experiment / REPORT_HTML).read_bytes(), (experiment / PAGES_DIR / "01_patching.html").read_bytes()) == before
    assert not (experiment / f"{PAGES_DIR}.tmp").exists()


def test_no_executed_notebooks_is_a_clear_error(tmp_path, capsys):
    exp = tmp_path / "outputs" / "empty"
    with pytest.raises(DataError, match=r"empty/notebooks: no such folder.*make run EXPERIMENT=empty"):
        write_html_report(exp)
    (exp / "notebooks").mkdir(parents=True)
    nbformat.write(_notebook("01 · never run", executed=False), exp / "notebooks" / "01_patching.ipynb")
    with pytest.raises(DataError, match=r"empty/notebooks: no executed notebooks"):
        write_html_report(exp)
    assert cli.main([str(exp), "--html"]) == 2
    assert "empty/notebooks: no executed notebooks" in capsys.readouterr().err
    assert not (exp / REPORT_HTML).exists()


def test_cli_prints_the_path(experiment, tmp_path, capsys):
    assert cli.main([str(experiment), "--html"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {experiment / REPORT_HTML}"
    assert cli.main([str(experiment), "--html", "--out-dir", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "tiny" / REPORT_HTML).is_file()
    assert "Verdict: inconclusive" in (tmp_path / "elsewhere" / "tiny" / REPORT_HTML).read_text()


def _started_at(nb, when):
    nb.metadata["papermill"]["start_time"] = when
    return nb


def test_only_the_latest_attempt_of_each_notebook_is_shown(experiment):
    """Issue 16: a ``-failed`` notebook from an earlier attempt stays beside the later successful run; the report
    shows the latest attempt only, the superseded one in small print, and a failure after a success as failed."""
    nbdir = experiment / "notebooks"
    # A_50: failed at 17:00, succeeded at 18:07 (the fixture's run) -> ok
    nbformat.write(_started_at(_notebook("06 · U-Net run", failed=True, text="old A_50 crash"),
                               "2026-12-03T17:00:00+00:00"), nbdir / "06_unet_training-A_50-seed0-failed.ipynb")
    # 01: succeeded at 18:07 (fixture), failed again at 19:00 -> failed, the successful run named
    nbformat.write(_started_at(_notebook("01 · Patching of the tiny set", failed=True, text="new 01 crash"),
                               "2026-12-03T19:00:00+00:00"), nbdir / "01_patching-failed.ipynb")
    # 05: a failed attempt only, no papermill record (executed by hand) -> failed, nothing superseded
    nb05 = _notebook("05 · datasets", failed=True, text="05 crash")
    del nb05.metadata["papermill"]
    nbformat.write(nb05, nbdir / "05_datasets-failed.ipynb")

    index = write_html_report(experiment).read_text()
    pages = sorted(p.name for p in (experiment / PAGES_DIR).iterdir())
    assert pages == ["01_patching-failed.html", "05_datasets-failed.html", "06_unet_training-A_100-seed0.html",
                     "06_unet_training-A_50-seed0.html"]
    assert "old A_50 crash" not in index
    assert "an earlier attempt failed" in index and "06_unet_training-A_50-seed0-failed.ipynb" in index
    assert "the last successful run" in index and "notebooks/01_patching.ipynb" in index
    assert "2 runs, 1 failed" in index  # A_100 only; A_50's old failure no longer counts
    assert "<strong>3 failed</strong>" in index  # 01 (latest), 05, A_100; not the superseded A_50 failure
    a50 = (experiment / PAGES_DIR / "06_unet_training-A_50-seed0.html").read_text()
    assert "run A_50" in a50 and "an earlier attempt failed" in a50
    p01 = (experiment / PAGES_DIR / "01_patching-failed.html").read_text()
    assert "new 01 crash" in p01 and "the last successful run" in p01
    # the stage keeps its own row (not a "failed" run of 01_patching)
    assert "01_patching: " not in index and "05_datasets: " not in index


def test_a_later_success_wins_by_file_time_without_papermill_records(experiment):
    import os

    nbdir = experiment / "notebooks"
    ok, bad = nbdir / "06_unet_training-A_100-seed0.ipynb", nbdir / "06_unet_training-A_100-seed0-failed.ipynb"
    nb_ok = _notebook("06 · U-Net run", text="A_100 ok now")
    del nb_ok.metadata["papermill"]
    nbformat.write(nb_ok, ok)
    nb_bad = _notebook("06 · U-Net run", failed=True, text="A_100 crashed")
    del nb_bad.metadata["papermill"]
    nbformat.write(nb_bad, bad)
    os.utime(bad, (1_000_000, 1_000_000))
    os.utime(ok, (2_000_000, 2_000_000))
    index = write_html_report(experiment).read_text()
    assert "2 runs" in index
    assert "2 runs, 1 failed" not in index and "<strong>1 failed</strong>" not in index
    assert "an earlier attempt failed" in index
    assert not (experiment / PAGES_DIR / "06_unet_training-A_100-seed0-failed.html").exists()
