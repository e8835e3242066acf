"""Export-only spectrograms: torchaudio's Spectrogram and MelSpectrogram and the kaldi front end's power spectrum
as a strided conv1d with a fixed DFT basis.

ONNX has no complex numbers, so torch.stft and torch.fft do not export (nor does unfold over a dynamic length);
these modules compute the same one-sided power (or magnitude) spectrum from the trained module's own window and
filterbank, in real arithmetic."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from models.Fbanks import KaldiPowerSpectrum
from models.FrontEnd import HOP_LENGTH, N_FFT, dft_basis


class DftSpectrogram(nn.Module):
    """[B, samples] -> [B, n_fft // 2 + 1, frames]: |windowed DFT| ** power of each hop, as strided conv1d."""

    def __init__(self, spectrogram: torchaudio.transforms.Spectrogram) -> None:
        super().__init__()
        if spectrogram.pad or spectrogram.normalized or not spectrogram.onesided or spectrogram.power is None:
            raise ValueError("only one-sided, unnormalised, unpadded power or magnitude spectrograms export")
        self.n_fft, self.hop_length, self.power = spectrogram.n_fft, spectrogram.hop_length, spectrogram.power
        self.center, self.pad_mode = spectrogram.center, spectrogram.pad_mode
        window = torch.zeros(self.n_fft, dtype=torch.float64)
        left = (self.n_fft - spectrogram.win_length) // 2
        window[left:left + spectrogram.win_length] = spectrogram.window.double()
        cosine, sine = dft_basis(self.n_fft // 2 + 1, self.n_fft, self.n_fft)
        # real and imaginary parts as two convolutions, so the exporter knows the number of bins of each
        self.register_buffer("cosine", (cosine * window).unsqueeze(1).float())
        self.register_buffer("sine", (sine * window).unsqueeze(1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spectrum of a [B, samples] waveform batch."""
        x = x.unsqueeze(1)
        if self.center:
            x = F.pad(x, (self.n_fft // 2, self.n_fft // 2), mode=self.pad_mode)
        real = F.conv1d(x, self.cosine, stride=self.hop_length)
        imaginary = F.conv1d(x, self.sine, stride=self.hop_length)
        power = real * real + imaginary * imaginary
        return power if self.power == 2 else power.pow(self.power / 2)


class DftMelSpectrogram(nn.Module):
    """[B, samples] -> [B, n_mels, frames]: DftSpectrogram through the trained module's mel filterbank."""

    def __init__(self, mel: torchaudio.transforms.MelSpectrogram) -> None:
        super().__init__()
        self.spectrogram = DftSpectrogram(mel.spectrogram)
        self.register_buffer("filterbank", mel.mel_scale.fb.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mel spectrum of a [B, samples] waveform batch."""
        return torch.matmul(self.spectrogram(x).transpose(-1, -2), self.filterbank).transpose(-1, -2)


class DftKaldiPowerSpectrum(nn.Module):
    """[B, samples] -> [B, 257, frames]: KaldiPowerSpectrum in eval mode (no dither) as one strided conv1d.

    DC removal, pre-emphasis and the window are linear in each frame, so they fold into the 512-point DFT basis
    over the frame's 400 samples (the zero padding adds nothing)."""

    def __init__(self, spectrum: KaldiPowerSpectrum) -> None:
        super().__init__()
        length = spectrum.window.numel()
        coefficient = spectrum.preemphasis
        remove_dc = torch.eye(length, dtype=torch.float64) - 1.0 / length
        emphasise = torch.eye(length, dtype=torch.float64)  # x[j] - c x[j-1], the first sample against itself
        emphasise -= torch.diag(torch.full((length - 1,), coefficient, dtype=torch.float64), diagonal=-1)
        emphasise[0, 0] = 1 - coefficient
        frame_step = spectrum.window.double()[:, None] * (emphasise @ remove_dc)
        cosine, sine = dft_basis(N_FFT // 2 + 1, N_FFT, length)
        self.register_buffer("cosine", (cosine @ frame_step).unsqueeze(1).float())
        self.register_buffer("sine", (sine @ frame_step).unsqueeze(1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Power spectrum of a [B, samples] waveform batch."""
        real = F.conv1d(x.unsqueeze(1), self.cosine, stride=HOP_LENGTH)
        imaginary = F.conv1d(x.unsqueeze(1), self.sine, stride=HOP_LENGTH)
        return real * real + imaginary * imaginary


def replace_spectrograms(model: nn.Module) -> int:
    """Swap every torchaudio (Mel)Spectrogram and Kaldi power spectrum inside `model` for its DFT twin, in place;
    returns how many."""
    replaced = 0
    for name, child in list(model.named_children()):
        if isinstance(child, KaldiPowerSpectrum):
            setattr(model, name, DftKaldiPowerSpectrum(child))
        elif isinstance(child, torchaudio.transforms.MelSpectrogram):
            setattr(model, name, DftMelSpectrogram(child))
        elif isinstance(child, torchaudio.transforms.Spectrogram):
            setattr(model, name, DftSpectrogram(child))
        else:
            replaced += replace_spectrograms(child)
            continue
        replaced += 1
    return replaced
