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



@pytest.fixture(scope="module")
def no_grappler():
    """Switch TensorFlow's Grappler graph optimisation off for a module: it costs ~15-40 s per traced U-Net
    training graph on this CPU while the tiny test steps gain nothing from it (restored afterwards)."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


def squares(n: int, size: int = 32, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Trivially learnable pairs: class 1 = a bright square, class 0 = dark noisy background."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        h, w = rng.integers(size // 4, size // 2 + 1, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        masks[i, y0:y0 + h, x0:x0 + w] = 1
    img = np.where(masks == 1, 190, 40) + rng.integers(0, 40, masks.shape)
    img = img.astype(np.uint8)[..., None]
    if channels == 3:
        img = np.repeat(img, 3, axis=-1)
    return img, masks
