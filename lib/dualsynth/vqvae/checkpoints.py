"""A VQ-VAE checkpoint folder (written by :func:`~dualsynth.vqvae.training.train_vqvae`): ``config.json``,
``last/`` and ``best/`` TensorFlow checkpoints; rebuilding a model from it (:func:`load_vqvae`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf

from ..io import DataError, fingerprint, read_json, recorded_inputs
from .codes import _check_images
from .model import MODEL_DEFAULTS, VQVAE

__all__ = ["load_vqvae", "checkpoint_step", "check_trained_on", "checkpoint_rule"]

_CONFIG_FILE = "config.json"
_HISTORY_FILE = "history.csv"
_SNAPSHOT_FILE = "snapshots.npz"
_LAST_DIR = "last"
_BEST_DIR = "best"
_N_SNAPSHOT_IMAGES = 4
_TRAINING_FILE = "training.json"  # how the run chose its best checkpoint (checkpoint_on, intervals)


def _config_mismatch(found: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, want in expect.items():
        if key not in found:
            problems.append(f"{key}: expected {want!r}, not in checkpoint config")
        elif found[key] != want:
            problems.append(f"{key}: checkpoint has {found[key]!r}, expected {want!r}")
    return problems


def _read_config(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / _CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {_CONFIG_FILE} in {checkpoint_dir} (not a VQ-VAE checkpoint directory?)")
    return read_json(path)


def _full_config(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved ``config.json`` with the defaults of keys added since it was written."""
    return {**MODEL_DEFAULTS, **saved}


def checkpoint_rule(checkpoint_dir: str | Path) -> dict[str, Any]:
    """How the run in ``checkpoint_dir`` chose its ``best`` checkpoint and weighed its loss: ``{"checkpoint_on":
    "val" | "train", "checkpoint_every": int | None, "eval_every": int | None, "pixel_weights": digest | None}``
    (a folder written before these were recorded: ``val`` at every evaluation, the unweighted loss)."""
    path = Path(checkpoint_dir) / _TRAINING_FILE
    rule = read_json(path) if path.is_file() else {}
    return {"checkpoint_on": rule.get("checkpoint_on", "val"), "checkpoint_every": rule.get("checkpoint_every"),
            "eval_every": rule.get("eval_every"), "pixel_weights": rule.get("pixel_weights")}


def _latest(checkpoint_dir: Path, which: str) -> str | None:
    if which not in (_BEST_DIR, _LAST_DIR):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return tf.train.latest_checkpoint(str(checkpoint_dir / which))


def checkpoint_step(checkpoint_dir: str | Path, which: str = "best") -> int:
    """Training step stored in the ``best`` or ``last`` checkpoint of ``checkpoint_dir``."""
    path = _latest(Path(checkpoint_dir), which)
    if path is None:
        raise FileNotFoundError(f"no '{which}' checkpoint in {checkpoint_dir}")
    return int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def check_trained_on(checkpoint_dir: str | Path, train_images: np.ndarray, val_images: np.ndarray) -> None:
    """Raise :class:`~dualsynth.io.DataError` if the VQ-VAE in ``checkpoint_dir`` was trained on other dual images
    than these (e.g. 01_patching was re-run with another seed after 02_vqvae); a checkpoint saved without a
    fingerprint passes."""
    checkpoint_dir = Path(checkpoint_dir)
    in_channels = int(_read_config(checkpoint_dir)["in_channels"])
    digest = fingerprint(_check_images(train_images, in_channels, "train_images"),
                         _check_images(val_images, in_channels, "val_images"))
    recorded = recorded_inputs(checkpoint_dir)
    if recorded is not None and recorded != digest:
        raise DataError(f"the VQ-VAE in {checkpoint_dir} was trained on other patches than the experiment's "
                        f"manifest now lists (01_patching was re-run after 02_vqvae): re-run 02_vqvae after deleting "
                        f"{checkpoint_dir.parent}, or pass a new experiment name")


def load_vqvae(
    checkpoint_dir: str | Path,
    which: str = "best",
    expect: Mapping[str, Any] | None = None,
) -> VQVAE:
    """Rebuild a :class:`VQVAE` from ``checkpoint_dir/config.json`` and restore weights.

    Args:
        checkpoint_dir: directory written by :func:`train_vqvae`.
        which: ``"best"`` (lowest reconstruction MSE on the validation or, with ``checkpoint_on="train"``, the
            training data: :func:`checkpoint_rule`) or ``"last"``.
        expect: optional config entries the caller relies on, e.g.
            ``dict(num_embeddings=10, embedding_dim=64, in_channels=4)``;
            a ValueError lists every mismatch.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = _read_config(checkpoint_dir)
    if expect:
        problems = _config_mismatch(_full_config(config), expect)
        if problems:
            raise ValueError(
                f"VQ-VAE checkpoint {checkpoint_dir} does not match the expected configuration: "
                + "; ".join(problems)
            )
    path = _latest(checkpoint_dir, which)
    if path is None:
        raise FileNotFoundError(f"no '{which}' checkpoint in {checkpoint_dir}")
    model = VQVAE.from_config(config)
    ckpt = tf.train.Checkpoint(model=model)
    status = ckpt.restore(path)
    status.expect_partial()  # optimizer / step are not needed here
    status.assert_existing_objects_matched()
    # which weights these are (their files' bytes): a prior records it, synthesis checks it
    model.checkpoint_dir = str(checkpoint_dir)
    model.checkpoint_id = fingerprint(*[Path(f) for f in sorted(Path(path).parent.glob(Path(path).name + ".*"))])
    return model


def _all_finite(variables: Iterable[tf.Variable]) -> bool:
    for v in variables:
        if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v))):
            return False
    return True
