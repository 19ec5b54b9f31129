"""The notebooks as a user meets them: JupyterLab from the project's venv, in a real (headless) Chromium.

JupyterLab is started with this interpreter (the venv's) on a free local port with a token; Playwright for Python
drives the Debian ``chromium`` binary (no browser download).  Copies of 01 and 02 (in a temporary folder, so the
committed notebooks are not touched; outputs under ``$DUALSYNTH_OUTPUTS`` in the same folder) are opened, must open
unmodified (the committed metadata is what JupyterLab would write), and are run with Run → Run All Cells at their
smoke defaults.  Then, from the notebook JupyterLab saved and from the page: no error output; no stderr output other
than the project's own Python warnings (``file:line: …Warning: …``, listed in the test's output); every figure
rendered with a non-zero size; the progress bars rendered as widgets; the kernel is the venv's Python; and no
TensorFlow log line in JupyterLab's own log (the terminal of ``make lab``).  Screenshots go to ``outputs/browser/``.
Skipped, with the reason, where Chromium or playwright is missing.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

NOTEBOOKS = ("01_patching", "02_vqvae")  # 02 reads what 01 wrote
SHOTS = ROOT / "outputs" / "browser"
RUN_TIMEOUT = 420  # seconds per notebook; the smoke run takes 10-30 s on an idle 2-core machine
#: a Python warning raised by the notebook's own code or the project's library (an ipykernel cell or dualsynth)
PROJECT_WARNING = re.compile(r"^(?P<where>(/\S*/ipykernel_\d+/|" + re.escape(str(ROOT / "lib" / "dualsynth")) +
                             r"/)\S*?):\d+: (?P<kind>[A-Za-z]*Warning): .+$")
#: TensorFlow's C++ log lines: absl's preamble, glog-style I/W/E lines, the oneDNN and CUDA notices
TF_NOISE = re.compile(r"absl::InitializeLog|^[IWEF]\d{4} \d\d:\d\d|oneDNN|cuda|cuInit|remapper", re.I)


def _chromium() -> str | None:
    real = Path("/usr/lib/chromium/chromium")  # Debian's binary behind its /usr/bin/chromium shell wrapper
    if real.is_file() and os.access(real, os.X_OK):
        return str(real)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """JupyterLab from this venv on a free port, serving copies of the notebooks; (base URL, token, folder, log)."""
    if _chromium() is None:
        pytest.skip("Chromium not found (Debian: apt-get install chromium; .ci/run installs it when missing)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright not installed (it is in the 'test' extra: make install)")
    work = tmp_path / "notebooks"
    work.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", work)
    # the default a user gets; without PYTEST_CURRENT_TEST, which makes ipykernel leave descriptors 1 and 2 alone (so
    # C/C++ writes would go to the server's log instead of the notebook, as they do not outside pytest)
    env = {k: v for k, v in os.environ.items() if k not in ("DUALSYNTH_VERBOSE", "PYTEST_CURRENT_TEST")}
    env.update(
        DUALSYNTH_OUTPUTS=str(tmp_path / "outputs"),  # the notebooks' outputs_dir="outputs" lands here
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),  # no user config, settings or saved workspace
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
    )
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no "official Jupyter news?" toast
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 90 s:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, work, tmp_path / "lab.log"
    finally:
        try:  # shut the kernels down through the server, then the server
            for s in _api(base, token, "/api/sessions") or []:
                _api(base, token, f"/api/sessions/{s['id']}", method="DELETE")
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _session(base: str, token: str, name: str) -> dict | None:
    for s in _api(base, token, "/api/sessions"):
        if s.get("path", "").endswith(f"{name}.ipynb") and s.get("kernel"):
            return s
    return None


def _wait_kernel_idle(base: str, token: str, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _session(base, token, name)
        if s and s["kernel"].get("execution_state") == "idle":
            return s
        time.sleep(0.5)
    pytest.fail(f"{name}: no idle kernel {timeout:.0f} s after opening the notebook")


def _kernel_executable(kernel_id: str) -> str | None:
    """argv[0] of the kernel process (found by its connection file, kernel-<id>.json)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"kernel-{kernel_id}.json".encode() in a for a in argv):
            return argv[0].decode()
    return None


def _stderr_lines(nb: dict) -> tuple[list[str], list[str]]:
    """(the project's warnings, every other stderr line) of a saved notebook."""
    warnings_, other = [], []
    for i, cell in enumerate(nb["cells"]):
        for o in cell.get("outputs", []):
            if o.get("output_type") != "stream" or o.get("name") != "stderr":
                continue
            text = "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
            lines = [ln for ln in text.splitlines() if ln.strip()]
            j = 0
            while j < len(lines):
                if PROJECT_WARNING.match(lines[j]):
                    warnings_.append(f"cell {i}: {lines[j]}")
                    j += 1
                    if j < len(lines) and lines[j].startswith("  "):  # the source line Python prints below it
                        j += 1
                    continue
                other.append(f"cell {i}: {lines[j]}")
                j += 1
    return warnings_, other


def _run_all(page, base: str, token: str, name: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + RUN_TIMEOUT
    prompts: list[str] = []
    while time.monotonic() < deadline:
        prompts = page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())")
        numbered = [p for p in prompts if re.fullmatch(r"\[\d+\]:", p)]
        if numbered and not any("*" in p for p in prompts):
            return  # every cell ran, or an error stopped the run (then the later cells are left unnumbered)
        time.sleep(0.5)
    pytest.fail(f"{name}: Run All Cells not finished after {RUN_TIMEOUT} s; prompts {prompts}")


def _save(page, path: Path, name: str) -> dict:
    before = path.stat().st_mtime_ns
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Escape")  # command mode
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.stat().st_mtime_ns != before and page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0:
            return json.loads(path.read_text(encoding="utf-8"))
        time.sleep(0.25)
    pytest.fail(f"{name}: JupyterLab did not save the notebook")


def test_notebooks_run_clean_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright  # the fixture skipped if it is missing

    chromium = _chromium()
    base, token, work, lab_log = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    report = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name in NOTEBOOKS:
                t0 = time.monotonic()
                page.goto(f"{base}/lab/tree/{name}.ipynb?reset&token={token}")  # reset: only this notebook open
                page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
                session = _wait_kernel_idle(base, token, name)
                page.wait_for_timeout(1500)  # JupyterLab writes kernelspec / language_info once the kernel answers
                assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, (
                    f"{name} is marked modified as soon as it opens: its committed metadata is not what JupyterLab "
                    f"writes (kernelspec, language_info)")

                _run_all(page, base, token, name)
                nb = _save(page, work / f"{name}.ipynb", name)
                page.screenshot(path=str(SHOTS / f"{name}.png"))

                errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb["cells"])
                          for o in c.get("outputs", []) if o.get("output_type") == "error"]
                assert not errors, f"{name}: error output(s) {errors}"
                unrun = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and not c["execution_count"]]
                assert not unrun, f"{name}: cells {unrun} did not run"
                own_warnings, stderr = _stderr_lines(nb)
                assert not stderr, f"{name}: stderr output that is not one of the project's warnings: {stderr[:20]}"

                pngs = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
                imgs = page.locator(".jp-Notebook .jp-RenderedImage img")
                assert pngs > 0 and imgs.count() == pngs, f"{name}: {pngs} figures saved, {imgs.count()} on the page"
                sizes = []
                for k in range(imgs.count()):
                    imgs.nth(k).scroll_into_view_if_needed()
                    sizes.append(imgs.nth(k).evaluate(
                        "e => [e.complete ? e.naturalWidth : 0, e.complete ? e.naturalHeight : 0,"
                        " e.getBoundingClientRect().width, e.getBoundingClientRect().height]"))
                empty = [k for k, s in enumerate(sizes) if min(s) <= 0]
                assert not empty, f"{name}: figures {empty} rendered without size: {[sizes[k] for k in empty]}"
                page.screenshot(path=str(SHOTS / f"{name}-end.png"))

                bars = page.locator(".jp-Notebook .jupyter-widgets.widget-hprogress")  # tqdm.auto's bar: an ipywidget
                assert bars.count() >= 1, f"{name}: no progress bar rendered as a widget (is ipywidgets installed?)"
                bar_cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has=page.locator(".widget-hprogress")).first
                bar_cell.scroll_into_view_if_needed()
                bar_cell.screenshot(path=str(SHOTS / f"{name}-progress.png"))

                exe = _kernel_executable(session["kernel"]["id"])
                assert session["kernel"]["name"] == "python3" and exe is not None, (session, exe)
                assert Path(exe).absolute() == Path(sys.executable).absolute(), (
                    f"{name} ran on {exe}, not the project's {sys.executable}")
                _api(base, token, f"/api/sessions/{session['id']}", method="DELETE")  # its kernel's memory back
                report.append(f"{name}: {len(nb['cells'])} cells, {pngs} figures, {bars.count()} progress bar(s), "
                              f"{time.monotonic() - t0:.0f} s; the project's warnings: {own_warnings or 'none'}")
        finally:
            browser.close()
    print("\n".join(report))
    noise = [ln for ln in lab_log.read_text(errors="replace").splitlines() if TF_NOISE.search(ln)]
    assert not noise, f"TensorFlow's log lines reached JupyterLab's terminal: {noise[:10]}"
