"""Training the VQ-VAE: :func:`train_vqvae` (resumable, last/best checkpoints, ``history.csv``, reconstruction
snapshots, a NaN guard) and its compiled step :func:`make_train_step`."""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from ..checkpoint import RunFolder
from ..io import atomic_write_json, atomic_write_text, fingerprint
from .checkpoints import (_BEST_DIR, _CONFIG_FILE, _LAST_DIR, _N_SNAPSHOT_IMAGES, _SNAPSHOT_FILE, _TRAINING_FILE,
                          _all_finite, _read_config, checkpoint_rule)
from .codes import _check_images, data_variance
from .history import VQVAEHistory, _load_snapshots, _read_history_csv, _save_snapshots, _write_history_csv
from .model import MODEL_DEFAULTS, VQVAE

__all__ = ["train_vqvae", "make_train_step", "DEAD_CODE_FRACTION", "CHECKPOINT_ON"]

#: What the ``best`` checkpoint minimises: ``val`` -- the reconstruction MSE on the validation images, computed
#: at every evaluation (dualsynth's default); ``train`` -- the mean reconstruction MSE of the training batches
#: since the previous checkpoint (Volman Stern et al. 2024: "the lowest reconstruction error" on the training data,
#: checkpointed every 100 steps, as Sonnet's example reports the mean of its last 100 steps).
CHECKPOINT_ON: dict[str, str] = {"val": "val_recon_mse", "train": "train_recon_mse"}

#: Fraction of the codebook below which :func:`train_vqvae` warns about dead codes.
DEAD_CODE_FRACTION = 0.5


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


def make_train_step(model: VQVAE, optimizer, data_variance: float, jit_compile: bool = False,
                    weighted: bool = False, weighted_from_channel: int = 0):
    """The compiled optimizer step of :func:`train_vqvae`: ``x -> (loss, recon_mse, vq_loss, perplexity)``.

    With ``weighted`` the step is ``(x, w) -> …`` and the loss's squared errors are weighted per pixel by ``w``
    (B, H, W) (:func:`dualsynth.dual.class_pixel_weights`) in the channels from ``weighted_from_channel`` on (the
    channels before it keep weight 1: with the micrograph's channel count, only the mask channels are weighted);
    ``recon_mse`` stays the unweighted error.  ``jit_compile=True`` compiles it with XLA (bench/bench_vqvae.py
    measures both; see BENCHMARKS.md).
    """
    var = float(data_variance)
    k = int(weighted_from_channel)

    def step(x, w):
        with tf.GradientTape() as tape:
            out = model(x, is_training=True)
            sq = tf.square(out["x_recon"] - x)
            recon_mse = tf.reduce_mean(sq)
            if w is None:
                fitted = recon_mse
            else:
                fitted = tf.reduce_mean(tf.concat([sq[..., :k], sq[..., k:] * w[..., None]], axis=-1))
            loss = fitted / var + out["vq_loss"]
        params = model.trainable_variables
        grads = tape.gradient(loss, params)
        optimizer.apply_gradients(zip(grads, params))
        return loss, recon_mse, out["vq_loss"], out["perplexity"]

    if weighted:
        return tf.function(lambda x, w: step(x, w), jit_compile=jit_compile)
    return tf.function(lambda x: step(x, None), jit_compile=jit_compile)


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
    checkpoint_on: str = "val",
    checkpoint_every: int | None = None,
    snapshot_steps: Sequence[int] = (),
    progress: bool = True,
    data_variance: float | None = None,
    eval_batch_size: int | None = None,
    tensorboard_dir: str | Path | None = None,
    pixel_weights: np.ndarray | None = None,
    weighted_from_channel: int = 0,
) -> VQVAEHistory:
    """Train ``model`` for ``steps`` optimizer steps in total (resumable).

    Args:
        model: a :class:`VQVAE`.
        train_images, val_images: float32 (N, H, W, in_channels) in [0, 1].
        steps: total number of steps (including those of earlier, resumed runs).
        batch_size, learning_rate: Adam on ``MSE / data_variance + vq_loss``.
        seed: seed of the shuffling of the training set.
        checkpoint_dir: if given, ``config.json``, ``training.json`` (the
            checkpoint rule), ``history.csv``, ``snapshots.npz``, ``last/``
            (latest checkpoint, saved with every history row, used to resume)
            and ``best/`` (lowest reconstruction MSE by ``checkpoint_on``).
            Calling again with the same directory resumes from ``last/``
            (model, optimizer, step, history) and continues up to ``steps``;
            returns immediately if already there.  The learning rate given
            here overrides the restored one; another ``checkpoint_on`` is
            refused (the ``best/`` on disk was chosen by the old rule).  Each
            row is committed by :class:`dualsynth.checkpoint.RunFolder`:
            ``last/`` → ``history.csv`` → ``best/``.
        eval_every: evaluate on the validation images (reconstruction MSE,
            codebook usage) every this many steps, and at the final step.
        checkpoint_on: ``"val"`` (default) or ``"train"``: the ``best``
            checkpoint has the lowest validation reconstruction MSE, or the
            lowest mean training-batch reconstruction MSE since the previous
            checkpoint (the paper's rule; see :data:`CHECKPOINT_ON`).
        checkpoint_every: log a history row (training means since the previous
            row), save ``last/`` and consider ``best/`` every this many steps
            (default ``eval_every``).  Rows are also written at every
            evaluation and at the final step; a row without an evaluation has
            NaN validation columns.
        snapshot_steps: steps at which reconstructions of the first few
            validation images are kept in ``history.snapshots`` (0 = before
            training).
        progress: tqdm progress bar with the current loss.
        data_variance: loss normaliser; default: :func:`data_variance` of
            ``train_images``.
        eval_batch_size: batch size for evaluation (default ``2 * batch_size``).
        tensorboard_dir: if given, scalar summaries are written there.
        pixel_weights: optional float (N, H, W), one weight per pixel of ``train_images`` (mean about 1), that
            weighs the squared errors of the training loss (every channel of the pixel), e.g.
            :func:`dualsynth.dual.class_pixel_weights` so a rare class is not ignored. ``train_recon_mse`` and the
            validation error stay unweighted, so runs with and without weights compare (``train_loss`` is the
            weighted objective). Their digest is recorded in ``training.json``: other weights do not resume the
            checkpoint.
        weighted_from_channel: with ``pixel_weights``, the first channel they weigh; the channels before it keep
            weight 1 (``image_channels``: the mask channels only, the micrograph's error unweighted; 0: every
            channel).  Part of the recorded digest.

    Raises:
        FloatingPointError: non-finite loss (or weights) at some step.  Nothing
            is saved for that state; if ``checkpoint_dir`` is given, the
            in-memory model and optimizer are reset to the last good
            checkpoint, which stays on disk untouched.
    """
    steps = int(steps)
    batch_size = int(batch_size)
    eval_every = int(eval_every)
    checkpoint_every = eval_every if checkpoint_every is None else int(checkpoint_every)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size < 1 or eval_every < 1 or checkpoint_every < 1:
        raise ValueError("batch_size, eval_every and checkpoint_every must be >= 1")
    if checkpoint_on not in CHECKPOINT_ON:
        raise ValueError(f"checkpoint_on must be one of {sorted(CHECKPOINT_ON)}, got {checkpoint_on!r}")
    criterion = CHECKPOINT_ON[checkpoint_on]
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

    channels = train_images.shape[-1]
    if not 0 <= int(weighted_from_channel) < channels:
        raise ValueError(f"train_vqvae: weighted_from_channel must lie in [0, {channels}), got {weighted_from_channel!r}")
    if pixel_weights is not None:
        pixel_weights = np.asarray(pixel_weights, np.float32)
        if pixel_weights.shape != train_images.shape[:3]:
            raise ValueError(f"train_vqvae: pixel_weights must have the shape {train_images.shape[:3]} of the training "
                             f"images' pixels, got {pixel_weights.shape}")
        if not np.isfinite(pixel_weights).all() or pixel_weights.min() < 0 or not pixel_weights.sum() > 0:
            raise ValueError("train_vqvae: pixel_weights must be finite, >= 0 and not all 0")
    # the loss's weights are recorded with the checkpoint rule (training.json): other weights do not resume it; the
    # channel they start from joins the digest only when it is not 0, so checkpoints weighted on every channel before
    # weighted_from_channel existed keep their digest and still resume
    weights_digest = None if pixel_weights is None else "sha256:" + fingerprint(
        pixel_weights, *(() if not weighted_from_channel else (f"from channel {int(weighted_from_channel)}",)))
    var = float(data_variance) if data_variance is not None else _variance_fn(train_images)
    if not math.isfinite(var) or var <= 0:
        raise ValueError(f"train_vqvae: data variance must be positive and finite, got {var!r}")

    optimizer = _make_adam(learning_rate)
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)

    snap_inputs = val_images[: min(_N_SNAPSHOT_IMAGES, len(val_images))].copy()
    history = VQVAEHistory(snapshot_inputs=snap_inputs, data_variance=var, checkpoint_on=checkpoint_on)

    last_manager = best_manager = None
    ckpt_dir: Path | None = None if checkpoint_dir is None else Path(checkpoint_dir)

    def reset() -> str:  # a non-finite state: back to the last good checkpoint, in memory
        if last_manager is None or not last_manager.latest_checkpoint:
            return "the in-memory model is corrupted (no checkpoint to reset it to)"
        ckpt.restore(last_manager.latest_checkpoint).assert_existing_objects_matched()
        return "the model was reset to it in memory"

    # commits (last -> history -> best), resume, repairs and the NaN stop: dualsynth.checkpoint
    run = RunFolder(ckpt_dir, who="train_vqvae", score=criterion, finite=("train_loss", "train_recon_mse"),
                    save_last=lambda step: last_manager.save(checkpoint_number=step),
                    save_best=lambda step: best_manager.save(checkpoint_number=step),
                    write_history=lambda path, rows: _write_history_csv(path, rows),
                    read_history=lambda path: _read_history_csv(path),
                    best_saved_at=lambda: _step_of(best_manager.latest_checkpoint),
                    last_name=lambda: last_manager.latest_checkpoint, reset=reset)
    history.rows = run.rows  # the same list: every commit shows in the returned history
    if ckpt_dir is not None:
        history.checkpoint_dir = ckpt_dir
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last_manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / _LAST_DIR), max_to_keep=2)
        best_manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / _BEST_DIR), max_to_keep=1)
        resuming = last_manager.latest_checkpoint is not None
        # a checkpoint made from other patches, of another model or under another best rule is never resumed
        rule = {"checkpoint_on": checkpoint_on, "pixel_weights": weights_digest}
        run.open(fingerprint(train_images, val_images), "VQ-VAE checkpoint", resuming,
                 head=f"train_vqvae: {ckpt_dir} holds a checkpoint of a different model (or checkpoint rule); "
                      "cannot resume into this one",
                 advice="use another checkpoint_dir", defaults=MODEL_DEFAULTS,
                 config=[(ckpt_dir / _CONFIG_FILE, _read_config(ckpt_dir), model.config),
                         (ckpt_dir / _TRAINING_FILE, checkpoint_rule(ckpt_dir), rule)]
                 if resuming else ())
        if resuming:
            ckpt.restore(last_manager.latest_checkpoint).assert_existing_objects_matched()
            optimizer.learning_rate = float(learning_rate)
            history.resumed_from_step = int(step_var.numpy())
            run.resume(history.resumed_from_step)  # history up to the restored step
            history.snapshots = _load_snapshots(ckpt_dir / _SNAPSHOT_FILE, history.resumed_from_step)
        else:
            # Fresh run (no checkpoint yet): files of an earlier run that never
            # reached its first evaluation are stale and get overwritten.
            atomic_write_text(
                ckpt_dir / _CONFIG_FILE, json.dumps(model.config, indent=2, sort_keys=True) + "\n"
            )
        if not (ckpt_dir / _TRAINING_FILE).is_file() or not resuming:
            atomic_write_json(ckpt_dir / _TRAINING_FILE, {"checkpoint_on": checkpoint_on, "criterion": criterion,
                                                          "checkpoint_every": checkpoint_every,
                                                          "eval_every": eval_every, "pixel_weights": weights_digest})

    writer = None  # the TensorBoard writer, once training starts
    warned_dead = []

    def make_row(step: int, acc: np.ndarray, n_acc: int, validate: bool) -> dict[str, float]:
        """The history row of ``step``: training means since the previous row, validation if ``validate``."""
        if not _all_finite(model.variables):
            raise run.stop(f"non-finite model weights at step {step}")
        val_mse, used = math.nan, math.nan
        if validate:
            val_mse, used = _evaluate(model, val_images, eval_batch_size)
            if not math.isfinite(val_mse):
                raise run.stop(f"non-finite validation reconstruction MSE ({val_mse!r}) at step {step}")
        means = acc / n_acc if n_acc else np.full(4, np.nan)
        if validate and used < DEAD_CODE_FRACTION and not warned_dead:
            warned_dead.append(step)
            warnings.warn(
                f"VQ-VAE codebook collapse: only {used:.0%} of the {model.num_embeddings} codes are used "
                f"on the validation set at step {step} (dead codes; consider a smaller codebook"
                + (", a lower learning rate" if model.use_ema else ", use_ema=True")
                + "; early in training this may still recover)",
                RuntimeWarning,
                stacklevel=4,
            )
        return {"step": int(step), "train_loss": float(means[0]), "train_recon_mse": float(means[1]),
                "vq_loss": float(means[2]), "perplexity": float(means[3]), "val_recon_mse": float(val_mse),
                "codes_used": float(used)}

    def evaluate_and_save(step: int, acc: np.ndarray, n_acc: int, validate: bool) -> dict[str, float]:
        row = make_row(step, acc, n_acc, validate)
        if writer is not None:
            _write_scalars(writer, step, {k: v for k, v in row.items() if k != "step"})
        run.commit(step, row)
        return row

    # Killed after committing 'last' but before its history row: evaluate that step again (its training means
    # are lost); killed before 'best': save it again.
    run.repair(reevaluate=lambda step: make_row(step, np.zeros(4), 0, True))
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

    snapshot_set = {int(s) for s in snapshot_steps if 0 <= int(s) <= steps}
    writer = tf.summary.create_file_writer(str(tensorboard_dir)) if tensorboard_dir is not None else None
    train_step = make_train_step(model, optimizer, var, weighted=pixel_weights is not None,
                                 weighted_from_channel=weighted_from_channel)
    # what each step gets, gathered by the batch's indices: the images, and their pixel weights if given
    per_image = tuple(tf.constant(a) for a in (train_images, pixel_weights) if a is not None)

    def save_snapshot(step: int) -> None:
        history.snapshots[step] = _reconstruct(model, snap_inputs)
        if ckpt_dir is not None:
            _save_snapshots(ckpt_dir / _SNAPSHOT_FILE, snap_inputs, history.snapshots)

    if 0 in snapshot_set and start == 0 and 0 not in history.snapshots:
        save_snapshot(0)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="VQ-VAE", unit="step", dynamic_ncols=True)

    ds = _make_dataset(len(train_images), batch_size, seed, skip_batches=start)
    ds = ds.map(lambda idx: tuple(tf.gather(t, idx) for t in per_image), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)

    acc = np.zeros(4, np.float64)
    n_acc = 0
    step = start
    t0 = None
    timed_steps = 0
    try:
        for batch in ds:
            if step >= steps:
                break
            loss, recon, vq_loss, perp = (float(t) for t in train_step(*batch))
            if not (math.isfinite(loss) and math.isfinite(recon)):
                raise run.stop(f"non-finite loss ({loss!r}, reconstruction MSE {recon!r}) at step {step + 1}")
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
            validate = step % eval_every == 0 or step == steps
            if validate or step % checkpoint_every == 0:
                row = evaluate_and_save(step, acc, n_acc, validate)
                acc[:] = 0
                n_acc = 0
                if bar is not None and validate:
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


def _step_of(checkpoint: str | None) -> int | None:
    """The training step saved in a checkpoint (None: no checkpoint)."""
    return None if checkpoint is None else int(tf.train.load_variable(checkpoint, "step/.ATTRIBUTES/VARIABLE_VALUE"))


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
