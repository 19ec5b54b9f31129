"""Training and evaluation of the PixelCNN priors, checkpoints and the saved-prior format.

* :func:`train_prior` -- maximum-likelihood training (sparse softmax
  cross-entropy, Adam, a compiled step, ``tf.data`` input); :func:`evaluate_nll`
  the mean negative log-likelihood per code.
* :func:`fit_prior` -- :func:`train_prior` with checkpoints: resumable, keeps the
  model with the lowest validation NLL, refuses a checkpoint trained on other
  inputs (code maps and, for a conditioned prior, their conditions).
* :func:`save_prior` / :func:`load_prior` -- weights plus ``model.config``.

Conditioned priors (``model.num_conditions`` = C > 0) take per-map conditions
``conditions_train`` / ``conditions_val`` of shape (N, C), one row per code map
(the class fractions of its mask; a dihedrally augmented map repeats the row of
its original, fractions being invariant to rotation and reflection).

Checkpointing: the models are ``snt.Module``; ``tf.train.Checkpoint(model=model,
optimizer=opt)`` works directly.  :func:`save_prior` / :func:`load_prior` store
the weights together with ``model.config`` (the constructor arguments,
``num_conditions`` included) so that :func:`load_prior` rebuilds the module
without any other information.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import sonnet as snt
import tensorflow as tf

# io through its module (``_io.replace_dir``, …), looked up at each call: the kill-point tests replace those
# functions in dualsynth.io and must reach save_prior and fit_prior
from .. import io as _io
from ..checkpoint import RunFolder, TrainingDiverged
from .conditioning import check_condition
from .layers import _check_int
from .model import _cached, current_config, make_prior

__all__ = [
    "TrainHistory",
    "train_prior",
    "fit_prior",
    "evaluate_nll",
    "nats_to_bits",
    "save_prior",
    "load_prior",
]


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


def _check_conditions(model, name: str, conditions, codes: np.ndarray | None) -> np.ndarray | None:
    """Per-map conditions (N, C) float32 for ``codes`` (None for an unconditioned prior)."""
    if codes is None:
        if conditions is not None:
            raise ValueError(f"{name} given without code maps")
        return None
    return check_condition(conditions, model.num_conditions, len(codes), name=name)


def _nll_sum(model, codes, condition=None):
    logits = model(codes) if condition is None else model(codes, condition=condition)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=codes, logits=logits)
    return tf.reduce_sum(ce), tf.size(ce)


def _eval_fn(model):
    def build():
        if model.num_conditions:
            @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.int32),
                                          tf.TensorSpec([None, model.num_conditions], tf.float32)])
            def fn(codes, condition):
                return _nll_sum(model, codes, condition)
        else:
            @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.int32)])
            def fn(codes):
                return _nll_sum(model, codes)
        return fn
    return _cached(model, "eval", build)


def nats_to_bits(nats: float) -> float:
    return float(nats) / math.log(2.0)


def evaluate_nll(model, codes: np.ndarray, batch_size: int = 32, *, bits: bool = False,
                 conditions: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood per code of ``codes`` (N, H, W): nats (or bits).

    ``conditions`` (N, C): the per-map conditions, required iff the prior is conditioned.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    arr = _check_codes("codes", codes, model.num_embeddings)
    cond = _check_conditions(model, "conditions", conditions, arr)
    fn = _eval_fn(model)
    total, count = 0.0, 0
    for start in range(0, len(arr), batch_size):
        args = [tf.constant(arr[start:start + batch_size])]
        if cond is not None:
            args.append(tf.constant(cond[start:start + batch_size]))
        s, n = fn(*args)
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
                val_batch_size: int | None = None, conditions_train: np.ndarray | None = None,
                conditions_val: np.ndarray | None = None) -> TrainHistory:
    """Maximum-likelihood training of a prior on code maps.

    ``conditions_train`` / ``conditions_val`` (N, C): one condition vector per
    code map, in the order of the maps; required iff ``model.num_conditions`` > 0
    (the rows are shuffled and batched together with their maps).

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
    cond_train = _check_conditions(model, "conditions_train", conditions_train, train)
    cond_val = _check_conditions(model, "conditions_val", conditions_val, val)
    opt = optimizer if optimizer is not None else snt.optimizers.Adam(learning_rate)

    ds = (tf.data.Dataset.from_tensor_slices(train if cond_train is None else (train, cond_train))
          .shuffle(len(train), seed=seed, reshuffle_each_iteration=True)
          .repeat()
          .batch(batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))

    variables = model.trainable_variables

    @tf.function
    def train_step(batch):
        codes, condition = batch if cond_train is not None else (batch, None)
        with tf.GradientTape() as tape:
            total, count = _nll_sum(model, codes, condition)
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
                val_nll = float("nan") if val is None else evaluate_nll(model, val, vb, conditions=cond_val)
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
    path = Path(path)
    _io.recover_dir(path, complete=_complete_prior)  # finish a swap killed between its renames before tmp is reused
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tf.train.Checkpoint(model=model).write(str(tmp / _WEIGHTS))
    if step is not None:
        _io.atomic_write_json(tmp / "step.json", {"step": int(step)})
    if generator_id is not None:
        _io.atomic_write_json(tmp / "generator.json", {"generator_id": generator_id})
    _io.atomic_write_json(tmp / _CONFIG, model.config)  # last: a folder with prior.json is complete
    _io.replace_dir(tmp, path)
    return str(path / _WEIGHTS)


def _complete_prior(folder: Path) -> bool:
    return (Path(folder) / _CONFIG).is_file()  # save_prior writes prior.json last


def _saved_step(path: Path) -> int | None:
    f = Path(path) / "step.json"
    return int(_io.read_json(f)["step"]) if f.is_file() and _complete_prior(path) else None


def load_prior(path: str | os.PathLike):
    """Rebuild a prior saved by :func:`save_prior` (config + weights; a ``prior.json`` with the older key
    ``num_blocks`` reads as ``num_layers``: :func:`~dualsynth.prior.model.current_config`)."""
    if not os.path.exists(path):  # only finish a swap killed between its renames; never touch a live folder
        _io.recover_dir(path, complete=_complete_prior)
    path = os.fspath(path)
    cfg_file = os.path.join(path, _CONFIG)
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no prior saved in {path!r} ({_CONFIG} missing)")
    cfg = current_config(_io.read_json(cfg_file))
    kind = cfg.pop("kind")
    num_embeddings = cfg.pop("num_embeddings")
    model = make_prior(kind, num_embeddings, **cfg)
    tf.train.Checkpoint(model=model).read(os.path.join(path, _WEIGHTS)).assert_consumed()
    model.saved_in = path
    gen = os.path.join(path, "generator.json")
    model.generator_id = _io.read_json(gen)["generator_id"] if os.path.exists(gen) else None
    return model




# --------------------------------------------------------------------------- #
# Checkpointed, resumable training with the best model kept
# --------------------------------------------------------------------------- #
def fit_prior(model, codes_train: np.ndarray, codes_val: np.ndarray, checkpoint_dir: str | os.PathLike, *,
              steps: int, batch_size: int, learning_rate: float = 1e-3, seed: int = 0, eval_every: int = 50,
              patience: int = 0, progress: bool = True, conditions_train: np.ndarray | None = None,
              conditions_val: np.ndarray | None = None) -> dict:
    """:func:`train_prior` with checkpoints: resumable, keeps the model with the lowest validation NLL.

    ``checkpoint_dir/last/`` holds model + optimizer + step (saved at every evaluation); ``best/`` the prior with
    the lowest validation NLL (:func:`save_prior` format); ``history.csv`` one row per evaluation.  Calling again
    with the same folder continues from ``last/`` up to ``steps`` in total (an interrupted and resumed run
    reaches the same number of steps as an uninterrupted one).  ``patience`` > 0 stops when the validation NLL
    has not improved for that many evaluations (small code-map sets overfit quickly).  ``conditions_train`` /
    ``conditions_val``: per-map conditions of a conditioned prior (see :func:`train_prior`); they are part of the
    input fingerprint, so a checkpoint trained with other conditions is refused like one of other code maps.
    Each evaluation is committed by :class:`dualsynth.checkpoint.RunFolder`: ``last/`` → ``history.csv`` →
    ``best/``; a resume repairs a kill between any two of them.

    Returns ``{"history": rows, "best_step", "best_val_nll", "final_step", "stopped_early"}``; ``model`` ends
    with the BEST weights.
    """
    ckpt_dir = Path(checkpoint_dir)
    cond_train = _check_conditions(model, "conditions_train", conditions_train, np.asarray(codes_train))
    cond_val = _check_conditions(model, "conditions_val", conditions_val,
                                 None if codes_val is None else np.asarray(codes_val))
    (ckpt_dir / "last").mkdir(parents=True, exist_ok=True)
    _io.recover_dir(ckpt_dir / "best", complete=_complete_prior)  # a kill between the two renames of a best swap
    opt = snt.optimizers.Adam(learning_rate)
    step_var = tf.Variable(0, dtype=tf.int64)
    # create the optimizer's slots before restoring so they are restored too
    model(tf.zeros((1, 2, 2), tf.int32),
          **({"condition": tf.zeros((1, model.num_conditions))} if model.num_conditions else {}))
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var)
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / "last"), max_to_keep=1)
    columns = ("step", "train_loss", "val_nll", "seconds")

    def save_last(step: int) -> None:
        step_var.assign(step)
        manager.save()

    def reset() -> str:  # a non-finite state: back to the last good checkpoint, in memory
        if not manager.latest_checkpoint:
            return ""
        ckpt.restore(manager.latest_checkpoint)
        return f"the model was reset to it in memory, and the best prior in {ckpt_dir / 'best'} is kept"

    # commits (last -> history -> best), resume, repairs and the NaN stop: dualsynth.checkpoint
    run = RunFolder(ckpt_dir, who="fit_prior", score="val_nll", finite=("train_loss",), save_last=save_last,
                    save_best=lambda step: save_prior(model, ckpt_dir / "best", step=step),
                    write_history=lambda path, rows: _io.write_rows_csv(path, columns, rows, int_columns=("step",)),
                    read_history=lambda path: _io.read_rows_csv(path, columns, int_columns=("step",)),
                    best_saved_at=lambda: _saved_step(ckpt_dir / "best"), last_name=lambda: ckpt_dir / "last",
                    reset=reset)
    inputs = [np.asarray(codes_train), np.asarray(codes_val)]
    if cond_train is not None:  # unconditioned: the same fingerprint as before conditions existed
        inputs += ["conditions", cond_train, cond_val]
    resuming = manager.latest_checkpoint is not None
    saved_config = ckpt_dir / "best" / _CONFIG
    run.open(_io.fingerprint(*inputs), "prior checkpoint", resuming,
             head=f"{ckpt_dir} holds a prior with config other than this one",
             advice=f"delete {ckpt_dir} or pass a new experiment name",
             # the init seed may differ; a gated prior saved before conditioning existed has num_conditions 0
             may_differ=("seed",), defaults={"num_conditions": 0},
             config=[(saved_config, current_config(_io.read_json(saved_config)), model.config)] if resuming
             and saved_config.is_file() else ())
    vb = max(batch_size, 8)  # as train_prior evaluates
    if resuming:
        ckpt.restore(manager.latest_checkpoint)
        run.resume(int(step_var.numpy()))  # history rows after 'last' are dropped
        # killed after committing 'last' but before its history row: evaluate that step again (its training loss
        # since the previous row is lost); before 'best': save it again
        run.repair(reevaluate=lambda step: {
            "step": step, "train_loss": math.nan, "seconds": math.nan,
            "val_nll": evaluate_nll(model, codes_val, vb, conditions=cond_val)})
    done = int(step_var.numpy())
    rows = run.rows
    since_best = 0 if run.best is None else sum(1 for r in rows if r["step"] > run.best["step"])
    stopped = bool(patience and since_best >= patience)

    def on_eval(rec: dict) -> bool:
        nonlocal since_best, stopped
        row = {"step": done + rec["step"], "train_loss": rec["train_loss"], "val_nll": rec["val_nll"],
               "seconds": rec["seconds"]}
        since_best = 0 if run.commit(row["step"], row) else since_best + 1
        if patience and since_best >= patience:
            stopped = True
            return True
        return False

    if done < steps and not stopped:
        try:
            train_prior(model, codes_train, codes_val, steps=steps - done, batch_size=batch_size,
                        learning_rate=learning_rate, seed=seed + done, log_every=eval_every, callback=on_eval,
                        progress=progress, optimizer=opt, conditions_train=cond_train, conditions_val=cond_val)
        except TrainingDiverged:
            raise
        except FloatingPointError as e:
            raise run.stop(f"{e} (counted from step {done})") from e
    best = run.best
    best_model = load_prior(ckpt_dir / "best")
    for v_best, v in zip(best_model.variables, model.variables):
        v.assign(v_best)
    return {"history": rows, "best_step": int(best["step"]) if best else None,
            "best_val_nll": float(best["val_nll"]) if best else None, "final_step": int(step_var.numpy()),
            "stopped_early": stopped}
