"""Progress bars in notebooks whose saved output is their last state.

In a Jupyter kernel ``tqdm.auto`` draws an ipywidgets bar: live in JupyterLab it updates in place and a warning
raised meanwhile is printed below it, not through it.  What an executed notebook keeps for readers without the
live widget (papermill's ``outputs/<experiment>/notebooks/``, nbconvert, a reopened notebook) is the display's
``text/plain``, taken when the bar first appears — ``0/30`` for ever.  :func:`install` (run by ``import dualsynth``
inside a Jupyter kernel) gives ``tqdm.auto.tqdm`` a display id and updates that display when the bar closes, so the
saved text is the final state (``30/30 [00:04<00:00, …]``); a bar made with ``leave=False`` leaves nothing.  Every
``from tqdm.auto import tqdm`` made after it (the library imports tqdm where it draws a bar) gets this class; outside
a Jupyter kernel nothing changes (tqdm's text bars).
"""
from __future__ import annotations

import contextlib
import sys

__all__ = ["install"]


def install() -> None:
    """In a Jupyter kernel with ipywidgets: make ``tqdm.auto.tqdm`` update its saved output on close (idempotent)."""
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
