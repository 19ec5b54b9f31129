"""A plain U-Net without a pretrained-encoder design: the small model for CPU-scale training from scratch.

segmentation-models' encoders (EfficientNet, ResNet, MobileNet) are built to be initialised from ImageNet. Here
ImageNet weights cannot be downloaded, and from random weights these deep encoders learn slowly from a few dozen
patches: at the quick preset's 160 updates they stayed near a guess on two real datasets (the U-Net issue). The
plain U-Net of Ronneberger et al. (2015) — two 3×3 convolutions with BatchNorm and ReLU per level, max-pooling
down, up-sampling and concatenation with the skip up — has ~2 M weights at ``base_filters`` 16 and depth 4, and
trains from scratch in a few hundred updates.

Its layers are named (``enc{level}_…``, ``dec{level}_…``, ``bottom_…``, ``final_conv``) so that weight files are
loaded by name like every other dualsynth U-Net: a file from a plain U-Net of the same width with another number of
classes restores all but ``final_conv``, and so does a pretext file (:mod:`dualsynth.unet.pretext`), whose head
has another name.
"""
from __future__ import annotations

from ._backend import tf

__all__ = ["PLAIN", "plain_unet"]

#: The ``UNetConfig.encoder`` value that selects this model.
PLAIN = "plain"


def _block(x, filters: int, name: str):
    layers = tf.keras.layers
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                          name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def plain_unet(num_classes: int, base_filters: int = 16, depth: int = 4, activation: str = "softmax",
               name: str = "unet", head: str = "final_conv") -> tf.keras.Model:
    """``(H, W, 3) -> (H, W, num_classes)``; H and W must be multiples of ``2 ** depth``.

    Level ``d`` has ``base_filters * 2**d`` filters; the bottom ``base_filters * 2**depth``.  ``head`` names
    the last 1×1 convolution (a pretext model names it otherwise, so its head is never loaded as a classifier).
    """
    if num_classes < 1 or base_filters < 1 or depth < 1:
        raise ValueError(f"plain_unet needs num_classes (outputs) >= 1, base_filters >= 1, depth >= 1; got "
                         f"{num_classes}, {base_filters}, {depth}")
    layers = tf.keras.layers
    inp = tf.keras.Input(shape=(None, None, 3), name="unet_input")
    x = inp
    skips = []
    for d in range(depth):
        x = _block(x, base_filters * 2 ** d, f"enc{d}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{d}_pool")(x)
    x = _block(x, base_filters * 2 ** depth, "bottom")
    for d in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{d}_up")(x)
        x = layers.Concatenate(name=f"dec{d}_concat")([x, skips[d]])
        x = _block(x, base_filters * 2 ** d, f"dec{d}")
    out = layers.Conv2D(num_classes, 1, activation=activation, name=head)(x)
    return tf.keras.Model(inp, out, name=name)
