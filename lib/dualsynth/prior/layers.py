"""Building blocks of the PixelCNN priors: causal (masked) convolutions, residual and gated layers.

Masked convolutions are implemented as *causal* convolutions: the kernel only
has the rows above plus the centre row, shape ``(k//2 + 1, k)``, and the centre
row is masked to the columns ``< centre`` (type A) or ``<= centre`` (type B).
The feature map is zero-padded ``k//2`` rows on top and ``k//2`` columns
left/right, then convolved with padding VALID.  This is exactly the standard
``k x k`` masked convolution (the masked-out lower half is never computed).

Every layer also runs in *window mode* (``valid`` given): no padding, the input
is multiplied with a 0/1 validity mask instead and the output shrinks -- the
window trick of :mod:`dualsynth.prior.sampling`.  The models are in
:mod:`dualsynth.prior.model`.
"""
from __future__ import annotations

import math

import numpy as np
import sonnet as snt
import tensorflow as tf

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
    """Deterministic per-layer initialisation seeds derived from one int.

    ``offset`` starts a separate stream (the conditioning projections use one, so
    adding them does not change the initial values of the other layers).
    """

    def __init__(self, seed: int, offset: int = 0):
        self._seed = int(seed) % (2**31 - 1)
        self._n = int(offset)

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


def _gate(x):
    a, b = tf.split(x, 2, axis=-1)
    return tf.tanh(a) * tf.sigmoid(b)


class _GatedLayer(snt.Module):
    """One gated layer: vertical (k//2+1, k) conv, horizontal (1, k//2+1) conv.

    The vertical stack at row r sees rows <= r; its pre-activation reaches the
    horizontal stack shifted down one row (row r feeds row r+1) through a 1x1
    link.  The horizontal conv of the first layer is type A (excludes the
    current position).  With ``num_conditions`` C > 0 each stack's gate adds a
    projection (C -> 2*channels, no bias) of the condition: ``v_cond`` / ``h_cond``
    (their initial values come from ``cond_seeds``).
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool,
                 seeds: _Seeds, name=None, num_conditions: int = 0,
                 cond_seeds: _Seeds | None = None):
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
        if num_conditions:  # only then: an unconditioned layer keeps exactly its old variables
            self.v_cond = _Conv(num_conditions, 2 * channels, (1, 1), (0, 0, 0), with_bias=False,
                                seed=cond_seeds(), name="v_cond")
            self.h_cond = _Conv(num_conditions, 2 * channels, (1, 1), (0, 0, 0), with_bias=False,
                                seed=cond_seeds(), name="h_cond")

    def cond_terms(self, condition):
        """``(V_v h, V_h h)``, each (B, 2*channels), for a condition ``h`` (B, C)."""
        return self.v_cond.dense(condition), self.h_cond.dense(condition)

    def __call__(self, v, h, valid_v=None, valid_h=None, condition=None):
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
        link, _ = self.link(shifted)  # the vertical pre-activation without the condition
        h_pre = h_pre + link
        v_gate_in = v_pre
        if condition is not None:  # broadcast over rows and columns: no spatial extent
            v_cond, h_cond = self.cond_terms(condition)
            v_gate_in = v_pre + v_cond[:, None, None, :]
            h_pre = h_pre + h_cond[:, None, None, :]
        out, _ = self.h_out(_gate(h_pre))
        if not self.first:
            out = out + (h if valid_h is None else h[:, :, self._c:])
        return _gate(v_gate_in), out, valid_v_out, valid_h_out
