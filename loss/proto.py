"""Prototypical loss: each speaker's first utterance against the centroids of the others, by squared distance."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import accuracy, speaker_batch, squared_distances


class LossFunction(nn.Module):
    """CE over -||query_i - centroid_j||^2 (true B x B distance matrix); prec1 = top-1 accuracy (%)."""

    min_per_speaker = 2
    max_per_speaker: int | None = None

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.test_normalize = False

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, M, D] (M >= 2) -> (loss, accuracy %)."""
        x = speaker_batch(self, x)
        logits = -squared_distances(x[:, 0], x[:, 1:].mean(dim=1))
        target = torch.arange(x.shape[0], device=x.device)
        return F.cross_entropy(logits, target), accuracy(logits, target)
