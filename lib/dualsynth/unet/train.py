"""Training a U-Net as in the paper, resumable through its folder (:mod:`.files`); see :func:`train_unet`."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dualsynth.checkpoint import RunFolder
from dualsynth.io import fingerprint as _fingerprint
from dualsynth.io import atomic_write_json, read_json

from . import files
from ._backend import sm, tf
from .budget import epoch_steps
from .data import check_images, check_masks, make_dataset
from .files import CHECKPOINT_DIR, CONFIG_FILE, HISTORY_COLUMNS, HISTORY_FILE, SUMMARY_FILE, WEIGHTS_FILE
from .model import UNetConfig, build_unet
from .recipe import WarmupCosine, class_weights as _class_weights, input_stats as _input_stats
from .weights import load_weights_h5

__all__ = ["MONITOR", "TrainResult", "make_loss", "compile_unet", "train_unet"]

#: Metric that EarlyStopping and ReduceLROnPlateau watch (name as Keras logs it:
#: ``sm.metrics.IOUScore`` is called ``iou_score``; validation prefixes ``val_``).
MONITOR = "val_iou_score"


@dataclass
class TrainResult:
    """Outcome of :func:`train_unet`.

    ``history``: column -> list over *all* finished epochs (also those of
    earlier, resumed sessions); ``epochs_run`` = their number; ``best_epoch``
    (1-based) = epoch of the best ``val_iou_score`` whose weights the model
    holds; ``seconds`` = training time over every session (this call plus the
    recorded epochs of earlier ones); ``resumed_from`` = epochs already done
    when this call started.
    """

    model: tf.keras.Model
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    seconds: float
    best_val_iou_score: float | None = None
    stopped_early: bool = False
    resumed_from: int = 0
    out_dir: Path | None = None
    config: UNetConfig | None = None


def make_loss(cfg: UNetConfig, class_weights: np.ndarray | None = None):
    """Dice + ``focal_weight`` × focal; with ``class_weights`` a class-weighted Dice plus weighted cross-entropy
    (segmentation-models' focal loss takes no class weights) in place of the focal term."""
    if class_weights is not None:
        w = np.asarray(class_weights, np.float32)
        dice = sm.losses.DiceLoss(class_weights=w)
        if cfg.focal_weight == 0:
            return dice
        ce = sm.losses.CategoricalCELoss(class_weights=w)
        return dice + (ce if cfg.focal_weight == 1 else ce * cfg.focal_weight)
    dice = sm.losses.DiceLoss()
    if cfg.focal_weight == 0:
        return dice
    focal = sm.losses.CategoricalFocalLoss()
    return dice + (focal if cfg.focal_weight == 1 else focal * cfg.focal_weight)


def learning_rate(cfg: UNetConfig, total_updates: int | None = None):
    """``cfg.learning_rate`` (plateau) or a :class:`~.recipe.WarmupCosine` over ``total_updates``."""
    if cfg.lr_schedule == "cosine":
        if not total_updates:
            raise ValueError("lr_schedule 'cosine' needs the number of updates (epochs × steps per epoch)")
        return WarmupCosine(cfg.learning_rate, total_updates, int(round(cfg.warmup_fraction * total_updates)))
    return cfg.learning_rate


def compile_unet(model: tf.keras.Model, cfg: UNetConfig, total_updates: int | None = None,
                 class_weights: np.ndarray | None = None) -> tf.keras.Model:
    """Adam (constant ``cfg.learning_rate`` or its schedule), Dice + focal_weight * focal, IoU and F1 at 0.5."""
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate(cfg, total_updates)),
        loss=make_loss(cfg, class_weights),
        metrics=[sm.metrics.IOUScore(threshold=0.5), sm.metrics.FScore(threshold=0.5)],
    )
    return model


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _json_float(v: Any) -> float | None:
    return float(v) if _finite(v) else None


def _current_lr(optimizer) -> float:
    """The rate of the next update (a schedule is evaluated at the optimizer's step counter; ``tf_keras``'s
    ``optimizer.learning_rate`` would give the rate of the *last* update instead)."""
    lr = getattr(optimizer, "_learning_rate", None)
    if not isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        lr = optimizer.learning_rate
    if isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations)
    return float(tf.keras.backend.get_value(lr))


class _NanGuard(tf.keras.callbacks.Callback):
    """Like ``TerminateOnNaN``, and remembers the failure for the other callbacks."""

    def __init__(self):
        super().__init__()
        self.failed = False
        self.where = ""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            self.failed = True
            self.where = self.where or f"batch {batch}"
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            self.failed = True
            self.model.stop_training = True
        if self.failed:
            self.where = f"epoch {epoch + 1}, {self.where or 'end'}"


class _ResumableReduceLR(tf.keras.callbacks.ReduceLROnPlateau):
    def __init__(self, guard: _NanGuard, state: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._guard = guard
        self._resume = dict(state) if state else None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume:
            self.wait = int(self._resume["wait"])
            self.cooldown_counter = int(self._resume["cooldown_counter"])
            if self._resume.get("best") is not None:
                self.best = float(self._resume["best"])

    def on_epoch_end(self, epoch, logs=None):
        if not self._guard.failed:
            super().on_epoch_end(epoch, logs)

    def state(self) -> dict:
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter),
                "best": _json_float(self.best)}


class _ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    def __init__(self, guard: _NanGuard, state: Mapping[str, Any] | None = None,
                 best_weights: list | None = None, **kwargs):
        super().__init__(**kwargs)
        self._guard = guard
        self._resume = dict(state) if state else None
        self._resume_weights = best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume:
            self.wait = int(self._resume["wait"])
            self.best_epoch = int(self._resume["best_epoch"])
            if self._resume.get("best") is not None:
                self.best = float(self._resume["best"])
            self.best_weights = self._resume_weights

    def on_epoch_end(self, epoch, logs=None):
        if not self._guard.failed:
            super().on_epoch_end(epoch, logs)

    def state(self) -> dict:
        return {"wait": int(self.wait), "best_epoch": int(self.best_epoch), "best": _json_float(self.best)}


class _Recorder(tf.keras.callbacks.Callback):
    """Commits each finished epoch through the run folder (:class:`dualsynth.checkpoint.RunFolder`: checkpoint +
    ``state.json`` -> ``history.csv`` -> ``model.h5``) and keeps the last good weights in memory."""

    def __init__(self, guard, es, run: RunFolder, initial_weights):
        super().__init__()
        self.guard, self.es, self.run = guard, es, run
        self.last_good = initial_weights
        self.stopped_early = False

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._lr = _current_lr(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed:
            return
        logs = logs or {}
        row = {"epoch": epoch + 1, "lr": self._lr, "seconds": time.perf_counter() - self._t0}
        for k in HISTORY_COLUMNS:
            if k not in row:
                row[k] = float(logs[k]) if k in logs else float("nan")
        self.stopped_early = bool(self.model.stop_training)
        self.run.commit(epoch + 1, row, improved=self.es.best_epoch == epoch)
        self.last_good = self.model.get_weights()


def _columns(rows) -> dict[str, list]:
    """History rows as :attr:`TrainResult.history` and ``state.json`` hold them: column -> values."""
    return {k: [r.get(k, float("nan")) for r in rows] for k in HISTORY_COLUMNS} if rows else {}


def _rows(history: Mapping[str, list]) -> list[dict]:
    return [{k: v[i] for k, v in history.items()} for i in range(len(history.get("epoch", [])))]


class _TqdmEpochs(tf.keras.callbacks.Callback):
    def __init__(self, total: int, initial: int, desc: str):
        super().__init__()
        self.total, self.initial, self.desc = total, initial, desc
        self.bar = None

    def on_train_begin(self, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.initial, desc=self.desc, unit="epoch")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}",
                                 val_iou=f"{logs.get(MONITOR, float('nan')):.4f}", refresh=False)
            self.bar.update(1)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_xy(data: Any, cfg: UNetConfig, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what} must be a pair (images, masks)")
    x = check_images(data[0], cfg.in_channels, f"{what} images")
    y = check_masks(data[1], x.shape, cfg.num_classes, f"{what} masks")
    if x.shape[1] % 32 or x.shape[2] % 32:
        raise ValueError(f"{what} images are {x.shape[1]}x{x.shape[2]}; the U-Net needs height and width "
                         "that are multiples of 32 (cut patches of such a size)")
    return x, y


def train_unet(
    cfg: UNetConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    verbose: int = 0,
    resume: bool = True,
    keep_checkpoint: bool = True,
) -> TrainResult:
    """Train a U-Net as in the paper; resumable through ``out_dir``.

    ``train`` / ``val``: ``(uint8 images (N,H,W[,C]), class-index masks (N,H,W))``.
    Callbacks: NaN guard (as ``TerminateOnNaN``), ``ReduceLROnPlateau`` and
    ``EarlyStopping(restore_best_weights=True)`` on ``val_iou_score`` (mode
    max), history/checkpoint recorder, tqdm bar over epochs (``progress``).
    The returned model holds the best epoch's weights.  The model is built
    with ``tf.keras.utils.set_random_seed(cfg.seed)`` (reseeds Python, NumPy
    and TF globally).

    With ``out_dir`` and ``resume`` (default), an existing checkpoint there is
    continued: up to ``cfg.epochs`` epochs in total (a run that stopped early
    stays finished); its config may differ only in ``epochs`` and
    ``encoder_weights`` and the data must be identical, else ``ValueError``.
    ``resume=False`` discards an existing checkpoint and earlier results.
    ``keep_checkpoint=False`` deletes ``checkpoint/`` after a successful run
    (saves disk: weights + Adam state are ~3x the weight file); calling again
    then returns the finished run (best weights + history, no training) if it
    has ``cfg.epochs`` epochs or stopped early, and raises ``ValueError`` if it
    would have to be extended.  ``train_summary.json`` (written at the end of
    a successful run) records the outcome.

    A NaN/inf loss stops training and raises ``FloatingPointError``; the model
    then holds the weights of the last finished epoch (the initial ones if
    none), ``out_dir`` keeps the last good checkpoint, and the exception's
    ``result`` attribute is the partial :class:`TrainResult`.  Epochs are committed by
    :class:`dualsynth.checkpoint.RunFolder` (checkpoint + ``state.json`` → ``history.csv`` → ``model.h5``).
    """
    t_start = time.perf_counter()
    x_tr, y_tr = _check_xy(train, cfg, "train")
    x_va, y_va = _check_xy(val, cfg, "val")
    if cfg.normalise == "patches":  # a function of the training images: a resume computes the same values
        cfg = dataclasses.replace(cfg, input_stats=_input_stats(x_tr))
    weights = _class_weights(y_tr, cfg.num_classes) if cfg.class_weighting != "none" else None
    steps = epoch_steps(x_tr.shape[0], cfg.batch_size, cfg.steps_per_epoch)
    fingerprint = _fingerprint(x_tr, y_tr, x_va, y_va)
    out = Path(out_dir) if out_dir is not None else None

    state = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume or (out / f".{CHECKPOINT_DIR}.deleting").exists():
            files.delete_checkpoint(out)  # also finishes a deletion that was interrupted
        if resume:
            state = files.read_state(out)
        if state is None and resume and (out / HISTORY_FILE).exists():
            summary_file = out / SUMMARY_FILE
            if not (summary_file.is_file() and (out / WEIGHTS_FILE).is_file()):
                raise ValueError(
                    f"{out} holds results of an earlier run ({HISTORY_FILE}) but no {CHECKPOINT_DIR}/ to resume "
                    "from; pass resume=False to overwrite them or use another out_dir"
                )
            summary = read_json(summary_file)
            files.check_resumable(out, "finished run", summary["config"], summary["fingerprint"], cfg, fingerprint)
            if not (summary["stopped_early"] or summary["epochs_run"] >= cfg.epochs):
                raise ValueError(
                    f"{out} holds a run of {summary['epochs_run']} epochs whose checkpoint was deleted "
                    f"(keep_checkpoint=False): it cannot be extended to {cfg.epochs} epochs; pass resume=False "
                    "to train again or use another out_dir"
                )
            return _finished_result(out, cfg, summary, t_start)
        if state is None:  # history.csv first: it marks a run that has results
            for stale in (out / HISTORY_FILE, out / SUMMARY_FILE, out / WEIGHTS_FILE):
                stale.unlink(missing_ok=True)
    if state is not None:
        files.check_resumable(out, "checkpoint", state["config"], state["fingerprint"], cfg, fingerprint)
        if cfg.lr_schedule == "cosine" and int(state["config"].get("epochs", cfg.epochs)) != cfg.epochs:
            raise ValueError(
                f"{out}: a cosine schedule spans the run's planned {state['config']['epochs']} epochs; it cannot be "
                f"continued to {cfg.epochs} epochs on the same curve. Pass resume=False to train again, or use "
                "lr_schedule='plateau' to extend runs"
            )

    initial_epoch = int(state["epochs_done"]) if state else 0
    build_cfg = dataclasses.replace(cfg, encoder_weights=None) if state else cfg
    model = compile_unet(build_unet(build_cfg, seed=cfg.seed), cfg, cfg.epochs * steps, weights)
    if out is not None:
        atomic_write_json(out / CONFIG_FILE, cfg.to_dict())

    def save_last(epoch: int) -> None:  # the commit point: checkpoint/epoch_N (weights + optimizer), state.json
        files.save_checkpoint(out, model, epoch, {
            **meta, "epochs_done": epoch, "stopped_early": recorder.stopped_early, "best_epoch": es.best_epoch + 1,
            "early_stopping": es.state(), "reduce_lr": rlr.state(), "next_lr": _current_lr(model.optimizer),
            "history": _columns(run.rows),
        })

    def reset() -> str:  # a non-finite loss: back to the last finished epoch's weights, in memory
        model.set_weights(recorder.last_good)
        return f"the model keeps {f'the weights of epoch {len(run.rows)}' if run.rows else 'its initial weights'}"

    # commits (checkpoint + state.json -> history.csv -> model.h5), repairs, the NaN stop: dualsynth.checkpoint.
    # (files.* are looked up at call time: a test can put a kill point on any of them.)
    run = RunFolder(out, who="train_unet", step_key="epoch", finite=("loss",), save_last=save_last,
                    save_best=lambda epoch: files.save_best_weights(out, model),
                    write_history=lambda path, rows: files.write_history_csv(path, _columns(rows)),
                    read_history=lambda path: _rows(files.read_history_csv(path)),
                    last_name=lambda: out / CHECKPOINT_DIR / f"epoch_{run.step:05d}", reset=reset,
                    history_file=HISTORY_FILE)
    best_weights = None
    if state:
        model.optimizer.build(model.trainable_variables)
        status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
            str(out / CHECKPOINT_DIR / state["checkpoint"] / "ckpt"))
        status.assert_existing_objects_matched()
        if cfg.lr_schedule == "plateau":  # a schedule follows the restored step counter
            model.optimizer.learning_rate.assign(float(state["next_lr"]))
        # history.csv and model.h5 are rewritten from the committed state when a kill came before them
        run.resume(initial_epoch, rows=_rows(state["history"]))
        run.repair(best_step=int(state["best_epoch"]))
        if int(state["best_epoch"]) == initial_epoch:  # the committed epoch is the best one
            best_weights = model.get_weights()
        elif (out / WEIGHTS_FILE).is_file():
            current = model.get_weights()
            load_weights_h5(model, out / WEIGHTS_FILE, strict=True)
            best_weights = model.get_weights()
            model.set_weights(current)

    finished = state is not None and (state["stopped_early"] or initial_epoch >= cfg.epochs)
    guard = _NanGuard()
    rlr = _ResumableReduceLR(guard, state["reduce_lr"] if state else None, monitor=MONITOR, mode="max",
                             factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, verbose=verbose)
    es = _ResumableEarlyStopping(guard, state["early_stopping"] if state else None, best_weights,
                                 monitor=MONITOR, mode="max", patience=cfg.early_stopping_patience,
                                 restore_best_weights=True, verbose=verbose)
    meta = {"config": cfg.to_dict(), "fingerprint": fingerprint, "steps_per_epoch": steps}
    recorder = _Recorder(guard, es, run, model.get_weights())
    callbacks: list = [guard, rlr, es, recorder] if cfg.lr_schedule == "plateau" else [guard, es, recorder]
    if progress:
        callbacks.append(_TqdmEpochs(cfg.epochs, initial_epoch, f"U-Net {cfg.encoder}"))

    if not finished:
        train_ds = make_dataset(x_tr, y_tr, cfg.num_classes, cfg.batch_size, shuffle=True, augment=cfg.augment,
                                seed=cfg.seed, repeat=True, steps_per_epoch=steps, first_epoch=initial_epoch)
        val_ds = make_dataset(x_va, y_va, cfg.num_classes, cfg.val_batch_size, shuffle=False)
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
        stopped_early = recorder.stopped_early and len(run.rows) < cfg.epochs
    else:
        stopped_early = bool(state["stopped_early"])
        if best_weights is not None:
            model.set_weights(best_weights)

    history = _columns(run.rows)
    epochs_run = len(run.rows)
    vals = history.get(MONITOR, [])
    finite = [(v, i) for i, v in enumerate(vals) if _finite(v)]
    best_i = max(finite, key=lambda t: (t[0], -t[1]))[1] if finite else (epochs_run - 1)
    result = TrainResult(
        model=model,
        history=history,
        epochs_run=epochs_run,
        best_epoch=best_i + 1 if epochs_run else 0,
        # after a resume: this session plus the epochs of earlier sessions (their rows' seconds), not this one alone
        seconds=time.perf_counter() - t_start + float(sum(history.get("seconds", [])[:initial_epoch])),
        best_val_iou_score=float(vals[best_i]) if finite else None,
        stopped_early=stopped_early,
        resumed_from=initial_epoch,
        out_dir=out,
        config=cfg,
    )
    if guard.failed:
        err = run.stop(f"training diverged, the loss became NaN/inf at {guard.where}")  # resets the weights
        err.result = result  # type: ignore[attr-defined]
        raise err
    if out is not None:
        atomic_write_json(out / SUMMARY_FILE, {
            "config": cfg.to_dict(), "fingerprint": fingerprint, "epochs_run": epochs_run,
            "best_epoch": result.best_epoch, "best_val_iou_score": result.best_val_iou_score,
            "stopped_early": stopped_early,
        })
        if not keep_checkpoint:
            files.delete_checkpoint(out)
    return result


def _finished_result(out: Path, cfg: UNetConfig, summary: Mapping[str, Any], t_start: float) -> TrainResult:
    """A finished run without checkpoint: its best weights and history, no training."""
    model = build_unet(dataclasses.replace(cfg, encoder_weights=None))
    load_weights_h5(model, out / WEIGHTS_FILE, strict=True)
    compile_unet(model, dataclasses.replace(cfg, lr_schedule="plateau"))  # no further training: no schedule
    history = files.read_history_csv(out / HISTORY_FILE)
    return TrainResult(
        model=model,
        history=history,
        epochs_run=len(history["epoch"]),
        best_epoch=int(summary["best_epoch"]),
        seconds=float(sum(history.get("seconds", []))),  # the sessions that trained it, not this reload
        best_val_iou_score=summary.get("best_val_iou_score"),
        stopped_early=bool(summary["stopped_early"]),
        resumed_from=len(history["epoch"]),
        out_dir=out,
        config=cfg,
    )
