"""Statistics pooling modules of the fbank models: plain statistics (TAP, TSDP, TSTP) and attentive statistics
(ASTP, and the multi-head MHASTP and multi-query MQMHASTP of wespeaker's ResNets).

These modules own their parameters (the functions in Pooling.py do not). All take [B, C, T] or a 2-D map
[B, C, F, T], which is flattened to [B, C * F, T] first.
"""
from __future__ import annotations

import torch
from torch import nn

from models.Pooling import attentive_pooling

POOLING_CHOICES = ("TSTP", "ASTP", "TAP", "TSDP", "MHASTP", "MQMHASTP", "ASP")
ASP_VARIANCE_FLOOR = 1e-5
VARIANCE_FLOOR = 1e-7
POPULATION_FLOOR = 1e-12  # SpeechBrain's attentive pooling clamps its (population) variance here


def time_std(x: torch.Tensor, keepdim: bool = False, floor: float = VARIANCE_FLOOR) -> torch.Tensor:
    """Standard deviation over the last axis (unbiased, so two frames are needed), the variance plus `floor`
    (a finite gradient; 0 gives the plain standard deviation)."""
    return (x.var(dim=-1, keepdim=keepdim) + floor).sqrt()


def weighted_statistics(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[weighted mean, weighted population std] over the last axis, computed around the mean (two passes) with the
    variance clamped at POPULATION_FLOOR, as SpeechBrain's ECAPA pools."""
    mean = (x * weights).sum(dim=-1)
    variance = (weights * (x - mean.unsqueeze(-1)).pow(2)).sum(dim=-1)
    return torch.cat([mean, variance.clamp(min=POPULATION_FLOOR).sqrt()], dim=1)


class TemporalStatsPooling(nn.Module):
    """Each channel's mean and/or standard deviation over time, [B, C(, F), T] -> [B, k * C * F]: TSTP (both),
    TAP (mean only) or TSDP (std only)."""

    def __init__(self, in_dim: int, mean: bool = True, std: bool = True, variance_floor: float = VARIANCE_FLOOR
                 ) -> None:
        super().__init__()
        self.mean, self.std, self.variance_floor = mean, std, variance_floor
        self.out_dim = (int(mean) + int(std)) * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x."""
        x = x.flatten(1, -2)
        statistics = [x.mean(dim=-1)] if self.mean else []
        if self.std:
            statistics.append(time_std(x, floor=self.variance_floor))
        return torch.cat(statistics, dim=1)


class AttentiveStatsPooling(nn.Module):
    """ASTP: attention-weighted mean and std over time, one attention weight per channel and frame.

    The attention is a 1x1 conv bottleneck with tanh, softmax over time. With `global_context` (ECAPA-TDNN)
    it also sees each channel's utterance mean and std beside the frame features. `population_std` selects
    SpeechBrain's form: ReLU and BatchNorm before the tanh (`attention_bn`), population standard deviations
    computed around the mean.
    """

    def __init__(self, in_dim: int, bottleneck: int = 128, global_context: bool = False,
                 population_std: bool = False) -> None:
        super().__init__()
        self.global_context = global_context
        self.population_std = population_std
        self.linear1 = nn.Conv1d(in_dim * 3 if global_context else in_dim, bottleneck, kernel_size=1)
        self.attention_bn = nn.BatchNorm1d(bottleneck) if population_std else None
        self.linear2 = nn.Conv1d(bottleneck, in_dim, kernel_size=1)
        self.out_dim = 2 * in_dim

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The attention's input: the frames, with each channel's utterance mean and std when global_context."""
        if not self.global_context:
            return x
        frames = x.shape[-1]
        if self.population_std:
            mean, std = weighted_statistics(x, torch.full_like(x[:, :1], 1.0 / frames)).chunk(2, dim=1)
        else:
            mean, std = x.mean(dim=-1), time_std(x)
        return torch.cat([x, mean.unsqueeze(-1).expand(-1, -1, frames), std.unsqueeze(-1).expand(-1, -1, frames)],
                         dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x."""
        x = x.flatten(1, -2)
        hidden = self.linear1(self.context(x))
        if self.attention_bn is not None:
            hidden = self.attention_bn(torch.relu(hidden))
        weights = torch.softmax(self.linear2(torch.tanh(hidden)), dim=-1)
        if self.population_std:
            return weighted_statistics(x, weights)
        return attentive_pooling(x, weights, dim=2, with_std=True, variance_bounds=(VARIANCE_FLOOR, None))


class AttentiveStatisticsPooling(nn.Module):
    """ASP as wespeaker's SimAM-ResNets pool: one attention weight per channel and frame from a 1x1 conv bottleneck
    with ReLU and BatchNorm (no tanh), softmax over time; the weighted mean and the square root of the weighted
    second moment minus the squared mean, floored at 1e-5."""

    def __init__(self, in_dim: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(in_dim, bottleneck, kernel_size=1), nn.ReLU(),
                                       nn.BatchNorm1d(bottleneck), nn.Conv1d(bottleneck, in_dim, kernel_size=1))
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x [B, C, (F,) T] -> [B, 2 C (F)]."""
        x = x.flatten(1, -2)
        weights = torch.softmax(self.attention(x), dim=-1)
        mean = (x * weights).sum(dim=-1)
        std = ((x * x * weights).sum(dim=-1) - mean * mean).clamp_min(ASP_VARIANCE_FLOOR).sqrt()
        return torch.cat([mean, std], dim=1)


class MultiHeadAttentiveStatsPooling(nn.Module):
    """MHASTP: the channels split into `heads` groups, each pooled with its own two-layer tanh attention
    (bottleneck 64); `channel_wise` gives one weight per channel and frame, otherwise one per frame."""

    def __init__(self, in_dim: int, heads: int = 2, bottleneck: int = 64, channel_wise: bool = False) -> None:
        super().__init__()
        if in_dim % heads:
            raise ValueError(f"multi-head pooling needs channels ({in_dim}) divisible by its {heads} heads")
        width = in_dim // heads
        scores = width if channel_wise else 1
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv1d(width, bottleneck, 1), nn.Tanh(), nn.Conv1d(bottleneck, scores, 1))
            for _ in range(heads))
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x: [mean, std] of each head, heads concatenated."""
        x = x.flatten(1, -2)
        pooled = []
        for chunk, head in zip(x.chunk(len(self.heads), dim=1), self.heads):
            weights = torch.softmax(head(chunk), dim=-1)
            pooled.append(attentive_pooling(chunk, weights, dim=2, with_std=True,
                                            variance_bounds=(VARIANCE_FLOOR, None)))
        return torch.cat(pooled, dim=1)


class MultiQueryPooling(nn.Module):
    """MQMHASTP: several independent channel-wise multi-head poolings (queries) of 8 heads, concatenated."""

    def __init__(self, in_dim: int, queries: int = 2, heads: int = 8) -> None:
        super().__init__()
        self.queries = nn.ModuleList(MultiHeadAttentiveStatsPooling(in_dim, heads, channel_wise=True)
                                     for _ in range(queries))
        self.out_dim = 2 * in_dim * queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the frames of x with every query."""
        return torch.cat([query(x) for query in self.queries], dim=1)


def statistics_pooling(name: str, in_dim: int, model_name: str) -> nn.Module:
    """The pooling module called `name` (one of POOLING_CHOICES); a ValueError lists the choices."""
    factories = {
        "TSTP": lambda: TemporalStatsPooling(in_dim),
        "TAP": lambda: TemporalStatsPooling(in_dim, std=False),
        "TSDP": lambda: TemporalStatsPooling(in_dim, mean=False),
        "ASTP": lambda: AttentiveStatsPooling(in_dim),
        "MHASTP": lambda: MultiHeadAttentiveStatsPooling(in_dim),
        "MQMHASTP": lambda: MultiQueryPooling(in_dim),
        "ASP": lambda: AttentiveStatisticsPooling(in_dim),
    }
    if name not in factories:
        raise ValueError(f"{model_name}: undefined pooling '{name}'; choose one of {', '.join(POOLING_CHOICES)} "
                         f"(--pooling)")
    return factories[name]()
