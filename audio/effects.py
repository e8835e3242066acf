"""Signal effects of augmentation: power in dB, noise mixed at a signal-to-noise ratio, peak normalisation, room
reverberation, speed change and SpecAugment-style spectral masks."""
from __future__ import annotations

from fractions import Fraction

import numpy as np


def scipy_signal():
    """scipy.signal, imported at the first effect applied: evaluation and embedding never pay for its import."""
    from scipy import signal

    return signal


def power_db(audio: np.ndarray) -> float:
    """Signal power in dB with the original's +1e-4 floor."""
    flat = audio.ravel()
    return float(10 * np.log10(float(np.dot(flat, flat)) / max(flat.size, 1) + 1e-4))


def noise_gain(clean_db: float, noise_db: float, snr_db: float) -> float:
    """Amplitude factor that puts a noise at `snr_db` below the clean signal."""
    return float(np.sqrt(10 ** ((clean_db - noise_db - snr_db) / 10)))


def mix_noises(audio: np.ndarray, noises: list[np.ndarray], snrs_db: list[float]) -> np.ndarray:
    """Add each noise crop to `audio` scaled to its SNR (all shaped like `audio`)."""
    clean_db = power_db(audio)
    mixed = audio.astype(np.float32, copy=True)
    for noise, snr_db in zip(noises, snrs_db):
        mixed += np.float32(noise_gain(clean_db, power_db(noise), snr_db)) * noise
    return mixed


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    """Audio divided by its peak magnitude + 1e-4 (wespeaker's normalisation of an augmented crop)."""
    return (audio / (np.max(np.abs(audio)) + 1e-4)).astype(np.float32)


def convolve_rir(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve `[1, n]` audio with a unit-energy RIR by FFT (float32), keeping the first n samples."""
    rir = (rir / np.sqrt(np.sum(np.square(rir, dtype=np.float64)))).astype(np.float32)
    wet = scipy_signal().fftconvolve(audio.astype(np.float32), rir[np.newaxis, :], mode="full", axes=-1)
    return wet[:, :audio.shape[-1]]


def change_speed(audio: np.ndarray, speed: float, length: int) -> np.ndarray:
    """Play `[1, n]` audio `speed` times faster (tempo and pitch, like sox's speed) and keep `length` samples; the
    input needs about length * speed samples (shorter results are padded by repetition)."""
    ratio = Fraction(1 / speed).limit_denominator(100)
    changed = scipy_signal().resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)
    if changed.shape[-1] < length:
        changed = np.pad(changed, ((0, 0), (0, length - changed.shape[-1])), mode="wrap")
    return changed[:, :length]


def spectral_masks(audio: np.ndarray, rng: np.random.Generator, masks: int = 2, max_band: float = 0.1,
                   max_frames: int = 10) -> np.ndarray:
    """SpecAugment on the waveform: `masks` frequency bands (each up to `max_band` of the spectrum) and `masks`
    time spans (each up to `max_frames` 10 ms frames) of `[1, n]` audio zeroed in its short-time spectrum."""
    n = audio.shape[-1]
    _, _, spectrum = scipy_signal().stft(audio[0], nperseg=400, noverlap=240, nfft=512)
    bins, frames = spectrum.shape
    for _ in range(masks):
        width = int(rng.integers(0, int(max_band * bins) + 1))
        start = int(rng.integers(0, bins - width + 1))
        spectrum[start:start + width] = 0
        span = int(rng.integers(0, min(max_frames, frames) + 1))
        first = int(rng.integers(0, frames - span + 1))
        spectrum[:, first:first + span] = 0
    _, masked = scipy_signal().istft(spectrum, nperseg=400, noverlap=240, nfft=512)
    masked = masked[:n].astype(np.float32)
    return np.pad(masked, (0, n - len(masked)))[np.newaxis, :]
