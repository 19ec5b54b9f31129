"""Input checks, the ``tf.data`` pipeline and the albumentations baseline of the U-Net."""
from __future__ import annotations

import math
import random
import threading
from typing import Any

import numpy as np

from ..labels import check_labels
from ._backend import tf

__all__ = ["check_images", "check_masks", "build_augmentation", "make_dataset"]


def check_images(images: Any, in_channels: int | None = None, what: str = "images") -> np.ndarray:
    """``uint8 (N, H, W, C)``; grey ``(N, H, W)`` gets a channel axis, grey -> RGB is repeated."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must have shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if in_channels is not None and arr.shape[-1] != in_channels:
        if in_channels == 3 and arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        else:
            raise ValueError(
                f"{what} have {arr.shape[-1]} channels but the model expects {in_channels}; "
                "convert RGB micrographs to grey first or use in_channels=3"
            )
    return np.ascontiguousarray(arr)


def check_masks(masks: Any, shape: tuple[int, ...], num_classes: int, what: str = "masks") -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != tuple(shape[:3]):
        raise ValueError(f"{what} must have shape {tuple(shape[:3])} (N, H, W) to match the images, got {arr.shape}")
    arr = check_labels(arr, num_classes, what)  # a dtype error is a TypeError (and a ValueError)
    return np.ascontiguousarray(arr.astype(np.uint8))


def build_augmentation(in_channels: int, seed: int = 0, *, geometric: bool = False):
    """Albumentations 2.x baseline of the paper (photometric only, masks untouched).

    ``GaussNoise`` (p 0.2), then three ``OneOf`` groups with p 0.9 each:
    ``CLAHE`` / brightness / ``RandomGamma``; ``Sharpen`` / ``Blur`` /
    ``MotionBlur`` / ``GaussianBlur``; contrast / ``HueSaturationValue`` (RGB
    only; grey: contrast alone, p 0.9 * 1/2).  ``geometric=True`` prepends
    flips and 90-degree rotations (not in the paper; applied to the mask too).

    The random state is one NumPy and one Python generator shared by all
    transforms (``Compose.set_random_state``): ``Compose(seed=...)`` would give
    every transform an identically seeded generator of its own, which makes
    the groups' on/off draws identical.
    """
    import albumentations as A

    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    t: list = []
    if geometric:
        t += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    t += [
        A.GaussNoise(std_range=(0.02, 0.08), p=0.2),
        A.OneOf(
            [
                A.CLAHE(clip_limit=(1.0, 4.0), p=1.0),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0),
                A.RandomGamma(gamma_limit=(80, 120), p=1.0),
            ],
            p=0.9,
        ),
        A.OneOf(
            [
                A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=1.0),
                A.Blur(blur_limit=(3, 3), p=1.0),
                A.MotionBlur(blur_limit=(3, 5), p=1.0),
                A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=1.0),
            ],
            p=0.9,
        ),
    ]
    contrast = A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.2, p=1.0)
    if in_channels == 3:
        t.append(A.OneOf([contrast, A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20,
                                                         val_shift_limit=10, p=1.0)], p=0.9))
    else:
        t.append(A.OneOf([contrast], p=0.45))
    pipeline = A.Compose(t)
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def _numpy_augmenter(in_channels: int, seed: int):
    """``f(image, mask, epoch, position) -> (image, mask)``, reproducible per element."""
    pipeline = build_augmentation(in_channels, seed)
    lock = threading.Lock()

    def augment(image: np.ndarray, mask: np.ndarray, epoch, position) -> tuple[np.ndarray, np.ndarray]:
        s = int(np.random.SeedSequence([seed, int(epoch), int(position)]).generate_state(1)[0])
        with lock:  # tf.data may call from several threads; the pipeline holds the RNG
            pipeline.set_random_state(np.random.default_rng(s), random.Random(s))
            out = pipeline(image=image, mask=mask)
        img = np.asarray(out["image"])
        if img.ndim == 2:
            img = img[..., None]
        if img.dtype != np.uint8:
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return img.reshape(image.shape), np.asarray(out["mask"], np.uint8).reshape(mask.shape)

    return augment


def make_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool = False,
    seed: int = 0,
    repeat: bool = False,
    steps_per_epoch: int | None = None,
    first_epoch: int = 0,
    in_channels: int | None = None,
) -> tf.data.Dataset:
    """``tf.data`` of ``(image float32 [0,1] (B,H,W,C), one-hot mask float32 (B,H,W,num_classes))``.

    One epoch is one pass over the data in an order fixed by ``(seed, epoch)``
    (``shuffle``), with the last batch possibly smaller; ``steps_per_epoch``
    instead makes an epoch exactly that many full batches, drawn from as many
    shuffled passes as needed (the rest of the last pass is dropped; with
    fewer images than ``batch_size`` a batch repeats images).  ``repeat``
    gives epochs ``first_epoch, first_epoch + 1, ...`` without end, otherwise
    only epoch ``first_epoch``.  ``augment`` runs :func:`build_augmentation`
    on the uint8 image and mask (``tf.numpy_function``), seeded by ``(seed,
    epoch, position in the epoch)``, before scaling.  The arrays are held in
    memory as uint8 tensors and converted per batch, so no ``cache()`` (a
    cached float/one-hot copy would be 4 + 4*num_classes times larger).
    """
    imgs = check_images(images, in_channels)
    n = imgs.shape[0]
    msk = check_masks(masks, imgs.shape, int(num_classes))
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if steps_per_epoch is not None:
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        passes = max(1, math.ceil(steps_per_epoch * batch_size / n))
    else:
        passes = 1
    seed = int(seed)
    h, w, c = imgs.shape[1:]
    img_t = tf.constant(imgs)
    mask_t = tf.constant(msk)
    aug_fn = _numpy_augmenter(c, seed) if augment else None
    autotune = tf.data.AUTOTUNE

    def one_pass(epoch, p):
        idx = tf.range(n, dtype=tf.int64)
        if shuffle:
            s = tf.stack([tf.constant(seed, tf.int64), epoch * 1024 + p])
            idx = tf.random.experimental.stateless_shuffle(idx, seed=s)
        return tf.data.Dataset.from_tensor_slices(idx)

    def one_epoch(epoch):
        ds = tf.data.Dataset.range(passes).flat_map(lambda p: one_pass(epoch, p)).enumerate()

        def load(position, i):
            image = tf.gather(img_t, i)
            mask = tf.gather(mask_t, i)
            if aug_fn is not None:
                image, mask = tf.numpy_function(aug_fn, [image, mask, epoch, position], [tf.uint8, tf.uint8],
                                                stateful=False)
                image.set_shape((h, w, c))
                mask.set_shape((h, w))
            return image, mask

        if aug_fn is not None:
            ds = ds.map(load, num_parallel_calls=autotune, deterministic=True)
        else:
            ds = ds.map(load)
        ds = ds.batch(batch_size)
        if steps_per_epoch is not None:
            ds = ds.take(steps_per_epoch)
        return ds

    first_epoch = int(first_epoch)
    epochs = tf.data.Dataset.counter(first_epoch) if repeat else tf.data.Dataset.range(first_epoch, first_epoch + 1)
    ds = epochs.flat_map(one_epoch)

    def to_model(image, mask):
        x = tf.cast(image, tf.float32) / 255.0
        y = tf.one_hot(tf.cast(mask, tf.int32), int(num_classes), dtype=tf.float32)
        return x, y

    return ds.map(to_model, num_parallel_calls=autotune).prefetch(autotune)
