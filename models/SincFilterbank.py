"""Learnable band-pass sinc filterbank (SincNet with cosine and sine filters), as RawNet3's first layer.

State_dict keys and values follow asteroid_filterbanks' `Encoder(ParamSincFB(...))`, so the original's RawNet3
checkpoints load: `filterbank.low_hz_` and `filterbank.band_hz_` [bands, 1] (parameters), `filterbank.window_`
[kernel // 2] and `filterbank.n_` [1, kernel // 2] (buffers).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale."""
    return 2595 * np.log10(1 + hz / 700)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray | float:
    """Inverse of `hz_to_mel`."""
    return 700 * (10 ** (mel / 2595) - 1)


class ParamSincFilterbank(nn.Module):
    """`n_filters` // 2 band-pass filters, each as an even (cosine) and an odd (sine) windowed sinc.

    Band i passes [min_low_hz + |low_hz_[i]|, that + min_band_hz + |band_hz_[i]|] (capped at Nyquist); the
    bands start mel-spaced between 30 Hz and Nyquist - min_low_hz - min_band_hz.
    """

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: float = 16000.0,
                 min_low_hz: float = 50, min_band_hz: float = 50) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or n_filters % 2 != 0:
            raise ValueError(f"sinc filterbank needs an odd kernel_size and an even n_filters, "
                             f"got kernel_size {kernel_size} and n_filters {n_filters}")
        self.n_bands = n_filters // 2
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low_hz, self.min_band_hz = min_low_hz, min_band_hz
        # float32 arithmetic as in asteroid, so a fresh model starts from the same band edges
        mel = np.linspace(hz_to_mel(30), hz_to_mel(sample_rate / 2 - (min_low_hz + min_band_hz)),
                          self.n_bands + 1, dtype="float32")
        edges = mel_to_hz(mel)
        self.low_hz_ = nn.Parameter(torch.from_numpy(edges[:-1]).view(-1, 1))
        self.band_hz_ = nn.Parameter(torch.from_numpy(np.diff(edges)).view(-1, 1))
        half = kernel_size // 2
        self.register_buffer("window_", torch.from_numpy(np.hamming(kernel_size)[:half]).float())
        self.register_buffer("n_", 2 * math.pi * (torch.arange(-half, 0.0).view(1, -1) / sample_rate))

    def band_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper cut-off frequencies in Hz, [bands, 1] each."""
        low = self.min_low_hz + self.low_hz_.abs()
        high = (low + self.min_band_hz + self.band_hz_.abs()).clamp(self.min_low_hz, self.sample_rate / 2)
        return low, high

    def filters(self) -> torch.Tensor:
        """Filter kernels [2 * bands, 1, kernel]: all cosine filters first, then all sine filters."""
        low, high = self.band_edges()
        band = high - low
        phase_low, phase_high = low * self.n_, high * self.n_  # 2 pi f t for t < 0
        half_t = self.n_ / 2  # pi t
        cos_left = (phase_high.sin() - phase_low.sin()) / half_t * self.window_
        sin_left = (phase_low.cos() - phase_high.cos()) / half_t * self.window_
        cos_filters = torch.cat([cos_left, 2 * band, cos_left.flip(1)], dim=1)
        sin_filters = torch.cat([sin_left, torch.zeros_like(band), -sin_left.flip(1)], dim=1)
        kernels = torch.cat([cos_filters, sin_filters], dim=0) / (2 * band.repeat(2, 1))
        return kernels.unsqueeze(1)


class SincConv(nn.Module):
    """Waveform [B, 1, T] -> filterbank responses [B, n_filters, (T - kernel) // stride + 1] (no padding)."""

    def __init__(self, n_filters: int, kernel_size: int, stride: int, sample_rate: float = 16000.0) -> None:
        super().__init__()
        self.filterbank = ParamSincFilterbank(n_filters, kernel_size, sample_rate)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve a [B, 1, T] batch with the current filters."""
        return F.conv1d(x, self.filterbank.filters(), stride=self.stride)
