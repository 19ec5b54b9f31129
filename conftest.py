"""Project-wide pytest hooks (for tests/, and for the notebooks run by hand with nbval: ``pytest notebooks/``, not
part of ``make test``, which runs each notebook once through the batch: tests/test_notebooks.py)."""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Notebooks run by nbval use their default ``outputs_dir = "outputs"``; send that to a temporary folder
    so the test suite never reuses (or overwrites) a user's ``outputs/smoke``."""
    import tempfile

    os.environ.setdefault("DUALSYNTH_OUTPUTS", tempfile.mkdtemp(prefix="dualsynth-test-outputs-"))


def pytest_collection_modifyitems(config, items):
    """nbval items execute whole notebooks (TensorFlow training): mark them slow like the papermill tests."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
