"""SphereFace2: one binary classification per class instead of a softmax over classes (Wen et al., 2022), in the
form wespeaker and ReDimNet2 train speakers with, with the margin rising on the margin schedule.

With cosines c_j of an embedding to the class weights, g(z) = 2 ((z + 1) / 2)^t - 1 and a learnt bias b, the
loss of an utterance of class y is
    lambda * softplus(-(s (g(c_y) - m) + b)) + (1 - lambda) * sum over j != y of softplus(s (g(c_j) + m) + b)
with --sphereface2_margin_type C (additive cosine margin), or with g(cos(theta_y + m)) and g(cos(theta_j - m)) in
place of g(c_y) - m and g(c_j) + m with type A (additive angular margin; past theta = pi - m the target's
cosine continues as c_y - (1 + cos(pi - m))). The margin follows --margin_start and --margin_end as in
aamsoftmax_ramp (0 before the start, then rising to --margin). prec1 is the accuracy of s (c - m [j = y])."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import (
    MARGIN_SCHEDULE_OPTIONS,
    MarginSchedule,
    accuracy,
    check_embedding_size,
    every_utterance,
    speaker_batch,
)

MARGIN_TYPES = ("C", "A")
OPTIONS = {
    **MARGIN_SCHEDULE_OPTIONS,
    "sphereface2_lambda": (float, 0.7, "sphereface2: weight of the target class's binary loss (1 - it for the "
                                       "others)"),
    "sphereface2_t": (float, 3.0, "sphereface2: exponent of the similarity adjustment 2((z + 1) / 2)^t - 1"),
    "sphereface2_margin_type": (str, "C", "sphereface2: C (cosine minus margin) or A (angle plus margin)"),
}


def adjusted(cosine: torch.Tensor, t: float) -> torch.Tensor:
    """SphereFace2's similarity adjustment g(z) = 2 ((z + 1) / 2)^t - 1."""
    return 2 * ((cosine + 1) / 2).pow(t) - 1


class LossFunction(nn.Module):
    """Per-class binary logistic losses on scaled, adjusted cosines with a margin and a shared bias."""

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, margin: float = 0.2, scale: float = 32, margin_start: float = 20.0,
                 margin_end: float = 40.0, sphereface2_lambda: float = 0.7, sphereface2_t: float = 3.0,
                 sphereface2_margin_type: str = "C", **kwargs) -> None:
        super().__init__()
        if sphereface2_margin_type not in MARGIN_TYPES:
            raise ValueError(f"--sphereface2_margin_type must be C or A, got {sphereface2_margin_type!r}")
        if not 0 <= sphereface2_lambda <= 1 or sphereface2_t <= 0:
            raise ValueError(f"sphereface2 needs 0 <= --sphereface2_lambda <= 1 and --sphereface2_t above 0, got "
                             f"{sphereface2_lambda} and {sphereface2_t}")
        self.test_normalize = True
        self.in_feats, self.s, self.final_margin = nOut, scale, margin
        self.weight_of_target, self.t, self.margin_type = sphereface2_lambda, sphereface2_t, sphereface2_margin_type
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        nn.init.xavier_uniform_(self.weight)
        self.bias = nn.Parameter(torch.zeros(()))
        self.schedule = MarginSchedule(margin_start, margin_end)
        self.set_epoch_progress(0.0)

    def set_epoch_progress(self, epochs_done: float) -> None:
        """Set the margin for training after `epochs_done` epochs."""
        self.m = self.final_margin * self.schedule.share(epochs_done)

    def margin_cosines(self, cosine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the target's binary loss sees, what every other class's sees), before scale and bias."""
        if self.margin_type == "C":
            return adjusted(cosine, self.t) - self.m, adjusted(cosine, self.t) + self.m
        sine = (1 - cosine * cosine).clamp(0, 1).sqrt()
        closer = cosine * math.cos(self.m) - sine * math.sin(self.m)
        target = torch.where(cosine > math.cos(math.pi - self.m), closer, cosine - (1 + math.cos(math.pi - self.m)))
        return adjusted(target, self.t), adjusted(cosine * math.cos(self.m) + sine * math.sin(self.m), self.t)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        cosine = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        target, other = self.margin_cosines(cosine)
        is_target = F.one_hot(label, cosine.shape[1]).to(cosine.dtype)
        positive = self.weight_of_target * F.softplus(-(self.s * target + self.bias))
        negative = (1 - self.weight_of_target) * F.softplus(self.s * other + self.bias)
        loss = (is_target * positive + (1 - is_target) * negative).sum(dim=1).mean()
        return loss, accuracy(self.s * (cosine - self.m * is_target), label)
