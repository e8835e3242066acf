"""Additive margin softmax (CosFace): s * (cos(theta) - m) for the target class."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import accuracy, check_embedding_size, every_utterance, speaker_batch


class LossFunction(nn.Module):
    """CE over scale * (cosine to class weights, minus margin at the target); prec1 on the margin logits (%)."""

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, margin: float = 0.3, scale: float = 15, **kwargs) -> None:
        super().__init__()
        self.test_normalize = True
        self.m = margin
        self.s = scale
        self.in_feats = nOut
        self.W = nn.Parameter(torch.empty(nOut, nClasses))
        nn.init.xavier_normal_(self.W, gain=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        cosine = F.normalize(x, dim=1, eps=1e-12) @ F.normalize(self.W, dim=0, eps=1e-12)
        logits = self.s * (cosine - self.m * F.one_hot(label, cosine.shape[1]))
        return F.cross_entropy(logits, label), accuracy(logits, label)
