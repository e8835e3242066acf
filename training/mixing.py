"""Mix-based fine-tuning: CutMix and MixUp across the speakers of a batch (--mix), of the training waveforms or of
the features the model's filterbank front end computes from them (--mix_domain).

Each mixed batch pairs every speaker's utterances with another speaker's of the batch (a random permutation) and
draws a share lambda from Beta(--mix_alpha, --mix_alpha): MixUp sums lambda times the utterance and 1 - lambda
times its partner; CutMix replaces a random time span of 1 - lambda of the crop (samples, or feature frames) with
the partner's same span (lambda is then the share actually kept). The loss is lambda L(mixed, own label) +
(1 - lambda) L(mixed, partner's label): the soft label of a classifying loss, margins included. Mixing happens on
the model's device after the data loader (features: by a forward hook on the front end for one forward), so it
composes with augmentation, speed perturbation, the large-margin stage and DDP; it draws from torch's random
state, which checkpoints restore, so a resumed run mixes as the uninterrupted one.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from models.Fbanks import KaldiFbank, MeanNormalisedFbank, SpeechBrainFbank
from models.TFMelFrontEnd import TFMelFbank
from runtime.errors import ConfigError

MODES = ("none", "mixup", "cutmix", "both")
DOMAINS = ("wave", "feature")
# front ends giving [utterances, bins, frames]
FILTERBANKS = (MeanNormalisedFbank, KaldiFbank, SpeechBrainFbank, TFMelFbank)


@dataclass(frozen=True)
class BatchMix:
    """One batch's draw: each speaker's partner (a permutation of the speakers), the mix, the share of the own
    utterance and, for CutMix, the span [start, stop) of the last axis taken from the partner."""

    partner: torch.Tensor
    kind: str
    share: float
    span: tuple[int, int] = (0, 0)

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` [speakers, ..., length] with each speaker's part mixed with its partner's."""
        if self.kind == "mixup":
            return self.share * batch + (1 - self.share) * batch[self.partner]
        start, stop = self.span
        mixed = batch.clone()
        mixed[..., start:stop] = batch[self.partner][..., start:stop]
        return mixed


@dataclass(frozen=True)
class Mixing:
    """--mix, --mix_alpha, --mix_prob and --mix_domain: which mix, its Beta parameter, the share of batches mixed
    and whether waveforms or front-end features are mixed."""

    mode: str = "none"
    alpha: float = 0.2
    prob: float = 1.0
    domain: str = "wave"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mix must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.domain not in DOMAINS:
            raise ConfigError(f"--mix_domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")
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

    def feature_front_end(self, model: str, network: nn.Module) -> nn.Module | None:
        """The filterbank front end (`network.fbank`) whose features --mix_domain feature mixes; None when
        waveforms are mixed or nothing is. A network without one is refused."""
        if not self.enabled or self.domain == "wave":
            return None
        fbank = getattr(network, "fbank", None)
        if isinstance(fbank, FILTERBANKS):
            return fbank
        why = ("its --frontend ssl gives a self-supervised encoder's hidden states" if fbank is not None
               else "it computes its features inside the network or works on waveforms")
        raise ConfigError(f"--mix_domain feature mixes the features of a filterbank front end (--frontend logmel, "
                          f"kaldi, speechbrain or tfmel; e.g. ResNet34, ECAPA_TDNN, CAMPPlus), and {model} has none: "
                          f"{why}. Use --mix_domain wave")

    def draw(self, speakers: int, length: int, device: torch.device) -> BatchMix | None:
        """The mix of a batch of `speakers` whose last axis (samples or frames) has `length` entries, or None when
        this batch stays unmixed."""
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return None
        partner = torch.randperm(speakers).to(device)
        share = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        kind = self.mode if self.mode != "both" else ("mixup", "cutmix")[int(torch.randint(2, ()).item())]
        if kind == "mixup":
            return BatchMix(partner, kind, share)
        span = round((1 - share) * length)
        start = int(torch.randint(length - span + 1, ()).item())
        return BatchMix(partner, kind, 1 - span / length, (start, start + span))

    @contextmanager
    def mixed(self, data: torch.Tensor, label: torch.Tensor, front_end: nn.Module | None = None
              ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, float] | None]]:
        """(model input, mix) for a forward of a [speakers, per_speaker, samples] batch inside the block: `mix`
        is (the partners' labels, the own share), or None when the batch stays unmixed. The waveforms are mixed,
        or with a `front_end` (feature_front_end) its features [speakers * per_speaker, bins, frames] are, in the
        forwards inside the block."""
        length = data.shape[-1] if front_end is None else front_end.frames(data.shape[-1])
        batch_mix = self.draw(data.shape[0], length, data.device)
        if batch_mix is None:
            yield data, None
            return
        mix = (label[batch_mix.partner], batch_mix.share)
        if front_end is None:
            yield batch_mix.apply(data), mix
            return

        def mix_features(module: nn.Module, inputs: tuple, feats: torch.Tensor) -> torch.Tensor:
            return batch_mix.apply(feats.reshape(data.shape[0], -1, *feats.shape[1:])).reshape(feats.shape)

        hook = front_end.register_forward_hook(mix_features)
        try:
            yield data, mix
        finally:
            hook.remove()
