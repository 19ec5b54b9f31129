"""What a JupyterLab user meets before running anything: the notebooks open unmodified, say their scale, keep their
metadata through `make strip-notebooks`, and `make lab` starts as root (containers)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _kernel_language_info() -> dict:
    """What this venv's ipykernel reports (JupyterLab writes it into the notebook when the kernel starts)."""
    from ipykernel.ipkernel import IPythonKernel

    return dict(IPythonKernel.language_info)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_the_metadata_jupyterlab_writes(path):
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert meta.get("kernelspec") == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    info, kernel = dict(meta.get("language_info", {})), _kernel_language_info()
    assert re.fullmatch(r"3\.\d+\.\d+", str(info.pop("version", ""))), f"{path.name}: language_info.version"
    kernel.pop("version")
    assert info == kernel, f"{path.name}: language_info differs from what JupyterLab would write"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_says_the_defaults_are_the_smoke_scale(path):
    first = json.loads(path.read_text(encoding="utf-8"))["cells"][0]
    text = "".join(first["source"])
    assert first["cell_type"] == "markdown" and text.startswith("# ")
    scale = [ln for ln in text.splitlines()[:4] if ln.startswith("> **Scale.**")]
    assert scale, f"{path.name}: no scale line right under the title"
    for word in ("`smoke`", "`quick`", "`paper`", f"params/presets/quick/{path.stem}.yaml"):
        assert word in scale[0], f"{path.name}: the scale line does not name {word}"


def _make_recipe(target: str) -> str:
    """The (one-line) recipe of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"{target}:"))
    assert lines[i + 1].startswith("\t"), f"{target} has no recipe"
    return lines[i + 1][1:]


def test_strip_notebooks_removes_outputs_and_keeps_metadata_and_tags(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text(encoding="utf-8"))
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["ran\n"]}]
                c["execution_count"] = 1
        (tmp_path / "notebooks" / p.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    recipe = _make_recipe("strip-notebooks").replace("$(PY)", f'"{sys.executable}"')
    subprocess.run(recipe, shell=True, cwd=tmp_path, check=True, timeout=120)
    for p in NOTEBOOKS:
        committed = json.loads(p.read_text(encoding="utf-8"))
        stripped = json.loads((tmp_path / "notebooks" / p.name).read_text(encoding="utf-8"))
        assert stripped["metadata"] == committed["metadata"], p.name
        assert [c.get("metadata") for c in stripped["cells"]] == [c.get("metadata") for c in committed["cells"]]
        code = [c for c in stripped["cells"] if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), p.name


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_lab_allows_root_only_as_root():
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(ln for ln in out.splitlines() if "jupyter lab" in ln)
    assert ("--allow-root" in line) == (os.geteuid() == 0), line


@pytest.mark.slow
def test_progress_bars_are_widgets_that_save_their_last_state(tmp_path):
    """In a kernel, tqdm.auto draws a widget (no IProgress warning) whose saved text/plain is its final state, not
    the 0 % it showed when it appeared; a leave=False bar leaves nothing; a warning comes after the bar."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import dualsynth\n"
        "import warnings\n"
        "from tqdm.auto import tqdm\n"
        "for i in tqdm(range(7), desc='kept'):\n"
        "    if i == 3:\n"
        "        warnings.warn('raised while the bar runs')\n"
        "for i in tqdm(range(4), desc='gone', leave=False):\n"
        "    pass\n")]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outs = nb.cells[0].outputs
    bars = [o for o in outs if o.output_type == "display_data"]
    assert len(bars) == 2, outs
    assert "application/vnd.jupyter.widget-view+json" in bars[0].data, bars[0].data  # live: the widget
    assert "kept: 100%" in bars[0].data["text/plain"] and "7/7" in bars[0].data["text/plain"], bars[0].data
    assert bars[1].data == {"text/plain": ""}, bars[1].data  # leave=False: gone
    stderr = "".join(o.text for o in outs if o.output_type == "stream" and o.name == "stderr")
    assert "TqdmWarning" not in stderr and "IProgress" not in stderr, stderr
    assert "UserWarning: raised while the bar runs" in stderr
    assert outs.index(bars[0]) < next(i for i, o in enumerate(outs) if o.output_type == "stream")
