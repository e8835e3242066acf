"""MUSAN noise and RIR reverberation augmentation (the original's AugmentWAV semantics)."""

import functools
import glob
import os

import numpy as np
from scipy import signal

# dB ranges of the signal-to-noise ratio, drawn uniformly per noise file.
NOISE_SNR = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
# How many MUSAN files are mixed in (inclusive range).
NOISE_COUNT = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}
# augtype drawn per utterance: 0 none, 1 reverb, then one MUSAN category each.
AUGMENT_TYPES = ("none", "reverb", "music", "speech", "noise")

PREPARE_HINT = ("run `python dataprep.py --save_path data --augment` to download and split MUSAN and the "
                "RIRs, or point --musan_path / --rir_path at existing folders")


def power_db(audio: np.ndarray) -> float:
    """Signal power in dB with the original's +1e-4 floor."""
    flat = audio.ravel()
    return float(10 * np.log10(float(np.dot(flat, flat)) / max(flat.size, 1) + 1e-4))


@functools.lru_cache(maxsize=None)
def musan_index(musan_path: str) -> dict[str, tuple[str, ...]]:
    """Split MUSAN files per category (`<category>/<subset>/<stem>/<NNNNN>.wav`), built once per process."""
    files = sorted(glob.glob(os.path.join(musan_path, "*", "*", "*", "*.wav")))
    index = {category: [] for category in NOISE_SNR}
    for path in files:
        category = path.split(os.sep)[-4]
        if category in index:
            index[category].append(path)
    empty = [category for category, paths in index.items() if not paths]
    if empty:
        raise FileNotFoundError(
            f"--augment needs split MUSAN files in {musan_path}/<category>/<subset>/<stem>/<NNNNN>.wav, "
            f"but found none for {', '.join(empty)}: {PREPARE_HINT}")
    return {category: tuple(paths) for category, paths in index.items()}


@functools.lru_cache(maxsize=None)
def rir_index(rir_path: str) -> tuple[str, ...]:
    """Simulated RIR files (`<room_type>/<Room>/<file>.wav`), built once per process."""
    files = tuple(sorted(glob.glob(os.path.join(rir_path, "*", "*", "*.wav"))))
    if not files:
        raise FileNotFoundError(
            f"--augment needs room impulse responses in {rir_path}/<room_type>/<Room>/<file>.wav, "
            f"but found none: {PREPARE_HINT}")
    return files


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


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve `[1, n]` audio with a unit-energy RIR by FFT (float32), keeping the first n samples."""
    rir = (rir / np.sqrt(np.sum(np.square(rir, dtype=np.float64)))).astype(np.float32)
    wet = signal.fftconvolve(audio.astype(np.float32), rir[np.newaxis, :], mode="full", axes=-1)
    return wet[:, :audio.shape[-1]]


def draw_noises(files: tuple[str, ...], category: str, rng: np.random.Generator) -> list[tuple[str, float]]:
    """Pick distinct MUSAN files of one category and an SNR for each."""
    low, high = NOISE_COUNT[category]
    count = min(int(rng.integers(low, high + 1)), len(files))
    picks = rng.choice(len(files), size=count, replace=False)
    return [(files[i], float(rng.uniform(*NOISE_SNR[category]))) for i in picks]


def draw_augment_type(rng: np.random.Generator) -> str:
    """One of AUGMENT_TYPES, each with probability 1/5, drawn per utterance."""
    return AUGMENT_TYPES[int(rng.integers(len(AUGMENT_TYPES)))]
