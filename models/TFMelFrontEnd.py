"""--frontend tfmel: the TensorFlow-style log mel filterbank of ReDimNet2's authors (wespeaker's tfmel front end).

Per utterance: optional zero-mean, unit-variance waveform, pre-emphasis (left edge reflected), a 512-point DFT of
25 ms Hamming-windowed (symmetric) frames every 10 ms as two strided conv1d (80 zeros on each side, 256 bins: no
Nyquist bin), power, triangular mel filters (2595 log10(1 + f/700)) that place the 256 bins evenly from 0 to
8 kHz (bin k at k 8000/255 Hz, not k 8000/256: the authors' matrix), log, minus the mean over time. Powers are
clamped to [1e-8, 1e8] before and after the mel filters and the log adds 1e-8. Plain conv1d/matmul ops: exports to
ONNX and TorchScript as it is. Its constants (DFT basis, mel filters) are rebuilt from the options, never saved.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.FrontEnd import HOP_LENGTH, N_FFT, SAMPLE_RATE, WIN_LENGTH, dft_basis

EPSILON = 1e-8  # the floor (and 1 / EPSILON the ceiling) of the powers, the log's offset, the waveform std's offset
BINS = N_FFT // 2
PADDING = HOP_LENGTH // 2


def hz_to_mel(hz):
    """2595 log10(1 + f / 700), on floats or float64 tensors."""
    return 2595.0 * torch.log10(1 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def tf_mel_filters(n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular mel filters [n_mels, 256] in float64 over the bins placed at k * 8000 / 255 Hz."""
    edges = torch.linspace(hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = hz_to_mel(torch.linspace(0, SAMPLE_RATE / 2, BINS, dtype=torch.float64))
    return torch.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)).clamp_min(0)


def tf_dft_kernels() -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine, -sine) conv1d kernels [256, 1, 400] in float64: the first 256 bins of a 512-point DFT of a frame,
    times the symmetric Hamming window."""
    n = torch.arange(WIN_LENGTH, dtype=torch.float64)
    window = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (WIN_LENGTH - 1))
    cosine, sine = dft_basis(BINS, N_FFT, WIN_LENGTH)
    return (cosine * window).unsqueeze(1), (sine * window).unsqueeze(1)


class TFMelFbank(nn.Module):
    """Waveform [B, samples] -> tfmel log mel filterbank [B, n_mels, frames], float32, no gradient."""

    def __init__(self, n_mels: int, waveform_scale: float, waveform_norm: bool, preemphasis: float, mel_fmin: float,
                 mel_fmax: float) -> None:
        super().__init__()
        self.feature_dim, self.waveform_scale, self.waveform_norm = n_mels, waveform_scale, waveform_norm
        self.preemphasis = preemphasis
        cosine, sine = tf_dft_kernels()
        self.register_buffer("cosine", cosine.float(), persistent=False)
        self.register_buffer("sine", sine.float(), persistent=False)
        self.register_buffer("mel_filters", tf_mel_filters(n_mels, mel_fmin, mel_fmax).float(), persistent=False)

    def frames(self, samples: int) -> int:
        """Frames of the features of `samples` samples (400-sample frames every 160 over 80 zeros each side)."""
        padded = samples + 2 * PADDING
        return 1 + (padded - WIN_LENGTH) // HOP_LENGTH if padded >= WIN_LENGTH else 0

    def min_samples(self, frames: int) -> int:
        """The shortest input that gives at least `frames` frames."""
        return WIN_LENGTH - 2 * PADDING + max(frames - 1, 0) * HOP_LENGTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a [B, samples] waveform batch."""
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().unsqueeze(1) * self.waveform_scale
            if self.waveform_norm:
                x = (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True, unbiased=False) + EPSILON)
            if self.preemphasis:
                x = F.pad(x, (1, 0), mode="reflect")
                x = x[..., 1:] - self.preemphasis * x[..., :-1]
            real = F.conv1d(x, self.cosine, stride=HOP_LENGTH, padding=PADDING)
            imaginary = F.conv1d(x, self.sine, stride=HOP_LENGTH, padding=PADDING)
            power = (real * real + imaginary * imaginary).clamp(EPSILON, 1 / EPSILON)
            mel = torch.matmul(self.mel_filters, power).clamp(EPSILON, 1 / EPSILON)
            feats = (mel + EPSILON).log()
            return feats - feats.mean(dim=-1, keepdim=True)
