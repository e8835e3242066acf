"""What a resume restores: the random generator states, the progress of an epoch, and every recoverable of a
training run (model, optimiser, scheduler, gradient scaler)."""
from __future__ import annotations

import random
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from runtime import distributed
from runtime.checkpoint_files import FORMAT_TAG, epoch_of, load_weights, model_weights


def rng_states() -> dict:
    """Every random generator state, in types that torch.load(weights_only=True) accepts."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": position,
                        "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def cuda_states_to_restore(saved: list[torch.Tensor], visible: int) -> list[torch.Tensor]:
    """The saved per-GPU generator states that this machine's `visible` GPUs can take (GPU i gets state i).

    A run saved on more GPUs than are visible now restores the first ones and says so."""
    if len(saved) > visible:
        print(f"The checkpoint holds random states of {len(saved)} GPUs and {visible} are visible: "
              f"restoring the first {visible}", file=sys.stderr)
    return list(saved[:visible])


def restore_rng_states(states: dict) -> None:
    """Inverse of rng_states()."""
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        for index, state in enumerate(cuda_states_to_restore(states["cuda"], torch.cuda.device_count())):
            torch.cuda.set_rng_state(state, index)


def own_rng_states(content: dict, rank: int, world_size: int) -> dict | None:
    """The random states this rank saved (multi-process checkpoints keep one set per rank), or None."""
    per_rank = content.get("rank_rng_states")
    if per_rank is not None and len(per_rank) != world_size:
        print(f"The checkpoint holds the random states of {len(per_rank)} processes and this run has {world_size}: "
              "random draws after resuming differ from an uninterrupted run", file=sys.stderr)
    if per_rank is not None and rank < len(per_rank):
        return per_rank[rank]
    return content.get("rng_state") if rank == 0 else None


@dataclass
class EpochTotals:
    """Running sums of one epoch, saved in mid-epoch checkpoints so a resumed epoch logs the same numbers."""

    lr: float = 0.0
    steps: int = 0
    loss_sum: float = 0.0
    prec_sum: float = 0.0
    nonfinite: int = 0


@dataclass
class ResumePoint:
    """Where training continues: first epoch, batches of it already done, and that epoch's totals."""

    first_epoch: int = 1
    skip_steps: int = 0
    totals: EpochTotals | None = None
    source: str = ""


@dataclass
class Recoverables:
    """The parts of a training run that a resume restores, besides the random states and the progress."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler


def training_payload(parts: Recoverables, epoch: int, totals: EpochTotals | None, record: dict) -> dict:
    """Everything needed to resume exactly after `epoch` (+ the steps in `totals` of the next one), with the
    run's configuration `record`. Readable by the original's HEAD loader (weights under model_state_dict).
    In a multi-process run every rank must call it: the ranks' random states are gathered."""
    payload = {"model_state_dict": parts.model.state_dict(),
               "optimizer_state_dict": parts.optimizer.state_dict(),
               "scheduler_state_dict": parts.scheduler.state_dict(),
               "scaler_state_dict": parts.scaler.state_dict(),
               "epoch": epoch, "rng_state": rng_states(), "format": FORMAT_TAG,
               "args": {key: value for key, value in record.items()
                        if isinstance(value, (str, int, float, bool, type(None)))}}
    per_rank = distributed.gather_list(payload["rng_state"])
    if len(per_rank) > 1:
        payload["rank_rng_states"] = per_rank
    if totals is not None:
        payload["epoch_totals"] = asdict(totals)
    return payload


def restore_training(parts: Recoverables, path: str, content: dict, rank: int = 0,
                     world_size: int = 1) -> ResumePoint:
    """Restore every recoverable (and this rank's random states) from a checkpoint read from `path`."""
    print(load_weights(parts.model, model_weights(content, path), path).text())
    if "optimizer_state_dict" not in content:  # the original's bare state_dict: replay the scheduler
        epoch = epoch_of(path)
        for _ in range(epoch):
            parts.scheduler.step()
        return ResumePoint(epoch + 1, source=path)
    parts.optimizer.load_state_dict(content["optimizer_state_dict"])
    if "scheduler_state_dict" in content:
        parts.scheduler.load_state_dict(content["scheduler_state_dict"])
    restore_scaler(parts.scaler, content.get("scaler_state_dict") or {}, path)
    states = own_rng_states(content, rank, world_size)
    if states is not None:
        restore_rng_states(states)
    totals = EpochTotals(**content["epoch_totals"]) if "epoch_totals" in content else None
    return ResumePoint(int(content["epoch"]) + 1, totals.steps if totals else 0, totals, path)


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict, path: str) -> None:
    """Load the gradient scaler's state when both the checkpoint and this run use float16 scaling."""
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)
    elif scaler.is_enabled():
        print(f"{path} was saved without float16 --mixedprec: the gradient scaler starts afresh")
    elif saved:
        print(f"{path} was saved with float16 --mixedprec and this run trains without it: its gradient "
              "scaler state is not used")
