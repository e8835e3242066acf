"""The models' front ends, chosen with --frontend: logmel (today's), kaldi (Kaldi's fbank), speechbrain, tfmel
(ReDimNet2's TensorFlow-style filterbank, models/TFMelFrontEnd.py) or ssl (a self-supervised encoder,
models/SSLEncoder.py).

Each maps a waveform batch [B, samples] to features [B, feature_dim, frames] on the input's device and counts its
own framing with frames(samples) and min_samples(frames); the filterbanks work in float32 (autocast off, no
gradient) and have feature_dim n_mels. The constant tensors of kaldi, speechbrain and tfmel (windows, mel banks, DFT
bases) are not saved in checkpoints: the options rebuild them.
"""
from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

from models.FrontEnd import HOP_LENGTH, N_FFT, SAMPLE_RATE, WIN_LENGTH, MeanNormalisedFbank
from models.TFMelFrontEnd import TFMelFbank

# The options each front end takes besides --frontend, with the front end's own defaults.
FRONTEND_OPTIONS = {
    "logmel": {"preemphasis": 0.0, "mel_fmin": 0.0, "mel_fmax": 8000.0},
    "kaldi": {"frontend_window": "povey", "waveform_scale": 1.0, "preemphasis": 0.97, "dither": 0.0,
              "mean_norm": True},
    "speechbrain": {"frontend_window": "hamming", "waveform_scale": 1.0, "mean_norm": True},
    "tfmel": {"waveform_scale": 1.0, "waveform_norm": True, "preemphasis": 0.97, "mel_fmin": 20.0, "mel_fmax": 7600.0},
    "ssl": {"ssl_source": None, "ssl_init": "pretrained", "ssl_layers": "weighted", "ssl_frozen": False,
            "lora_rank": 0, "lora_alpha": None, "lora_targets": None, "gradient_checkpointing": False,
            "mean_norm": True, "waveform_norm": None},
}
FRONTEND_KEYS = ("frontend", *dict.fromkeys(option for options in FRONTEND_OPTIONS.values() for option in options))
KALDI_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's floor before the log
KALDI_LOW_FREQ = 20.0
SPEECHBRAIN_N_FFT = 400
SPEECHBRAIN_AMIN = 1e-10
SPEECHBRAIN_TOP_DB = 80.0


def feature_window(name: str, length: int, periodic: bool) -> torch.Tensor:
    """Analysis window by Kaldi's definitions (povey = hann ** 0.85, blackman 0.42); periodic: as torch's windows."""
    phase = 2 * math.pi * torch.arange(length, dtype=torch.float64) / (length if periodic else length - 1)
    hann = 0.5 - 0.5 * torch.cos(phase)
    windows = {
        "povey": lambda: hann ** 0.85,
        "hamming": lambda: 0.54 - 0.46 * torch.cos(phase),
        "hann": lambda: hann,
        "rectangular": lambda: torch.ones_like(phase),
        "blackman": lambda: 0.42 - 0.5 * torch.cos(phase) + 0.08 * torch.cos(2 * phase),
    }
    if name not in windows:
        raise ValueError(f"--frontend_window {name!r} is not a window; choose {', '.join(windows)}")
    return windows[name]().float()


def kaldi_mel_banks(n_mels: int) -> torch.Tensor:
    """Kaldi's triangular mel banks [n_mels, 257] (mel = 1127 ln(1 + f/700), 20 Hz to Nyquist; Nyquist bin 0)."""
    def mel(hz):
        return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)

    edges = torch.linspace(mel(KALDI_LOW_FREQ).item(), mel(SAMPLE_RATE / 2).item(), n_mels + 2, dtype=torch.float64)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = mel(torch.arange(N_FFT // 2 + 1, dtype=torch.float64) * SAMPLE_RATE / N_FFT)
    banks = torch.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)).clamp_min(0)
    banks[:, -1] = 0  # Kaldi's banks stop below the Nyquist bin
    return banks.float()


def speechbrain_mel_matrix(n_mels: int) -> torch.Tensor:
    """SpeechBrain's triangular filters [n_mels, 201] (mel = 2595 log10(1 + f/700), 0 to 8 kHz, 400-point FFT)."""
    top_mel = 2595.0 * math.log10(1 + SAMPLE_RATE / 2 / 700)
    hz = 700.0 * (10 ** (torch.linspace(0, top_mel, n_mels + 2, dtype=torch.float64) / 2595) - 1)
    centre, band = hz[1:-1, None], (hz[1:] - hz[:-1])[:-1, None]
    slope = (torch.linspace(0, SAMPLE_RATE / 2, SPEECHBRAIN_N_FFT // 2 + 1, dtype=torch.float64) - centre) / band
    return torch.minimum(1 + slope, 1 - slope).clamp_min(0).float()


def without_time_mean(feats: torch.Tensor) -> torch.Tensor:
    """[B, bins, frames] minus each utterance's mean over time."""
    return feats - feats.mean(dim=-1, keepdim=True)


class KaldiPowerSpectrum(nn.Module):
    """[B, samples] -> power spectrum [B, 257, frames] of Kaldi's 25 ms frames (10 ms hop, whole frames only).

    Each frame gets Gaussian dither (training only), loses its mean, is pre-emphasised (its first sample against
    itself) and windowed, then goes through a 512-point zero-padded FFT."""

    def __init__(self, window: str, preemphasis: float, dither: float) -> None:
        super().__init__()
        self.preemphasis, self.dither = preemphasis, dither
        self.register_buffer("window", feature_window(window, WIN_LENGTH, periodic=False), persistent=False)

    def windowed_frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> frames [B, frames, 400], ready for the FFT."""
        frames = x.unfold(-1, WIN_LENGTH, HOP_LENGTH)  # a view: frames overlap in memory
        if self.training and self.dither:
            frames = frames + self.dither * torch.randn(frames.shape, dtype=frames.dtype, device=frames.device)
        means = frames.mean(dim=-1, keepdim=True)
        if not self.preemphasis:
            return (frames - means).mul_(self.window)
        # pre-emphasis of the DC-free frame: x[j] - c x[j-1] - (1 - c) mean, with x[-1] = x[0]
        emphasised = torch.empty(frames.shape, dtype=frames.dtype, device=frames.device)
        torch.sub(frames[..., 1:], frames[..., :-1], alpha=self.preemphasis, out=emphasised[..., 1:])
        torch.mul(frames[..., :1], 1 - self.preemphasis, out=emphasised[..., :1])
        return emphasised.sub_((1 - self.preemphasis) * means).mul_(self.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Power spectrum of a [B, samples] waveform batch."""
        spectrum = torch.fft.rfft(self.windowed_frames(x), n=N_FFT)
        return spectrum.real.square().addcmul_(spectrum.imag, spectrum.imag).transpose(1, 2)


class KaldiFbank(nn.Module):
    """Kaldi's log mel filterbank (torchaudio.compliance.kaldi.fbank defaults, 16 kHz), batched, mean normalised."""

    def __init__(self, n_mels: int, frontend_window: str, waveform_scale: float, preemphasis: float, dither: float,
                 mean_norm: bool) -> None:
        super().__init__()
        self.feature_dim, self.waveform_scale, self.mean_norm = n_mels, waveform_scale, mean_norm
        self.spectrum = KaldiPowerSpectrum(frontend_window, preemphasis, dither)
        self.register_buffer("mel_banks", kaldi_mel_banks(n_mels), persistent=False)

    def frames(self, samples: int) -> int:
        """Frames of the features of `samples` samples (whole 400-sample frames every 160 samples)."""
        return 1 + (samples - WIN_LENGTH) // HOP_LENGTH if samples >= WIN_LENGTH else 0

    def min_samples(self, frames: int) -> int:
        """The shortest input that gives at least `frames` frames."""
        return WIN_LENGTH + max(frames - 1, 0) * HOP_LENGTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a [B, samples] waveform batch."""
        if x.shape[-1] < WIN_LENGTH:
            raise ValueError(f"The kaldi front end needs at least {WIN_LENGTH} samples, got {x.shape[-1]}")
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            power = self.spectrum(x.float() * self.waveform_scale)
            feats = torch.matmul(self.mel_banks, power).clamp_min(KALDI_EPSILON).log()
            return without_time_mean(feats) if self.mean_norm else feats


class SpeechBrainFbank(nn.Module):
    """SpeechBrain's Fbank (lobes.features.Fbank defaults, 16 kHz) in decibels, batched, mean normalised.

    Centred 25 ms frames (zero padding), 400-point FFT, power, SpeechBrain's mel filters, 10 log10 with a 1e-10
    floor, each utterance clipped 80 dB below its maximum."""

    def __init__(self, n_mels: int, frontend_window: str, waveform_scale: float, mean_norm: bool) -> None:
        super().__init__()
        self.feature_dim, self.waveform_scale, self.mean_norm = n_mels, waveform_scale, mean_norm
        self.spectrogram = torchaudio.transforms.Spectrogram(n_fft=SPEECHBRAIN_N_FFT, hop_length=HOP_LENGTH,
                                                             center=True, pad_mode="constant", power=2.0)
        self.spectrogram.register_buffer("window", feature_window(frontend_window, SPEECHBRAIN_N_FFT, periodic=True),
                                         persistent=False)
        self.register_buffer("mel_matrix", speechbrain_mel_matrix(n_mels), persistent=False)

    def frames(self, samples: int) -> int:
        """Frames of the features of `samples` samples (centred frames every 160 samples)."""
        return samples // HOP_LENGTH + 1 if samples > 0 else 0

    def min_samples(self, frames: int) -> int:
        """The shortest input that gives at least `frames` frames."""
        return max(1, (frames - 1) * HOP_LENGTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a [B, samples] waveform batch."""
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            power = self.spectrogram(x.float() * self.waveform_scale)
            decibels = 10 * torch.matmul(self.mel_matrix, power).clamp_min(SPEECHBRAIN_AMIN).log10()
            feats = torch.maximum(decibels, decibels.amax(dim=(1, 2), keepdim=True) - SPEECHBRAIN_TOP_DB)
            return without_time_mean(feats) if self.mean_norm else feats


def frontend_settings(flags: dict) -> dict:
    """The front-end flags (--frontend and its options) present in a flags dict."""
    return {key: flags[key] for key in FRONTEND_KEYS if key in flags}


def check_options(options: dict) -> None:
    """Refuse option values the front end cannot use, naming the flag."""
    if options.get("waveform_scale", 1.0) <= 0:
        raise ValueError(f"--waveform_scale must be above 0, got {options['waveform_scale']}")
    if not 0 <= options.get("preemphasis", 0.0) <= 1:
        raise ValueError(f"--preemphasis is a coefficient from 0 to 1, got {options['preemphasis']}")
    if options.get("dither", 0.0) < 0:
        raise ValueError(f"--dither must be 0 or above, got {options['dither']}")
    if not 0 <= options.get("mel_fmin", 0.0) < options.get("mel_fmax", 8000.0) <= 8000.0:
        raise ValueError(f"--mel_fmin and --mel_fmax must satisfy 0 <= mel_fmin < mel_fmax <= 8000 Hz, got "
                         f"{options['mel_fmin']} and {options['mel_fmax']}")


def build_frontend(n_mels: int, frontend: str | None = "logmel", stacked: bool = False, **given) -> nn.Module:
    """The front end named by --frontend with its options (FRONTEND_OPTIONS); an option left None takes the front
    end's default. `stacked`: a back end that weighs an encoder's layers itself, which needs --frontend ssl."""
    frontend = frontend or "logmel"
    if frontend not in FRONTEND_OPTIONS:
        raise ValueError(f"--frontend {frontend!r} is not a front end; choose {', '.join(FRONTEND_OPTIONS)}")
    if stacked and frontend != "ssl":
        raise ValueError(f"--frontend {frontend}: this back end pools the layers of a self-supervised encoder; "
                         "use --frontend ssl with --ssl_source")
    if stacked and given.get("ssl_layers") is not None:
        raise ValueError("--ssl_layers does not apply to this back end: it weighs all of the encoder's layers itself")
    defaults = FRONTEND_OPTIONS[frontend]
    for name, value in given.items():
        if name not in FRONTEND_KEYS:
            raise TypeError(f"build_frontend() got an unexpected option {name!r}")
        if value is not None and name not in defaults:
            takes = ", ".join(f"--{option}" for option in defaults) or "no options"
            raise ValueError(f"--{name} does not apply to --frontend {frontend} (it takes {takes})")
    options = {name: default if given.get(name) is None else given[name] for name, default in defaults.items()}
    check_options(options)
    if frontend == "kaldi":
        return KaldiFbank(n_mels, **options)
    if frontend == "speechbrain":
        return SpeechBrainFbank(n_mels, **options)
    if frontend == "tfmel":
        return TFMelFbank(n_mels, **options)
    if frontend == "ssl":
        from models.SSLEncoder import SSLFrontEnd  # transformers is imported only for an ssl front end

        return SSLFrontEnd(**options, stacked=stacked)
    return MeanNormalisedFbank(n_mels, **options)
