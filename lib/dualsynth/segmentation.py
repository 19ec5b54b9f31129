"""Compatibility module: the U-Net now lives in :mod:`dualsynth.unet` (model, weights, data, files, train, infer).

Every name notebooks, tests, benchmarks and users import from ``dualsynth.segmentation`` is re-exported here,
including the private helpers some tests and benchmarks reach (``_check_resumable``, ``_make_loss``, ...).
Assigning one of these names on this module (as ``monkeypatch.setattr(segmentation, "_save_best_weights", f)``
does) also assigns it in the module that defines and calls it, so kill points set through the old path still act
on the training loop.  New code should import from :mod:`dualsynth.unet`'s modules.
"""
from __future__ import annotations

import shutil  # noqa: F401  (tests patch segmentation.shutil.rmtree: the same module object the files use)
import sys
import types

from .unet import data as _data
from .unet import files as _files
from .unet import infer as _infer
from .unet import model as _model
from .unet import train as _train
from .unet import weights as _weights
from .unet._backend import sm, tf  # noqa: F401

__all__ = [
    "UNetConfig",
    "TrainResult",
    "InputAdapter",
    "HISTORY_COLUMNS",
    "MONITOR",
    "build_unet",
    "unet_core",
    "load_weights_h5",
    "make_dataset",
    "build_augmentation",
    "compile_unet",
    "train_unet",
    "predict",
    "predict_proba",
    "evaluate_model",
    "load_unet",
    "load_unet_config",
]

#: name here -> (module that defines it, its name there)
_HOMES: dict[str, tuple[types.ModuleType, str]] = {
    **{n: (_model, n) for n in ("UNetConfig", "InputAdapter", "build_unet", "unet_core")},
    "_resolve_encoder_weights": (_model, "resolve_encoder_weights"),
    "_encoder_affine": (_model, "encoder_affine"),
    "load_weights_h5": (_weights, "load_weights_h5"),
    "_h5_format": (_weights, "h5_format"),
    **{n: (_data, n) for n in ("make_dataset", "build_augmentation")},
    "_check_images": (_data, "check_images"),
    "_check_masks": (_data, "check_masks"),
    **{n: (_files, n) for n in ("HISTORY_COLUMNS", "CONFIG_FILE", "WEIGHTS_FILE", "HISTORY_FILE", "CHECKPOINT_DIR",
                                "STATE_FILE", "SUMMARY_FILE")},
    **{f"_{n}": (_files, n) for n in ("write_history_csv", "read_history_csv", "save_best_weights",
                                      "delete_checkpoint", "save_checkpoint", "check_resumable", "read_state")},
    **{n: (_train, n) for n in ("MONITOR", "TrainResult", "compile_unet", "train_unet")},
    "_make_loss": (_train, "make_loss"),
    **{n: (_infer, n) for n in ("predict", "predict_proba", "evaluate_model", "load_unet", "load_unet_config")},
}

for _name, (_module, _attr) in _HOMES.items():
    globals()[_name] = getattr(_module, _attr)


class _ForwardingModule(types.ModuleType):
    """Setting a re-exported name sets it in its home module too (monkeypatching through the old path works)."""

    def __setattr__(self, name: str, value) -> None:
        home = _HOMES.get(name)
        if home is not None:
            setattr(home[0], home[1], value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ForwardingModule
