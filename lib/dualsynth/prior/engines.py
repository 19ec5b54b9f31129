"""Engines of the fast exact sampler (:func:`dualsynth.prior.sampling.sample_fast`).

An engine keeps a tuple of state tensors and offers
  ``context(cond)`` -> ctx (what the condition (B, C) or None contributes, computed once per batch),
  ``init()`` -> state,  ``logits(state, i, j, ctx)`` -> (logits (B, K), state),
  ``commit(state, j, code)`` -> state,  ``end_row(state, ctx)`` -> state.
The raster loop around it is generic (``_graph_sampler`` / ``_python_sampler`` in
:mod:`dualsynth.prior.sampling`).

* :class:`_WindowEngine` (``method="window"``, both kinds): the window trick.
* :class:`_PlainCachedEngine` / :class:`_GatedCachedEngine` (``method="cached"``):
  every layer evaluated at (i, j) only, from caches of its input rows.
"""
from __future__ import annotations

import tensorflow as tf

from .layers import _gate


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

    def context(self, cond):
        return cond

    def init(self):
        # codes of the `up` rows above and of the current row, -1 = nothing (pad)
        return (tf.fill([self.b, self.rf.up, self.wp], -1), tf.fill([self.b, self.wp], -1))

    def logits(self, state, i, j, ctx):
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
        return self.m.window_logits(x, valid, ctx), state

    def commit(self, state, j, code):
        hist, cur = state
        onehot = tf.one_hot(self.rf.left + j, self.wp, dtype=tf.int32)
        return hist, cur + onehot[None, :] * (code + 1)[:, None]

    def end_row(self, state, ctx):
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

    def context(self, cond):
        return None  # the plain PixelCNN takes no condition

    def init(self):
        state = []
        for conv, k in zip(self.convs, self.ks):
            c, cin = k // 2, conv.w.shape[2]
            above = tf.zeros([self.b, c, self.w + 2 * c, cin])
            state += [above, tf.zeros([self.b, self.w + 2 * c, cin]), self._above_part(conv, above)]
        return tuple(state)

    def logits(self, state, i, j, ctx):
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

    def end_row(self, state, ctx):
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
    A condition's projections (one per layer and stack) are computed once per batch
    (``context``) and added to the gates like in the full model.
    """

    def __init__(self, model, batch, height, width):
        self.m, self.b, self.w = model, batch, width
        self.ks = [layer.v_conv.w.shape[1] for layer in model.layers]
        self.cins = [layer.v_conv.w.shape[2] for layer in model.layers]
        self.C2 = 2 * model.hidden_channels
        self.L = len(model.layers)

    def context(self, cond):
        """Per layer ``(V_v h, V_h h)`` (B, 2*channels) each, or None (unconditioned)."""
        return None if cond is None else [layer.cond_terms(cond) for layer in self.m.layers]

    def init(self):
        b, w = self.b, self.w
        hcur = [tf.zeros([b, w + k // 2, ci]) for k, ci in zip(self.ks, self.cins)]
        vrows = [tf.zeros([b, k // 2 + 1, w + 2 * (k // 2), ci])
                 for k, ci in zip(self.ks, self.cins)]
        links = [tf.zeros([b, w, self.C2]) for _ in self.ks]
        return tuple(hcur + vrows + links)

    def logits(self, state, i, j, ctx):
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
            pre = layer.h_conv.dense(patch) + link
            if ctx is not None:
                pre = pre + ctx[n][1]
            out = layer.h_out.dense(_gate(pre))
            h = out if n == 0 else h + out
        h = self.m.head_hidden.dense(tf.nn.relu(h))
        return self.m.head_out.dense(tf.nn.relu(h)), tuple(state)

    def commit(self, state, j, code):
        x = tf.one_hot(code, self.m.num_embeddings, dtype=tf.float32)
        return (_put_column(state[0], self.ks[0] // 2 + j, x),) + tuple(state[1:])

    def end_row(self, state, ctx):
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
                row = _gate(v_pre if ctx is None else v_pre + ctx[n][0][:, None, :])
        return tuple(tf.zeros_like(x) for x in hcur) + tuple(vrows) + tuple(links)


_ENGINES = {
    ("window", "pixelcnn"): _WindowEngine,
    ("window", "gated"): _WindowEngine,
    ("cached", "pixelcnn"): _PlainCachedEngine,
    ("cached", "gated"): _GatedCachedEngine,
}
