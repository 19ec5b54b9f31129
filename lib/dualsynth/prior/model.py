"""PixelCNN prior models over maps of discrete VQ-VAE codes.

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

Depth: both take ``num_layers`` (residual blocks of the plain net, gated layers
of the gated one), and ``config`` records it under that name.  The plain net's older
keyword ``num_blocks`` is a deprecated alias (a ``DeprecationWarning``); a
``prior.json`` written with it loads as before (:func:`current_config`).

Global conditioning (gated only, ``num_conditions = C > 0``): the model takes a
vector ``h`` of shape (B, C) per code map -- here the class fractions of the
map's mask -- and every gate, in both stacks, gets a learned linear projection
of it (no spatial extent, no bias): ``tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h)``,
with its own ``V`` per layer and stack.  The 1x1 link from the vertical to the
horizontal stack takes the vertical pre-activation *without* ``V h`` (the
horizontal gate adds its own).  ``model(codes, condition=h)``; ``condition`` is
required iff ``num_conditions > 0``.  With ``num_conditions = 0`` the model is
exactly the unconditioned one (same variables and initial values).

Masked convolutions are *causal* convolutions (kernel ``(k//2 + 1, k)``, only
rows above plus the masked centre row), see :mod:`dualsynth.prior.layers`.
``window_logits`` evaluates the logits at one position from its receptive window
with VALID convolutions (the "window trick" of :mod:`dualsynth.prior.sampling`).

Import ``dualsynth`` before TensorFlow (it sets ``TF_USE_LEGACY_KERAS=1``).
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import sonnet as snt
import tensorflow as tf

from .conditioning import check_condition
from .layers import _check_int, _check_odd_kernel, _Conv, _GatedLayer, _masked_kernel, _ResidualBlock, _Seeds

__all__ = [
    "DEFAULT_PLAIN",
    "DEFAULT_GATED",
    "PRIOR_KINDS",
    "ReceptiveField",
    "PixelCNN",
    "GatedPixelCNN",
    "make_prior",
    "receptive_field",
    "current_config",
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
DEFAULT_PLAIN_LAYERS = 8
DEFAULT_PLAIN_BLOCKS = DEFAULT_PLAIN_LAYERS  # the older name
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
    num_layers=DEFAULT_PLAIN_LAYERS,
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


class ReceptiveField(NamedTuple):
    """Input window that determines the logits at (i, j).

    Rows ``i-up .. i`` and columns ``j-left .. j+right`` (in the current row only
    columns ``< j`` actually matter).
    """

    up: int
    left: int
    right: int


#: the plain prior's depth under its older name (constructor keyword, ``prior.json`` key)
_OLD_DEPTH_KEY = "num_blocks"
#: frames of these packages are skipped when a deprecation warning names the caller's line
_WRAPPER_MODULES = ("dualsynth.prior", "dualsynth.pixelcnn", "sonnet", "tensorflow")


def _warn_old_depth_name(what: str) -> None:
    """A DeprecationWarning for ``num_blocks``, attributed to the first caller outside the prior package, Sonnet
    and TensorFlow (so a notebook or script calling ``make_prior``/``PixelCNN`` sees it as its own line)."""
    level, frame = 3, sys._getframe(2)  # 1: this function, 2: its caller (the constructor), 3: whoever called that
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_WRAPPER_MODULES):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{what} num_blocks is deprecated: the depth of both priors is num_layers", DeprecationWarning,
                  stacklevel=level)


def current_config(config: Mapping[str, Any]) -> dict:
    """A prior's config (``prior.json``) with today's key names: ``num_blocks`` (the plain prior's depth, as
    configs written before ``num_layers`` was its one name hold it) becomes ``num_layers``, silently — a saved
    folder is not the reader's to fix."""
    out = dict(config)
    if _OLD_DEPTH_KEY in out:
        old = out.pop(_OLD_DEPTH_KEY)
        if out.setdefault("num_layers", old) != old:
            raise ValueError(f"prior config names two depths: num_blocks={old}, num_layers={out['num_layers']}")
    return out


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


class _PriorBase(snt.Module):
    """Common interface: ``__call__(codes, condition=None) -> logits``, ``window_logits``, config.

    ``num_conditions``: length C of the global conditioning vector (0: none).
    """

    kind: str = ""
    num_conditions: int = 0
    _TF_MODULE_IGNORED_PROPERTIES = snt.Module._TF_MODULE_IGNORED_PROPERTIES | frozenset(
        {"_compiled_cache"})

    def __init__(self, num_embeddings: int, name=None):
        super().__init__(name=name)
        self.num_embeddings = _check_int("num_embeddings", num_embeddings, 2)

    # subclasses implement _forward(x_onehot, valid, condition) and receptive_field
    def _forward(self, x, valid=None, condition=None):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def receptive_field(self) -> ReceptiveField:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _condition(self, condition, batch):
        """``condition`` as a float32 tensor (B, C) (None for an unconditioned prior), checked.

        Shapes are always checked; values (finite, >= 0) only when they are known
        (eager execution) -- the numpy entry points check them before tracing.
        """
        C = self.num_conditions
        if C == 0 or condition is None:
            if (C == 0) != (condition is None):
                check_condition(condition, C)  # raises the error that names the problem
            return None
        if not tf.is_tensor(condition) or tf.executing_eagerly():
            check_condition(np.asarray(condition), C)
        cond = tf.cast(tf.convert_to_tensor(condition), tf.float32)
        if cond.shape.rank != 2 or cond.shape[1] != C:
            raise ValueError(f"condition must have shape (B, {C}) (num_conditions={C}), got {cond.shape}")
        if cond.shape[0] is not None and batch is not None and cond.shape[0] != batch:
            raise ValueError(f"condition has {cond.shape[0]} rows but the batch has {batch} code maps")
        return cond

    def __call__(self, codes, condition=None):
        """Logits (B, H, W, K) for integer code maps (B, H, W).

        ``condition``: (B, C) float, required iff ``num_conditions`` = C > 0.
        """
        codes = tf.convert_to_tensor(codes)
        if codes.shape.rank != 3:
            raise ValueError(f"codes must have shape (B, H, W), got {codes.shape}")
        if not codes.dtype.is_integer:
            raise TypeError(f"codes must be integers, got {codes.dtype}")
        cond = self._condition(condition, codes.shape[0])
        x = tf.one_hot(tf.cast(codes, tf.int32), self.num_embeddings, dtype=tf.float32)
        return self._forward(x, None, cond)

    def window_logits(self, window, valid, condition=None):
        """Logits (B, K) at the bottom-centre position of an input window.

        ``window``: one-hot codes (B, up+1, left+right+1, K) covering rows
        ``i-up .. i`` and columns ``j-left .. j+right`` of the code map (zeros
        outside the map and at not-yet-sampled positions); ``valid``: float 0/1
        mask (1, up+1, left+right+1, 1), 1 inside the code map; ``condition``
        as in ``__call__``.  Equal to ``self(codes, condition)[:, i, j]``
        (window trick, see the module docstring).
        """
        rf = self.receptive_field
        expected = (rf.up + 1, rf.left + rf.right + 1)
        if tuple(window.shape[1:3]) != expected:
            raise ValueError(f"window must be {expected} spatially, got {window.shape}")
        cond = self._condition(condition, window.shape[0])
        logits = self._forward(window, valid, cond)
        return tf.reshape(logits, [-1, self.num_embeddings])


class PixelCNN(_PriorBase):
    """Plain PixelCNN prior (masked type-A conv, residual type-B blocks, 1x1 head).

    Args:
      num_embeddings: number of codes K.
      hidden_channels: channels of the residual stream (the blocks use half).
      num_layers: residual blocks, each with one ``kernel_size`` masked conv
        (default ``DEFAULT_PLAIN_LAYERS``); the name :class:`GatedPixelCNN` uses.
      first_kernel_size: odd size of the first (type-A) masked conv.
      kernel_size: odd size of the masked convs in the blocks (type B).
      seed: seed of the (stateless) weight initialisation.
      num_blocks: deprecated alias of ``num_layers`` (warns).
      num_conditions: must be 0 -- the plain PixelCNN takes no condition (use
        ``kind="gated"``).

    Has the blind spot of masked-conv stacks (see module docstring): the
    input at (i-1, j + first_kernel_size//2 + 1) never influences (i, j).
    """

    kind = "pixelcnn"

    def __init__(self, num_embeddings: int, hidden_channels: int = DEFAULT_PLAIN_HIDDEN,
                 num_layers: int | None = None,
                 first_kernel_size: int = DEFAULT_FIRST_KERNEL,
                 kernel_size: int = DEFAULT_KERNEL, seed: int = 0, name: str | None = None, *,
                 num_blocks: int | None = None, num_conditions: int = 0):
        super().__init__(num_embeddings, name=name)
        if _check_int("num_conditions", num_conditions, 0) != 0:
            raise ValueError(f"num_conditions={num_conditions}: the plain PixelCNN takes no condition; "
                             "use kind='gated' (GatedPixelCNN) for a conditioned prior")
        if num_blocks is not None:
            _warn_old_depth_name("PixelCNN(num_blocks=...):")
            if num_layers is not None and num_blocks != num_layers:
                raise ValueError(f"num_blocks={num_blocks} and num_layers={num_layers} name the same depth; "
                                 "give num_layers only")
        depth = num_layers if num_layers is not None else num_blocks
        self.hidden_channels = _check_int("hidden_channels", hidden_channels, 2)
        self.num_layers = _check_int("num_layers" if num_layers is not None or num_blocks is None else "num_blocks",
                                     DEFAULT_PLAIN_LAYERS if depth is None else depth, 0)
        self.first_kernel_size = _check_odd_kernel("first_kernel_size", first_kernel_size)
        self.kernel_size = _check_odd_kernel("kernel_size", kernel_size)
        self.seed = int(seed)
        seeds = _Seeds(seed)
        k0, c0 = self.first_kernel_size, self.first_kernel_size // 2
        K, C = self.num_embeddings, self.hidden_channels
        self.conv_in = _Conv(K, C, (c0 + 1, k0), (c0, c0, c0),
                             mask=_masked_kernel(k0, "A"), seed=seeds(), name="masked_a")
        self.blocks = [_ResidualBlock(C, self.kernel_size, seeds, name=f"block_{b}")
                       for b in range(self.num_layers)]
        self.head_hidden = _Conv(C, C, (1, 1), (0, 0, 0), seed=seeds(), name="head_hidden")
        self.head_out = _Conv(C, K, (1, 1), (0, 0, 0), seed=seeds(), name="head_out")

    @property
    def receptive_field(self) -> ReceptiveField:
        r = self.first_kernel_size // 2 + self.num_layers * (self.kernel_size // 2)
        return ReceptiveField(up=r, left=r, right=r)

    @property
    def num_blocks(self) -> int:
        """Deprecated: the depth, :attr:`num_layers` (warns)."""
        _warn_old_depth_name("PixelCNN.num_blocks:")
        return self.num_layers

    @property
    def config(self) -> dict:
        return dict(kind=self.kind, num_embeddings=self.num_embeddings,
                    hidden_channels=self.hidden_channels, num_layers=self.num_layers,
                    first_kernel_size=self.first_kernel_size,
                    kernel_size=self.kernel_size, seed=self.seed)

    def _forward(self, x, valid=None, condition=None):
        h, valid = self.conv_in(x, valid)
        for block in self.blocks:
            h, valid = block(h, valid)
        h, _ = self.head_hidden(tf.nn.relu(h))
        logits, _ = self.head_out(tf.nn.relu(h))
        return logits


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
      num_conditions: length C of the global conditioning vector (0: an
        unconditioned prior).  With C > 0 ``model(codes, condition=h)`` needs
        ``h`` (B, C) (e.g. the class fractions of each map); every gate of both
        stacks adds its own linear projection of ``h`` (see module docstring).
    """

    kind = "gated"

    def __init__(self, num_embeddings: int, hidden_channels: int = DEFAULT_GATED_HIDDEN,
                 num_layers: int = DEFAULT_GATED_LAYERS,
                 first_kernel_size: int = DEFAULT_FIRST_KERNEL,
                 kernel_size: int = DEFAULT_KERNEL, seed: int = 0, name: str | None = None, *,
                 num_conditions: int = 0):
        super().__init__(num_embeddings, name=name)
        self.hidden_channels = _check_int("hidden_channels", hidden_channels, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.first_kernel_size = _check_odd_kernel("first_kernel_size", first_kernel_size)
        self.kernel_size = _check_odd_kernel("kernel_size", kernel_size)
        self.num_conditions = _check_int("num_conditions", num_conditions, 0)
        self.seed = int(seed)
        seeds = _Seeds(seed)
        cond_seeds = _Seeds(seed, offset=1_000_000)  # own stream: the other layers start as without a condition
        K, C = self.num_embeddings, self.hidden_channels
        self.layers = [
            _GatedLayer(K if n == 0 else C, C,
                        self.first_kernel_size if n == 0 else self.kernel_size,
                        first=(n == 0), seeds=seeds, name=f"gated_{n}",
                        num_conditions=self.num_conditions, cond_seeds=cond_seeds)
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
                    kernel_size=self.kernel_size, seed=self.seed,
                    num_conditions=self.num_conditions)

    def _forward(self, x, valid=None, condition=None):
        if valid is None:
            v = h = x
            valid_v = valid_h = None
        else:
            up, left = self.receptive_field.up, self.receptive_field.left
            v, valid_v = x[:, :up], valid[:, :up]                    # rows i-up .. i-1
            h, valid_h = x[:, up:, :left + 1], valid[:, up:, :left + 1]  # row i, cols ..j
        for layer in self.layers:
            v, h, valid_v, valid_h = layer(v, h, valid_v, valid_h, condition)
        h, _ = self.head_hidden(tf.nn.relu(h))
        logits, _ = self.head_out(tf.nn.relu(h))
        return logits


def make_prior(kind: str, num_embeddings: int, **kw) -> PixelCNN | GatedPixelCNN:
    """Build a prior: ``kind`` in {"pixelcnn", "gated"}; ``kw`` go to the constructor.

    ``num_layers`` sets the depth of either kind; ``num_conditions`` > 0 needs ``kind="gated"``.
    """
    if kind == "pixelcnn":
        return PixelCNN(num_embeddings, **kw)
    if kind == "gated":
        return GatedPixelCNN(num_embeddings, **kw)
    raise ValueError(f"unknown prior kind {kind!r}; expected one of {PRIOR_KINDS}")


def receptive_field(model) -> ReceptiveField:
    """(up, left, right) of ``model`` -- the window the fast sampler evaluates."""
    return model.receptive_field

