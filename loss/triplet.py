"""Triplet loss on L2-normalised pairs with random, hard or semi-hard negative mining."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import equal_error_rate, speaker_batch, squared_distances


def _uniform_choice(mask: torch.Tensor) -> torch.Tensor:
    """For each row of a boolean [B, B] mask, the column of a uniformly drawn True entry."""
    return torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0).argmax(dim=1)


class LossFunction(nn.Module):
    """mean(relu(||a - p||^2 - ||a - n||^2 + margin)); prec1 = EER (%) of positive vs negative pairs.

    The negative for anchor i is the positive of another speaker: with probability `hard_prob` one of
    the `hard_rank + 1` closest, otherwise a random one; `hard_rank < 0` selects semi-hard negatives
    (farther than the positive but within `margin`), falling back to a random one.
    """

    min_per_speaker = 2
    max_per_speaker: int | None = 2

    def __init__(self, hard_rank: int = 0, hard_prob: float = 0, margin: float = 0, **kwargs) -> None:
        super().__init__()
        self.test_normalize = True
        self.hard_rank = int(hard_rank)
        self.hard_prob = float(hard_prob)
        self.margin = float(margin)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 2, D] (B >= 2 speakers) -> (loss, EER %)."""
        x = speaker_batch(self, x)
        if x.shape[0] < 2:
            raise ValueError("loss 'triplet' needs at least 2 speakers per batch to draw negatives; "
                             "raise --batch_size")
        anchor = F.normalize(x[:, 0], dim=1)
        positive = F.normalize(x[:, 1], dim=1)
        distances = squared_distances(anchor, positive)  # [B, B], true pairwise
        negative_index = self._mine_negatives(-distances.detach())
        rows = torch.arange(x.shape[0], device=x.device)
        positive_distance = distances[rows, rows]
        negative_distance = distances[rows, negative_index]
        loss = F.relu(positive_distance - negative_distance + self.margin).mean()
        return loss, equal_error_rate(-positive_distance, -negative_distance)

    def _mine_negatives(self, similarity: torch.Tensor) -> torch.Tensor:
        """Index of the negative (another speaker's positive) for each anchor."""
        size = similarity.shape[0]
        others = ~torch.eye(size, dtype=torch.bool, device=similarity.device)
        random_other = _uniform_choice(others)
        if self.hard_rank < 0:
            own = similarity.diagonal().unsqueeze(1)
            semi_hard = others & (similarity < own) & (similarity > own - self.margin)
            return torch.where(semi_hard.any(dim=1), _uniform_choice(semi_hard), random_other)
        top = min(self.hard_rank + 1, size - 1)
        closest = similarity.masked_fill(~others, float("-inf")).topk(top, dim=1).indices
        hard = closest[torch.arange(size, device=similarity.device),
                       torch.randint(top, (size,), device=similarity.device)]
        use_hard = torch.rand(size, device=similarity.device) < self.hard_prob
        return torch.where(use_hard, hard, random_other)
