"""Mix-based fine-tuning: CutMix and MixUp of training waveforms across the speakers of a batch (--mix).

Each mixed batch pairs every utterance with another one of the batch (a random permutation) and draws a share
lambda from Beta(--mix_alpha, --mix_alpha): MixUp sums lambda times the utterance and 1 - lambda times its
partner; CutMix replaces a random time span of 1 - lambda of the crop with the partner's same span (lambda is
then the share actually kept). The loss is lambda L(mixed, own label) + (1 - lambda) L(mixed, partner's label):
the soft label of a classifying loss, margins included. Mixing happens on the model's device after the data
loader, so it composes with augmentation, speed perturbation and the large-margin stage; it draws from torch's
random state, which checkpoints restore, so a resumed run mixes as the uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.errors import ConfigError

MODES = ("none", "mixup", "cutmix", "both")


@dataclass(frozen=True)
class Mixing:
    """--mix, --mix_alpha and --mix_prob: which mix, its Beta parameter and the share of batches mixed."""

    mode: str = "none"
    alpha: float = 0.2
    prob: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mix must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.alpha <= 0 or not 0 <= self.prob <= 1:
            raise ConfigError(f"--mix needs --mix_alpha above 0 and --mix_prob from 0 to 1, got {self.alpha} and "
                              f"{self.prob}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none" and self.prob > 0

    def check_loss(self, trainfunc: str, classifies_speakers: bool) -> None:
        """Refuse mixing for a loss without class outputs: a metric-learning loss has no soft label to give."""
        if self.enabled and not classifies_speakers:
            raise ConfigError(f"--mix {self.mode} needs a loss that classifies speakers (softmax, amsoftmax, the "
                              f"aamsoftmax losses, sphereface2, hamsoftmax, softmaxproto): '{trainfunc}' compares "
                              "embeddings with each other, so a mixed utterance has no soft label there")

    def mix(self, data: torch.Tensor, label: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """(mixed data, partners' labels, share of the own utterance) for a [utterances, per_speaker, samples]
        batch, or None when this batch stays unmixed."""
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return None
        partner = torch.randperm(data.shape[0]).to(data.device)
        share = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        mode = self.mode if self.mode != "both" else ("mixup", "cutmix")[int(torch.randint(2, ()).item())]
        if mode == "mixup":
            return share * data + (1 - share) * data[partner], label[partner], share
        samples = data.shape[-1]
        span = round((1 - share) * samples)
        start = int(torch.randint(samples - span + 1, ()).item())
        mixed = data.clone()
        mixed[..., start:start + span] = data[partner][..., start:start + span]
        return mixed, label[partner], 1 - span / samples
