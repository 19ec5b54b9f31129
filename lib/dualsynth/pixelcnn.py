"""PixelCNN priors over maps of discrete VQ-VAE codes, their training and sampling.

A prior models ``p(z) = prod_{i,j} p(z[i, j] | z at earlier raster positions)`` for
an integer code map ``z`` of shape (H, W) with values ``0 .. K-1``.  Both models
here are Sonnet 2 modules mapping a batch of code maps (B, H, W) to logits
(B, H, W, K); the input is one-hot encoded internally.

Two variants (choose with :func:`make_prior`):

``"pixelcnn"`` -- :class:`PixelCNN` (van den Oord et al. 2016, "Pixel Recurrent
    Neural Networks"): a masked type-A convolution (the centre pixel itself is
    hidden) followed by residual blocks ``1x1 -> kxk masked type B -> 1x1`` and two
    1x1 output layers.  Stacked masked convolutions have a **blind spot**: the
    receptive field grows by ``k//2`` columns per row upwards, so the positions
    up-right of the current one that lie outside that cone are never seen
    (e.g. (i-1, j+2) with 3x3 kernels everywhere; (i-1, j+first_kernel//2+1)
    in general), no matter how deep the net is.

``"gated"`` -- :class:`GatedPixelCNN` (van den Oord et al. 2016, "Conditional
    Image Generation with PixelCNN Decoders"): a vertical stack (everything in
    the rows above, full width) and a horizontal stack (current row, left of the
    current position), gated ``tanh * sigmoid`` units, a 1x1 link from the
    vertical to the horizontal stack (shifted down one row so it only carries
    rows above) and residual connections in the horizontal stack.  No blind spot.

Masked convolutions are implemented as *causal* convolutions: the kernel only
has the rows above plus the centre row, shape ``(k//2 + 1, k)``, and the centre
row is masked to the columns ``< centre`` (type A) or ``<= centre`` (type B).
The feature map is zero-padded ``k//2`` rows on top and ``k//2`` columns
left/right, then convolved with padding VALID.  This is exactly the standard
``k x k`` masked convolution (the masked-out lower half is never computed).

Sampling.  :func:`sample_naive` fills the map in raster order and runs the
WHOLE map through the model at every position (the reference).
:func:`sample_fast` gives the same codes much faster, compiled and batched:

* **window trick** (``method="window"``): the logits at (i, j) depend only on
  the input window ``rows i-up..i x columns j-left..j+right``
  (``model.receptive_field``).  Running the network with VALID convolutions on
  that window gives a 1x1 output, the logits at (i, j).  The full model
  zero-pads *every* layer, so the windowed evaluation multiplies the input of
  every spatial convolution with a 0/1 validity mask of the window (0 outside
  the code map), which reproduces that padding at the borders exactly.
* **cached** (``method="cached"``, default): the same idea pushed further --
  each masked conv keeps the rows of its input that it covers, so at (i, j)
  every layer is evaluated at (i, j) only (the rows-above part of the plain
  model's convs and the gated model's vertical stack once per finished row).

Sampling is position-deterministic: the code at (i, j) of sample ``n`` is
``argmax(logits / T + g)`` (Gumbel-max, an exact draw from
``Categorical(logits / T)``) with Gumbel noise ``g`` from
``tf.random.stateless_uniform`` seeded by ``fold_in(fold_in(seed, i), j)``.
All samplers therefore give identical codes for the same seed, independently
of ``batch_size`` (up to float round-off between the ways of computing the
logits, which could only matter at a near-exact tie of two perturbed logits).

Checkpointing: the models are ``snt.Module``; ``tf.train.Checkpoint(model=model,
optimizer=opt)`` works directly.  :func:`save_prior` / :func:`load_prior` store
the weights together with ``model.config`` (the constructor arguments) so that
:func:`load_prior` rebuilds the module without any other information.

Import ``dualsynth`` before TensorFlow (it sets ``TF_USE_LEGACY_KERAS=1``).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import sonnet as snt
import tensorflow as tf

__all__ = [
    "DEFAULT_PLAIN",
    "DEFAULT_GATED",
    "PRIOR_KINDS",
    "ReceptiveField",
    "PixelCNN",
    "GatedPixelCNN",
    "make_prior",
    "receptive_field",
    "TrainHistory",
    "train_prior",
    "evaluate_nll",
    "nats_to_bits",
    "save_prior",
    "load_prior",
    "sample_naive",
    "sample_fast",
]

# --------------------------------------------------------------------------- #
# Defaults (module-level so presets can refer to them)
# --------------------------------------------------------------------------- #
#: Plain PixelCNN: 7x7 type-A conv, 8 residual blocks (64 channels, 32 in the
#: bottleneck) with 3x3 type-B convs.  Receptive field: 11 rows above, 11
#: columns left/right (covers grain-sized structure in a 64x64 code map);
#: 0.11 M parameters (K=10), ~0.2-0.3 s per training step (batch 8 of 64x64
#: maps) on 2 shared CPU cores.
DEFAULT_PLAIN_HIDDEN = 64
DEFAULT_PLAIN_BLOCKS = 8
DEFAULT_FIRST_KERNEL = 7
DEFAULT_KERNEL = 3
#: Gated PixelCNN: 10 gated layers of 32 channels (gates 64), 7x7 (vertical) /
#: 1x4 (horizontal) first layer then 3x3 / 1x2.  Receptive field: 13 rows above,
#: 12 columns each side; 0.22 M parameters, ~0.8 s per training step (batch 8
#: of 64x64 maps).  32 channels keep it about as cheap to train as the plain net.
DEFAULT_GATED_HIDDEN = 32
DEFAULT_GATED_LAYERS = 10

DEFAULT_PLAIN = dict(
    hidden_channels=DEFAULT_PLAIN_HIDDEN,
    num_blocks=DEFAULT_PLAIN_BLOCKS,
    first_kernel_size=DEFAULT_FIRST_KERNEL,
    kernel_size=DEFAULT_KERNEL,
)
DEFAULT_GATED = dict(
    hidden_channels=DEFAULT_GATED_HIDDEN,
    num_layers=DEFAULT_GATED_LAYERS,
    first_kernel_size=DEFAULT_FIRST_KERNEL,
    kernel_size=DEFAULT_KERNEL,
)
PRIOR_KINDS = ("pixelcnn", "gated")

#: Default batch size of the samplers.
DEFAULT_SAMPLE_BATCH = 16


class ReceptiveField(NamedTuple):
    """Input window that determines the logits at (i, j).

    Rows ``i-up .. i`` and columns ``j-left .. j+right`` (in the current row only
    columns ``< j`` actually matter).
    """

    up: int
    left: int
    right: int


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_odd_kernel(name: str, value) -> int:
    value = _check_int(name, value, 1)
    if value < 3 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd int >= 3, got {value}")
    return value


class _Conv(snt.Module):
    """2-D convolution with an optional fixed 0/1 kernel mask and causal padding.

    ``padding=(top, left, right)`` must satisfy ``top == kh-1`` and
    ``left + right == kw-1`` so that the full-map output has the input's size.

    ``__call__(x, valid)``: with ``valid=None`` (full map) the input is
    zero-padded and convolved with padding VALID.  With a validity mask
    ``valid`` of shape (1, h, w, 1) (window mode) nothing is padded: the input is
    multiplied with the mask (zero outside the code map, like the padding of the
    full model) and the output shrinks by (top, left, right); the cropped mask is
    returned along with the output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_shape, padding,
                 mask: np.ndarray | None = None, with_bias: bool = True,
                 seed=(0, 0), name: str | None = None):
        super().__init__(name=name)
        kh, kw = kernel_shape
        top, left, right = padding
        if top != kh - 1 or left + right != kw - 1:
            raise ValueError("padding does not match the kernel shape")
        self._kernel_shape = (kh, kw)
        self._padding = (top, left, right)
        if mask is not None:
            mask = np.asarray(mask, np.float32).reshape(kh, kw)
            taps = float(mask.sum())
        else:
            taps = float(kh * kw)
        std = 1.0 / math.sqrt(max(taps, 1.0) * in_channels)
        init = tf.random.stateless_truncated_normal(
            [kh, kw, in_channels, out_channels], seed=tf.constant(seed, tf.int32), stddev=std)
        self.w = tf.Variable(init, name="w")
        self.b = tf.Variable(tf.zeros([out_channels]), name="b") if with_bias else None
        if mask is not None and not np.all(mask == 1.0):
            self._mask = tf.constant(mask[:, :, None, None])
        else:
            self._mask = None

    @property
    def spatial(self) -> bool:
        return self._kernel_shape != (1, 1)

    def kernel(self):
        """The (masked) kernel (kh, kw, in, out)."""
        return self.w if self._mask is None else self.w * self._mask

    def dense(self, x):
        """Output at one position from a flattened (B, kh*kw*in) patch (row-major)."""
        w = self.kernel()
        y = tf.matmul(x, tf.reshape(w, [-1, w.shape[-1]]))
        return y if self.b is None else y + self.b

    def __call__(self, x, valid=None):
        w = self.kernel()
        if self.spatial:
            top, left, right = self._padding
            if valid is None:
                x = tf.pad(x, [[0, 0], [top, 0], [left, right], [0, 0]])
            else:
                x = x * valid
                valid = valid[:, top:, left:valid.shape[2] - right]
        y = tf.nn.conv2d(x, w, strides=1, padding="VALID")
        if self.b is not None:
            y = tf.nn.bias_add(y, self.b)
        return y, valid


def _masked_kernel(k: int, mask_type: str) -> np.ndarray:
    """Causal (k//2+1, k) kernel mask: all rows above, centre row up to the centre."""
    c = k // 2
    m = np.ones((c + 1, k), np.float32)
    m[c, c + (1 if mask_type == "B" else 0):] = 0.0
    return m


class _Seeds:
    """Deterministic per-layer initialisation seeds derived from one int."""

    def __init__(self, seed: int):
        self._seed = int(seed) % (2**31 - 1)
        self._n = 0

    def __call__(self):
        self._n += 1
        return (self._seed, self._n)


class _ResidualBlock(snt.Module):
    """ReLU -> 1x1 (C -> C/2) -> ReLU -> kxk type-B -> ReLU -> 1x1 (C/2 -> C), + input."""

    def __init__(self, channels: int, kernel_size: int, seeds: _Seeds, name=None):
        super().__init__(name=name)
        mid = max(channels // 2, 1)
        c = kernel_size // 2
        self._crop = (c, c, c)
        self.reduce = _Conv(channels, mid, (1, 1), (0, 0, 0), seed=seeds(), name="reduce")
        self.conv = _Conv(mid, mid, (c + 1, kernel_size), (c, c, c),
                          mask=_masked_kernel(kernel_size, "B"), seed=seeds(), name="masked_b")
        self.expand = _Conv(mid, channels, (1, 1), (0, 0, 0), seed=seeds(), name="expand")

    def __call__(self, x, valid=None):
        # relu written as maximum(x, 0) (same values): with tf.nn.relu Grappler's
        # remapper tries to fuse the previous block's residual add (which has a
        # second consumer, the next residual add) with this relu, fails with a
        # "Mutation::Apply error" log line and drops all its fusions.
        h, _ = self.reduce(tf.maximum(x, 0.0))
        h, valid_out = self.conv(tf.nn.relu(h), valid)
        h, _ = self.expand(tf.nn.relu(h))
        if valid is not None:
            top, left, right = self._crop
            x = x[:, top:, left:x.shape[2] - right]
        return x + h, valid_out


class _PriorBase(snt.Module):
    """Common interface: ``__call__(codes) -> logits``, ``window_logits``, config."""

    kind: str = ""
    _TF_MODULE_IGNORED_PROPERTIES = snt.Module._TF_MODULE_IGNORED_PROPERTIES | frozenset(
        {"_compiled_cache"})

    def __init__(self, num_embeddings: int, name=None):
        super().__init__(name=name)
        self.num_embeddings = _check_int("num_embeddings", num_embeddings, 2)

    # subclasses implement _forward(x_onehot, valid) and receptive_field
    def _forward(self, x, valid=None):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def receptive_field(self) -> ReceptiveField:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, codes):
        """Logits (B, H, W, K) for integer code maps (B, H, W)."""
        codes = tf.convert_to_tensor(codes)
        if codes.shape.rank != 3:
            raise ValueError(f"codes must have shape (B, H, W), got {codes.shape}")
        if not codes.dtype.is_integer:
            raise TypeError(f"codes must be integers, got {codes.dtype}")
        x = tf.one_hot(tf.cast(codes, tf.int32), self.num_embeddings, dtype=tf.float32)
        return self._forward(x, None)

    def window_logits(self, window, valid):
        """Logits (B, K) at the bottom-centre position of an input window.

        ``window``: one-hot codes (B, up+1, left+right+1, K) covering rows
        ``i-up .. i`` and columns ``j-left .. j+right`` of the code map (zeros
        outside the map and at not-yet-sampled positions); ``valid``: float 0/1
        mask (1, up+1, left+right+1, 1), 1 inside the code map.  Equal to
        ``self(codes)[:, i, j]`` (window trick, see the module docstring).
        """
        rf = self.receptive_field
        expected = (rf.up + 1, rf.left + rf.right + 1)
        if tuple(window.shape[1:3]) != expected:
            raise ValueError(f"window must be {expected} spatially, got {window.shape}")
        logits = self._forward(window, valid)
        return tf.reshape(logits, [-1, self.num_embeddings])


class PixelCNN(_PriorBase):
    """Plain PixelCNN prior (masked type-A conv, residual type-B blocks, 1x1 head).

    Args:
      num_embeddings: number of codes K.
      hidden_channels: channels of the residual stream (the blocks use half).
      num_blocks: residual blocks, each with one ``kernel_size`` masked conv.
      first_kernel_size: odd size of the first (type-A) masked conv.
      kernel_size: odd size of the masked convs in the blocks (type B).
      seed: seed of the (stateless) weight initialisation.

    Has the blind spot of masked-conv stacks (see module docstring): the
    input at (i-1, j + first_kernel_size//2 + 1) never influences (i, j).
    """

    kind = "pixelcnn"

    def __init__(self, num_embeddings: int, hidden_channels: int = DEFAULT_PLAIN_HIDDEN,
                 num_blocks: int = DEFAULT_PLAIN_BLOCKS,
                 first_kernel_size: int = DEFAULT_FIRST_KERNEL,
                 kernel_size: int = DEFAULT_KERNEL, seed: int = 0, name: str | None = None):
        super().__init__(num_embeddings, name=name)
        self.hidden_channels = _check_int("hidden_channels", hidden_channels, 2)
        self.num_blocks = _check_int("num_blocks", num_blocks, 0)
        self.first_kernel_size = _check_odd_kernel("first_kernel_size", first_kernel_size)
        self.kernel_size = _check_odd_kernel("kernel_size", kernel_size)
        self.seed = int(seed)
        seeds = _Seeds(seed)
        k0, c0 = self.first_kernel_size, self.first_kernel_size // 2
        K, C = self.num_embeddings, self.hidden_channels
        self.conv_in = _Conv(K, C, (c0 + 1, k0), (c0, c0, c0),
                             mask=_masked_kernel(k0, "A"), seed=seeds(), name="masked_a")
        self.blocks = [_ResidualBlock(C, self.kernel_size, seeds, name=f"block_{b}")
                       for b in range(self.num_blocks)]
        self.head_hidden = _Conv(C, C, (1, 1), (0, 0, 0), seed=seeds(), name="head_hidden")
        self.head_out = _Conv(C, K, (1, 1), (0, 0, 0), seed=seeds(), name="head_out")

    @property
    def receptive_field(self) -> ReceptiveField:
        r = self.first_kernel_size // 2 + self.num_blocks * (self.kernel_size // 2)
        return ReceptiveField(up=r, left=r, right=r)

    @property
    def config(self) -> dict:
        return dict(kind=self.kind, num_embeddings=self.num_embeddings,
                    hidden_channels=self.hidden_channels, num_blocks=self.num_blocks,
                    first_kernel_size=self.first_kernel_size,
                    kernel_size=self.kernel_size, seed=self.seed)

    def _forward(self, x, valid=None):
        h, valid = self.conv_in(x, valid)
        for block in self.blocks:
            h, valid = block(h, valid)
        h, _ = self.head_hidden(tf.nn.relu(h))
        logits, _ = self.head_out(tf.nn.relu(h))
        return logits


def _gate(x):
    a, b = tf.split(x, 2, axis=-1)
    return tf.tanh(a) * tf.sigmoid(b)


class _GatedLayer(snt.Module):
    """One gated layer: vertical (k//2+1, k) conv, horizontal (1, k//2+1) conv.

    The vertical stack at row r sees rows <= r; its pre-activation reaches the
    horizontal stack shifted down one row (row r feeds row r+1) through a 1x1
    link.  The horizontal conv of the first layer is type A (excludes the
    current position).
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool,
                 seeds: _Seeds, name=None):
        super().__init__(name=name)
        k, c = kernel_size, kernel_size // 2
        self.first = first
        self._c = c
        self.v_conv = _Conv(in_channels, 2 * channels, (c + 1, k), (c, c, c),
                            seed=seeds(), name="v_conv")
        hmask = np.ones((1, c + 1), np.float32)
        if first:
            hmask[0, c] = 0.0
        self.h_conv = _Conv(in_channels, 2 * channels, (1, c + 1), (0, c, 0), mask=hmask,
                            seed=seeds(), name="h_conv")
        self.link = _Conv(2 * channels, 2 * channels, (1, 1), (0, 0, 0), with_bias=False,
                          seed=seeds(), name="v_to_h")
        self.h_out = _Conv(channels, channels, (1, 1), (0, 0, 0), seed=seeds(), name="h_out")

    def __call__(self, v, h, valid_v=None, valid_h=None):
        v_pre, valid_v_out = self.v_conv(v, valid_v)
        h_pre, valid_h_out = self.h_conv(h, valid_h)
        if valid_v is None:
            # full map: shift down one row (row 0 gets zeros)
            shifted = tf.pad(v_pre[:, :-1], [[0, 0], [1, 0], [0, 0], [0, 0]])
        else:
            # window: v covers rows ..i-1, columns centred on j; h covers row i,
            # columns j-wh+1..j.  Take the last v row at those columns.
            wh = h_pre.shape[2]
            cv = (v_pre.shape[2] - 1) // 2
            shifted = (v_pre[:, -1:, cv - wh + 1:cv + 1]
                       * valid_v_out[:, -1:, cv - wh + 1:cv + 1])
        link, _ = self.link(shifted)
        out, _ = self.h_out(_gate(h_pre + link))
        if not self.first:
            out = out + (h if valid_h is None else h[:, :, self._c:])
        return _gate(v_pre), out, valid_v_out, valid_h_out


class GatedPixelCNN(_PriorBase):
    """Gated PixelCNN prior (vertical + horizontal stacks, no blind spot).

    Args:
      num_embeddings: number of codes K.
      hidden_channels: channels of both stacks (gates use twice as many).
      num_layers: gated layers.
      first_kernel_size: odd size n of the first layer (vertical (n//2+1) x n,
        horizontal 1 x (n//2+1), type A).
      kernel_size: odd size of the other layers.
      seed: seed of the (stateless) weight initialisation.
    """

    kind = "gated"

    def __init__(self, num_embeddings: int, hidden_channels: int = DEFAULT_GATED_HIDDEN,
                 num_layers: int = DEFAULT_GATED_LAYERS,
                 first_kernel_size: int = DEFAULT_FIRST_KERNEL,
                 kernel_size: int = DEFAULT_KERNEL, seed: int = 0, name: str | None = None):
        super().__init__(num_embeddings, name=name)
        self.hidden_channels = _check_int("hidden_channels", hidden_channels, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.first_kernel_size = _check_odd_kernel("first_kernel_size", first_kernel_size)
        self.kernel_size = _check_odd_kernel("kernel_size", kernel_size)
        self.seed = int(seed)
        seeds = _Seeds(seed)
        K, C = self.num_embeddings, self.hidden_channels
        self.layers = [
            _GatedLayer(K if n == 0 else C, C,
                        self.first_kernel_size if n == 0 else self.kernel_size,
                        first=(n == 0), seeds=seeds, name=f"gated_{n}")
            for n in range(self.num_layers)
        ]
        self.head_hidden = _Conv(C, C, (1, 1), (0, 0, 0), seed=seeds(), name="head_hidden")
        self.head_out = _Conv(C, K, (1, 1), (0, 0, 0), seed=seeds(), name="head_out")

    @property
    def receptive_field(self) -> ReceptiveField:
        r = self.first_kernel_size // 2 + (self.num_layers - 1) * (self.kernel_size // 2)
        return ReceptiveField(up=r + 1, left=r, right=r)

    @property
    def config(self) -> dict:
        return dict(kind=self.kind, num_embeddings=self.num_embeddings,
                    hidden_channels=self.hidden_channels, num_layers=self.num_layers,
                    first_kernel_size=self.first_kernel_size,
                    kernel_size=self.kernel_size, seed=self.seed)

    def _forward(self, x, valid=None):
        if valid is None:
            v = h = x
            valid_v = valid_h = None
        else:
            up, left = self.receptive_field.up, self.receptive_field.left
            v, valid_v = x[:, :up], valid[:, :up]                    # rows i-up .. i-1
            h, valid_h = x[:, up:, :left + 1], valid[:, up:, :left + 1]  # row i, cols ..j
        for layer in self.layers:
            v, h, valid_v, valid_h = layer(v, h, valid_v, valid_h)
        h, _ = self.head_hidden(tf.nn.relu(h))
        logits, _ = self.head_out(tf.nn.relu(h))
        return logits


def make_prior(kind: str, num_embeddings: int, **kw) -> PixelCNN | GatedPixelCNN:
    """Build a prior: ``kind`` in {"pixelcnn", "gated"}; ``kw`` go to the constructor."""
    if kind == "pixelcnn":
        return PixelCNN(num_embeddings, **kw)
    if kind == "gated":
        return GatedPixelCNN(num_embeddings, **kw)
    raise ValueError(f"unknown prior kind {kind!r}; expected one of {PRIOR_KINDS}")


def receptive_field(model) -> ReceptiveField:
    """(up, left, right) of ``model`` -- the window the fast sampler evaluates."""
    return model.receptive_field


# --------------------------------------------------------------------------- #
# Training and evaluation
# --------------------------------------------------------------------------- #
def _cached(model, key, build: Callable):
    """Per-model cache of compiled functions (kept out of TF's object tracking,
    so it is invisible to checkpoints and ``tf.Module`` variable collection)."""
    per_model = model.__dict__.get("_compiled_cache")
    if per_model is None:
        per_model = {}
        object.__setattr__(model, "_compiled_cache", per_model)
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def _check_codes(name: str, codes, num_embeddings: int) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integer codes, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_embeddings:
        raise ValueError(f"{name} has values in [{lo}, {hi}], expected 0..{num_embeddings - 1}")
    return arr.astype(np.int32, copy=False)


def _nll_sum(model, codes):
    logits = model(codes)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=codes, logits=logits)
    return tf.reduce_sum(ce), tf.size(ce)


def _eval_fn(model):
    def build():
        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.int32)])
        def fn(codes):
            return _nll_sum(model, codes)
        return fn
    return _cached(model, "eval", build)


def nats_to_bits(nats: float) -> float:
    return float(nats) / math.log(2.0)


def evaluate_nll(model, codes: np.ndarray, batch_size: int = 32, *, bits: bool = False) -> float:
    """Mean negative log-likelihood per code of ``codes`` (N, H, W): nats (or bits)."""
    batch_size = _check_int("batch_size", batch_size, 1)
    arr = _check_codes("codes", codes, model.num_embeddings)
    fn = _eval_fn(model)
    total, count = 0.0, 0
    for start in range(0, len(arr), batch_size):
        s, n = fn(tf.constant(arr[start:start + batch_size]))
        total += float(s)
        count += int(n)
    nats = total / count
    return nats_to_bits(nats) if bits else nats


@dataclass
class TrainHistory:
    """Logged training curve: at each logged ``step`` the mean training loss
    (nats/code) since the previous log and the validation NLL (nats/code, NaN
    without validation data).  ``optimizer`` is the ``snt.optimizers.Adam`` used
    (pass it back to continue training or to checkpoint it)."""

    step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_nll: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    optimizer: object = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {k: list(getattr(self, k)) for k in ("step", "train_loss", "val_nll", "seconds")}


def train_prior(model, codes_train: np.ndarray, codes_val: np.ndarray | None, *,
                steps: int, batch_size: int, learning_rate: float = 1e-3, seed: int = 0,
                log_every: int = 50, callback: Callable[[dict], object] | None = None,
                progress: bool = True, optimizer: snt.Optimizer | None = None,
                val_batch_size: int | None = None) -> TrainHistory:
    """Maximum-likelihood training of a prior on code maps.

    Sparse softmax cross-entropy on the logits, Adam (``snt.optimizers.Adam``),
    a ``tf.function``-compiled step, ``tf.data`` input (shuffle/repeat/batch/
    prefetch, shuffling seeded with ``seed``).  Every ``log_every`` steps and at
    the last step a record ``{"step", "train_loss", "val_nll", "seconds"}`` is
    appended to the history and passed to ``callback``; if the callback returns
    True training stops early.  ``optimizer`` lets the caller continue training
    (``learning_rate`` is then ignored) and checkpoint with
    ``tf.train.Checkpoint(model=model, optimizer=history.optimizer)``.
    Returns a :class:`TrainHistory` (``as_dict()`` for a DataFrame).
    """
    from tqdm.auto import tqdm

    steps = _check_int("steps", steps, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    log_every = _check_int("log_every", log_every, 1)
    if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.number))
            or not (learning_rate > 0 and math.isfinite(learning_rate))):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    K = model.num_embeddings
    train = _check_codes("codes_train", codes_train, K)
    val = None if codes_val is None else _check_codes("codes_val", codes_val, K)
    opt = optimizer if optimizer is not None else snt.optimizers.Adam(learning_rate)

    ds = (tf.data.Dataset.from_tensor_slices(train)
          .shuffle(len(train), seed=seed, reshuffle_each_iteration=True)
          .repeat()
          .batch(batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))

    variables = model.trainable_variables

    @tf.function
    def train_step(batch):
        with tf.GradientTape() as tape:
            total, count = _nll_sum(model, batch)
            loss = total / tf.cast(count, tf.float32)
        grads = tape.gradient(loss, variables)
        opt.apply(grads, variables)
        return loss

    hist = TrainHistory(optimizer=opt)
    t0 = time.perf_counter()
    acc, n_acc = 0.0, 0
    bar = tqdm(total=steps, desc=f"prior[{model.kind}]", disable=not progress, leave=False)
    try:
        for step, batch in enumerate(ds, start=1):
            loss = float(train_step(batch))
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {step}")
            acc += loss
            n_acc += 1
            bar.update(1)
            if step % log_every == 0 or step == steps:
                vb = val_batch_size or max(batch_size, 8)
                val_nll = float("nan") if val is None else evaluate_nll(model, val, vb)
                rec = dict(step=step, train_loss=acc / n_acc, val_nll=val_nll,
                           seconds=time.perf_counter() - t0)
                for k in ("step", "train_loss", "val_nll", "seconds"):
                    getattr(hist, k).append(rec[k])
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", val=f"{val_nll:.3f}")
                acc, n_acc = 0.0, 0
                if callback is not None and callback(rec) is True:
                    break
            if step >= steps:
                break
    finally:
        bar.close()
    return hist


_WEIGHTS = "weights"
_CONFIG = "prior.json"


def save_prior(model, path: str | os.PathLike, step: int | None = None, generator_id: str | None = None) -> str:
    """Save weights (``tf.train.Checkpoint``) and ``model.config`` as directory ``path``, atomically.

    The files are written to ``<path>.tmp`` and the folder is then put in place of ``path``
    (:func:`dualsynth.io.replace_dir`), so a reader never sees a half-written prior; ``step`` (the training
    step of these weights) is recorded in ``step.json``, ``generator_id`` (``checkpoint_id`` of the VQ-VAE whose
    code maps trained it) in ``generator.json``.
    """
    import shutil

    from .io import atomic_write_json, recover_dir, replace_dir

    path = Path(path)
    recover_dir(path, complete=_complete_prior)  # finish a swap killed between its renames before tmp is reused
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tf.train.Checkpoint(model=model).write(str(tmp / _WEIGHTS))
    if step is not None:
        atomic_write_json(tmp / "step.json", {"step": int(step)})
    if generator_id is not None:
        atomic_write_json(tmp / "generator.json", {"generator_id": generator_id})
    atomic_write_json(tmp / _CONFIG, model.config)  # last: a folder with prior.json is complete
    replace_dir(tmp, path)
    return str(path / _WEIGHTS)


def _complete_prior(folder: Path) -> bool:
    return (Path(folder) / _CONFIG).is_file()  # save_prior writes prior.json last


def _saved_step(path: Path) -> int | None:
    from .io import read_json

    f = Path(path) / "step.json"
    return int(read_json(f)["step"]) if f.is_file() and _complete_prior(path) else None


def load_prior(path: str | os.PathLike):
    """Rebuild a prior saved by :func:`save_prior` (config + weights)."""
    from .io import read_json, recover_dir

    if not os.path.exists(path):  # only finish a swap killed between its renames; never touch a live folder
        recover_dir(path, complete=_complete_prior)
    path = os.fspath(path)
    cfg_file = os.path.join(path, _CONFIG)
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no prior saved in {path!r} ({_CONFIG} missing)")
    cfg = read_json(cfg_file)
    kind = cfg.pop("kind")
    num_embeddings = cfg.pop("num_embeddings")
    model = make_prior(kind, num_embeddings, **cfg)
    tf.train.Checkpoint(model=model).read(os.path.join(path, _WEIGHTS)).assert_consumed()
    model.saved_in = path
    gen = os.path.join(path, "generator.json")
    model.generator_id = read_json(gen)["generator_id"] if os.path.exists(gen) else None
    return model


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
def _base_seed(seed) -> tf.Tensor:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    s = int(seed) % (2**62)
    return tf.constant([s % (2**31), s // (2**31)], tf.int32)


def _gumbel(base_seed, i, j, num_total, start, batch: int, k: int):
    """Gumbel noise (batch, k) of position (i, j) for samples start .. start+batch-1.

    Seeded by ``fold_in(fold_in(seed, i), j)``; the noise of all ``num_total``
    samples is drawn and the rows of this chunk are used, so a sample does not
    depend on the batching.  Always run without XLA (XLA's stateless RNG gives
    other numbers); the XLA sampler gets a precomputed table (``_noise_table``).
    """
    key = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(base_seed, i), j)
    u = tf.random.stateless_uniform(tf.stack([num_total, k]), seed=key,
                                    minval=np.finfo(np.float32).tiny, maxval=1.0)
    g = -tf.math.log(-tf.math.log(u))
    g = tf.pad(g, [[0, batch], [0, 0]])  # the last chunk may run past num_total
    return tf.slice(g, tf.stack([start, 0]), [batch, k])


def _choose(logits, noise, temperature):
    """Gumbel-max: an exact draw from Categorical(logits / temperature)."""
    return tf.argmax(logits / temperature + noise, axis=-1, output_type=tf.int32)


_NOISE_FNS: dict = {}


def _noise_table(height: int, width: int, batch: int, k: int):
    """Compiled fn (seed, num_total, start) -> Gumbel noise (height*width, batch, k)."""
    key = (height, width, batch, k)
    if key not in _NOISE_FNS:
        @tf.function(input_signature=[tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.int32),
                                      tf.TensorSpec([], tf.int32)])
        def table(base_seed, num_total, start):
            out = tf.TensorArray(tf.float32, size=height * width, element_shape=[batch, k])
            for p in tf.range(height * width):
                out = out.write(p, _gumbel(base_seed, p // width, p % width, num_total, start,
                                           batch, k))
            return out.stack()
        _NOISE_FNS[key] = table
    return _NOISE_FNS[key]


def _check_sampling_args(model, num_samples, height, width, temperature, batch_size):
    num_samples = _check_int("num_samples", num_samples, 1)
    height = _check_int("height", height, 1)
    width = _check_int("width", width, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a number, got {temperature!r}") from None
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not isinstance(model, _PriorBase):
        raise TypeError(f"model must be a PixelCNN or GatedPixelCNN, got {type(model).__name__}")
    return num_samples, height, width, temperature, min(batch_size, num_samples)




def sample_naive(model, num_samples: int, height: int, width: int, *,
                 temperature: float = 1.0, seed: int = 0,
                 batch_size: int = DEFAULT_SAMPLE_BATCH, max_positions: int | None = None
                 ) -> np.ndarray:
    """Reference sampler: raster order, the WHOLE map through the model per position.

    Returns int32 codes (num_samples, height, width).  ``max_positions`` stops
    after that many raster positions (the rest stays 0) -- for benchmarking only.
    """
    num_samples, height, width, temperature, batch_size = _check_sampling_args(
        model, num_samples, height, width, temperature, batch_size)
    n_pos = height * width if max_positions is None else min(
        _check_int("max_positions", max_positions, 1), height * width)

    def build():
        @tf.function(input_signature=[
            tf.TensorSpec([batch_size, height, width], tf.int32),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),     # i, j
            tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32),  # seed, temperature
            tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])    # num_total, start
        def step(codes, i, j, base_seed, temp, num_total, start):
            logits = model(codes)[:, i, j]
            noise = _gumbel(base_seed, i, j, num_total, start, batch_size, model.num_embeddings)
            return _choose(logits, noise, temp)
        return step

    step = _cached(model, f"naive-{height}x{width}-b{batch_size}", build)
    base = _base_seed(seed)
    temp = tf.constant(temperature, tf.float32)
    total = tf.constant(num_samples, tf.int32)
    out = np.zeros((num_samples, height, width), np.int32)
    for start in range(0, num_samples, batch_size):
        codes = np.zeros((batch_size, height, width), np.int32)
        st = tf.constant(start, tf.int32)
        for p in range(n_pos):
            i, j = divmod(p, width)
            codes[:, i, j] = step(tf.constant(codes), tf.constant(i), tf.constant(j),
                                  base, temp, total, st).numpy()
        stop = min(start + batch_size, num_samples)
        out[start:stop] = codes[:stop - start]
    return out


# Fast sampling engines.  An engine keeps a tuple of state tensors and offers
#   init() -> state,  logits(state, i, j) -> (logits (B, K), state),
#   commit(state, j, code) -> state,  end_row(state) -> state.
# The raster loop around it is generic (see _graph_sampler / _python_sampler).


def _put_column(row, col, value):
    """``row`` (B, w, C) is zero at column ``col``; return it with ``value`` (B, C) there."""
    onehot = tf.one_hot(col, tf.shape(row)[1], dtype=row.dtype)
    return row + onehot[None, :, None] * value[:, None, :]


class _WindowEngine:
    """Window trick: one-hot the receptive window around (i, j) of the partially
    sampled map and run the network on it with VALID convs (1x1 output)."""

    def __init__(self, model, batch, height, width):
        self.m, self.b, self.h, self.w = model, batch, height, width
        self.rf = model.receptive_field
        self.ww = self.rf.left + self.rf.right + 1
        self.wp = width + self.rf.left + self.rf.right

    def init(self):
        # codes of the `up` rows above and of the current row, -1 = nothing (pad)
        return (tf.fill([self.b, self.rf.up, self.wp], -1), tf.fill([self.b, self.wp], -1))

    def logits(self, state, i, j):
        hist, cur = state
        rf, ww = self.rf, self.ww
        above = tf.slice(hist, tf.stack([0, 0, j]), [self.b, rf.up, ww])
        row = tf.slice(cur, tf.stack([0, j]), [self.b, ww])
        win = tf.concat([above, row[:, None, :]], axis=1)
        x = tf.one_hot(win, self.m.num_embeddings, dtype=tf.float32)  # -1 -> zeros
        rows_ok = tf.range(rf.up + 1) + (i - rf.up) >= 0
        cols = tf.range(ww) + (j - rf.left)
        cols_ok = (cols >= 0) & (cols < self.w)
        valid = tf.cast(rows_ok[:, None] & cols_ok[None, :], tf.float32)[None, :, :, None]
        return self.m.window_logits(x, valid), state

    def commit(self, state, j, code):
        hist, cur = state
        onehot = tf.one_hot(self.rf.left + j, self.wp, dtype=tf.int32)
        return hist, cur + onehot[None, :] * (code + 1)[:, None]

    def end_row(self, state):
        hist, cur = state
        return tf.concat([hist[:, 1:], cur[:, None, :]], axis=1), tf.fill([self.b, self.wp], -1)


def _row_patch(cur, j, width, channels, batch):
    """Flattened (B, width*C) slice of the current row ``cur`` at columns j..j+width-1."""
    return tf.reshape(tf.slice(cur, tf.stack([0, j, 0]), [batch, width, channels]),
                      [batch, width * channels])


class _PlainCachedEngine:
    """Incremental sampler for :class:`PixelCNN`.

    A masked conv splits into the rows above (final once the row starts) and the
    centre row.  For every masked conv the engine caches its input on the
    ``k//2`` rows above and on the current row (zero where nothing is known yet,
    which is also the zero padding of the full model).  At the start of each row
    the rows-above part of every masked conv is computed for the whole row (one
    small VALID conv); at (i, j) each layer is then evaluated at (i, j) only:
    rows-above part + centre-row patch x centre-row kernel; the 1x1 layers are
    pointwise.  Cost per position ~ cost of the full model at ONE position.
    """

    def __init__(self, model, batch, height, width):
        self.m, self.b, self.w = model, batch, width
        self.convs = [model.conv_in] + [blk.conv for blk in model.blocks]
        self.ks = [model.first_kernel_size] + [model.kernel_size] * len(model.blocks)
        # centre-row kernels: columns 0..c-1 (type A) or 0..c (type B) of the last row
        self.ncols = [self.ks[0] // 2] + [k // 2 + 1 for k in self.ks[1:]]

    def _above_part(self, conv, above):
        """Rows-above contribution (+ bias) of ``conv`` for every column: (B, W, out)."""
        w = conv.kernel()[:-1]
        y = tf.nn.bias_add(tf.nn.conv2d(above, w, 1, "VALID"), conv.b)
        return tf.reshape(y, [self.b, self.w, w.shape[-1]])

    def _centre(self, n, cur, j):
        conv, nc = self.convs[n], self.ncols[n]
        w = conv.kernel()[-1, :nc]                                   # (nc, in, out)
        patch = _row_patch(cur, j, nc, w.shape[1], self.b)
        return tf.matmul(patch, tf.reshape(w, [-1, w.shape[-1]]))

    def init(self):
        state = []
        for conv, k in zip(self.convs, self.ks):
            c, cin = k // 2, conv.w.shape[2]
            above = tf.zeros([self.b, c, self.w + 2 * c, cin])
            state += [above, tf.zeros([self.b, self.w + 2 * c, cin]), self._above_part(conv, above)]
        return tuple(state)

    def logits(self, state, i, j):
        m, state = self.m, list(state)

        def conv_at(n):
            above_part = tf.reshape(tf.slice(state[3 * n + 2], tf.stack([0, j, 0]),
                                             [self.b, 1, -1]), [self.b, -1])
            return above_part + self._centre(n, state[3 * n + 1], j)

        h = conv_at(0)
        for n, block in enumerate(m.blocks, start=1):
            t = tf.nn.relu(block.reduce.dense(tf.nn.relu(h)))
            state[3 * n + 1] = _put_column(state[3 * n + 1], self.ks[n] // 2 + j, t)
            h = h + block.expand.dense(tf.nn.relu(conv_at(n)))
        h = m.head_hidden.dense(tf.nn.relu(h))
        return m.head_out.dense(tf.nn.relu(h)), tuple(state)

    def commit(self, state, j, code):
        x = tf.one_hot(code, self.m.num_embeddings, dtype=tf.float32)
        return (state[0], _put_column(state[1], self.ks[0] // 2 + j, x)) + tuple(state[2:])

    def end_row(self, state):
        out = []
        for n, conv in enumerate(self.convs):
            above, cur = state[3 * n], state[3 * n + 1]
            above = tf.concat([above[:, 1:], cur[:, None]], axis=1)
            out += [above, tf.zeros_like(cur), self._above_part(conv, above)]
        return tuple(out)


class _GatedCachedEngine:
    """Incremental sampler for :class:`GatedPixelCNN`.

    The vertical stack at row r needs the whole row r, so it is computed once per
    row, at the end of the row (one row of every vertical conv, from cached rows
    above); its link into the horizontal stack is stored for the next row.  The
    horizontal stack is evaluated at (i, j) only, from a cache of its current row.
    """

    def __init__(self, model, batch, height, width):
        self.m, self.b, self.w = model, batch, width
        self.ks = [layer.v_conv.w.shape[1] for layer in model.layers]
        self.cins = [layer.v_conv.w.shape[2] for layer in model.layers]
        self.C2 = 2 * model.hidden_channels
        self.L = len(model.layers)

    def init(self):
        b, w = self.b, self.w
        hcur = [tf.zeros([b, w + k // 2, ci]) for k, ci in zip(self.ks, self.cins)]
        vrows = [tf.zeros([b, k // 2 + 1, w + 2 * (k // 2), ci])
                 for k, ci in zip(self.ks, self.cins)]
        links = [tf.zeros([b, w, self.C2]) for _ in self.ks]
        return tuple(hcur + vrows + links)

    def logits(self, state, i, j):
        L, state = self.L, list(state)
        h = None
        for n, layer in enumerate(self.m.layers):
            k, ci = self.ks[n], self.cins[n]
            if n > 0:
                state[n] = _put_column(state[n], k // 2 + j, h)
            patch = tf.reshape(tf.slice(state[n], tf.stack([0, j, 0]), [self.b, k // 2 + 1, ci]),
                               [self.b, (k // 2 + 1) * ci])
            link = tf.reshape(tf.slice(state[2 * L + n], tf.stack([0, j, 0]), [self.b, 1, self.C2]),
                              [self.b, self.C2])
            out = layer.h_out.dense(_gate(layer.h_conv.dense(patch) + link))
            h = out if n == 0 else h + out
        h = self.m.head_hidden.dense(tf.nn.relu(h))
        return self.m.head_out.dense(tf.nn.relu(h)), tuple(state)

    def commit(self, state, j, code):
        x = tf.one_hot(code, self.m.num_embeddings, dtype=tf.float32)
        return (_put_column(state[0], self.ks[0] // 2 + j, x),) + tuple(state[1:])

    def end_row(self, state):
        L, b, w = self.L, self.b, self.w
        hcur, vrows = state[:L], list(state[L:2 * L])
        links = []
        row = hcur[0][:, self.ks[0] // 2:]              # one-hot codes of the finished row
        for n, layer in enumerate(self.m.layers):
            c = self.ks[n] // 2
            padded = tf.pad(row, [[0, 0], [c, c], [0, 0]])
            vrows[n] = tf.concat([vrows[n][:, 1:], padded[:, None]], axis=1)
            v_pre = tf.nn.bias_add(
                tf.nn.conv2d(vrows[n], layer.v_conv.kernel(), 1, "VALID"), layer.v_conv.b)
            v_pre = tf.reshape(v_pre, [b, w, self.C2])          # row i of the vertical conv
            links.append(tf.reshape(
                layer.link.dense(tf.reshape(v_pre, [b * w, self.C2])), [b, w, self.C2]))
            if n + 1 < L:
                row = _gate(v_pre)
        return tuple(tf.zeros_like(x) for x in hcur) + tuple(vrows) + tuple(links)


_ENGINES = {
    ("window", "pixelcnn"): _WindowEngine,
    ("window", "gated"): _WindowEngine,
    ("cached", "pixelcnn"): _PlainCachedEngine,
    ("cached", "gated"): _GatedCachedEngine,
}


def _graph_sampler(engine, height, width, batch, jit_compile):
    """Whole raster loop in one tf.function (nested tf.while_loop)."""
    k = engine.m.num_embeddings

    @tf.function(input_signature=[tf.TensorSpec([height * width, batch, k], tf.float32),
                                  tf.TensorSpec([], tf.float32)], jit_compile=jit_compile)
    def run(noise, temp):
        state = engine.init()
        rows = tf.TensorArray(tf.int32, size=height, element_shape=[batch, width])
        for i in tf.range(height):
            codes = tf.zeros([batch, width], tf.int32)
            for j in tf.range(width):
                logits, state = engine.logits(state, i, j)
                code = _choose(logits, noise[i * width + j], temp)
                state = engine.commit(state, j, code)
                codes = codes + tf.one_hot(j, width, dtype=tf.int32)[None, :] * code[:, None]
            rows = rows.write(i, codes)
            state = engine.end_row(state)
        return tf.transpose(rows.stack(), [1, 0, 2])

    return run


def _python_sampler(engine, height, width, batch, jit_compile):
    """Python raster loop over one compiled per-position step."""

    @tf.function(jit_compile=jit_compile)
    def step(state, i, j, noise, temp):
        logits, state = engine.logits(state, i, j)
        code = _choose(logits, noise, temp)
        return engine.commit(state, j, code), code

    end_row = tf.function(engine.end_row, jit_compile=jit_compile)

    def run(noise, temp):
        state = engine.init()
        out = np.zeros((batch, height, width), np.int32)
        for i in range(height):
            ti = tf.constant(i)
            for j in range(width):
                state, code = step(state, ti, tf.constant(j), noise[i * width + j], temp)
                out[:, i, j] = code.numpy()
            state = end_row(state)
        return out

    return run


FAST_METHODS = ("cached", "window")


def sample_fast(model, num_samples: int, height: int, width: int, *,
                temperature: float = 1.0, seed: int = 0,
                batch_size: int = DEFAULT_SAMPLE_BATCH, method: str = "cached",
                loop: str = "graph", jit_compile: bool = True) -> np.ndarray:
    """Fast exact sampler: same codes as :func:`sample_naive` for the same seed.

    ``method="cached"`` (default): each masked conv keeps the rows of its input
    that it covers (rows above: final; current row: filled up to the current
    position), so at (i, j) every layer is evaluated at (i, j) only, from its
    (k//2+1) x k patch; the rows-above part of the plain model's convs and the
    vertical stack of the gated model (which sees whole rows) are computed once
    per finished row.  Cost per position ~ the full model at ONE position.

    ``method="window"``: the window trick -- per position only the receptive
    window (``model.receptive_field``) of the partially sampled map is one-hot
    encoded and run through the network with VALID convolutions (1x1 output);
    cost ~ (window area) x (layers) per position.

    ``loop="graph"`` compiles the whole raster loop into one ``tf.function``
    (nested ``tf.while_loop``); ``loop="python"`` loops in Python over one
    compiled per-position step (slower; kept for comparison).
    ``jit_compile=True`` (default) compiles with XLA (3-5x faster on CPU here);
    if XLA compilation fails the sampler falls back to the plain graph with a
    warning.  The Gumbel noise is drawn outside XLA (``_noise_table``) so both
    give the same codes.  Compiled functions are cached per model and
    (method, loop, jit, height, width, batch); the first call per shape traces
    and compiles (a few seconds).  Returns int32 codes (num_samples, height, width).
    """
    num_samples, height, width, temperature, batch_size = _check_sampling_args(
        model, num_samples, height, width, temperature, batch_size)
    if method not in FAST_METHODS:
        raise ValueError(f"method must be one of {FAST_METHODS}, got {method!r}")
    if loop not in ("graph", "python"):
        raise ValueError(f"loop must be 'graph' or 'python', got {loop!r}")
    jit_compile = bool(jit_compile)

    def get_runner(jit):
        def build():
            engine = _ENGINES[(method, model.kind)](model, batch_size, height, width)
            maker = _graph_sampler if loop == "graph" else _python_sampler
            return maker(engine, height, width, batch_size, jit)
        key = f"fast-{method}-{loop}-jit{int(jit)}-{height}x{width}-b{batch_size}"
        return _cached(model, key, build)

    run = get_runner(jit_compile)
    base = _base_seed(seed)
    temp = tf.constant(temperature, tf.float32)
    total = tf.constant(num_samples, tf.int32)
    out = np.zeros((num_samples, height, width), np.int32)
    table = _noise_table(height, width, batch_size, model.num_embeddings)
    for start in range(0, num_samples, batch_size):
        noise = table(base, total, tf.constant(start, tf.int32))
        try:
            codes = np.asarray(run(noise, temp))
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError,
                tf.errors.InternalError) as err:
            if not jit_compile:
                raise
            warnings.warn(f"XLA compilation of the sampler failed ({type(err).__name__}); "
                          "falling back to jit_compile=False", RuntimeWarning, stacklevel=2)
            jit_compile = False
            run = get_runner(False)
            codes = np.asarray(run(noise, temp))
        stop = min(start + batch_size, num_samples)
        out[start:stop] = codes[:stop - start]
    return out


# --------------------------------------------------------------------------- #
# Checkpointed, resumable training with the best model kept
# --------------------------------------------------------------------------- #
def fit_prior(model, codes_train: np.ndarray, codes_val: np.ndarray, checkpoint_dir: str | os.PathLike, *,
              steps: int, batch_size: int, learning_rate: float = 1e-3, seed: int = 0, eval_every: int = 50,
              patience: int = 0, progress: bool = True) -> dict:
    """:func:`train_prior` with checkpoints: resumable, keeps the model with the lowest validation NLL.

    ``checkpoint_dir/last/`` holds model + optimizer + step (saved at every evaluation); ``best/`` the prior with
    the lowest validation NLL (:func:`save_prior` format); ``history.csv`` one row per evaluation.  Calling again
    with the same folder continues from ``last/`` up to ``steps`` in total (an interrupted and resumed run
    reaches the same number of steps as an uninterrupted one).  ``patience`` > 0 stops when the validation NLL
    has not improved for that many evaluations (small code-map sets overfit quickly).

    Returns ``{"history": rows, "best_step", "best_val_nll", "final_step", "stopped_early"}``; ``model`` ends
    with the BEST weights.
    """
    from .io import fingerprint, guard_inputs, read_json, read_rows_csv, recover_dir, write_rows_csv

    ckpt_dir = Path(checkpoint_dir)
    (ckpt_dir / "last").mkdir(parents=True, exist_ok=True)
    recover_dir(ckpt_dir / "best", complete=_complete_prior)  # a kill between the two renames of the best-folder swap
    opt = snt.optimizers.Adam(learning_rate)
    step_var = tf.Variable(0, dtype=tf.int64)
    # create the optimizer's slots before restoring so they are restored too
    model(tf.zeros((1, 2, 2), tf.int32))
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / "last"), max_to_keep=1)
    hist_path = ckpt_dir / "history.csv"
    columns = ("step", "train_loss", "val_nll", "seconds")
    guard_inputs(ckpt_dir, fingerprint(np.asarray(codes_train), np.asarray(codes_val)), "prior checkpoint",
                 resuming=manager.latest_checkpoint is not None)
    rows: list[dict] = []
    if manager.latest_checkpoint:
        saved = read_json(ckpt_dir / "best" / _CONFIG) if (ckpt_dir / "best" / _CONFIG).exists() else None
        arch = {k: v for k, v in json.loads(json.dumps(model.config)).items() if k != "seed"}
        if saved is not None and {k: v for k, v in saved.items() if k != "seed"} != arch:
            raise ValueError(f"{ckpt_dir} holds a prior with config {saved}, not {model.config}; delete {ckpt_dir} "
                             "or pass a new experiment name")
        ckpt.restore(manager.latest_checkpoint)
        if hist_path.exists():  # written before 'last' (the commit point): rows after it are dropped
            rows = [r for r in read_rows_csv(hist_path, columns, int_columns=("step",))
                    if r["step"] <= int(step_var.numpy())]
    done = int(step_var.numpy())
    best = min(rows, key=lambda r: r["val_nll"]) if rows else None
    since_best = 0 if best is None else sum(1 for r in rows if r["step"] > best["step"])
    stopped = bool(patience and since_best >= patience)

    def save_best(step: int) -> None:
        save_prior(model, ckpt_dir / "best", step=step)

    # killed after committing the best step but before the best folder was replaced: the restored weights
    # ('last', the same step) are the best ones
    if best is not None and best["step"] == done and _saved_step(ckpt_dir / "best") != done:
        save_best(done)

    def on_eval(rec: dict) -> bool:
        nonlocal best, since_best, stopped
        row = {"step": done + rec["step"], "train_loss": rec["train_loss"], "val_nll": rec["val_nll"],
               "seconds": rec["seconds"]}
        rows.append(row)
        improved = best is None or row["val_nll"] < best["val_nll"]
        if improved:
            best, since_best = row, 0
        else:
            since_best += 1
        # order: history -> last (commit point) -> best; a resume repairs each kill point in between
        write_rows_csv(hist_path, columns, rows, int_columns=("step",))
        step_var.assign(row["step"])
        manager.save()
        if improved:
            save_best(row["step"])
        if patience and since_best >= patience:
            stopped = True
            return True
        return False

    if done < steps and not stopped:
        try:
            train_prior(model, codes_train, codes_val, steps=steps - done, batch_size=batch_size,
                        learning_rate=learning_rate, seed=seed + done, log_every=eval_every, callback=on_eval,
                        progress=progress, optimizer=opt)
        except FloatingPointError as e:
            raise FloatingPointError(
                f"{e} (counted from step {done}); training stopped. The last good checkpoint in {ckpt_dir / 'last'} "
                f"(step {int(step_var.numpy())}) and the best prior in {ckpt_dir / 'best'} are kept; "
                "lower learning_rate and run again") from e
    best_model = load_prior(ckpt_dir / "best")
    for v_best, v in zip(best_model.variables, model.variables):
        v.assign(v_best)
    return {"history": rows, "best_step": int(best["step"]) if best else None,
            "best_val_nll": float(best["val_nll"]) if best else None, "final_step": int(step_var.numpy()),
            "stopped_early": stopped}
