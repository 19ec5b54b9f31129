"""Progress bars in notebooks whose saved output is their last state.

In a Jupyter kernel ``tqdm.auto`` draws an ipywidgets bar: live in JupyterLab it updates in place and a warning
raised meanwhile is printed below it, not through it.  What an executed notebook keeps for readers without the
live widget (papermill's ``outputs/<experiment>/notebooks/``, nbconvert, a reopened notebook) is the display's
``text/plain``, taken when the bar first appears — ``0/30`` for ever.  :func:`install` (run by ``import dualsynth``
inside a Jupyter kernel) gives ``tqdm.auto.tqdm`` a display id and updates that display when the bar closes, so the
saved text is the final state (``30/30 [00:04<00:00, …]``); a bar made with ``leave=False`` leaves nothing.  Every
``from tqdm.auto import tqdm`` made after it (the library imports tqdm where it draws a bar) gets this class; outside
a Jupyter kernel nothing changes (tqdm's text bars).

**Warnings above a text bar, not through it.**  A text bar (a terminal: ``make run``, ``python -m dualsynth.batch
chain``, a script calling ``train_vqvae``; or a kernel without ipywidgets) is a line that tqdm redraws with ``\r``;
a Python warning printed meanwhile lands in the middle of it and the next redraw leaves a broken bar behind.
:func:`route_warnings` (run by :func:`install`, so by ``import dualsynth``) puts a ``warnings.showwarning`` hook in
place that, while a text bar is open, prints the warning with ``tqdm.write``: the bars are cleared, the warning is
written on its own lines with its usual text (``warnings.formatwarning``), and the bars are drawn again below it.
With no text bar open (or only widget bars, which never mix with printed text) the warning goes to the hook that was
there before, unchanged.  Warning filters are not touched, so what is shown and how often stays the same.
"""
from __future__ import annotations

import contextlib
import sys
import warnings

__all__ = ["install", "route_warnings"]


def _open_text_bars() -> list:
    """The tqdm bars now drawn as text (open, not disabled, not an ipywidgets bar), of any tqdm class."""
    std = sys.modules.get("tqdm.std")  # no tqdm imported yet: no bar can be open
    if std is None:
        return []
    with contextlib.suppress(Exception):
        return [bar for bar in list(std.tqdm._instances)
                if not getattr(bar, "disable", True) and not hasattr(bar, "container")
                and getattr(bar, "fp", None) is not None]
    return []


def _bar_safe(previous):
    """A ``warnings.showwarning`` that writes through ``tqdm.write`` while a text bar is open, else calls
    ``previous``."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _open_text_bars():
            return previous(message, category, filename, lineno, file, line)
        stream = file if file is not None else sys.stderr
        if stream is None:  # pythonw: nowhere to write, as the default hook does
            return None
        text = warnings.formatwarning(message, category, filename, lineno, line)
        try:  # tqdm.std is loaded: a bar is open
            sys.modules["tqdm.std"].tqdm.write(text, file=stream, end="")
        except OSError:  # a closed stream: the default hook ignores it as well
            pass
        return None

    showwarning._routes_around_bars = True  # type: ignore[attr-defined]
    showwarning._previous = previous  # type: ignore[attr-defined]
    return showwarning


def route_warnings() -> None:
    """Print Python warnings above open text progress bars rather than through them (idempotent; the hook
    defers to the previous ``warnings.showwarning`` when no text bar is open)."""
    if not getattr(warnings.showwarning, "_routes_around_bars", False):
        warnings.showwarning = _bar_safe(warnings.showwarning)


def install() -> None:
    """Warnings above text bars (:func:`route_warnings`); in a Jupyter kernel with ipywidgets also make
    ``tqdm.auto.tqdm`` update its saved output on close (idempotent)."""
    route_warnings()
    if "ipykernel.zmqshell" not in sys.modules:  # a terminal, a script, a Dask worker: text bars as they are
        return
    try:
        import tqdm.auto as auto
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:  # pragma: no cover  (tqdm is a dependency)
        return
    base = auto.tqdm
    if not (isinstance(base, type) and issubclass(base, notebook_tqdm)) or getattr(base, "_saves_last_state", False):
        return  # tqdm chose text bars (no ipywidgets), or already installed

    class tqdm(base):  # noqa: N801  (tqdm's own name, so reprs and isinstance checks read as usual)
        _saves_last_state = True

        def __init__(self, *args, **kwargs):
            show = kwargs.pop("display", True)
            self._handle = None
            super().__init__(*args, display=False, **kwargs)
            if show and not self.disable and self.delay <= 0 and hasattr(self, "container"):
                from IPython.display import display

                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            super().close()
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is None:
                return
            with contextlib.suppress(Exception):  # a display that cannot be updated must not stop the work
                if self.leave or (self.total and self.n < self.total):  # finished, or stopped early (red bar)
                    handle.update(self.container)
                else:
                    handle.update({"text/plain": ""}, raw=True)

    tqdm.__module__ = __name__
    tqdm.__qualname__ = "tqdm"
    auto.tqdm = tqdm  # tqdm.auto.trange builds on this name too
