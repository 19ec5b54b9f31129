"""Old import paths kept working after a module was split into a package (``pixelcnn`` → ``prior/``, ``vqvae.py`` →
``vqvae/``): :func:`forward_writes` makes an attribute *write* on the old module (a test's ``monkeypatch``) also
reach every submodule that holds the same object, so patching through the old path still takes effect."""
from __future__ import annotations

import sys
import types
from typing import Sequence

__all__ = ["forward_writes"]

_MISSING = object()


def forward_writes(module_name: str, homes: Sequence[types.ModuleType]) -> None:
    """Turn ``sys.modules[module_name]`` into a module whose attribute writes also reach ``homes``."""
    homes = tuple(homes)

    class _ForwardingModule(types.ModuleType):
        def __setattr__(self, name, value):
            old = self.__dict__.get(name, _MISSING)
            if old is not _MISSING:
                for mod in homes:
                    if mod.__dict__.get(name, _MISSING) is old:
                        setattr(mod, name, value)
            super().__setattr__(name, value)

    sys.modules[module_name].__class__ = _ForwardingModule
