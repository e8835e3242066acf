"""Pieces shared by the per-step learning-rate schedules: their options (and which of them are learning rates),
step counts, the warm-up share and the LambdaLR that applies a pure function of the step (its state is the step
count, so a resume restores it)."""
from __future__ import annotations

from typing import Callable

import torch

WARMUP_OPTIONS = {
    "warmup_epochs": (float, 6.0, "epochs of linear learning-rate warm-up from 0 (per-step schedules)"),
    "final_lr": (float, 5e-5, "learning rate at the end of --max_epoch epochs (per-step schedules)"),
}
WARMUP_LR_OPTIONS = ("final_lr",)  # the options that are learning rates: --lr_reference_batch scales them with --lr


def check_schedule(lr: float, final_lr: float, warmup_epochs: float, max_epoch: int) -> None:
    """Raise a ValueError for settings no per-step schedule can follow."""
    if lr <= 0 or final_lr < 0:
        raise ValueError(f"needs --lr above 0 and --final_lr of 0 or more, got --lr {lr} and --final_lr {final_lr}")
    if not 0 <= warmup_epochs <= max_epoch:
        raise ValueError(f"--warmup_epochs {warmup_epochs} must be between 0 and --max_epoch {max_epoch}")


def step_counts(warmup_epochs: float, max_epoch: int, steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, steps of the whole run), counting at least one step per epoch and per run."""
    per_epoch = max(1, int(steps_per_epoch))
    return round(warmup_epochs * per_epoch), max(1, max_epoch * per_epoch)


def warmup_share(step: int, warmup_steps: int) -> float:
    """Share of the learning rate during a linear warm-up from 0: step / warmup_steps, 1 once it is over."""
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def per_step(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]
             ) -> tuple[torch.optim.lr_scheduler.LambdaLR, str]:
    """(LambdaLR setting the LR to --lr * factor(step) before every step, 'iteration')."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "iteration"
