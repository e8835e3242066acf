"""Everything a run saves and restores: checkpoint formats, weights with a load report, the optimiser, scheduler,
gradient scaler, random states and progress of a training run, and durable writing."""
from __future__ import annotations

import glob
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from runtime import distributed, packages
from runtime.atomic_files import atomic_write
from runtime.errors import UserError

CHECKPOINT_GLOB = "model0*.model"
RESUME_NAME = "resume.model"  # newest mid-epoch or end-of-epoch state, beside the epoch checkpoints
FORMAT_TAG = "voxceleb_trainer_next/1"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used, with a message for people."""


@dataclass
class LoadReport:
    """What happened when weights were copied from a file into a model."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    truncated: list[tuple[str, int, int]] = field(default_factory=list)

    def missing_in(self, prefix: str) -> list[str]:
        """Missing keys that start with `prefix` (e.g. '__S__.')."""
        return [key for key in self.missing if key.startswith(prefix)]

    def mismatched_in(self, prefix: str) -> list[tuple[str, tuple, tuple]]:
        """Shape-mismatched keys that start with `prefix`."""
        return [item for item in self.mismatched if item[0].startswith(prefix)]

    def text(self, limit: int = 8) -> str:
        """One human-readable block describing the load."""
        lines = [f"Loaded {len(self.loaded)} tensors from {self.path}"]

        def listing(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:limit])
                             + (" ..." if len(items) > limit else ""))

        listing("missing in the file, left at their initial values", self.missing)
        listing("in the file but not in the model, ignored", self.unexpected)
        listing("shape differs, ignored", [f"{k} model {list(m)} file {list(f)}" for k, m, f in self.mismatched])
        listing("loss classes kept: the first ones of the file's", [f"{k} {kept} of {total}"
                                                                     for k, kept, total in self.truncated])
        return "\n".join(lines)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file onto the CPU without executing pickled code."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise CheckpointError(f"Cannot read checkpoint {path}: {type(error).__name__}: {error}. "
                              "Is it a complete PyTorch checkpoint file?") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(content).__name__}, expected a dict of tensors")
    return content


def model_weights(content: dict, path: str = "") -> dict[str, torch.Tensor]:
    """The model state_dict inside any accepted checkpoint layout (a package's after checking its hash)."""
    if packages.is_package(content):
        weights = packages.verified_weights(content, path)
    elif "model_state_dict" in content:
        weights = content["model_state_dict"]
    elif set(content) == {"model"} and isinstance(content["model"], dict):
        weights = {"__S__." + key: value for key, value in content["model"].items()}
    else:
        weights = content
    tensors = {key: value for key, value in weights.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"Checkpoint {path} contains no tensors")
    return tensors


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: str = "") -> LoadReport:
    """Copy matching tensors (parameters and buffers) into `module` and report the rest."""
    own = module.state_dict()
    report = LoadReport(path=path)
    with torch.no_grad():
        for key, value in weights.items():
            name = key if key in own else key.replace("module.", "")
            if name not in own:
                report.unexpected.append(key)
            elif classes_to_keep(name, own[name], value):
                own[name].copy_(value[:own[name].shape[0]])
                report.loaded.append(name)
                report.truncated.append((name, own[name].shape[0], value.shape[0]))
            elif own[name].shape != value.shape:
                report.mismatched.append((name, tuple(own[name].shape), tuple(value.shape)))
            else:
                own[name].copy_(value)
                report.loaded.append(name)
    loaded = set(report.loaded)
    report.missing = [key for key in own if key not in loaded]
    if not report.loaded:
        print(report.text())
        raise CheckpointError(f"Checkpoint {path} shares no tensor with this model (same name and shape; see the "
                              "list above). Check --model, --encoder_type, --n_mels and --nOut against the checkpoint.")
    return report


def classes_to_keep(name: str, own: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether a loss tensor of the file holds a whole multiple of the model's classes along its first axis, as a
    classifier trained with --speed_perturb does (its first classes are the speakers at speed 1): the model then
    keeps those (large-margin fine-tuning without speed perturbation)."""
    return (name.startswith("__L__.") and own.dim() == value.dim() and own.dim() >= 1
            and own.shape[1:] == value.shape[1:] and value.shape[0] > own.shape[0]
            and value.shape[0] % own.shape[0] == 0)


def write_atomically(payload: dict, path: str | os.PathLike) -> None:
    """torch.save through a temporary file, flushed to disk with its folder before and after the rename."""
    with atomic_write(path, durable=True) as temporary:
        torch.save(payload, temporary)


def epoch_of(path: str) -> int:
    """Epoch number in a file name like model000000010.model."""
    match = re.search(r"model(\d+)\.model$", os.path.basename(path))
    if not match:
        raise CheckpointError(f"Not a checkpoint file name: {path}")
    return int(match.group(1))


def saved_checkpoints(model_save_path: str) -> list[str]:
    """Checkpoints of an experiment, oldest first (temporary files are never listed)."""
    return sorted(glob.glob(os.path.join(model_save_path, CHECKPOINT_GLOB)))


def check_mostly_fits(report: LoadReport, model: torch.nn.Module, path: str) -> None:
    """Refuse a checkpoint that fills less than half of the embedding model's (`__S__`) tensors: it belongs to
    another network, and training on would silently start from scratch. A new loss head still loads."""
    own = [key for key in model.state_dict() if key.startswith("__S__.")]
    loaded = [key for key in report.loaded if key.startswith("__S__.")]
    if own and len(loaded) < len(own) / 2:
        raise CheckpointError(f"{path} fills only {len(loaded)} of the {len(own)} tensors of the embedding model "
                              "(see the list above): it is a checkpoint of another network. Check --model, "
                              "--encoder_type, --n_mels, --nOut and --log_input against it.")


def has_training_state(model_save_path: str) -> bool:
    """Whether the folder holds a resume state or an epoch checkpoint."""
    return bool(saved_checkpoints(model_save_path)) or os.path.exists(os.path.join(model_save_path, RESUME_NAME))


def latest_state(model_save_path: str) -> tuple[str, dict] | None:
    """(path, content) of the newest readable training state: the mid-epoch state or the newest epoch checkpoint.

    Damaged files are skipped with a message."""
    candidates = []
    resume_path = os.path.join(model_save_path, RESUME_NAME)
    for path in [resume_path, *reversed(saved_checkpoints(model_save_path))]:
        if not os.path.exists(path):
            continue
        try:
            content = read_checkpoint(path)
        except CheckpointError as error:
            print(f"Skipping checkpoint that cannot be resumed from: {error}", file=sys.stderr)
            continue
        epoch = int(content["epoch"]) if "optimizer_state_dict" in content else epoch_of(path)
        candidates.append(((epoch, content.get("epoch_totals", {}).get("steps", 0)), path, content))
        if path != resume_path:
            break  # the newest readable epoch checkpoint
    if not candidates:
        return None
    _, path, content = max(candidates, key=lambda candidate: candidate[0])
    return path, content


# ---------------------------------------------------------------- averaging

def average_weights(paths: list[str]) -> dict[str, torch.Tensor]:
    """The mean of the floating-point model weights of several checkpoints; other tensors (integer buffers such
    as num_batches_tracked) come from the last one. All must hold the same keys with the same shapes."""
    if not paths:
        raise CheckpointError("No checkpoints to average")
    first_path, sums, last = paths[0], {}, {}
    for path in paths:
        last = model_weights(read_checkpoint(path), path)
        if sums:
            check_same_layout(first_path, sums, path, last)
        for key, value in last.items():
            if value.is_floating_point():
                sums[key] = sums[key] + value.double() if key in sums else value.double()
            else:
                sums.setdefault(key, value)
    return {key: (sums[key] / len(paths)).to(value.dtype) if value.is_floating_point() else value
            for key, value in last.items()}


def check_same_layout(first_path: str, first: dict[str, torch.Tensor], path: str,
                      weights: dict[str, torch.Tensor]) -> None:
    """Raise a CheckpointError naming both files when their weights differ in keys or shapes."""
    only_first, only_here = sorted(set(first) - set(weights)), sorted(set(weights) - set(first))
    if only_first or only_here:
        raise CheckpointError(f"Cannot average {first_path} and {path}: their weights differ: "
                              f"{key_listing(only_first)} only in the first, {key_listing(only_here)} only in the "
                              "second; average checkpoints of one model")
    for key, value in weights.items():
        if value.shape != first[key].shape:
            raise CheckpointError(f"Cannot average {first_path} and {path}: {key} has shape "
                                  f"{list(first[key].shape)} in the first and {list(value.shape)} in the second; "
                                  "average checkpoints of one model")


def key_listing(keys: list[str], limit: int = 3) -> str:
    """A few keys for a one-line message: 'a, b, c and 4 more' or 'none'."""
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------- random states

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


# ---------------------------------------------------------------- progress and the training state

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
