"""Additive angular margin softmax (ArcFace): s * cos(theta + m) for the target class."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss.LossHelpers import (
    AAM_OPTIONS,
    accuracy,
    additive_angular_margin,
    check_aam_options,
    check_embedding_size,
    every_utterance,
    init_classifier,
    speaker_batch,
    with_target,
)

OPTIONS = dict(AAM_OPTIONS)


class LossFunction(nn.Module):
    """CE over scale * cos(theta + margin at the target); prec1 on the margin logits (%).

    Beyond theta = pi - m the target logit continues as --aam_fallback says (the original's cos(theta) - m * sin(m)
    by default) unless `easy_margin`, which applies the margin only where cos(theta) > 0. The classifier starts
    from --classifier_init (xavier_normal by default).
    """

    min_per_speaker = 1
    max_per_speaker: int | None = 1
    classifies_speakers = True  # has one output per training speaker: needs --nClasses >= speakers

    def __init__(self, nOut: int, nClasses: int, margin: float = 0.3, scale: float = 15,
                 easy_margin: bool = False, aam_fallback: str = "original", classifier_init: str = "xavier_normal",
                 **kwargs) -> None:
        super().__init__()
        check_aam_options(aam_fallback, classifier_init)
        self.test_normalize = True
        self.m = margin
        self.s = scale
        self.in_feats = nOut
        self.easy_margin = bool(easy_margin)
        self.fallback = aam_fallback
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        init_classifier(self.weight, classifier_init)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, nOut] (or [B, nOut]), label [B] -> (loss, accuracy %)."""
        x, label = every_utterance(speaker_batch(self, x), label)
        check_embedding_size(self, x, self.in_feats)
        cosine = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        target = additive_angular_margin(cosine, self.m, self.easy_margin, self.fallback)
        logits = self.s * with_target(cosine, target, label)
        return F.cross_entropy(logits, label), accuracy(logits, label)
