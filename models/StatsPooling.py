"""Statistics pooling modules of the fbank models: TSTP (mean and std over time) and ASTP (attentive statistics).

These modules own their parameters (the functions in Pooling.py do not). Both take [B, C, T] or a 2-D map
[B, C, F, T], which is flattened to [B, C * F, T] first.
"""
from __future__ import annotations

import torch
from torch import nn

from models.Pooling import attentive_pooling

POOLING_CHOICES = ("TSTP", "ASTP")
VARIANCE_FLOOR = 1e-7


def time_std(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation over the last axis (unbiased, so two frames are needed), floored for a finite gradient."""
    return (x.var(dim=-1, keepdim=keepdim) + VARIANCE_FLOOR).sqrt()


class TemporalStatsPooling(nn.Module):
    """TSTP: each channel's mean and standard deviation over time, [B, C(, F), T] -> [B, 2 * C * F]."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x."""
        x = x.flatten(1, -2)
        return torch.cat([x.mean(dim=-1), time_std(x)], dim=1)


class AttentiveStatsPooling(nn.Module):
    """ASTP: attention-weighted mean and std over time, one attention weight per channel and frame.

    The attention is a 1x1 conv bottleneck with tanh, softmax over time. With `global_context` (ECAPA-TDNN)
    it also sees each channel's utterance mean and std beside the frame features.
    """

    def __init__(self, in_dim: int, bottleneck: int = 128, global_context: bool = False) -> None:
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(in_dim * 3 if global_context else in_dim, bottleneck, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck, in_dim, kernel_size=1)
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x."""
        x = x.flatten(1, -2)
        attention_input = x
        if self.global_context:
            frames = x.shape[-1]
            mean = x.mean(dim=-1, keepdim=True).expand(-1, -1, frames)
            std = time_std(x, keepdim=True).expand(-1, -1, frames)
            attention_input = torch.cat([x, mean, std], dim=1)
        weights = torch.softmax(self.linear2(torch.tanh(self.linear1(attention_input))), dim=-1)
        return attentive_pooling(x, weights, dim=2, with_std=True, variance_bounds=(VARIANCE_FLOOR, None))


def statistics_pooling(name: str, in_dim: int, model_name: str) -> nn.Module:
    """The pooling module called `name` (TSTP or ASTP); a ValueError lists the choices."""
    if name == "TSTP":
        return TemporalStatsPooling(in_dim)
    if name == "ASTP":
        return AttentiveStatsPooling(in_dim)
    raise ValueError(f"{model_name}: undefined pooling '{name}'; choose one of {', '.join(POOLING_CHOICES)} "
                     f"(--pooling)")
