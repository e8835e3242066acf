"""Additive angular margin softmax (ArcFace): s * cos(theta + m) for the target class."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import (
    accuracy,
    additive_angular_margin,
    check_embedding_size,
    every_utterance,
    speaker_batch,
    with_target,
)


class LossFunction(nn.Module):
    """CE over scale * cos(theta + margin at the target); prec1 on the margin logits (%).

    Beyond theta = pi - m the target logit continues linearly (cos(theta) - m * sin(m)) unless
    `easy_margin`, which applies the margin only where cos(theta) > 0.
    """

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, margin: float = 0.3, scale: float = 15,
                 easy_margin: bool = False, **kwargs) -> None:
        super().__init__()
        self.test_normalize = True
        self.m = margin
        self.s = scale
        self.in_feats = nOut
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        cosine = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        logits = self.s * with_target(cosine, additive_angular_margin(cosine, self.m, self.easy_margin), label)
        return F.cross_entropy(logits, label), accuracy(logits, label)
