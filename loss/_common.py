"""Pieces shared by the loss plug-ins: the nPerSpeaker check, top-1 accuracy and the equal error rate."""
from __future__ import annotations

import torch
from torch import nn


def accepted_per_speaker(loss_class: type[nn.Module]) -> str:
    """Human-readable nPerSpeaker values a loss class accepts, e.g. '1', '2' or '>= 2'."""
    low, high = loss_class.min_per_speaker, loss_class.max_per_speaker
    if high is None:
        return f">= {low}"
    return str(low) if low == high else f"{low}..{high}"


def check_per_speaker(loss: nn.Module, x: torch.Tensor) -> None:
    """Raise a ValueError when x ([B, D] or [B, nPerSpeaker, D]) has an nPerSpeaker the loss cannot use."""
    per_speaker = 1 if x.dim() == 2 else x.shape[1]
    low, high = type(loss).min_per_speaker, type(loss).max_per_speaker
    if x.dim() not in (2, 3) or per_speaker < low or (high is not None and per_speaker > high):
        name = type(loss).__module__.rsplit(".", 1)[-1]
        raise ValueError(
            f"loss '{name}' needs nPerSpeaker {accepted_per_speaker(type(loss))}, got embeddings of shape "
            f"{list(x.shape)} (nPerSpeaker {per_speaker}); set --nPerSpeaker accordingly")


def accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent (0-dim tensor, no gradient)."""
    return (logits.detach().argmax(dim=1) == label).float().mean() * 100.0


def equal_error_rate(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """EER in percent for target scores `positive` and non-target scores `negative` (higher = same speaker)."""
    scores = torch.cat([positive, negative]).detach().double()
    is_target = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).double()
    order = torch.argsort(scores, descending=True)
    is_target = is_target[order]
    # accept everything scoring at or above each threshold, starting from "accept nothing"
    zero = is_target.new_zeros(1)
    false_reject = 1 - torch.cat([zero, is_target.cumsum(0)]) / positive.numel()
    false_accept = torch.cat([zero, (1 - is_target).cumsum(0)]) / negative.numel()
    best = torch.argmin((false_reject - false_accept).abs())
    return ((false_reject[best] + false_accept[best]) / 2 * 100.0).float()


def check_embedding_size(loss: nn.Module, x: torch.Tensor, n_out: int) -> None:
    """Raise a ValueError when the embedding width differs from the loss's nOut."""
    if x.shape[-1] != n_out:
        name = type(loss).__module__.rsplit(".", 1)[-1]
        raise ValueError(f"loss '{name}' was built for nOut {n_out} but got embeddings of width {x.shape[-1]}; "
                         f"use the same --nOut for the model and the loss")


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix of squared Euclidean distances ||a_i - b_j||^2 for a [N, D] and b [M, D] -> [N, M]."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp(min=0)
