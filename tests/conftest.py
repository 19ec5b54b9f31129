"""Shared test fixtures.  ``import dualsynth`` first: it sets the Keras environment."""
from __future__ import annotations

import os
from pathlib import Path

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS / SM_FRAMEWORK)
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DUALSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """The folder of a real dataset in ../shared/data, or skip the test with a reason."""
    path = SHARED_DATA / name
    if not (path / "images").is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def ndfeb_palette():
    from dualsynth.palette import NDFEB_PALETTE

    return NDFEB_PALETTE

