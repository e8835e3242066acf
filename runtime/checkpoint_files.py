"""Checkpoint files: the formats a run reads, weights copied into a model with a load report, durable writing,
and the checkpoint folder (epoch checkpoints and the resume state)."""
from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field

import torch

from runtime import packages
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
    """Copy matching tensors (parameters and buffers) into `module` and report the rest. A part of the module with
    `adapt_weights(prefix, weights)` first makes the file's tensors fit itself (an ssl front end merges LoRA
    adapters into a model without them)."""
    for name, part in module.named_modules():
        if hasattr(part, "adapt_weights"):
            weights = part.adapt_weights(f"{name}." if name else "", weights)
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
