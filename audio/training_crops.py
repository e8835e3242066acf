"""One training item's crops, the same for every data source: a random crop at the item's speed, then the
optional augmentation and spectral masks, all drawn from the item's own random generator."""
from __future__ import annotations

import math

import numpy as np

from audio.augmentation import AugmentWAV
from audio.effects import change_speed, spectral_masks
from audio.reading import LoaderStats, crop_length, load_crops
from runtime.errors import ConfigError

# --speed_perturb: each training speaker also at these speeds, each a speaker (class) of its own.
SPEED_FACTORS = (1.0, 0.9, 1.1)
# --speed_perturb_mode: every utterance at every speed, or one random speed per batch item and epoch (wespeaker's).
SPEED_MODES = ("expand", "per_epoch")


def item_rng(seed: int, epoch: int, *position: int) -> np.random.Generator:
    """The random generator of one training item: a function of the seed, the epoch and the item's position
    (also of a shard reader's stream, whose position is its rank and worker)."""
    return np.random.default_rng([seed % 2 ** 63, epoch, *position])


def expand_speakers(paths: list, speakers: list[str], speeds: tuple[float, ...]
                    ) -> tuple[list, list[int], list[float], list[str]]:
    """(paths, labels, speeds, speaker names) with every speaker once per speed: at speed k a speaker is a new
    class, label + k * speakers, named '<speaker>@<speed>' (speed 1 keeps the name and the original's labels)."""
    names = sorted(set(speakers))
    label_of = {speaker: label for label, speaker in enumerate(names)}
    labels = [label_of[speaker] for speaker in speakers]
    expanded_names = [name if speed == 1.0 else f"{name}@{speed:g}" for speed in speeds for name in names]
    return ([path for _ in speeds for path in paths],
            [label + k * len(names) for k in range(len(speeds)) for label in labels],
            [speed for speed in speeds for _ in paths], expanded_names)


def listed_speeds(speed_perturb: bool, speed_perturb_mode: str) -> tuple[float, ...]:
    """The speeds each utterance is listed at: every speed of SPEED_FACTORS with --speed_perturb and mode expand,
    else speed 1 (the per_epoch mode draws a speed per batch item instead)."""
    if speed_perturb_mode not in SPEED_MODES:
        raise ConfigError(f"--speed_perturb_mode {speed_perturb_mode} is unknown; use {' or '.join(SPEED_MODES)}")
    return SPEED_FACTORS if speed_perturb and speed_perturb_mode == "expand" else (1.0,)


def draw_item_speed(rng: np.random.Generator, speakers: int) -> tuple[float, int]:
    """--speed_perturb_mode per_epoch: one batch item's speed, uniform over SPEED_FACTORS, and the label shift that
    makes it a speaker of its own (k x `speakers` at speed k); drawn first from the item's generator."""
    step = int(rng.integers(len(SPEED_FACTORS)))
    return SPEED_FACTORS[step], step * speakers


class TrainingCrops:
    """Cuts `[1, max_frames*160+240]` training crops and applies --augment and --spec_augment to them."""

    def __init__(self, max_frames: int, augmenter: AugmentWAV | None, spec_augment: bool, stats: LoaderStats):
        self.max_frames = max_frames
        self.augmenter = augmenter
        self.spec_augment = spec_augment
        self.stats = stats

    def crop(self, source, speed: float, draw: float) -> np.ndarray:
        """One crop of a file (a path or AudioBytes) at `speed` (reading about speed x the crop's length)."""
        if speed == 1.0:
            return load_crops(source, self.max_frames, False, 1, draw, self.stats)
        length = crop_length(self.max_frames)
        source_frames = math.ceil((length * speed - crop_length(0)) / 160) + 1
        return change_speed(load_crops(source, source_frames, False, 1, draw, self.stats), speed, length)

    def finish(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop after the optional augmentation, then the optional spectral masks."""
        if self.augmenter is not None:
            audio = self.augmenter.augment(audio, rng)
        return spectral_masks(audio, rng) if self.spec_augment else audio
