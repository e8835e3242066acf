"""Additive angular margin softmax (ArcFace): s * cos(theta + m) for the target class."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import accuracy, check_embedding_size, every_utterance, speaker_batch


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
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.th = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        cosine = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        sine = (1.0 - cosine * cosine).clamp(0, 1).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        one_hot = F.one_hot(label, cosine.shape[1]).to(cosine.dtype)
        logits = self.s * (one_hot * phi + (1.0 - one_hot) * cosine)
        return F.cross_entropy(logits, label), accuracy(logits, label)
