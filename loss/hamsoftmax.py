"""HAM-softmax: additive margin softmax on hyperbolic distances (Hyperbolic Additive Margin softmax, arXiv
2601.19709, as in wespeaker). Embeddings and class centres are taken into the Poincare ball of curvature c
(--curvature) by scaling any point whose norm reaches the ball's radius 1 / sqrt(c) back to just inside it;
the logits are
    -s * (d_c(x, w_j) + m [j = y]),   d_c(x, w) = acosh(1 + 2 c |x - w|^2 / ((1 - c |x|^2)(1 - c |w|^2))) / sqrt(c),
and the loss their cross-entropy. The class centres start near the origin (normal, standard deviation 1e-3).
wespeaker's distance leaves out the c and 1 / sqrt(c) of this formula; both agree at c = 1, the default.
prec1 is the accuracy of the margin logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import accuracy, check_embedding_size, every_utterance, speaker_batch

OPTIONS = {"curvature": (float, 1.0, "hamsoftmax: curvature c of the Poincare ball (its radius is 1 / sqrt(c))")}
BOUNDARY = 1e-5  # how far inside the ball's radius a point is kept
CENTRE_INIT_STD = 1e-3


def into_ball(x: torch.Tensor, curvature: float) -> torch.Tensor:
    """Points [N, D] with norms of at most (1 - BOUNDARY) / sqrt(c): the others scaled down onto that sphere."""
    largest = (1 - BOUNDARY) / curvature ** 0.5
    norm = x.norm(dim=-1, keepdim=True).clamp_min(BOUNDARY)
    return x * (largest / norm).clamp(max=1.0)


def poincare_distances(x: torch.Tensor, w: torch.Tensor, curvature: float) -> torch.Tensor:
    """Geodesic distances [N, C] between points x [N, D] and w [C, D] inside the Poincare ball of curvature c."""
    squared = (x.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * x @ w.T).clamp_min(0)
    room = (1 - curvature * x.pow(2).sum(1, keepdim=True)) * (1 - curvature * w.pow(2).sum(1))
    argument = 1 + 2 * curvature * squared / room.clamp_min(BOUNDARY)
    return torch.acosh(argument.clamp_min(1 + BOUNDARY)) / curvature ** 0.5


class LossFunction(nn.Module):
    """CE over -scale * (hyperbolic distance to each class centre, plus the margin at the target)."""

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, margin: float = 0.2, scale: float = 30, curvature: float = 1.0,
                 **kwargs) -> None:
        super().__init__()
        if curvature <= 0:
            raise ValueError(f"hamsoftmax needs --curvature above 0, got {curvature}")
        self.test_normalize = True
        self.in_feats, self.m, self.s, self.curvature = nOut, margin, scale, curvature
        self.weight = nn.Parameter(torch.randn(nClasses, nOut) * CENTRE_INIT_STD)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        with torch.autocast(device_type=x.device.type, enabled=False):  # acosh near 1 needs float32
            distances = poincare_distances(into_ball(x.float(), self.curvature),
                                           into_ball(self.weight.float(), self.curvature), self.curvature)
        logits = -self.s * (distances + self.m * F.one_hot(label, distances.shape[1]))
        return F.cross_entropy(logits, label), accuracy(logits, label)
