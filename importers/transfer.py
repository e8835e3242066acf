"""Moving a release's tensors into our network: keys renamed by rules, every tensor accounted for."""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from importers.release_files import ReleaseError

# (pattern, replacement) applied in order with re.sub; a replacement may be a function of the match
Rule = tuple[str, str | Callable[[re.Match], str]]
FRONT_END_PREFIX = "fbank."  # our front end's buffers are built from the settings, never taken from a release


def renamed(key: str, rules: list[Rule]) -> str:
    """A release key under our names: every rule applied in turn."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def fitted(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """`value` in the target's shape (a 1x1 Conv1d weight [out, in, 1] for a Linear [out, in]), else None."""
    if value.shape == target.shape:
        return value
    squeezed = [size for size in value.shape if size != 1]
    if value.numel() == target.numel() and squeezed == [size for size in target.shape if size != 1]:
        return value.reshape(target.shape)
    return None


def listing(items: list[str], limit: int = 4) -> str:
    """A few items for a one-line message."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def transfer(release: dict[str, torch.Tensor], rules: list[Rule], model: nn.Module, source: str, network: str,
             ignored: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Our model's state_dict filled from a release's tensors renamed by `rules` (keys starting with `ignored`,
    such as a classifier, are left out). Every tensor of ours must come from exactly one of the release and every
    release tensor must land, else a ReleaseError says that `source` is not a `network`."""
    own = {key: value for key, value in model.state_dict().items() if not key.startswith(FRONT_END_PREFIX)}
    filled: dict[str, torch.Tensor] = {}
    unplaced, mismatched = [], []
    for key, value in release.items():
        if key.startswith(ignored):
            continue
        name = renamed(key, rules)
        if name not in own or name in filled:
            unplaced.append(key)
            continue
        value = fitted(value, own[name])
        if value is None:
            mismatched.append(f"{key} {list(release[key].shape)} (ours {list(own[name].shape)})")
            continue
        filled[name] = value.to(own[name].dtype)
    missing = [key for key in own if key not in filled and not mismatched]
    problems = [f"{len(unplaced)} tensors without a place in it ({listing(unplaced)})" if unplaced else "",
                f"{len(mismatched)} of another shape ({listing(mismatched, 2)})" if mismatched else "",
                f"{len(missing)} of its tensors not in the file ({listing(missing)})" if missing else ""]
    problems = [problem for problem in problems if problem]
    if problems:
        raise ReleaseError(f"{source} does not hold a {network}: {'; '.join(problems)}")
    return filled
