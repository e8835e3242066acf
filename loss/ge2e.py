"""Generalised end-to-end loss: every utterance against every speaker centroid (own centroid without itself)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from loss import angleproto
from loss.LossHelpers import accuracy, speaker_batch


class LossFunction(angleproto.LossFunction):
    """CE over w * cos(utterance, centroid) + b; w kept >= 1e-6; prec1 = % of utterances nearest their own speaker.

    Shares angleproto's parameters (`w`, `b`, init_w 10, init_b -5) and nPerSpeaker bounds (>= 2).
    """

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, M, D] (M >= 2) -> (loss, accuracy %)."""
        x = speaker_batch(self, x)
        speakers, per_speaker = x.shape[:2]
        utterances = F.normalize(x, dim=2)
        centroids = F.normalize(x.mean(dim=1), dim=1)
        cosine = utterances @ centroids.T  # [B, M, B]: utterance (j, i) against centroid k
        leave_one_out = F.normalize((x.sum(dim=1, keepdim=True) - x) / (per_speaker - 1), dim=2)
        own = (utterances * leave_one_out).sum(dim=2)  # [B, M]
        own_speaker = torch.eye(speakers, dtype=torch.bool, device=x.device).unsqueeze(1)
        cosine = torch.where(own_speaker, own.unsqueeze(2), cosine)
        logits = (cosine * self.w.clamp(min=1e-6) + self.b).reshape(speakers * per_speaker, speakers)
        target = torch.arange(speakers, device=x.device).repeat_interleave(per_speaker)
        return F.cross_entropy(logits, target), accuracy(logits, target)
