"""Pieces shared by the loss plug-ins: the [B, nPerSpeaker, D] batch, top-1 accuracy, the equal error rate, the
additive angular margin with its options, the classifier initialisation and the margin schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import ConfigError

# The scheduled margin rises as 1 - RISE_FLOOR ** t: wespeaker's exponential increase, whose floor is
# final_val / (initial_val + 1e-6) with final_val 1e-3 and initial_val 1.
RISE_FLOOR = 1e-3 / (1.0 + 1e-6)
MARGIN_SCHEDULE_OPTIONS = {
    "margin_start": (float, 20.0, "epochs trained with margin 0 before the margin starts to rise"),
    "margin_end": (float, 40.0, "epochs trained when the rising margin reaches --margin (fixed afterwards)"),
}
AAM_FALLBACKS = ("original", "continuous")
CLASSIFIER_INITS = {"xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_}
AAM_OPTIONS = {
    "aam_fallback": (str, "original", "AAM target logit past theta = pi - margin: original (cos(theta) - margin * "
                                      "sin(margin), the original's) or continuous (cos(theta) - (1 - cos(margin)), "
                                      "wespeaker's, equal to cos(theta + margin) at pi - margin)"),
    "classifier_init": (str, "xavier_normal", "initial classifier weights of the AAM losses: xavier_normal (the "
                                              "original's) or xavier_uniform (wespeaker's)"),
}


def per_speaker_words(low: int, high: int | None) -> str:
    """nPerSpeaker bounds in words: '1', '2', '2 or more' or '1 to 3'."""
    if high is None:
        return f"{low} or more"
    return str(low) if low == high else f"{low} to {high}"


def per_speaker_accepted(loss_class: type, per_speaker: int) -> str:
    """'' when the loss class accepts `per_speaker` utterances per speaker, else the values it accepts in words."""
    low = getattr(loss_class, "min_per_speaker", 1)
    high = getattr(loss_class, "max_per_speaker", None)
    if per_speaker < low or (high is not None and per_speaker > high):
        return per_speaker_words(low, high)
    return ""


def check_per_speaker(trainfunc: str, loss_class: type, nPerSpeaker: int) -> None:
    """Stop early when the loss cannot use `nPerSpeaker` utterances per speaker."""
    accepted = per_speaker_accepted(loss_class, nPerSpeaker)
    if accepted:
        raise ConfigError(f"Loss '{trainfunc}' needs --nPerSpeaker {accepted}, got {nPerSpeaker}")


def check_classes(trainfunc: str, loss_class: type, nClasses: int, speakers: int, train_list: str) -> None:
    """Stop early when a classifying loss has fewer outputs than the train list has speakers."""
    if getattr(loss_class, "classifies_speakers", False) and nClasses < speakers:
        raise ConfigError(f"Loss '{trainfunc}' has --nClasses {nClasses} outputs, fewer than the {speakers} "
                          f"speakers in {train_list}; set --nClasses {speakers}")


def speaker_batch(loss: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embeddings as [speakers, per_speaker, D], checked against the loss's nPerSpeaker bounds.

    SpeakerNet gives every loss [B, nPerSpeaker, D]; [B, D] (the original's shape for nPerSpeaker 1) is read as
    [B, 1, D]."""
    batch = x.unsqueeze(1) if x.dim() == 2 else x
    accepted = per_speaker_accepted(type(loss), batch.shape[1]) if batch.dim() == 3 else "[B, n, D] embeddings"
    if accepted:
        name = type(loss).__module__.rsplit(".", 1)[-1]
        raise ValueError(f"loss '{name}' needs nPerSpeaker {accepted}, got embeddings of shape {list(x.shape)} "
                         f"(nPerSpeaker {batch.shape[1] if batch.dim() == 3 else '?'}); set --nPerSpeaker accordingly")
    return batch


def every_utterance(x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, n, D] embeddings and [B] speaker labels as [B * n, D] and [B * n] for a classifier."""
    return x.reshape(-1, x.shape[-1]), label.repeat_interleave(x.shape[1])


def accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent (0-dim tensor, no gradient)."""
    return (logits.detach().argmax(dim=1) == label).float().mean() * 100.0


def equal_error_rate(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """EER in percent for target scores `positive` and non-target scores `negative` (higher = same speaker)."""
    scores = torch.cat([positive, negative]).detach().double()
    is_target = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).double()
    order = torch.argsort(scores, descending=True)
    is_target = is_target[order]
    # accept everything scoring at or above each threshold, starting from "accept nothing"
    zero = is_target.new_zeros(1)
    false_reject = 1 - torch.cat([zero, is_target.cumsum(0)]) / positive.numel()
    false_accept = torch.cat([zero, (1 - is_target).cumsum(0)]) / negative.numel()
    best = torch.argmin((false_reject - false_accept).abs())
    return ((false_reject[best] + false_accept[best]) / 2 * 100.0).float()


def check_embedding_size(loss: nn.Module, x: torch.Tensor, n_out: int) -> None:
    """Raise a ValueError when the embedding width differs from the loss's nOut."""
    if x.shape[-1] != n_out:
        name = type(loss).__module__.rsplit(".", 1)[-1]
        raise ValueError(f"loss '{name}' was built for nOut {n_out} but got embeddings of width {x.shape[-1]}; "
                         f"use the same --nOut for the model and the loss")


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix of squared Euclidean distances ||a_i - b_j||^2 for a [N, D] and b [M, D] -> [N, M]."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp(min=0)


def additive_angular_margin(cosine: torch.Tensor, margin: float, easy_margin: bool,
                            fallback: str = "original") -> torch.Tensor:
    """cos(theta + margin) of every cosine, ArcFace's target logit before scaling.

    Beyond theta = pi - margin it keeps falling with theta: as cos(theta) - margin * sin(margin) with the
    "original" fallback, as cos(theta) - (1 - cos(margin)) with the "continuous" one (equal to cos(theta + margin)
    at theta = pi - margin). With `easy_margin` the margin applies only where cos(theta) > 0 and other entries
    stay cos(theta)."""
    sine = (1.0 - cosine * cosine).clamp(0, 1).sqrt()
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        return torch.where(cosine > 0, phi, cosine)
    drop = margin * math.sin(margin) if fallback == "original" else 1.0 - math.cos(margin)
    return torch.where(cosine > math.cos(math.pi - margin), phi, cosine - drop)


def check_aam_options(aam_fallback: str, classifier_init: str) -> None:
    """Raise a ValueError naming the option for an --aam_fallback or --classifier_init that does not exist."""
    if aam_fallback not in AAM_FALLBACKS:
        raise ValueError(f"--aam_fallback must be {' or '.join(AAM_FALLBACKS)}, got '{aam_fallback}'")
    if classifier_init not in CLASSIFIER_INITS:
        raise ValueError(f"--classifier_init must be {' or '.join(CLASSIFIER_INITS)}, got '{classifier_init}'")


def init_classifier(weight: torch.Tensor, classifier_init: str) -> None:
    """Fill a classifier weight [rows, nOut] in place with the --classifier_init distribution (gain 1)."""
    CLASSIFIER_INITS[classifier_init](weight, gain=1)


def with_target(logits: torch.Tensor, target_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """`logits` [N, C] with each row's entry at its label taken from `target_logits` [N, C]."""
    one_hot = F.one_hot(label, logits.shape[1]).to(logits.dtype)
    return one_hot * target_logits + (1.0 - one_hot) * logits


@dataclass(frozen=True)
class MarginSchedule:
    """The share of the final margin after a number of training epochs: 0 before `start`, 1 from `end` on.

    In between, with t = (epochs - start) / (end - start), the share is 1 - RISE_FLOOR ** t, that is
    1 - exp(t * ln(1e-3 / (1 + 1e-6))) as wespeaker's MarginScheduler computes it: steep at first (0.5 of the
    margin after 10 % of the ramp, 0.97 at its middle), 0.999 just before `end`, then exactly 1. wespeaker counts
    epochs from 1 and starts the rise at iteration (increase_start_epoch - 1) x epoch_iter, so its
    increase_start_epoch 20 and fix_start_epoch 40 are start 19 and end 39 here."""

    start: float
    end: float

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"the margin schedule needs 0 <= --margin_start <= --margin_end, got --margin_start "
                             f"{self.start} and --margin_end {self.end}")

    def share(self, epochs: float) -> float:
        """Share of the final margin (0 to 1) after `epochs` epochs of training (a fraction within an epoch)."""
        if epochs >= self.end:
            return 1.0
        if epochs < self.start:
            return 0.0
        return 1.0 - RISE_FLOOR ** ((epochs - self.start) / (self.end - self.start))
