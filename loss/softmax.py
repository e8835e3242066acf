"""Softmax cross-entropy over speaker classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import accuracy, every_utterance, speaker_batch


class LossFunction(nn.Module):
    """Linear classifier + cross-entropy; prec1 is top-1 training accuracy (%)."""

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, **kwargs) -> None:
        super().__init__()
        self.test_normalize = True
        self.fc = nn.Linear(nOut, nClasses)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        logits = self.fc(x)
        return F.cross_entropy(logits, label), accuracy(logits, label)
