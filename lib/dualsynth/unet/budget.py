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
        if budget == "fixed":
            out.append(f"variant={run!r} is a matched control run, which only budget='epochs' needs: under 'fixed' "
                       f"every run gets epochs × steps_per_epoch updates and {r.variant.name} is its own control")
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
    ``UNetConfig.steps_per_epoch`` gets (``None`` under ``epochs``: the training set decides, as before)."""

    updates: int
    steps_per_epoch: int
    config_steps: int | None


def run_budget(run: str, train_size: int, *, budget: str, epochs: int, batch_size: int,
               steps_per_epoch: int = 0) -> RunBudget:
    """The budget of run ``run`` (a variant, or a matched control ``<base>@<updates>``) of ``train_size`` images."""
    check_params({"budget": budget, "steps_per_epoch": steps_per_epoch, "epochs": epochs, "variant": run})
    r = parse_run(run)
    if r.control:
        steps = r.updates // int(epochs)
        return RunBudget(r.updates, steps, steps)
    updates = run_updates(train_size, budget=budget, epochs=epochs, batch_size=batch_size,
                          steps_per_epoch=steps_per_epoch)
    steps = updates // int(epochs)
    return RunBudget(updates, steps, steps if budget == "fixed" else None)


def matched_control(variant: str, train_size: int, base_train_size: int, *, budget: str, epochs: int,
                    batch_size: int, steps_per_epoch: int = 0) -> str | None:
    """The matched control run of a variant with synthetic data (``train_size`` images, its base
    ``base_train_size``): ``<base>@<the variant's updates>``, or ``None`` when the base itself gets as many
    updates (always under ``fixed``)."""
    kw = dict(budget=budget, epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
    v = parse_run(variant).variant
    if v.group not in ("mixed", "synthetic"):
        return None
    updates = run_updates(train_size, **kw)
    if updates == run_updates(base_train_size, **kw):
        return None
    return control_name(f"{v.tier}_0", updates)
