"""TensorFlow and segmentation-models, imported once in the right order (``dualsynth`` first sets Keras 2)."""
from __future__ import annotations

import io as _io
from contextlib import redirect_stdout

import dualsynth  # noqa: F401  (sets TF_USE_LEGACY_KERAS / SM_FRAMEWORK before TF)

import tensorflow as tf  # noqa: E402

with redirect_stdout(_io.StringIO()):  # segmentation-models prints its framework on import
    import segmentation_models as sm  # noqa: E402

__all__ = ["tf", "sm"]
