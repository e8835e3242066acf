"""MUSAN noise / babble / music and RIR reverberation of training crops (the original's AugmentWAV)."""
from __future__ import annotations

import functools
import glob
import os

import numpy as np

from audio.effects import convolve_rir, mix_noises
from audio.reading import LoaderStats, load_crops
from runtime.errors import MissingFileError

# dB ranges of the signal-to-noise ratio, drawn uniformly per noise file.
NOISE_SNR = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
# How many MUSAN files are mixed in (inclusive range).
NOISE_COUNT = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}
# augtype drawn per utterance: 0 none, 1 reverb, then one MUSAN category each.
AUGMENT_TYPES = ("none", "reverb", "music", "speech", "noise")

PREPARE_HINT = ("run `python dataprep.py --save_path data --augment` to download and split MUSAN and the "
                "RIRs, or point --musan_path / --rir_path at existing folders")


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
        raise MissingFileError(
            f"--augment needs split MUSAN files in {musan_path}/<category>/<subset>/<stem>/<NNNNN>.wav, "
            f"but found none for {', '.join(empty)}: {PREPARE_HINT}")
    return {category: tuple(paths) for category, paths in index.items()}


@functools.lru_cache(maxsize=None)
def rir_index(rir_path: str) -> tuple[str, ...]:
    """Simulated RIR files (`<room_type>/<Room>/<file>.wav`), built once per process."""
    files = tuple(sorted(glob.glob(os.path.join(rir_path, "*", "*", "*.wav"))))
    if not files:
        raise MissingFileError(
            f"--augment needs room impulse responses in {rir_path}/<room_type>/<Room>/<file>.wav, "
            f"but found none: {PREPARE_HINT}")
    return files


def draw_noises(files: tuple[str, ...], category: str, rng: np.random.Generator) -> list[tuple[str, float]]:
    """Pick distinct MUSAN files of one category and an SNR for each."""
    low, high = NOISE_COUNT[category]
    count = min(int(rng.integers(low, high + 1)), len(files))
    picks = rng.choice(len(files), size=count, replace=False)
    return [(files[i], float(rng.uniform(*NOISE_SNR[category]))) for i in picks]


def draw_augment_type(rng: np.random.Generator) -> str:
    """One of AUGMENT_TYPES, each with probability 1/5, drawn per utterance."""
    return AUGMENT_TYPES[int(rng.integers(len(AUGMENT_TYPES)))]


class AugmentWAV:
    """MUSAN noise / babble / music and RIR reverberation of `[1, max_audio]` crops."""

    def __init__(self, musan_path: str, rir_path: str, max_frames: int, stats: LoaderStats | None = None):
        self.max_frames = max_frames
        self.noise_files = musan_index(os.path.normpath(musan_path))
        self.rir_files = rir_index(os.path.normpath(rir_path))
        self.stats = stats

    def additive_noise(self, noisecat: str, audio: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Mix 1 (noise, music) or 3-7 (speech) MUSAN crops into the audio at random SNRs."""
        rng = np.random.default_rng() if rng is None else rng
        draws = draw_noises(self.noise_files[noisecat], noisecat, rng)
        noises = [load_crops(path, self.max_frames, False, 1, rng.random(), self.stats) for path, _ in draws]
        return mix_noises(audio, noises, [snr for _, snr in draws])

    def reverberate(self, audio: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Convolve the audio with a random unit-energy RIR."""
        rng = np.random.default_rng() if rng is None else rng
        path = self.rir_files[int(rng.integers(len(self.rir_files)))]
        return convolve_rir(audio, load_crops(path, 0, True, 1, stats=self.stats)[0])

    def augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One of none / reverb / music / speech / noise, each with probability 1/5."""
        kind = draw_augment_type(rng)
        if kind == "none":
            return audio
        if kind == "reverb":
            return self.reverberate(audio, rng)
        return self.additive_noise(kind, audio, rng)
