"""Per-step learning rate with a linear warm-up from 0 to --lr, then a cosine decay to --final_lr at the end of
--max_epoch epochs (the warm-up + cosine schedule of 3D-Speaker's recipes).

With N = --max_epoch * steps_per_epoch steps in the run and W = --warmup_epochs * steps_per_epoch, the LR used
for step i (counted from 0) is --lr * i / W during the warm-up and then
    --final_lr + (--lr - --final_lr) * (1 + cos(pi * min(1, (i - W) / (N - W)))) / 2,
so it is --lr at the end of the warm-up and stays at --final_lr after N steps."""
from __future__ import annotations

import functools
import math

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


def cosine_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """LR / --lr for `step`: the warm-up share, then a half cosine from 1 down to final_ratio."""
    if step < warmup_steps:
        return warmup_share(step, warmup_steps)
    decay_steps = total_steps - warmup_steps
    done = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return final_ratio + (1.0 - final_ratio) * (1.0 + math.cos(math.pi * done)) / 2


def Scheduler(optimizer: torch.optim.Optimizer, lr: float, max_epoch: int, warmup_epochs: float = 6.0,
              final_lr: float = 5e-5, steps_per_epoch: int = 1, **kwargs):
    """Return (LambdaLR following the warm-up and cosine decay, 'iteration'): stepped after every step."""
    check_schedule(lr, final_lr, warmup_epochs, max_epoch)
    warmup, total = step_counts(warmup_epochs, max_epoch, steps_per_epoch)
    print(f"Initialised warm-up + cosine LR scheduler: {warmup} warm-up steps, {lr:g} -> {final_lr:g} "
          f"over {total} steps")
    return per_step(optimizer, functools.partial(cosine_factor, warmup_steps=warmup, total_steps=total,
                                                 final_ratio=final_lr / lr))
