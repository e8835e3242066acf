"""Per-step learning rate with a linear warm-up from 0 and an exponential decay to --final_lr over the whole run:
wespeaker's ExponentialDecrease with warm_from_zero, the schedule of its ResNet34 recipe.

With N = --max_epoch * steps_per_epoch steps in the run and W = --warmup_epochs * steps_per_epoch, the LR used
for step i (counted from 0) is
    lr(i) = --lr * min(1, i / W) * (--final_lr / --lr) ** (min(i, N) / N).
The decay runs over every step, warm-up included, and the warm-up multiplies it, as in wespeaker: at the end of
the warm-up the LR is --lr * (--final_lr / --lr) ** (W / N), not --lr (0.074 for 0.1 -> 5e-5 over 150 epochs
with 6 warm-up epochs). After N steps it stays at --final_lr."""
from __future__ import annotations

import functools

import torch

from scheduler.ScheduleHelpers import (
    WARMUP_LR_OPTIONS,
    WARMUP_OPTIONS,
    check_schedule,
    per_step,
    step_counts,
    warmup_share,
)

OPTIONS = dict(WARMUP_OPTIONS)
LR_OPTIONS = WARMUP_LR_OPTIONS


def exponential_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """LR / --lr for `step`: the warm-up share times final_ratio ** (share of the run done)."""
    return warmup_share(step, warmup_steps) * final_ratio ** (min(step, total_steps) / total_steps)


def Scheduler(optimizer: torch.optim.Optimizer, lr: float, max_epoch: int, warmup_epochs: float = 6.0,
              final_lr: float = 5e-5, steps_per_epoch: int = 1, **kwargs):
    """Return (LambdaLR following the warm-up and exponential decay, 'iteration'): stepped after every step."""
    check_schedule(lr, final_lr, warmup_epochs, max_epoch)
    if final_lr == 0:
        raise ValueError("an exponential decay cannot reach --final_lr 0; give a positive --final_lr")
    warmup, total = step_counts(warmup_epochs, max_epoch, steps_per_epoch)
    print(f"Initialised warm-up + exponential LR scheduler: {warmup} warm-up steps, {lr:g} -> {final_lr:g} "
          f"over {total} steps")
    return per_step(optimizer, functools.partial(exponential_factor, warmup_steps=warmup, total_steps=total,
                                                 final_ratio=final_lr / lr))
