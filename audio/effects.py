"""Signal effects of augmentation: power in dB, noise mixed at a signal-to-noise ratio, room reverberation."""
from __future__ import annotations

import numpy as np
from scipy import signal


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


def convolve_rir(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve `[1, n]` audio with a unit-energy RIR by FFT (float32), keeping the first n samples."""
    rir = (rir / np.sqrt(np.sum(np.square(rir, dtype=np.float64)))).astype(np.float32)
    wet = signal.fftconvolve(audio.astype(np.float32), rir[np.newaxis, :], mode="full", axes=-1)
    return wet[:, :audio.shape[-1]]
