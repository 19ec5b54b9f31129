"""The VQ-VAE network over dual images (micrograph channels + mask channel(s)); no file I/O.

After the VQ-VAE of van den Oord et al. (2017) as laid out in DeepMind Sonnet's example
(``examples/vqvae_example.ipynb``), with the changes of Volman Stern et al. (2024): the input has ``C + M``
channels (``C`` micrograph channels, 3 for RGB or 1 for grey, plus ``M`` mask channels: 1 grey-level channel or
one per class), a small codebook (K = 10 by default) and a downsampling factor of 4 (256x256 images -> 64x64
code maps with values ``0..K-1``; the paper counts them ``1..K``; ``downsample=2``, ours, gives 128x128 maps).

Inputs are float32 in [0, 1]; the reconstruction is unconstrained (no sigmoid).  Training, checkpoints and the
history are in :mod:`dualsynth.vqvae.training`, :mod:`~dualsynth.vqvae.checkpoints` and
:mod:`~dualsynth.vqvae.history`; batched numpy helpers in :mod:`~dualsynth.vqvae.codes`.
"""
from __future__ import annotations

import weakref
from typing import Any, Mapping

import sonnet as snt
import tensorflow as tf

__all__ = ["ResidualStack", "Encoder", "Decoder", "VQVAE", "MODEL_DEFAULTS", "DOWNSAMPLES"]

#: Constructor defaults of :class:`VQVAE` (all but ``in_channels``).  A ``config.json`` written before a key
#: existed is read with that key's default (``encoder_final_relu``: False, how those models were built).
MODEL_DEFAULTS: dict[str, Any] = dict(num_embeddings=10, embedding_dim=64, num_hiddens=128, num_residual_layers=2,
                                      num_residual_hiddens=32, commitment_cost=0.25, use_ema=True, decay=0.99,
                                      encoder_final_relu=False, downsample=4)

#: The code map's downsampling factors :class:`VQVAE` can be built with: 4 (the paper's: 256 px -> 64 x 64 codes) or
#: 2 (a code per 2 x 2 pixels, for phases only a few pixels across; four times the prior's positions).
DOWNSAMPLES = (2, 4)


def _unfusable(h):
    """``h`` unchanged (same values, same gradient), as a node grappler's remapper cannot fuse through.

    Why: TensorFlow's oneDNN CPU build (on by default on x86) has a remapper fusion Conv2D + BiasAdd + Add + Relu
    -> ``_FusedConv2D``, matched from the Relu back; it checks that the conv and the BiasAdd have one consumer, but
    not the Add, and deletes the Add.  In a residual stack every layer's sum ``h`` has two consumers: the next
    layer's pre-activation ReLU and the next skip connection.  Grappler visits the graph from the end, fuses the last
    layer's conv + bias + add (+ final ReLU) with ``h`` as the side input, then fuses the previous conv + bias + add
    (``h``) + the next ReLU and deletes ``h`` — which the first fusion still reads.  Mutation::Apply refuses that
    (``remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout '.../residual_stack/Relu_4' exist for
    missing node '.../residual_stack/add'``, an ERROR line on stderr) and grappler drops the remapper's whole
    output for the graph: the results are right, but every fusion of that graph is lost.  With this node between
    ``h`` and its ReLU the faulty pattern does not match and the remapper's other fusions of the graph go ahead
    (conv + bias, conv + bias + add, …).  ``tf.identity`` would not do: grappler prunes it before the remapper runs.
    ``tf.maximum(h, 0)`` (what the prior's residual blocks use) also avoids it, but its gradient at exactly 0 is 1
    where ReLU's is 0, and the VQ-VAE keeps its training numbers.  ``EnsureShape`` against ``h``'s own static shape
    checks nothing new and forwards the buffer; it has no variables, so checkpoints are unchanged.
    """
    return tf.ensure_shape(h, h.shape)


class ResidualStack(snt.Module):
    """``num_residual_layers`` x (ReLU -> 3x3 conv -> ReLU -> 1x1 conv, + skip), final ReLU.

    The pre-activation ReLU of each layer reads its input through :func:`_unfusable` (same values), which keeps
    grappler's remapper from failing on the stack (TensorFlow's ``remapper failed … Mutation::Apply error`` line).
    """

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
            r = conv3(tf.nn.relu(_unfusable(h)))
            r = conv1(tf.nn.relu(r))
            h = h + r
        return tf.nn.relu(h)


def _second_stride(downsample: int) -> int:
    """The stride of the encoder's second (and the decoder's first up-sampling) convolution for ``downsample``."""
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"VQVAE: downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
    return int(downsample) // 2


class Encoder(snt.Module):
    """H x W x C_in -> H/d x W/d x num_hiddens, ``d = downsample`` (4, or 2: the second 4x4 convolution with
    stride 1; the same variables either way).

    ``final_relu``: a ReLU after the third (3x3) convolution, before the residual stack, as in Sonnet's current
    example; without it (the default, how dualsynth's generators were trained before it was an option) the
    residual stack's skip path carries the convolution's signed output.
    """

    def __init__(
        self,
        num_hiddens: int,
        num_residual_layers: int = 2,
        num_residual_hiddens: int = 32,
        final_relu: bool = False,
        downsample: int = 4,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self._final_relu = bool(final_relu)
        s2 = _second_stride(downsample)
        self._enc_1 = snt.Conv2D(max(num_hiddens // 2, 1), kernel_shape=(4, 4), stride=(2, 2), name="enc_1")
        self._enc_2 = snt.Conv2D(num_hiddens, kernel_shape=(4, 4), stride=(s2, s2), name="enc_2")
        self._enc_3 = snt.Conv2D(num_hiddens, kernel_shape=(3, 3), stride=(1, 1), name="enc_3")
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)

    def __call__(self, x):
        h = tf.nn.relu(self._enc_1(x))
        h = tf.nn.relu(self._enc_2(h))
        h = self._enc_3(h)
        if self._final_relu:
            h = tf.nn.relu(h)
        return self._residual_stack(h)


class Decoder(snt.Module):
    """h x w x D -> dh x dw x out_channels (unconstrained output), ``d = downsample`` (4, or 2: the first
    transposed convolution with stride 1; the same variables either way)."""

    def __init__(
        self,
        num_hiddens: int,
        num_residual_layers: int,
        num_residual_hiddens: int,
        out_channels: int,
        downsample: int = 4,
        name: str | None = None,
    ):
        super().__init__(name=name)
        s2 = _second_stride(downsample)
        self._dec_1 = snt.Conv2D(num_hiddens, kernel_shape=(3, 3), stride=(1, 1), name="dec_1")
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)
        self._dec_2 = snt.Conv2DTranspose(
            max(num_hiddens // 2, 1), kernel_shape=(4, 4), stride=(s2, s2), name="dec_2"
        )
        self._dec_3 = snt.Conv2DTranspose(out_channels, kernel_shape=(4, 4), stride=(2, 2), name="dec_3")

    def __call__(self, z):
        h = self._dec_1(z)
        h = self._residual_stack(h)
        h = tf.nn.relu(self._dec_2(h))
        return self._dec_3(h)


def _instance_graph(module: "VQVAE", method: str):
    """``tf.function`` over ``module.<method>``, named ``<method>`` and holding the module weakly (no reference
    cycle: the model is freed as soon as it is no longer used).

    Traced without AutoGraph: the network has no Python control flow on tensors (its loops run over layers, its
    ``if`` on a Python bool), and AutoGraph's conversion of Sonnet's name-scope wrappers is what went wrong twice —
    the ``TfMethodTarget`` error (see ``VQVAE.__init__``), and, with a per-instance function converted by
    AutoGraph, a decode graph of 03 that called the quantiser's ``__call__`` instead of ``quantize`` after the prior had trained in the same
    kernel ("missing 1 required positional argument: 'is_training'")."""
    ref = weakref.ref(module)

    def graph(x):
        return getattr(ref(), method)(x)

    graph.__name__ = graph.__qualname__ = method
    fn = tf.function(graph, reduce_retracing=True, autograph=False)
    # each model traces its own graph once; TensorFlow counts the traces of all models together (by the shared code
    # object) and would warn of "excessive retracing" from the sixth model loaded in one process.  A private flag of
    # tf.function: if a TensorFlow version drops it, only that warning comes back.
    if hasattr(fn, "_omit_frequent_tracing_warning"):
        fn._omit_frequent_tracing_warning = True
    return fn


class VQVAE(snt.Module):
    """VQ-VAE over dual images.

    Args:
        in_channels: ``C + M`` (micrograph channels plus the mask channel(s): 1 grey channel or one per class).
        num_embeddings: codebook size K.
        embedding_dim: code vector size D.
        num_hiddens, num_residual_layers, num_residual_hiddens: encoder/decoder width.
        commitment_cost: beta of the VQ loss.
        use_ema: ``snt.nets.VectorQuantizerEMA`` (codebook updated by moving
            averages) if True, else ``snt.nets.VectorQuantizer`` (codebook
            learned through the loss).
        decay: EMA decay (only with ``use_ema``).
        encoder_final_relu: ReLU after the encoder's third convolution (Sonnet's example; the ``paper`` preset).
            It has no weights: checkpoints with and without it hold the same variables.
        downsample: pixels per code along each side, 4 (the paper's) or 2 (:data:`DOWNSAMPLES`).  It changes
            strides only, so checkpoints of both hold the same variables: the saved ``config.json`` tells them apart.

    The variables are created in the constructor (one eager forward pass on a
    tiny zero batch), so a freshly constructed model can be checkpointed,
    restored and used inside ``tf.function`` straight away.  Seed TensorFlow
    (``tf.random.set_seed``) *before* constructing for a reproducible init.
    """

    # the per-instance compiled graphs are no part of the model's state: kept out of checkpoints and tf.Module walks
    _TF_MODULE_IGNORED_PROPERTIES = snt.Module._TF_MODULE_IGNORED_PROPERTIES | frozenset(
        {"_eval_graph", "_encode_graph", "_decode_graph"})

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
        encoder_final_relu: bool = False,
        downsample: int = 4,
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
        _second_stride(downsample)
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
            encoder_final_relu=bool(encoder_final_relu),
            downsample=int(downsample),
        )
        self.in_channels = int(in_channels)
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.use_ema = bool(use_ema)

        self.encoder = Encoder(num_hiddens, num_residual_layers, num_residual_hiddens,
                               final_relu=bool(encoder_final_relu), downsample=int(downsample), name="encoder")
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
            num_hiddens, num_residual_layers, num_residual_hiddens, self.in_channels, downsample=int(downsample),
            name="decoder"
        )
        # Create all variables now (eagerly, outside any tf.function); EMA
        # statistics are not touched with is_training=False.
        self._forward(tf.zeros([1, 8, 8, self.in_channels], tf.float32), is_training=False)
        # The compiled graphs are built per instance, not declared as ``@tf.function`` methods of the class: Sonnet
        # wraps a class-level tf.function in its name scope, and TensorFlow binds that wrapper to a ``TfMethodTarget``
        # which, if it is ever called directly with it, fails with "'TfMethodTarget' object has no attribute
        # 'name_scope'" — the error of one chain run in CI (the exact trigger was not found). A per-instance function
        # over the module's own method never goes through that binding.
        for name in ("_eval", "_encode", "_decode"):
            object.__setattr__(self, f"{name}_graph", _instance_graph(self, f"{name}_impl"))

    # -- configuration -----------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Plain dict of constructor arguments (JSON-serialisable): ``VQVAE(**config)`` rebuilds."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VQVAE":
        known = {"in_channels", *MODEL_DEFAULTS}
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
        (B, H/d, W/d), ``quantize`` (B, H/d, W/d, D, straight-through) and ``z``
        (pre-quantisation encoder output).
        """
        return self._forward(tf.convert_to_tensor(x, tf.float32), is_training=bool(is_training))

    def _eval_impl(self, x):
        out = self._forward(x, is_training=False)
        return out["x_recon"], out["encoding_indices"]

    def _encode_impl(self, x):
        z = self.pre_vq_conv(self.encoder(x))
        return tf.cast(self.vq(z, is_training=False)["encoding_indices"], tf.int32)

    def _decode_impl(self, indices):
        return self.decoder(self.vq.quantize(indices))

    def encode(self, x) -> tf.Tensor:
        """Code map: int32 (B, H/d, W/d) with values in [0, K), ``d`` = ``downsample``.  Deterministic (no EMA
        update)."""
        return self._encode_graph(tf.convert_to_tensor(x, tf.float32))

    def decode_indices(self, indices) -> tf.Tensor:
        """Reconstruction (B, dh, dw, in_channels) from a code map (B, h, w) of ints in [0, K)."""
        return self._decode_graph(tf.convert_to_tensor(indices, tf.int32))

    def reconstruct(self, x) -> tf.Tensor:
        """Deterministic reconstruction of ``x`` (no EMA update)."""
        return self._eval_graph(tf.convert_to_tensor(x, tf.float32))[0]
