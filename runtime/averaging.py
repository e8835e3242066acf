"""Averaging the model weights of several checkpoints of one model."""
from __future__ import annotations

import torch

from runtime.checkpoint_files import CheckpointError, model_weights, read_checkpoint


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
