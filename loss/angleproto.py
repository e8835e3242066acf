"""Angular prototypical loss: each speaker's first utterance against the centroids of the others."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import accuracy, speaker_batch


class LossFunction(nn.Module):
    """CE over w * cos(query_i, centroid_j) + b with learnable scale w (kept >= 1e-6) and bias b."""

    min_per_speaker = 2
    max_per_speaker: int | None = None

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0, **kwargs) -> None:
        super().__init__()
        self.test_normalize = True
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, M, D] (M >= 2) -> (loss, accuracy % of picking the own speaker's centroid)."""
        x = speaker_batch(self, x)
        query = F.normalize(x[:, 0], dim=1)
        centroid = F.normalize(x[:, 1:].mean(dim=1), dim=1)
        cosine = query @ centroid.T
        logits = cosine * self.w.clamp(min=1e-6) + self.b
        target = torch.arange(x.shape[0], device=x.device)
        return F.cross_entropy(logits, target), accuracy(cosine, target)
