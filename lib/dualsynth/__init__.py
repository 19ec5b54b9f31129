"""dualsynth: synthetic dual images (micrograph + mask) for segmentation of micrographs.

Importing this package sets the Keras/segmentation-models environment *before*
TensorFlow is loaded anywhere: segmentation-models 1.0.1 and
tensorflow-probability need the Keras 2 API (``tf_keras``).  Notebooks import
``dualsynth`` first for this reason.  It also keeps TensorFlow's C++ start-up lines
out of notebooks and terminals (:mod:`dualsynth.tfquiet`; ``DUALSYNTH_VERBOSE=1`` shows them).
"""
from __future__ import annotations

import os as _os
import sys as _sys

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

from . import tfquiet as _tfquiet  # noqa: E402  (TensorFlow's C++ start-up lines off unless $DUALSYNTH_VERBOSE)

_tfquiet.configure()

from . import progress as _progress  # noqa: E402  (in a Jupyter kernel: widget bars that save their last state)

_progress.install()

if "tensorflow" in _sys.modules and _os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover
    import warnings as _warnings

    _warnings.warn(
        "TensorFlow was imported before dualsynth with TF_USE_LEGACY_KERAS unset; "
        "segmentation-models may fail. Import dualsynth first.",
        RuntimeWarning,
        stacklevel=2,
    )

__version__ = "0.1.0"
