"""MUSAN noise / babble / music and RIR reverberation of training crops: the original's mix (AugmentWAV) and
wespeaker's (WespeakerAugment), chosen by --augment_mix."""
from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass

import numpy as np

from audio.effects import convolve_rir, mix_noises, peak_normalise
from audio.reading import LoaderStats, load_crops
from runtime.errors import ConfigError, MissingFileError

# dB ranges of the signal-to-noise ratio, drawn uniformly per noise file.
NOISE_SNR = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
# How many MUSAN files are mixed in (inclusive range).
NOISE_COUNT = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}
# augtype drawn per utterance: 0 none, 1 reverb, then one MUSAN category each.
AUGMENT_TYPES = ("none", "reverb", "music", "speech", "noise")
# --augment_mix: the original five-way draw, or wespeaker's (reverb or one noise with probability --augment_prob).
AUGMENT_MIXES = ("original", "wespeaker")
# wespeaker's dB ranges of the signal-to-noise ratio, per MUSAN category of the one file mixed in.
WESPEAKER_SNR = {"noise": (0.0, 15.0), "speech": (10.0, 30.0), "music": (5.0, 15.0)}
# The room folder of the simulated RIRs that only the wespeaker mix uses (the original's data had small and medium).
LARGE_ROOMS = "largeroom"

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


def room_type(path: str) -> str:
    """The room folder of an RIR file (`<room_type>/<Room>/<file>.wav`): smallroom, mediumroom, largeroom."""
    return path.split(os.sep)[-3]


def original_rooms(files: tuple[str, ...]) -> tuple[str, ...]:
    """The RIRs of the original mix: every room folder but largeroom (its data had the small and medium rooms)."""
    return tuple(path for path in files if room_type(path) != LARGE_ROOMS)


def musan_recordings(noise_files: dict[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(category, chunk paths) of each MUSAN recording (one `<stem>` folder of 5 s chunks), in path order."""
    chunks = {}
    for category, paths in noise_files.items():
        for path in paths:
            chunks.setdefault((os.path.dirname(path), category), []).append(path)
    return tuple((category, tuple(paths)) for (_, category), paths in sorted(chunks.items()))


def check_mix(augment_mix: str, augment_prob: float) -> None:
    """--augment_mix is a known mix and --augment_prob a probability."""
    if augment_mix not in AUGMENT_MIXES:
        raise ConfigError(f"--augment_mix {augment_mix} is unknown; use {' or '.join(AUGMENT_MIXES)}")
    if not 0 <= augment_prob <= 1:
        raise ConfigError(f"--augment_prob is a probability (0 to 1), got {augment_prob}")


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
        self.rir_files = self.rooms(rir_index(os.path.normpath(rir_path)), rir_path)
        self.stats = stats

    def rooms(self, files: tuple[str, ...], rir_path: str) -> tuple[str, ...]:
        """The original's RIRs (`original_rooms`), at least one."""
        kept = original_rooms(files)
        if not kept:
            raise MissingFileError(f"--augment_mix original needs RIRs of small or medium rooms in {rir_path}, but "
                                   f"found only {LARGE_ROOMS}: {PREPARE_HINT}")
        return kept

    def additive_noise(self, noisecat: str, audio: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Mix 1 (noise, music) or 3-7 (speech) MUSAN crops into the audio at random SNRs."""
        rng = np.random.default_rng() if rng is None else rng
        draws = draw_noises(self.noise_files[noisecat], noisecat, rng)
        noises = [load_crops(path, self.max_frames, False, 1, rng.random(), self.stats) for path, _ in draws]
        return mix_noises(audio, noises, [snr for _, snr in draws])

    def reverberate(self, audio: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Convolve the audio with a random unit-energy RIR."""
        rng = np.random.default_rng() if rng is None else rng
        return self.reverberate_with(self.rir_files[int(rng.integers(len(self.rir_files)))], audio)

    def reverberate_with(self, path: str, audio: np.ndarray) -> np.ndarray:
        """Convolve the audio with the RIR file `path`, normalised to unit energy, keeping the audio's length."""
        return convolve_rir(audio, load_crops(path, 0, True, 1, stats=self.stats)[0])

    def augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One of none / reverb / music / speech / noise, each with probability 1/5."""
        kind = draw_augment_type(rng)
        if kind == "none":
            return audio
        if kind == "reverb":
            return self.reverberate(audio, rng)
        return self.additive_noise(kind, audio, rng)


@dataclass(frozen=True)
class WespeakerDraw:
    """What wespeaker's mix does to one crop: nothing, reverb with an RIR file, or one MUSAN file at an SNR."""

    kind: str  # none, reverb or noise
    path: str = ""  # the RIR file, or the MUSAN chunk
    category: str = ""  # noise, speech or music (kind noise)
    snr_db: float = 0.0


class WespeakerAugment(AugmentWAV):
    """wespeaker's mix (--augment_mix wespeaker): with probability `prob` a crop gets, half the time each,
    reverberation by one simulated RIR of any room or one MUSAN recording at its category's SNR, and is then
    peak-normalised; the other crops are unchanged."""

    def __init__(self, musan_path: str, rir_path: str, max_frames: int, stats: LoaderStats | None = None,
                 prob: float = 0.6):
        super().__init__(musan_path, rir_path, max_frames, stats)
        self.recordings = musan_recordings(self.noise_files)
        self.prob = prob

    def rooms(self, files: tuple[str, ...], rir_path: str) -> tuple[str, ...]:
        """wespeaker's RIRs: every simulated room (small, medium and large)."""
        return files

    def draw(self, rng: np.random.Generator) -> WespeakerDraw:
        """Whether and how to augment one crop: a recording is drawn uniformly from all MUSAN recordings (then one
        of its 5 s chunks), an RIR uniformly from all RIR files."""
        if not rng.random() < self.prob:
            return WespeakerDraw("none")
        if rng.integers(2) == 0:
            return WespeakerDraw("reverb", self.rir_files[int(rng.integers(len(self.rir_files)))])
        category, chunks = self.recordings[int(rng.integers(len(self.recordings)))]
        path = chunks[int(rng.integers(len(chunks)))]
        return WespeakerDraw("noise", path, category, float(rng.uniform(*WESPEAKER_SNR[category])))

    def augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop after wespeaker's mix: unchanged, or reverberant or noisy and then peak-normalised."""
        drawn = self.draw(rng)
        if drawn.kind == "none":
            return audio
        if drawn.kind == "reverb":
            return peak_normalise(self.reverberate_with(drawn.path, audio))
        noise = load_crops(drawn.path, self.max_frames, False, 1, rng.random(), self.stats)
        return peak_normalise(mix_noises(audio, [noise], [drawn.snr_db]))


def make_augmenter(augment_mix: str, musan_path: str, rir_path: str, max_frames: int, stats: LoaderStats | None,
                   augment_prob: float = 0.6) -> AugmentWAV:
    """The augmenter of --augment_mix (original or wespeaker, the latter augmenting --augment_prob of the crops)."""
    check_mix(augment_mix, augment_prob)
    if augment_mix == "wespeaker":
        return WespeakerAugment(musan_path, rir_path, max_frames, stats, augment_prob)
    return AugmentWAV(musan_path, rir_path, max_frames, stats)
