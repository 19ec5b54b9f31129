"""A local substitute for ImageNet weights: pretrain the plain U-Net without labels on the dataset's own patches.

ImageNet weights cannot be downloaded on the machines this project runs on, and a random encoder learns slowly
from a few dozen labelled patches.  The patches themselves, without their masks, are free: here the whole plain
U-Net (:mod:`.plain`, encoder and decoder) learns to *inpaint* — each input has random square holes (filled with
the patch mean) and pixel noise, and the network restores the clean patch (squared error weighted 1.5 in the holes
and 0.5 elsewhere).  To fill a hole in a micrograph it has to know grain boundaries, films and particles —
the same features segmentation needs.

Only the patch images 01 saved outside the test set are used — the tiers' training *and validation* patches (01
writes no image for unused patches); no test patch and no patch of an image held out for testing, and no label.
(The validation images are unlabelled here, but they are the ones 06 selects its best epoch on.)  The result is an
ordinary weight file: ``encoder_weights: <file>.h5`` in 06 loads it by layer name into the segmentation U-Net
(every layer but the classifier head ``final_conv``, which starts at random).  It was pretrained on z-scored input:
use it with ``normalise: patches``.

    python -m dualsynth.unet.pretext outputs/<experiment> [--updates 600] [--base-filters 16]
        [--out outputs/<experiment>/unet/pretext_plain16.h5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from dualsynth.io import atomic_write_json, read_image

from ._backend import tf
from .model import InputAdapter, input_affine, UNetConfig
from .plain import plain_unet
from .recipe import WarmupCosine, input_stats

__all__ = ["pretext_images", "corrupt", "pretrain_plain", "main"]


def pretext_images(patches_dir: str | Path) -> np.ndarray:
    """``uint8 (N, P, P, C)``: every saved patch image that is not a test patch (01 marks those ``role: test``)."""
    from dualsynth.patching import Manifest

    manifest = Manifest.load(patches_dir)
    test_ids = {e["id"] for e in manifest.data["test"]}
    recs = [r for pid, r in manifest.data["patches"].items()
            if pid not in test_ids and r.get("role") != "test" and r.get("image")
            and (manifest.root / r["image"]).is_file()]
    if not recs:
        raise ValueError(f"{manifest.path}: no patch image outside the test images to pretrain on")
    return np.stack([read_image(manifest.root / r["image"], channels=manifest.channels) for r in recs])


def corrupt(batch: np.ndarray, rng: np.random.Generator, holes: int = 6, hole_frac: float = 0.15,
            noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``(corrupted, hole mask)`` of float images in [0, 1] ``(B, H, W, C)``: square holes filled with each
    image's mean, plus Gaussian noise of std ``noise``."""
    x = batch.copy()
    b, h, w, _ = x.shape
    side = max(2, int(round(hole_frac * min(h, w))))
    mask = np.zeros((b, h, w, 1), np.float32)
    for i in range(b):
        m = x[i].mean()
        for _ in range(holes):
            y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            x[i, y0:y0 + side, x0:x0 + side] = m
            mask[i, y0:y0 + side, x0:x0 + side] = 1.0
    x = np.clip(x + rng.normal(0.0, noise, x.shape).astype(np.float32), 0.0, 1.0)
    return x, mask


def pretrain_plain(images: np.ndarray, out: str | Path, base_filters: int = 16, updates: int = 600,
                   batch_size: int = 8, learning_rate: float = 1e-3, seed: int = 0,
                   progress: bool = True) -> dict:
    """Train the plain U-Net to inpaint ``images``; save its weights (Keras 2 HDF5, by layer name) to ``out``.

    The input adapter z-scores with the statistics of ``images`` (as 06 does with ``normalise: patches``).
    Returns a summary (losses at start and end, seconds), also written beside ``out`` as JSON.
    """
    from tqdm.auto import tqdm

    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or len(imgs) == 0:
        raise ValueError(f"pretrain_plain needs uint8 images (N, H, W[, C]), got shape {imgs.shape}")
    if updates < 1 or batch_size < 1 or base_filters < 1:
        raise ValueError(f"pretrain_plain needs updates, batch_size and base_filters >= 1, got {updates}, "
                         f"{batch_size}, {base_filters}")
    channels = imgs.shape[-1]
    stats = input_stats(imgs)
    cfg = UNetConfig(num_classes=2, in_channels=channels, encoder="plain", base_filters=base_filters,
                     normalise="patches", input_stats=stats)
    tf.keras.utils.set_random_seed(int(seed))
    matrix, offset = input_affine(cfg)
    inp = tf.keras.Input(shape=(None, None, channels), name="image")
    x = InputAdapter(channels, matrix, offset, name="input_adapter")(inp)
    core = plain_unet(channels, base_filters, activation="sigmoid", head="pretext_head")
    model = tf.keras.Model(inp, core(x), name="pretext")
    opt = tf.keras.optimizers.Adam(WarmupCosine(learning_rate, updates, max(1, updates // 20)))

    @tf.function
    def step(xb, yb, mb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            err = tf.square(pred - yb)
            loss = tf.reduce_mean(err * (0.5 + mb))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    data = imgs.astype(np.float32) / 255.0
    losses = []
    t0 = time.perf_counter()
    for _ in tqdm(range(updates), desc="pretext (inpainting)", unit="update", disable=not progress):
        idx = rng.integers(0, len(data), batch_size)
        clean = data[idx]
        k = rng.integers(0, 4)
        clean = np.rot90(clean, k, axes=(1, 2)).copy()
        noisy, holes = corrupt(clean, rng)
        losses.append(float(step(tf.constant(noisy), tf.constant(clean), tf.constant(holes))))
    if not np.isfinite(losses[-1]):
        raise FloatingPointError("pretext training diverged (loss NaN/inf); lower learning_rate")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.h5")
    core.save_weights(str(tmp))
    tmp.replace(out)
    head = max(1, updates // 20)
    summary = {"weights": str(out), "images": int(len(imgs)), "updates": int(updates), "batch_size": batch_size,
               "base_filters": base_filters, "loss_first": float(np.mean(losses[:head])),
               "loss_last": float(np.mean(losses[-head:])), "seconds": round(time.perf_counter() - t0, 1),
               "input_stats": stats}
    atomic_write_json(out.with_suffix(".json"), summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dualsynth.unet.pretext", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="outputs/<experiment> with 01_patching finished")
    ap.add_argument("--updates", type=int, default=600)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: <experiment>/unet/pretext_plain<base-filters>.h5")
    args = ap.parse_args(argv)
    exp = Path(args.experiment)
    try:
        images = pretext_images(exp / "patches")
    except Exception as e:  # noqa: BLE001 - a one-line message for the terminal
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else exp / "unet" / f"pretext_plain{args.base_filters}.h5"
    try:
        s = pretrain_plain(images, out, args.base_filters, args.updates, args.batch_size, seed=args.seed)
    except (ValueError, FloatingPointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{s['images']} patches, {s['updates']} updates: inpainting loss {s['loss_first']:.4f} -> "
          f"{s['loss_last']:.4f} ({s['seconds']:.0f} s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
