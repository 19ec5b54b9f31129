"""How many updates (optimizer steps) one U-Net run gets: 06's ``budget`` and matched controls.  No TensorFlow.

Two designs, chosen by 06's ``budget`` parameter:

* ``fixed`` — every run gets ``epochs × steps_per_epoch`` updates (``steps_per_epoch`` ≥ 1), whatever the size of its
  training set: the ``quick`` preset's design.  Synthetic images added to a real set then *replace* updates on real
  images instead of adding to them, and each base variant is its own matched control (equal updates).
* ``epochs`` — the paper's: an epoch is one shuffled pass of ``training images // batch_size`` whole batches (at
  least 1; the rest of each pass is left out, a different rest every epoch), so a bigger training set gets more
  updates (``steps_per_epoch`` must be 0).  A gain of ``SHQ_100`` over ``SHQ_0`` then mixes two causes, more updates
  and synthetic data; the *matched control* ``SHQ_0@<updates>`` (the base trained with as many updates as the
  variant, :func:`matched_control`) separates them.

A ``PT_`` run (pretrain on synthetic, then fine-tune on real; :mod:`dualsynth.unet.pretrain`) has two stages: the
pretraining stage gets what a plain run on its synthetic images would get, the fine-tuning stage exactly its base
run's budget, and its ``updates`` are their sum, so its matched control ``<base>@<sum>`` exists under either budget
(:func:`run_budget`, :func:`matched_control`).

A budget is the most a run may use: early stopping (on the validation IoU) can end it sooner, equally for a variant
and its control.  :func:`run_updates` is the one place that counts updates; :func:`epoch_steps` is what
:func:`dualsynth.unet.train.train_unet` uses per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..config import ParamError
from ..variants import control_name, parse_run

__all__ = ["BUDGETS", "epoch_steps", "run_updates", "RunBudget", "run_budget", "matched_control",
           "budget_problems", "check_params"]

BUDGETS = ("fixed", "epochs")


def epoch_steps(train_size: int, batch_size: int, fixed: int | None = None) -> int:
    """Updates in one epoch: ``fixed`` when given (≥ 1), else ``max(1, train_size // batch_size)``."""
    if fixed:
        return int(fixed)
    if int(train_size) < 1 or int(batch_size) < 1:
        raise ValueError(f"train_size and batch_size must be ≥ 1, got {train_size} and {batch_size}")
    return max(1, int(train_size) // int(batch_size))


def budget_problems(budget: Any, steps_per_epoch: Any, epochs: Any = 1, run: str | None = None) -> list[str]:
    """What is inconsistent in 06's ``budget`` / ``steps_per_epoch`` / ``epochs`` / ``variant`` (empty: nothing)."""
    if budget not in BUDGETS:
        return [f"budget={budget!r}: 'fixed' (epochs × steps_per_epoch updates for every run, the quick design) or "
                "'epochs' (steps per epoch = training images // batch_size, the paper's)"]
    out = []
    if budget == "fixed" and not steps_per_epoch:
        out.append("budget='fixed' with steps_per_epoch=0: a fixed budget needs steps_per_epoch ≥ 1 (updates per "
                   "epoch); steps_per_epoch=0 (training images // batch_size) is the paper's design: set "
                   "budget='epochs' (e.g. --set budget=epochs)")
    if budget == "epochs" and steps_per_epoch:
        out.append(f"budget='epochs' with steps_per_epoch={steps_per_epoch}: under 'epochs' the training set sets "
                   "the steps per epoch (training images // batch_size); set steps_per_epoch=0 (e.g. --set "
                   f"steps_per_epoch=0), or budget='fixed' for {steps_per_epoch} updates per epoch")
    r = parse_run(run) if run else None
    if r is not None and r.control:
        fixed_updates = (epochs * steps_per_epoch if budget == "fixed" and isinstance(epochs, int)
                         and isinstance(steps_per_epoch, int) else None)
        if fixed_updates is not None and r.updates == fixed_updates:
            out.append(f"variant={run!r} is a matched control run with the {r.updates} updates every run gets under "
                       f"budget='fixed' (epochs × steps_per_epoch): that is {r.variant.name} itself, its variants' "
                       "own control; under 'fixed' only a PT_ variant (pretraining + the base's budget) needs a "
                       "control run")
        elif isinstance(epochs, int) and epochs >= 1 and (r.updates % epochs or r.updates < epochs):
            out.append(f"variant={run!r}: {r.updates} updates are not a whole number (≥ 1) of steps per epoch over "
                       f"epochs={epochs}; a control takes the epochs of the variant it matches")
    return out


def check_params(params: Mapping[str, Any], where: str = "parameters of 06_unet_training") -> None:
    """Raise :class:`~dualsynth.config.ParamError` listing every inconsistency of 06's budget parameters."""
    problems = budget_problems(params.get("budget"), params.get("steps_per_epoch", 0), params.get("epochs", 1),
                               params.get("variant"))
    if problems:
        raise ParamError(f"bad {where}:\n  " + "\n  ".join(problems))


def run_updates(train_size: int, *, budget: str, epochs: int, batch_size: int, steps_per_epoch: int = 0) -> int:
    """The update budget of a plain run of a variant with ``train_size`` training images.

    ``fixed``: ``epochs × steps_per_epoch``; ``epochs``: ``epochs × max(1, train_size // batch_size)`` — e.g.
    33 images, batch 2, 20 epochs: 16 steps per epoch, 320 updates."""
    problems = budget_problems(budget, steps_per_epoch)
    if problems:
        raise ParamError("; ".join(problems))
    return int(epochs) * epoch_steps(train_size, batch_size, steps_per_epoch if budget == "fixed" else None)


@dataclass(frozen=True)
class RunBudget:
    """One run's budget: ``updates`` = ``epochs × steps_per_epoch``; ``config_steps`` is what
    ``UNetConfig.steps_per_epoch`` gets (``None`` under ``epochs``: the training set decides, as before).

    A ``PT_`` run (pretrain on synthetic, then fine-tune on real) has two stages: ``pretrain`` is the budget of its
    pretraining stage, the other fields are its fine-tuning stage's, and ``updates`` is the total,
    ``pretrain.updates + epochs × steps_per_epoch`` (what its matched control ``<base>@<updates>`` gets)."""

    updates: int
    steps_per_epoch: int
    config_steps: int | None
    pretrain: "RunBudget | None" = None

    @property
    def finetune_updates(self) -> int:
        """The updates of the last (for a plain run: the only) stage."""
        return self.updates - (self.pretrain.updates if self.pretrain else 0)

    def record(self, epochs_run: int, pretrain_epochs_run: int | None = None) -> dict[str, int]:
        """The budget fields of 06's ``metrics.json``: ``updates`` (the budget, all stages), ``steps_per_epoch`` and
        ``updates_run`` (what was used; early stopping may end a stage sooner); for a ``PT_`` run also
        ``updates_pretrain`` / ``updates_finetune`` (budgets per stage), ``updates_run_pretrain`` /
        ``updates_run_finetune`` and ``steps_per_epoch_pretrain``."""
        run = int(epochs_run) * self.steps_per_epoch
        if self.pretrain is None:
            return {"updates": self.updates, "steps_per_epoch": self.steps_per_epoch, "updates_run": run}
        pre = int(pretrain_epochs_run or 0) * self.pretrain.steps_per_epoch
        return {"updates": self.updates, "steps_per_epoch": self.steps_per_epoch, "updates_run": pre + run,
                "updates_pretrain": self.pretrain.updates, "updates_finetune": self.finetune_updates,
                "steps_per_epoch_pretrain": self.pretrain.steps_per_epoch, "updates_run_pretrain": pre,
                "updates_run_finetune": run}


def run_budget(run: str, train_size: int, *, budget: str, epochs: int, batch_size: int,
               steps_per_epoch: int = 0, pretrain_size: int = 0) -> RunBudget:
    """The budget of run ``run`` (a variant, or a matched control ``<base>@<updates>``) of ``train_size`` images.

    A ``PT_`` variant also needs ``pretrain_size``, the number of its synthetic pretraining images: its pretraining
    stage gets the budget a plain run on those images would get — under ``fixed`` the same ``epochs ×
    steps_per_epoch`` as every run, under ``epochs`` ``epochs × max(1, pretrain_size // batch_size)`` — and its
    fine-tuning stage exactly the base run's budget (``train_size`` = the real base set).  E.g. ``PT_SHQ_100`` (16
    synthetic, then SHQ_0's 16 real images; batch 2): 20 epochs under ``epochs``: 160 + 160 = 320 updates; under
    ``fixed`` 10 × 16: 160 + 160 = 320."""
    check_params({"budget": budget, "steps_per_epoch": steps_per_epoch, "epochs": epochs, "variant": run})
    r = parse_run(run)
    if r.control:
        steps = r.updates // int(epochs)
        return RunBudget(r.updates, steps, steps)
    kw = dict(budget=budget, epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
    updates = run_updates(train_size, **kw)
    steps = updates // int(epochs)
    plain = RunBudget(updates, steps, steps if budget == "fixed" else None)
    if r.variant.group != "pretrain":
        return plain
    if isinstance(pretrain_size, bool) or int(pretrain_size) < 1:
        raise ParamError(f"{run} pretrains on synthetic images: its budget needs pretrain_size ≥ 1 (the number of "
                         f"images in its variant file's 'pretrain' list), got {pretrain_size}")
    pre = run_budget(f"{r.variant.tier}_0", int(pretrain_size), **kw)  # a plain run on the synthetic images
    return RunBudget(pre.updates + updates, steps, plain.config_steps, pretrain=pre)


def matched_control(variant: str, train_size: int, base_train_size: int, *, budget: str, epochs: int,
                    batch_size: int, steps_per_epoch: int = 0, pretrain_size: int = 0) -> str | None:
    """The matched control run of a variant with synthetic data (``train_size`` images, its base
    ``base_train_size``): ``<base>@<the variant's updates>``, or ``None`` when the base itself gets as many
    updates (always under ``fixed`` for a mixed variant).  A ``PT_`` variant (``pretrain_size`` synthetic images,
    then ``train_size`` = its base's real images) trains longer than its base under either budget: its control is
    ``<base>@<pretraining + fine-tuning updates>`` (:func:`run_budget`)."""
    kw = dict(budget=budget, epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
    v = parse_run(variant).variant
    if v.group not in ("mixed", "synthetic", "pretrain"):
        return None
    updates = (run_budget(variant, train_size, pretrain_size=pretrain_size, **kw).updates if v.group == "pretrain"
               else run_updates(train_size, **kw))
    if updates == run_updates(base_train_size, **kw):
        return None
    return control_name(f"{v.tier}_0", updates)
