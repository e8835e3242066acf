"""Softmax over all utterances plus the angular prototypical loss (needs nPerSpeaker 2)."""
from __future__ import annotations

import torch
from torch import nn

from loss import angleproto, softmax
from loss.LossHelpers import every_utterance, speaker_batch


class LossFunction(nn.Module):
    """softmax CE on every embedding + angleproto on the pairs; prec1 = softmax top-1 accuracy (%)."""

    min_per_speaker = 2
    max_per_speaker: int | None = 2
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.test_normalize = True
        self.softmax = softmax.LossFunction(**kwargs)
        self.angleproto = angleproto.LossFunction(**kwargs)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 2, D], label [B] -> (loss, accuracy %)."""
        x = speaker_batch(self, x)
        softmax_loss, prec1 = self.softmax(*every_utterance(x, label))
        proto_loss, _ = self.angleproto(x, None)
        return softmax_loss + proto_loss, prec1
