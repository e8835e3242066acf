"""Waveform front ends shared by the models: pre-emphasis, mel filterbank, normalised log-mel features."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160


def dft_basis(bins: int, n_fft: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine, -sine) [bins, length] in float64: the first `bins` bins of an n_fft-point DFT of `length` samples."""
    phase = torch.outer(torch.arange(bins), torch.arange(length)).remainder(n_fft).double() * (2 * math.pi / n_fft)
    return phase.cos(), -phase.sin()


class PreEmphasis(nn.Module):
    """y[t] = x[t] - coef * x[t-1] on [B, T] waveforms (left edge reflect-padded); filter kept as a buffer."""

    def __init__(self, coef: float = 0.97) -> None:
        super().__init__()
        self.register_buffer("flipped_filter", torch.tensor([[[-coef, 1.0]]], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a [B, T] waveform batch."""
        if x.dim() != 2:
            raise ValueError(f"PreEmphasis expects a [batch, samples] waveform, got shape {list(x.shape)}")
        padded = F.pad(x.unsqueeze(1), (1, 0), mode="reflect")
        return F.conv1d(padded, self.flipped_filter).squeeze(1)


def mel_filterbank(n_mels: int, window_fn: Callable[..., torch.Tensor] = torch.hamming_window,
                   f_max: float | None = None, f_min: float = 0.0) -> torchaudio.transforms.MelSpectrogram:
    """torchaudio MelSpectrogram with the original's settings (16 kHz, 512-point FFT, 25 ms window, 10 ms hop)."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
        window_fn=window_fn, f_min=f_min, f_max=f_max, n_mels=n_mels,
    )


def normalised_features(feature_fn: nn.Module, x: torch.Tensor, log_input: bool) -> torch.Tensor:
    """Waveform [B, samples] -> per-utterance normalised (log-)features [B, 1, bins, frames], float32, no grad.

    Computed with autocast disabled so that mixed-precision training sees the same features as float32.
    """
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        feats = feature_fn(x.float()) + 1e-6
        if log_input:
            feats = feats.log()
        feats = F.instance_norm(feats, eps=1e-5)
    return feats.unsqueeze(1)


def conv_length(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def min_frames_for(frames_after_pooling: Callable[[int], int]) -> int:
    """Fewest feature frames that leave at least one frame after the network's time pooling (two at least)."""
    frames = 2  # normalisation over time needs at least two frames
    while frames_after_pooling(frames) < 1:
        frames += 1
    return frames


def min_samples_for(frames_after_pooling: Callable[[int], int], center: bool = True) -> int:
    """Smallest input length (samples) that gives at least one frame after the network's time pooling."""
    frames = min_frames_for(frames_after_pooling)
    if center:  # reflect padding needs more than n_fft // 2 samples
        return max(N_FFT // 2 + 1, (frames - 1) * HOP_LENGTH)
    return N_FFT + (frames - 1) * HOP_LENGTH


def check_input_length(x: torch.Tensor, min_samples: int, model_name: str) -> None:
    """Raise a ValueError naming the minimum when the waveform batch [B, samples] is too short."""
    if x.dim() != 2:
        raise ValueError(f"{model_name} expects a waveform batch [batch, samples], got shape {list(x.shape)}")
    if x.shape[-1] < min_samples:
        raise ValueError(
            f"{model_name} needs at least {min_samples} samples per input "
            f"({min_samples / SAMPLE_RATE:.3f} s at 16 kHz), got {x.shape[-1]}; use longer audio or crops "
            f"(--max_frames / --eval_frames)")


class MeanNormalisedFbank(nn.Module):
    """Waveform [B, samples] -> log mel filterbank [B, n_mels, frames] minus each utterance's mean over time.

    The fbank models' default front end (--frontend logmel): 25 ms Hamming window, 10 ms hop,
    512-point FFT, mel power with a 1e-6 floor before the log, mean normalisation only (no variance scaling).
    Optionally pre-emphasised first and with the mel bands between mel_fmin and mel_fmax (ReDimNet's MelBanks:
    0.97, 20 to 7600 Hz). Computed in float32 with autocast disabled and without gradient, batched with plain
    torch/torchaudio ops.
    """

    def __init__(self, n_mels: int = 80, preemphasis: float = 0.0, mel_fmin: float = 0.0,
                 mel_fmax: float = SAMPLE_RATE / 2) -> None:
        super().__init__()
        self.feature_dim = n_mels
        self.preemphasis = PreEmphasis(preemphasis) if preemphasis else nn.Identity()  # Identity: no state keys
        self.mel = mel_filterbank(n_mels, window_fn=torch.hamming_window, f_max=mel_fmax, f_min=mel_fmin)

    def frames(self, samples: int) -> int:
        """Frames of the features of `samples` samples (centred frames; reflect padding needs n_fft // 2 + 1)."""
        return samples // HOP_LENGTH + 1 if samples > N_FFT // 2 else 0

    def min_samples(self, frames: int) -> int:
        """The shortest input that gives at least `frames` frames."""
        return max(N_FFT // 2 + 1, (frames - 1) * HOP_LENGTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a [B, samples] waveform batch."""
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            feats = (self.mel(self.preemphasis(x.float())) + 1e-6).log()
            return feats - feats.mean(dim=-1, keepdim=True)
