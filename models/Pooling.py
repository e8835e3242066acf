"""Attentive temporal pooling shared by the models (the parameters stay on the model for key compatibility)."""
from __future__ import annotations

import torch
from torch import nn


def self_attention_weights(x: torch.Tensor, linear: nn.Linear, attention: torch.Tensor) -> torch.Tensor:
    """SAP weights for x [B, T, C]: softmax over time of tanh(linear(x)) . attention -> [B, T, 1]."""
    return torch.softmax(torch.tanh(linear(x)) @ attention, dim=1)


def attentive_pooling(x: torch.Tensor, weights: torch.Tensor, dim: int, with_std: bool,
                      variance_bounds: tuple[float, float | None] = (1e-5, None)) -> torch.Tensor:
    """Weighted mean over `dim` (SAP), or weighted mean and std concatenated (ASP), the variance clamped."""
    mean = (x * weights).sum(dim)
    if not with_std:
        return mean
    std = ((x * x * weights).sum(dim) - mean * mean).clamp(*variance_bounds).sqrt()
    return torch.cat([mean, std], dim=1)


def check_encoder(encoder_type: str, allowed: tuple[str, ...], model_name: str) -> None:
    """Raise a ValueError listing the pooling types the model supports."""
    if encoder_type not in allowed:
        raise ValueError(f"{model_name}: undefined encoder_type '{encoder_type}'; "
                         f"choose one of {', '.join(allowed)} (--encoder_type)")
