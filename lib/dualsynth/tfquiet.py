"""TensorFlow without its start-up noise: the one place that decides what TensorFlow's C++ side may print.

On a CPU machine TensorFlow 2.21 writes, on import and on first use, lines that look like failures but are not:
``WARNING: All log messages before absl::InitializeLog() …``, ``oneDNN custom operations are on …``, ``Could not
find cuda drivers …`` and ``E0000 … failed call to cuInit …``.  (Grappler's ``E0000 … remapper failed:
INVALID_ARGUMENT: Mutation::Apply error …`` came from the VQ-VAE's residual stack, a TensorFlow bug that the model
now steps around — :func:`dualsynth.vqvae.model._unfusable`; a graph of the user's could still trigger it, and the
level below drops it too.)
The first three are printed by the C++ libraries before their logging honours ``TF_CPP_MIN_LOG_LEVEL``, so
:func:`quiet_stderr` points the process's file descriptor 2 at a temporary file while ``tensorflow`` is imported, then
restores it and writes back every line that is not one of these known ones; the later ones are ERROR-level C++ log
lines, which ``TF_CPP_MIN_LOG_LEVEL=3`` drops — for the whole process: other C++ ERROR lines are dropped too (FATAL
ones stay; ``DUALSYNTH_VERBOSE=1`` shows everything). A real failure still raises a Python exception with TensorFlow's
message, and Python warnings still show (a warning raised while the import is quiet is shown once it is over).

:func:`configure` (run by ``import dualsynth``, so by every notebook's first import and by the command lines) sets
the environment and installs an import hook, so that whichever module imports TensorFlow first — the library,
Sonnet, tf_keras, segmentation-models or the user — does it quietly.  ``DUALSYNTH_VERBOSE=1`` (``--verbose`` on
``python -m dualsynth.batch``) brings every line back: no hook, ``TF_CPP_MIN_LOG_LEVEL=0``.  A
``TF_CPP_MIN_LOG_LEVEL`` set by the user is kept.

The kernels that papermill starts for the batch (:func:`kernel_arguments`) log at ERROR only, and load this module
as an IPython extension (:func:`load_ipython_extension`, added to the user's own) that drops ipykernel's
``KeyboardInterrupt caught in kernel.``: jupyter_client interrupts every kernel (SIGINT) before it asks it to shut down, and when that lands while
the kernel still finishes its last reply it logs this line at ERROR — after the notebook has ended and succeeded.
Every other kernel error still reaches the batch logs.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator

__all__ = ["VERBOSE_ENV", "verbose", "set_verbose", "configure", "quiet_stderr", "kernel_arguments",
           "load_ipython_extension"]

#: Set to 1 (or true/yes) to see TensorFlow's C++ log lines.
VERBOSE_ENV = "DUALSYNTH_VERBOSE"
_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
_QUIET_LEVEL = "3"  # INFO, WARNING and ERROR lines of the C++ side dropped; FATAL kept
_VERBOSE_LEVEL = "0"
#: C++ start-up lines known to be harmless on a CPU machine; any other line written while TensorFlow is imported
#: quietly is written to stderr once the import is over (a crash of the process during the import loses it:
#: ``DUALSYNTH_VERBOSE=1`` shows it live)
_NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cuInit|cudart_stub|cuda_platform|"
                    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
                    r"TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler flags|"
                    r"CPU instructions in performance-critical operations|TF-TRT Warning|port\.cc:")
#: ipykernel's line for jupyter_client's shutdown interrupt landing in the kernel's last message handler (harmless)
SHUTDOWN_INTERRUPT_LINE = "KeyboardInterrupt caught in kernel."
#: The level this module set (not the user's), so set_verbose may change it.
_SET_BY_US: list[str] = []


def verbose() -> bool:
    """True when ``$DUALSYNTH_VERBOSE`` asks for TensorFlow's log lines."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _set_level(level: str) -> None:
    if _LEVEL_ENV not in os.environ or os.environ[_LEVEL_ENV] in _SET_BY_US:
        os.environ[_LEVEL_ENV] = level
        _SET_BY_US.append(level)


def set_verbose(on: bool = True) -> None:
    """Switch TensorFlow's log lines on (or off) for this process and the kernels and workers it starts later."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    _set_level(_VERBOSE_LEVEL if on else _QUIET_LEVEL)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file for the duration, then restore it and write back every line that
    is not known start-up noise (:data:`_NOISE`), so a real error printed by the C++ side during the import still
    shows.

    Python warnings raised meanwhile are held and shown after the descriptor is restored, with their original
    category and place (through ``warnings.showwarning``; the warning filters are left alone, so filters that an
    imported library installs stay in force).  Without a real descriptor 2 nothing is redirected.
    """
    held: list[tuple] = []
    shown_by = warnings.showwarning

    def hold(message, category, filename, lineno, file=None, line=None):
        held.append((message, category, filename, lineno, file, line))

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    warnings.showwarning = hold
    sink = None
    try:
        if saved is not None:
            sink = tempfile.TemporaryFile()
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            with contextlib.suppress(Exception):  # anything that is not known start-up noise is shown after all
                sink.seek(0)
                kept = [ln for ln in sink.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if ln.strip() and not _NOISE.search(ln)]
                if kept:
                    os.write(2, "".join(kept).encode())
            if sink is not None:
                sink.close()
        if warnings.showwarning is hold:
            warnings.showwarning = shown_by
        for args in held:
            warnings.showwarning(*args)


class _QuietLoader(importlib.abc.Loader):
    """Wraps TensorFlow's own loader: its module code runs inside :func:`quiet_stderr`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with quiet_stderr():
            self._loader.exec_module(module)
        module.__loader__ = self._loader  # leave no trace: the module looks as if imported as usual
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        if name == "_loader":
            raise AttributeError(name)
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and hands back its spec with a :class:`_QuietLoader`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow" or verbose():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _QuietLoader):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def configure() -> None:
    """Set the C++ log level from ``$DUALSYNTH_VERBOSE`` and make the first ``import tensorflow`` quiet (idempotent)."""
    if verbose():
        _set_level(_VERBOSE_LEVEL)
        return
    _set_level(_QUIET_LEVEL)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


def kernel_arguments() -> list[str]:
    """The command-line arguments of the Jupyter kernels the batch starts: their start-up log ("Kernel is running
    over TCP without encryption" on every run) and the shutdown interrupt's line off, unless ``$DUALSYNTH_VERBOSE``
    (then none: the kernel's whole log)."""
    if verbose():
        return []
    # extra_extensions: added to any extensions the user's ipython_kernel_config.py sets, not replacing them
    return ["--IPKernelApp.log_level=ERROR", f"--IPKernelApp.extra_extensions={__name__}"]


def _not_shutdown_interrupt(record) -> bool:
    return record.getMessage() != SHUTDOWN_INTERRUPT_LINE


def load_ipython_extension(ipython) -> None:
    """IPython extension (``--IPKernelApp.extra_extensions=dualsynth.tfquiet``): the kernel's log drops
    :data:`SHUTDOWN_INTERRUPT_LINE` and nothing else (idempotent; nothing in the user's namespace)."""
    import logging

    kernel = getattr(ipython, "kernel", None)
    log = getattr(kernel, "log", None)
    if not isinstance(log, logging.Logger):
        log = logging.getLogger("IPKernelApp")
    if _not_shutdown_interrupt not in log.filters:
        log.addFilter(_not_shutdown_interrupt)
