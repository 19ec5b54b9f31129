"""Loading Keras HDF5 weight files into a U-Net: Keras 2 files by weight name, Keras 3 files by structure."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import tf
from .model import unet_core

__all__ = ["load_weights_h5", "h5_format"]

log = logging.getLogger(__name__)


def _weight_key(weight_name: str, group_name: str) -> str:
    parts = weight_name.split("/")
    var = parts[-1].split(":")[0]
    layer = parts[-2] if len(parts) >= 2 else group_name
    return f"{layer}/{var}"


def _decode(names: Any) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in np.asarray(names).ravel()]


def h5_format(path: Path) -> str:
    """``"legacy"`` (Keras 2 HDF5: groups named by layer) or ``"keras3"`` (``*.weights.h5`` object tree)."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file: {e}") from e
    with fh as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return "legacy"
        if "layers" in f or "vars" in f:
            return "keras3"
    raise ValueError(f"{path} is not a Keras HDF5 weight file (neither 'layer_names' nor a 'layers' tree)")


def _read_h5_weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    table: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for lname in _decode(root.attrs["layer_names"]):
            g = root[lname]
            for wname in _decode(g.attrs.get("weight_names", [])):
                key = _weight_key(wname, lname)
                if key not in table:  # first occurrence wins
                    table[key] = np.asarray(g[wname])
    return table


def _load_keras3(model: tf.keras.Model, path: Path) -> dict:
    """Structural load of a Keras-3-style ``*.weights.h5`` into the wrapper or, failing that, its U-Net."""
    import tempfile

    snapshot = model.get_weights()
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        src = path
        if not path.name.endswith(".weights.h5"):  # Keras picks the reader by this suffix
            src = Path(tmp) / "file.weights.h5"
            src.symlink_to(path.resolve())
        targets = [model]
        try:
            targets.append(unet_core(model))
        except ValueError:
            pass
        for target in targets:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    target.load_weights(str(src))
            except Exception as e:  # noqa: BLE001 - any failure means "does not fit"
                model.set_weights(snapshot)
                errors.append(f"{target.name}: {str(e).splitlines()[0][:200]}")
                continue
            n = len(model.weights)
            log.info("loaded %d weights from %s (Keras 3 weights format)", n, path)
            return {"loaded": n, "total": n, "shape_mismatch": [], "missing": [], "complete": True}
    raise ValueError(
        f"{path} is in the Keras 3 '.weights.h5' format, which is matched by model structure, and it does not "
        f"fit this model ({'; '.join(errors)}). Re-save the source model's weights with a name not ending in "
        "'.weights.h5' (e.g. 'unet.h5': HDF5 format, matched by layer name) to load them partially."
    )


def load_weights_h5(model: tf.keras.Model, path: str | os.PathLike, *, strict: bool = False) -> dict:
    """Load a Keras HDF5 weight file into the U-Net of ``model``.

    Keras 2 HDF5 files (``save_weights("x.h5")``, ImageNet weight files) are
    matched *by weight name* (``layer/variable``, e.g. ``stem_conv/kernel``)
    and shape; nothing is assigned unless at least one weight matches, and
    ``strict`` requires every weight of the model to be found.  Keras-3-style
    files (``save_weights("x.weights.h5")``) carry no layer names; they are
    loaded by structure into the whole model (a dualsynth U-Net) or its
    ``unet`` (a plain ``sm.Unet``), all or nothing.
    Returns ``{"loaded", "total", "shape_mismatch", "missing", "complete"}``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if h5_format(path) == "keras3":
        return _load_keras3(model, path)
    table = _read_h5_weights(path)
    try:
        target = unet_core(model)
    except ValueError:
        target = model
    assign, mismatch, missing, seen = [], [], [], set()
    for w in target.weights:
        key = _weight_key(w.name, "")
        if key in seen:
            raise ValueError(f"model has two weights named {key!r}; cannot load {path} by name")
        seen.add(key)
        if key not in table:
            missing.append(key)
        elif tuple(table[key].shape) != tuple(w.shape):
            mismatch.append(f"{key} {tuple(table[key].shape)} vs {tuple(w.shape)}")
        else:
            assign.append((w, table[key]))
    total = len(target.weights)
    if not assign:
        raise ValueError(
            f"no weight in {path} matches the model ({total} weights, e.g. {sorted(seen)[:3]}); "
            "expected a file saved with model.save_weights(...) from a U-Net with the same encoder "
            "or an ImageNet weight file of the encoder"
        )
    if strict and (mismatch or missing):
        raise ValueError(
            f"{path} does not fit the model: {len(missing)} weights missing (e.g. {missing[:3]}), "
            f"{len(mismatch)} with another shape (e.g. {mismatch[:3]})"
        )
    tf.keras.backend.batch_set_value(assign)
    report = {
        "loaded": len(assign),
        "total": total,
        "shape_mismatch": mismatch,
        "missing": missing,
        "complete": len(assign) == total,
    }
    log.info("loaded %d of %d weights from %s (%d shape mismatches, %d missing)",
             len(assign), total, path, len(mismatch), len(missing))
    return report
