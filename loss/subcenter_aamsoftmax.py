"""Sub-center AAM-softmax with an optional inter-top-k penalty, on the margin schedule of aamsoftmax_ramp: the
classification head of wespeaker's "arc_margin_intertopk_subcenter" projection.

Each class has --subcenters centres and its cosine is the largest over them, so a noisy class can spread over
several centres (Sub-center ArcFace). The target logit is aamsoftmax's scale * cos(theta + m) (same --scale,
--easy_margin and --aam_fallback), and every centre of every class starts from --classifier_init. With
--topk_negatives k > 0 the k non-target classes of largest cosine get scale * cos(theta - p) instead of
scale * cos(theta): an extra penalty that pushes the hardest negatives away (inter-top-k penalty, arXiv
2110.05042). The margin m and the penalty p both follow the margin schedule of loss/LossHelpers.MarginSchedule:
m = --margin * share and p = --topk_penalty * share, so before --margin_start neither applies (wespeaker scales
its penalty by the current margin / 0.2, the same with --margin 0.2)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import (
    AAM_OPTIONS,
    MARGIN_SCHEDULE_OPTIONS,
    MarginSchedule,
    accuracy,
    additive_angular_margin,
    check_aam_options,
    check_embedding_size,
    every_utterance,
    init_classifier,
    speaker_batch,
    with_target,
)

OPTIONS = {
    **AAM_OPTIONS,
    **MARGIN_SCHEDULE_OPTIONS,
    "subcenters": (int, 3, "centres per class; a class's cosine is the largest over its centres"),
    "topk_negatives": (int, 0, "hardest non-target classes that get the extra --topk_penalty (0: off)"),
    "topk_penalty": (float, 0.06, "angular penalty (radians) of the hardest non-target classes at the full margin"),
}


class LossFunction(nn.Module):
    """CE over the sub-center AAM logits with the scheduled margin and hard-negative penalty; prec1 on them (%)."""

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, margin: float = 0.3, scale: float = 15, easy_margin: bool = False,
                 subcenters: int = 3, topk_negatives: int = 0, topk_penalty: float = 0.06,
                 margin_start: float = 20.0, margin_end: float = 40.0, aam_fallback: str = "original",
                 classifier_init: str = "xavier_normal", **kwargs) -> None:
        super().__init__()
        check_head_settings(nClasses, subcenters, topk_negatives)
        check_aam_options(aam_fallback, classifier_init)
        self.test_normalize = True
        self.in_feats = nOut
        self.s = scale
        self.easy_margin = bool(easy_margin)
        self.fallback = aam_fallback
        self.subcenters = subcenters
        self.topk_negatives = topk_negatives
        self.final_margin, self.final_penalty = margin, topk_penalty
        self.schedule = MarginSchedule(margin_start, margin_end)
        self.weight = nn.Parameter(torch.empty(nClasses * subcenters, nOut))  # rows: class 0's centres, class 1's...
        init_classifier(self.weight, classifier_init)
        self.set_epoch_progress(0.0)

    def set_epoch_progress(self, epochs_done: float) -> None:
        """Set the margin and the hard-negative penalty for training after `epochs_done` epochs."""
        share = self.schedule.share(epochs_done)
        self.m, self.penalty = self.final_margin * share, self.final_penalty * share

    def class_cosines(self, x: torch.Tensor) -> torch.Tensor:
        """Cosines [N, nClasses] of embeddings [N, nOut]: for each class the largest over its centres."""
        cosine = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        return cosine.reshape(x.shape[0], -1, self.subcenters).amax(dim=2)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        cosine = self.class_cosines(x)
        negatives = penalize_hardest(cosine, label, self.topk_negatives, self.penalty)
        target = additive_angular_margin(cosine, self.m, self.easy_margin, self.fallback)
        logits = self.s * with_target(negatives, target, label)
        return F.cross_entropy(logits, label), accuracy(logits, label)


def check_head_settings(classes: int, subcenters: int, topk_negatives: int) -> None:
    """Raise a ValueError for a sub-center count or hard-negative count the head cannot use."""
    if subcenters < 1:
        raise ValueError(f"--subcenters must be 1 or more, got {subcenters}")
    if not 0 <= topk_negatives < classes:
        raise ValueError(f"--topk_negatives must be 0 (off) to nClasses - 1 = {classes - 1}, got {topk_negatives}")


def penalize_hardest(cosine: torch.Tensor, label: torch.Tensor, count: int, penalty: float) -> torch.Tensor:
    """`cosine` [N, C] with the `count` largest non-target entries of each row raised to cos(theta - penalty)."""
    if count == 0 or penalty == 0:
        return cosine
    ranked = cosine.detach().scatter(1, label[:, None], -2.0)  # below any cosine: the target is never a negative
    hardest = torch.zeros_like(cosine, dtype=torch.bool).scatter(1, ranked.topk(count, dim=1).indices, True)
    sine = (1.0 - cosine * cosine).clamp(0, 1).sqrt()
    return torch.where(hardest, cosine * math.cos(penalty) + sine * math.sin(penalty), cosine)
