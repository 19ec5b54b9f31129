"""VQ-VAE for dual images (micrograph channels + one mask channel).

Architecture after the VQ-VAE of van den Oord et al. (2017) as laid out in
DeepMind Sonnet's example, with the changes of Volman Stern et al. (2024): the
input has ``C + 1`` channels (``C`` micrograph channels, 3 for RGB or 1 for
grey, plus a mask channel), a small codebook (K = 10 by default) and a
downsampling factor of 4 (256x256 images -> 64x64 code maps with values
``0..K-1``; the paper counts them ``1..K``).

Inputs are float32 in [0, 1]; the reconstruction is unconstrained (no sigmoid)
and trained with ``MSE(x_recon, x) / data_variance + vq_loss``.

Main entry points:

* :class:`VQVAE` - the model (``__call__``, ``encode``, ``decode_indices``,
  ``config``).
* :func:`train_vqvae` - resumable training loop with last/best checkpoints,
  ``history.csv``, reconstruction snapshots and a NaN guard.
* :func:`load_vqvae` - rebuild a model from ``config.json`` and restore a
  checkpoint.
* :func:`encode_dataset` / :func:`decode_codes` - batched numpy helpers.
* :func:`data_variance` - variance of a training set (loss normaliser).

Import :mod:`dualsynth` before TensorFlow (it sets ``TF_USE_LEGACY_KERAS=1``);
this module does so itself when imported as ``dualsynth.vqvae``.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from .io import (atomic_save_npz, atomic_write_text, fingerprint, guard_inputs, read_json, read_rows_csv,
                 write_rows_csv)

__all__ = [
    "ResidualStack",
    "Encoder",
    "Decoder",
    "VQVAE",
    "VQVAEHistory",
    "HISTORY_COLUMNS",
    "train_vqvae",
    "load_vqvae",
    "checkpoint_step",
    "encode_dataset",
    "decode_codes",
    "data_variance",
]

#: Columns of ``history.csv`` / :class:`VQVAEHistory` rows, in order.
HISTORY_COLUMNS: tuple[str, ...] = (
    "step",
    "train_loss",
    "train_recon_mse",
    "vq_loss",
    "perplexity",
    "val_recon_mse",
    "codes_used",
)

#: Fraction of the codebook below which :func:`train_vqvae` warns about dead codes.
DEAD_CODE_FRACTION = 0.5

_CONFIG_FILE = "config.json"
_HISTORY_FILE = "history.csv"
_SNAPSHOT_FILE = "snapshots.npz"
_LAST_DIR = "last"
_BEST_DIR = "best"
_N_SNAPSHOT_IMAGES = 4


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class ResidualStack(snt.Module):
    """``num_residual_layers`` x (ReLU -> 3x3 conv -> ReLU -> 1x1 conv, + skip), final ReLU."""

    def __init__(
        self,
        num_hiddens: int,
        num_residual_layers: int = 2,
        num_residual_hiddens: int = 32,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self._num_hiddens = num_hiddens
        self._layers = []
        for i in range(num_residual_layers):
            conv3 = snt.Conv2D(
                output_channels=num_residual_hiddens,
                kernel_shape=(3, 3),
                stride=(1, 1),
                padding="SAME",
                name=f"res3x3_{i}",
            )
            conv1 = snt.Conv2D(
                output_channels=num_hiddens,
                kernel_shape=(1, 1),
                stride=(1, 1),
                padding="SAME",
                name=f"res1x1_{i}",
            )
            self._layers.append((conv3, conv1))

    def __call__(self, h):
        for conv3, conv1 in self._layers:
            r = conv3(tf.nn.relu(h))
            r = conv1(tf.nn.relu(r))
            h = h + r
        return tf.nn.relu(h)


class Encoder(snt.Module):
    """H x W x C_in -> H/4 x W/4 x num_hiddens."""

    def __init__(
        self,
        num_hiddens: int,
        num_residual_layers: int = 2,
        num_residual_hiddens: int = 32,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self._enc_1 = snt.Conv2D(max(num_hiddens // 2, 1), kernel_shape=(4, 4), stride=(2, 2), name="enc_1")
        self._enc_2 = snt.Conv2D(num_hiddens, kernel_shape=(4, 4), stride=(2, 2), name="enc_2")
        self._enc_3 = snt.Conv2D(num_hiddens, kernel_shape=(3, 3), stride=(1, 1), name="enc_3")
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)

    def __call__(self, x):
        h = tf.nn.relu(self._enc_1(x))
        h = tf.nn.relu(self._enc_2(h))
        h = self._enc_3(h)
        return self._residual_stack(h)


class Decoder(snt.Module):
    """h x w x D -> 4h x 4w x out_channels (unconstrained output)."""

    def __init__(
        self,
        num_hiddens: int,
        num_residual_layers: int,
        num_residual_hiddens: int,
        out_channels: int,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self._dec_1 = snt.Conv2D(num_hiddens, kernel_shape=(3, 3), stride=(1, 1), name="dec_1")
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)
        self._dec_2 = snt.Conv2DTranspose(
            max(num_hiddens // 2, 1), kernel_shape=(4, 4), stride=(2, 2), name="dec_2"
        )
        self._dec_3 = snt.Conv2DTranspose(out_channels, kernel_shape=(4, 4), stride=(2, 2), name="dec_3")

    def __call__(self, z):
        h = self._dec_1(z)
        h = self._residual_stack(h)
        h = tf.nn.relu(self._dec_2(h))
        return self._dec_3(h)


class VQVAE(snt.Module):
    """VQ-VAE over dual images.

    Args:
        in_channels: ``C + 1`` (micrograph channels plus the mask channel).
        num_embeddings: codebook size K.
        embedding_dim: code vector size D.
        num_hiddens, num_residual_layers, num_residual_hiddens: encoder/decoder width.
        commitment_cost: beta of the VQ loss.
        use_ema: ``snt.nets.VectorQuantizerEMA`` (codebook updated by moving
            averages) if True, else ``snt.nets.VectorQuantizer`` (codebook
            learned through the loss).
        decay: EMA decay (only with ``use_ema``).

    The variables are created in the constructor (one eager forward pass on a
    tiny zero batch), so a freshly constructed model can be checkpointed,
    restored and used inside ``tf.function`` straight away.  Seed TensorFlow
    (``tf.random.set_seed``) *before* constructing for a reproducible init.
    """

    def __init__(
        self,
        in_channels: int,
        num_embeddings: int = 10,
        embedding_dim: int = 64,
        num_hiddens: int = 128,
        num_residual_layers: int = 2,
        num_residual_hiddens: int = 32,
        commitment_cost: float = 0.25,
        use_ema: bool = True,
        decay: float = 0.99,
        name: str | None = "vqvae",
    ):
        super().__init__(name=name)
        for arg, val in (
            ("in_channels", in_channels),
            ("num_embeddings", num_embeddings),
            ("embedding_dim", embedding_dim),
            ("num_hiddens", num_hiddens),
            ("num_residual_hiddens", num_residual_hiddens),
        ):
            if int(val) != val or int(val) < 1:
                raise ValueError(f"VQVAE: {arg} must be a positive integer, got {val!r}")
        if int(num_residual_layers) != num_residual_layers or num_residual_layers < 0:
            raise ValueError(f"VQVAE: num_residual_layers must be >= 0, got {num_residual_layers!r}")
        self._config = dict(
            in_channels=int(in_channels),
            num_embeddings=int(num_embeddings),
            embedding_dim=int(embedding_dim),
            num_hiddens=int(num_hiddens),
            num_residual_layers=int(num_residual_layers),
            num_residual_hiddens=int(num_residual_hiddens),
            commitment_cost=float(commitment_cost),
            use_ema=bool(use_ema),
            decay=float(decay),
        )
        self.in_channels = int(in_channels)
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.use_ema = bool(use_ema)

        self.encoder = Encoder(num_hiddens, num_residual_layers, num_residual_hiddens, name="encoder")
        self.pre_vq_conv = snt.Conv2D(self.embedding_dim, kernel_shape=(1, 1), stride=(1, 1), name="to_vq")
        if self.use_ema:
            self.vq = snt.nets.VectorQuantizerEMA(
                embedding_dim=self.embedding_dim,
                num_embeddings=self.num_embeddings,
                commitment_cost=float(commitment_cost),
                decay=float(decay),
            )
        else:
            self.vq = snt.nets.VectorQuantizer(
                embedding_dim=self.embedding_dim,
                num_embeddings=self.num_embeddings,
                commitment_cost=float(commitment_cost),
            )
        self.decoder = Decoder(
            num_hiddens, num_residual_layers, num_residual_hiddens, self.in_channels, name="decoder"
        )
        # Create all variables now (eagerly, outside any tf.function); EMA
        # statistics are not touched with is_training=False.
        self._forward(tf.zeros([1, 8, 8, self.in_channels], tf.float32), is_training=False)

    # -- configuration -----------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Plain dict of constructor arguments (JSON-serialisable): ``VQVAE(**config)`` rebuilds."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VQVAE":
        known = {
            "in_channels", "num_embeddings", "embedding_dim", "num_hiddens", "num_residual_layers",
            "num_residual_hiddens", "commitment_cost", "use_ema", "decay",
        }
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"VQVAE.from_config: unknown keys {sorted(unknown)}")
        return cls(**dict(config))

    @property
    def codebook(self) -> tf.Variable:
        """The codebook variable, shape (D, K) (Sonnet layout: one code per column)."""
        return self.vq.embeddings

    # -- forward -----------------------------------------------------------

    def _forward(self, x, is_training):
        z = self.pre_vq_conv(self.encoder(x))
        vq_out = self.vq(z, is_training=is_training)
        x_recon = self.decoder(vq_out["quantize"])
        return {
            "x_recon": x_recon,
            "vq_loss": vq_out["loss"],
            "perplexity": vq_out["perplexity"],
            "encoding_indices": tf.cast(vq_out["encoding_indices"], tf.int32),
            "quantize": vq_out["quantize"],
            "z": z,
        }

    def __call__(self, x, is_training: bool):
        """Forward pass.

        Args:
            x: float32 (B, H, W, in_channels), H and W multiples of 4.
            is_training: Python bool; True updates the EMA codebook.

        Returns dict with ``x_recon`` (B, H, W, in_channels), ``vq_loss``
        (scalar), ``perplexity`` (scalar), ``encoding_indices`` int32
        (B, H/4, W/4), ``quantize`` (B, H/4, W/4, D, straight-through) and ``z``
        (pre-quantisation encoder output).
        """
        return self._forward(tf.convert_to_tensor(x, tf.float32), is_training=bool(is_training))

    @tf.function(reduce_retracing=True)
    def _eval_graph(self, x):
        out = self._forward(x, is_training=False)
        return out["x_recon"], out["encoding_indices"]

    @tf.function(reduce_retracing=True)
    def _encode_graph(self, x):
        z = self.pre_vq_conv(self.encoder(x))
        return tf.cast(self.vq(z, is_training=False)["encoding_indices"], tf.int32)

    @tf.function(reduce_retracing=True)
    def _decode_graph(self, indices):
        return self.decoder(self.vq.quantize(indices))

    def encode(self, x) -> tf.Tensor:
        """Code map: int32 (B, H/4, W/4) with values in [0, K).  Deterministic (no EMA update)."""
        return self._encode_graph(tf.convert_to_tensor(x, tf.float32))

    def decode_indices(self, indices) -> tf.Tensor:
        """Reconstruction (B, 4h, 4w, in_channels) from a code map (B, h, w) of ints in [0, K)."""
        return self._decode_graph(tf.convert_to_tensor(indices, tf.int32))

    def reconstruct(self, x) -> tf.Tensor:
        """Deterministic reconstruction of ``x`` (no EMA update)."""
        return self._eval_graph(tf.convert_to_tensor(x, tf.float32))[0]


# --------------------------------------------------------------------------
# numpy helpers
# --------------------------------------------------------------------------


def data_variance(images: np.ndarray, chunk: int = 64) -> float:
    """Variance of all values of ``images`` (float64 accumulation, chunked)."""
    images = np.asarray(images)
    if images.size == 0:
        raise ValueError("data_variance: empty array")
    n = images.shape[0] if images.ndim else 1
    flat = images.reshape(n, -1) if images.ndim else images.reshape(1, 1)
    total = 0.0
    total_sq = 0.0
    count = 0
    mean0 = float(np.mean(flat[: min(chunk, n)], dtype=np.float64))  # shift for stability
    for i in range(0, n, chunk):
        block = flat[i : i + chunk].astype(np.float64) - mean0
        total += float(block.sum())
        total_sq += float(np.square(block).sum())
        count += block.size
    mean = total / count
    return float(max(total_sq / count - mean * mean, 0.0))


def _check_images(images, in_channels: int, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"{what}: expected (N, H, W, C) images, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what}: no images")
    if arr.shape[-1] != in_channels:
        raise ValueError(
            f"{what}: {arr.shape[-1]} channels but the model has in_channels={in_channels} "
            "(micrograph channels + 1 mask channel)"
        )
    if arr.shape[1] % 4 or arr.shape[2] % 4:
        raise ValueError(f"{what}: height and width must be multiples of 4, got {arr.shape[1:3]}")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        raise ValueError(
            f"{what}: integer/bool images (dtype {arr.dtype}); the VQ-VAE expects float32 in [0, 1] "
            "(divide uint8 by 255)"
        )
    return arr.astype(np.float32, copy=False)


def encode_dataset(model: VQVAE, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Code maps of ``images`` (N, H, W, C) float in [0, 1] -> int32 (N, H/4, W/4)."""
    images = _check_images(images, model.in_channels, "encode_dataset")
    out = [model.encode(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0).astype(np.int32, copy=False)


def decode_codes(model: VQVAE, codes: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Reconstructions (N, 4h, 4w, C) float32 from code maps (N, h, w) with values in [0, K)."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"decode_codes: expected (N, h, w) code maps, got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        if not np.all(np.equal(np.mod(codes, 1), 0)):
            raise ValueError("decode_codes: codes must be integers")
    if codes.size and (codes.min() < 0 or codes.max() >= model.num_embeddings):
        raise ValueError(
            f"decode_codes: code values must be in [0, {model.num_embeddings}), "
            f"got [{codes.min()}, {codes.max()}] (the paper numbers codes 1..K; subtract 1)"
        )
    codes = codes.astype(np.int32)
    if len(codes) == 0:
        h, w = codes.shape[1:]
        return np.zeros((0, 4 * h, 4 * w, model.in_channels), np.float32)
    out = [model.decode_indices(codes[i : i + batch_size]).numpy() for i in range(0, len(codes), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------


@dataclass
class VQVAEHistory:
    """Training record returned by :func:`train_vqvae`.

    ``rows``: one dict per evaluation with the keys of :data:`HISTORY_COLUMNS`.
    ``snapshots``: step -> reconstructions (n, H, W, C) float32 of
    ``snapshot_inputs`` (the first few validation images).
    ``history["val_recon_mse"]`` gives a column as a numpy array.
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    snapshot_inputs: np.ndarray | None = None
    data_variance: float | None = None
    checkpoint_dir: Path | None = None
    final_step: int = 0
    resumed_from_step: int = 0
    seconds_per_step: float | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in HISTORY_COLUMNS:
            raise KeyError(f"unknown history column {column!r}; columns: {HISTORY_COLUMNS}")
        dtype = np.int64 if column == "step" else np.float64
        return np.asarray([r[column] for r in self.rows], dtype=dtype)

    @property
    def steps(self) -> np.ndarray:
        return self["step"]

    @property
    def best_step(self) -> int | None:
        """Step of the lowest finite validation reconstruction MSE (the ``best`` checkpoint)."""
        best = None
        for r in self.rows:
            v = r["val_recon_mse"]
            if math.isfinite(v) and (best is None or v < best[1]):
                best = (int(r["step"]), v)
        return None if best is None else best[0]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {c: self[c] for c in HISTORY_COLUMNS}

    def to_csv(self, path: str | Path) -> None:
        _write_history_csv(Path(path), self.rows)

    @staticmethod
    def read_csv(path: str | Path) -> list[dict[str, float]]:
        return _read_history_csv(Path(path))


def _write_history_csv(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    write_rows_csv(path, HISTORY_COLUMNS, rows, int_columns=("step",))


def _read_history_csv(path: Path) -> list[dict[str, float]]:
    return read_rows_csv(path, HISTORY_COLUMNS, int_columns=("step",))


def _save_snapshots(path: Path, inputs: np.ndarray, snapshots: Mapping[int, np.ndarray]) -> None:
    arrays = {"inputs": inputs}
    for step, rec in snapshots.items():
        arrays[f"step_{int(step)}"] = rec
    atomic_save_npz(path, **arrays)


def _load_snapshots(path: Path, max_step: int) -> dict[int, np.ndarray]:
    if not path.exists():
        return {}
    out = {}
    with np.load(path) as data:
        for key in data.files:
            if key.startswith("step_"):
                step = int(key[len("step_"):])
                if step <= max_step:
                    out[step] = data[key]
    return out


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


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
    from .io import DataError, recorded_inputs

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
        which: ``"best"`` (lowest validation reconstruction MSE) or ``"last"``.
        expect: optional config entries the caller relies on, e.g.
            ``dict(num_embeddings=10, embedding_dim=64, in_channels=4)``;
            a ValueError lists every mismatch.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = _read_config(checkpoint_dir)
    if expect:
        problems = _config_mismatch(config, expect)
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


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def _make_dataset(n: int, batch_size: int, seed: int, skip_batches: int) -> tf.data.Dataset:
    """Batches of training-set indices: a fresh permutation per epoch, endlessly.

    The permutation of epoch ``e`` is ``stateless_shuffle(range(n), seed=[seed, e])``,
    so the order depends on ``seed`` only (not on TensorFlow's global seed or
    on how often the pipeline was rebuilt), and working on indices makes
    ``skip`` cheap: a resumed run sees exactly the batches an uninterrupted run
    would have seen.  Batches run across epoch boundaries (like
    ``shuffle().repeat().batch()``).
    """
    seed = int(seed)
    base = tf.range(n, dtype=tf.int64)

    def epoch_order(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            base, seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(perm)

    ds = tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(epoch_order)
    ds = ds.batch(batch_size, drop_remainder=True)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds


def _evaluate(model: VQVAE, images: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(reconstruction MSE over all values, fraction of codes used) on ``images``."""
    sq_sum = 0.0
    count = 0
    counts = np.zeros(model.num_embeddings, np.int64)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        recon, idx = model._eval_graph(tf.convert_to_tensor(x))
        diff = recon.numpy().astype(np.float64) - x
        sq_sum += float(np.square(diff).sum())
        count += diff.size
        counts += np.bincount(idx.numpy().ravel(), minlength=model.num_embeddings)[: model.num_embeddings]
    return sq_sum / count, float(np.count_nonzero(counts)) / model.num_embeddings


def _reconstruct(model: VQVAE, images: np.ndarray) -> np.ndarray:
    return model._eval_graph(tf.convert_to_tensor(images))[0].numpy().astype(np.float32)


def make_train_step(model: VQVAE, optimizer, data_variance: float, jit_compile: bool = False):
    """The compiled optimizer step of :func:`train_vqvae`: ``x -> (loss, recon_mse, vq_loss, perplexity)``.

    ``jit_compile=True`` compiles it with XLA (bench/bench_vqvae.py measures both; see BENCHMARKS.md).
    """
    var = float(data_variance)

    @tf.function(jit_compile=jit_compile)
    def train_step(x):
        with tf.GradientTape() as tape:
            out = model(x, is_training=True)
            recon_mse = tf.reduce_mean(tf.square(out["x_recon"] - x))
            loss = recon_mse / var + out["vq_loss"]
        params = model.trainable_variables
        grads = tape.gradient(loss, params)
        optimizer.apply_gradients(zip(grads, params))
        return loss, recon_mse, out["vq_loss"], out["perplexity"]

    return train_step


def train_vqvae(
    model: VQVAE,
    train_images: np.ndarray,
    val_images: np.ndarray,
    *,
    steps: int,
    batch_size: int = 8,
    learning_rate: float = 3e-4,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    eval_every: int = 500,
    snapshot_steps: Sequence[int] = (),
    progress: bool = True,
    data_variance: float | None = None,
    eval_batch_size: int | None = None,
    tensorboard_dir: str | Path | None = None,
) -> VQVAEHistory:
    """Train ``model`` for ``steps`` optimizer steps in total (resumable).

    Args:
        model: a :class:`VQVAE`.
        train_images, val_images: float32 (N, H, W, in_channels) in [0, 1].
        steps: total number of steps (including those of earlier, resumed runs).
        batch_size, learning_rate: Adam on ``MSE / data_variance + vq_loss``.
        seed: seed of the shuffling of the training set.
        checkpoint_dir: if given, ``config.json``, ``history.csv``,
            ``snapshots.npz``, ``last/`` (latest checkpoint, saved every
            evaluation, used to resume) and ``best/`` (lowest validation
            reconstruction MSE).  Calling again with the same directory resumes
            from ``last/`` (model, optimizer, step, history) and continues up to
            ``steps``; returns immediately if already there.  The learning rate
            given here overrides the restored one.
        eval_every: evaluate (validation MSE, codebook usage), log a history
            row and checkpoint every this many steps, and at the final step.
        snapshot_steps: steps at which reconstructions of the first few
            validation images are kept in ``history.snapshots`` (0 = before
            training).
        progress: tqdm progress bar with the current loss.
        data_variance: loss normaliser; default: :func:`data_variance` of
            ``train_images``.
        eval_batch_size: batch size for evaluation (default ``2 * batch_size``).
        tensorboard_dir: if given, scalar summaries are written there.

    Raises:
        FloatingPointError: non-finite loss (or weights) at some step.  Nothing
            is saved for that state; if ``checkpoint_dir`` is given, the
            in-memory model and optimizer are reset to the last good
            checkpoint, which stays on disk untouched.
    """
    steps = int(steps)
    batch_size = int(batch_size)
    eval_every = int(eval_every)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size < 1 or eval_every < 1:
        raise ValueError("batch_size and eval_every must be >= 1")
    eval_batch_size = int(eval_batch_size or 2 * batch_size)

    train_images = _check_images(train_images, model.in_channels, "train_vqvae(train_images)")
    val_images = _check_images(val_images, model.in_channels, "train_vqvae(val_images)")
    for what, arr in (("train_images", train_images), ("val_images", val_images)):
        if not np.isfinite(arr).all():
            raise ValueError(f"train_vqvae: {what} contains NaN or inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -0.01 or hi > 1.01:
            warnings.warn(
                f"train_vqvae: {what} values lie in [{lo:.3g}, {hi:.3g}], expected [0, 1] "
                "(uint8 data should be divided by 255)",
                stacklevel=2,
            )
    if val_images.shape[1:] != train_images.shape[1:]:
        # Fully convolutional, so this works, but it is rarely intended.
        warnings.warn(
            f"train_vqvae: validation images {val_images.shape[1:]} differ in shape from "
            f"training images {train_images.shape[1:]}",
            stacklevel=2,
        )

    var = float(data_variance) if data_variance is not None else _variance_fn(train_images)
    if not math.isfinite(var) or var <= 0:
        raise ValueError(f"train_vqvae: data variance must be positive and finite, got {var!r}")

    optimizer = _make_adam(learning_rate)
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)

    snap_inputs = val_images[: min(_N_SNAPSHOT_IMAGES, len(val_images))].copy()
    history = VQVAEHistory(snapshot_inputs=snap_inputs, data_variance=var)

    last_manager = best_manager = None
    ckpt_dir: Path | None = None
    if checkpoint_dir is not None:
        ckpt_dir = Path(checkpoint_dir)
        history.checkpoint_dir = ckpt_dir
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last_manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / _LAST_DIR), max_to_keep=2)
        best_manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / _BEST_DIR), max_to_keep=1)
        # the training data's fingerprint: a checkpoint made from other patches is never resumed
        guard_inputs(ckpt_dir, fingerprint(train_images, val_images), "VQ-VAE checkpoint",
                     resuming=last_manager.latest_checkpoint is not None)
        if last_manager.latest_checkpoint:
            saved = _read_config(ckpt_dir)
            problems = [
                f"{key}: checkpoint has {saved.get(key)!r}, this model has {val!r}"
                for key, val in model.config.items()
                if saved.get(key) != val
            ]
            if problems:
                raise ValueError(
                    f"train_vqvae: {ckpt_dir} holds a checkpoint of a different model; cannot resume "
                    "into this one (use another checkpoint_dir): " + "; ".join(problems)
                )
            ckpt.restore(last_manager.latest_checkpoint).assert_existing_objects_matched()
            optimizer.learning_rate = float(learning_rate)
            start = int(step_var.numpy())
            history.resumed_from_step = start
            if (ckpt_dir / _HISTORY_FILE).exists():
                history.rows = [
                    r for r in _read_history_csv(ckpt_dir / _HISTORY_FILE) if r["step"] <= start
                ]
            history.snapshots = _load_snapshots(ckpt_dir / _SNAPSHOT_FILE, start)
        else:
            # Fresh run (no checkpoint yet): files of an earlier run that never
            # reached its first evaluation are stale and get overwritten.
            atomic_write_text(
                ckpt_dir / _CONFIG_FILE, json.dumps(model.config, indent=2, sort_keys=True) + "\n"
            )
    start = int(step_var.numpy())
    history.final_step = start

    if start >= steps:
        if start > steps:
            warnings.warn(
                f"train_vqvae: checkpoint in {ckpt_dir} is already at step {start} > steps={steps}; "
                "nothing to do",
                stacklevel=2,
            )
        return history

    best_val = min(
        (r["val_recon_mse"] for r in history.rows if math.isfinite(r["val_recon_mse"])), default=math.inf
    )
    snapshot_set = {int(s) for s in snapshot_steps if 0 <= int(s) <= steps}
    warned_dead = False

    writer = tf.summary.create_file_writer(str(tensorboard_dir)) if tensorboard_dir is not None else None

    train_step = make_train_step(model, optimizer, var)

    train_tensor = tf.constant(train_images)

    def save_snapshot(step: int) -> None:
        history.snapshots[step] = _reconstruct(model, snap_inputs)
        if ckpt_dir is not None:
            _save_snapshots(ckpt_dir / _SNAPSHOT_FILE, snap_inputs, history.snapshots)

    def evaluate_and_save(step: int, acc: np.ndarray, n_acc: int) -> dict[str, float]:
        nonlocal best_val, warned_dead
        if not _all_finite(model.variables):
            fail(step, "non-finite model weights")
        val_mse, used = _evaluate(model, val_images, eval_batch_size)
        if not math.isfinite(val_mse):
            fail(step, f"non-finite validation reconstruction MSE ({val_mse!r})")
        means = acc / n_acc if n_acc else np.full(4, np.nan)
        row = {
            "step": int(step),
            "train_loss": float(means[0]),
            "train_recon_mse": float(means[1]),
            "vq_loss": float(means[2]),
            "perplexity": float(means[3]),
            "val_recon_mse": float(val_mse),
            "codes_used": float(used),
        }
        history.rows = [r for r in history.rows if r["step"] != step] + [row]
        if used < DEAD_CODE_FRACTION and not warned_dead:
            warned_dead = True
            warnings.warn(
                f"VQ-VAE codebook collapse: only {used:.0%} of the {model.num_embeddings} codes are used "
                f"on the validation set at step {step} (dead codes; consider a smaller codebook"
                + (", a lower learning rate" if model.use_ema else ", use_ema=True")
                + "; early in training this may still recover)",
                RuntimeWarning,
                stacklevel=3,
            )
        if writer is not None:
            _write_scalars(writer, step, {k: v for k, v in row.items() if k != "step"})
        if ckpt_dir is not None:
            # Order: last -> best -> history.  After a crash in between, the
            # resumed run finds no history row for its step and re-evaluates.
            last_manager.save(checkpoint_number=step)
            if val_mse < best_val:
                best_manager.save(checkpoint_number=step)
            _write_history_csv(ckpt_dir / _HISTORY_FILE, history.rows)
        best_val = min(best_val, val_mse)
        return row

    def fail(step: int, what: str) -> None:
        msg = f"train_vqvae: {what} at step {step}; training stopped, the non-finite state was not saved"
        if last_manager is not None and last_manager.latest_checkpoint:
            good = last_manager.latest_checkpoint
            ckpt.restore(good).assert_existing_objects_matched()
            msg += (
                f". The last good checkpoint {good} (step {int(step_var.numpy())}) is intact and the model "
                "was reset to it in memory"
            )
        else:
            msg += " (no checkpoint on disk; the in-memory model is corrupted)"
        raise FloatingPointError(msg + ". Try a lower learning_rate.")

    # A crash between saving 'last' and writing history.csv leaves the
    # restored step without a history row: evaluate it again.
    if start > 0 and ckpt_dir is not None and not any(r["step"] == start for r in history.rows):
        evaluate_and_save(start, np.zeros(4), 0)
    if 0 in snapshot_set and start == 0 and 0 not in history.snapshots:
        save_snapshot(0)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="VQ-VAE", unit="step", dynamic_ncols=True)

    ds = _make_dataset(len(train_images), batch_size, seed, skip_batches=start)
    ds = ds.map(lambda idx: tf.gather(train_tensor, idx), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)

    acc = np.zeros(4, np.float64)
    n_acc = 0
    step = start
    t0 = None
    timed_steps = 0
    try:
        for x in ds:
            if step >= steps:
                break
            loss, recon, vq_loss, perp = (float(t) for t in train_step(x))
            if not (math.isfinite(loss) and math.isfinite(recon)):
                fail(step + 1, f"non-finite loss ({loss!r}, reconstruction MSE {recon!r})")
            step += 1
            step_var.assign(step)
            if t0 is None:
                t0 = time.perf_counter()  # after the first (tracing) step
            else:
                timed_steps += 1
            acc += (loss, recon, vq_loss, perp)
            n_acc += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", mse=f"{recon:.4g}", refresh=False)
            if step % eval_every == 0 or step == steps:
                row = evaluate_and_save(step, acc, n_acc)
                acc[:] = 0
                n_acc = 0
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{loss:.4g}", val_mse=f"{row['val_recon_mse']:.4g}",
                        codes=f"{row['codes_used']:.0%}",
                    )
            if step in snapshot_set:
                save_snapshot(step)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if t0 is not None and timed_steps:
            history.seconds_per_step = (time.perf_counter() - t0) / timed_steps
        history.final_step = int(step_var.numpy())
    return history


_variance_fn = data_variance


def _write_scalars(writer, step: int, values: Mapping[str, float]) -> None:
    """Scalar summaries in TensorBoard's format without needing the ``tensorboard`` package.

    ``tf.summary.scalar`` is implemented by TensorBoard (not installed with
    TensorFlow 2.21); the core ``tf.summary.write`` with the "scalars" plugin
    metadata produces the same event records.
    """
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    ).SerializeToString()
    with writer.as_default(step=int(step)):
        for tag, value in values.items():
            if math.isfinite(value):
                tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=metadata)
    writer.flush()


def _make_adam(learning_rate: float):
    """Adam of the Keras 2 API (``tf_keras``), independent of which Keras ``tf.keras`` points to."""
    try:
        import tf_keras

        return tf_keras.optimizers.Adam(learning_rate=float(learning_rate))
    except ImportError:  # pragma: no cover - tf_keras is a pinned dependency
        return tf.keras.optimizers.Adam(learning_rate=float(learning_rate))
