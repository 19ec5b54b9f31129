"""dualsynth.progress: Python warnings raised while a text progress bar is open print above the bar, on their own
lines, not through it (issue 16: ``make run``, ``batch chain`` and scripts in a terminal)."""
from __future__ import annotations

import io
import subprocess
import sys
import warnings

import pytest
from tqdm import tqdm as text_tqdm

from conftest import ROOT
from dualsynth import progress

_SCRIPT = """
import time, warnings
import dualsynth  # installs the hook
from tqdm.auto import tqdm
{control}
for i in tqdm(range(6), desc="demo", mininterval=0, ncols=60):
    time.sleep(0.01)
    if i == 3:
        warnings.warn("raised while the bar is open")
warnings.warn("raised after the bar")
"""


def _lines_of(err: str, text: str) -> list[str]:
    return [ln for ln in err.split("\n") if text in ln]


@pytest.mark.parametrize("control", [False, True])
def test_a_warning_prints_above_an_open_text_bar_in_a_terminal(control):
    """A fresh process as a terminal runs it (``import dualsynth``, tqdm.auto text bar). The control, with Python's
    own hook put back, shows the fault the hook removes: the warning glued to the bar's line."""
    script = _SCRIPT.format(control="warnings.showwarning = warnings._showwarning_orig" if control else "")
    err = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         timeout=120).stderr.decode()  # bytes: text mode would turn the bar's \r into \n
    lines = err.split("\n")
    (during,) = _lines_of(err, "UserWarning: raised while the bar is open")
    (after,) = _lines_of(err, "UserWarning: raised after the bar")
    assert after.split("\r")[-1] == "<string>:10: UserWarning: raised after the bar"  # no bar open: as Python prints
    visible = during.split("\r")[-1]  # what the terminal shows on that line once every \r is applied
    if control:
        assert visible.startswith("demo:  50%") and visible.endswith("UserWarning: raised while the bar is open")
        return
    assert visible == "<string>:9: UserWarning: raised while the bar is open"  # its own line, its usual text
    assert during.split("\r")[-2].strip() == ""  # the bar was cleared first ...
    below = lines[lines.index(during) + 1]
    assert below.startswith("\rdemo:  50%") and "demo: 100%" in below  # ... and drawn again below it, going on


def test_the_hook_defers_to_the_previous_one_without_an_open_text_bar():
    seen = []
    with warnings.catch_warnings():  # pytest records warnings; this block gets a plain hook chain again
        warnings.simplefilter("always")
        warnings.showwarning = lambda *args: seen.append(args)
        progress.route_warnings()
        progress.route_warnings()  # idempotent: one hook, not two
        assert warnings.showwarning._previous is not None
        assert not getattr(warnings.showwarning._previous, "_routes_around_bars", False)
        warnings.warn("no bar")
        with text_tqdm(total=3, disable=True) as bar:  # a disabled bar draws nothing
            bar.update()
            warnings.warn("disabled bar")
        stream = io.StringIO()
        with text_tqdm(total=3, file=stream, mininterval=0) as bar:
            bar.update()
            warnings.warn("text bar", UserWarning)  # routed through tqdm.write, not to the previous hook
        assert [str(a[0]) for a in seen] == ["no bar", "disabled bar"]
    assert "UserWarning" not in stream.getvalue()  # written to sys.stderr (the warning's stream), not the bar's


def test_warnings_share_the_bar_stream_through_tqdm_write(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = warnings._showwarning_orig
        progress.route_warnings()
        with text_tqdm(total=4, file=sys.stderr, mininterval=0, desc="bar", ncols=50) as bar:
            bar.update(2)
            warnings.warn("in the middle", RuntimeWarning)
            bar.update(2)
    out = stream.getvalue()
    (line,) = [ln for ln in out.split("\n") if "RuntimeWarning: in the middle" in ln]
    assert line.split("\r")[-1].startswith(f"{__file__}:")  # on its own line, Python's usual text
    assert "bar:  50%" in out.split("RuntimeWarning: in the middle", 1)[1]  # the bar drawn again after it
