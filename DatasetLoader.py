"""Train/test datasets, MUSAN/RIR augmentation and the speaker-balanced sampler of voxceleb_trainer."""
from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import random
import warnings
from dataclasses import asdict, replace

import numpy as np
import torch

from audio import shard_stream
from audio.augmentation import (  # noqa: F401 (AugmentWAV: the original's name)
    LARGE_ROOMS,
    AugmentWAV,
    check_mix,
    make_augmenter,
    musan_index,
    rir_index,
    room_type,
)
from audio.file_lists import check_files_exist
from audio.kaldi_data import read_speaker_list
from audio.reading import (  # noqa: F401 (loadWAV is part of the API)
    AudioReadError,
    LoaderStats,
    load_crops,
    loadWAV,
)
from audio.training_crops import (
    SPEED_FACTORS,
    TrainingCrops,
    draw_item_speed,
    expand_speakers,
    item_rng,
    listed_speeds,
)
from runtime import distributed
from runtime.errors import ConfigError, DataError
from runtime.loader_workers import ignore_stop_signals
from settings.sections import DataSettings

SAMPLERS = ("balanced", "shuffled")  # --sampler


class train_dataset_loader(torch.utils.data.Dataset):
    """Training crops; an item is a list of indices (one sampler group) -> (`[len, max_audio]`, label).

    With --speed_perturb_mode per_epoch the utterances are listed once, with the speakers' own labels (what the
    sampler groups by); each item draws its speed and returns the label of the speaker at that speed."""

    def __init__(self, train_list: str, augment: bool, musan_path: str, rir_path: str, max_frames: int,
                 train_path: str, seed: int = 10, nPerSpeaker: int = 1, skip_bad_audio: bool = False,
                 check_files: bool = True, speed_perturb: bool = False, spec_augment: bool = False,
                 speed_perturb_mode: str = "expand", augment_mix: str = "original", augment_prob: float = 0.6,
                 **kwargs):
        self.max_frames = max_frames
        self.seed = seed
        self.skip_bad_audio = skip_bad_audio
        self.spec_augment = spec_augment
        self.stats = LoaderStats()
        self._epoch = multiprocessing.Value("q", 0)
        speakers, paths = read_speaker_list(train_list, train_path)
        if check_files:  # False when the caller has already checked them
            check_files_exist(paths, train_list, "--train_path", train_path)
        self.data_list, self.data_label, self.data_speed, self.speakers = expand_speakers(
            paths, speakers, listed_speeds(speed_perturb, speed_perturb_mode))
        self.speed_per_item = speed_perturb and speed_perturb_mode == "per_epoch"
        self.listed_speakers = len(self.speakers)  # the label shift of one speed step (per_epoch)
        if self.speed_per_item:
            self.speakers = expand_speakers([], speakers, SPEED_FACTORS)[3]
        self.speaker_items = collections.defaultdict(list)
        for index, label in enumerate(self.data_label):
            self.speaker_items[label].append(index)
        self._report_small_speakers(train_list, nPerSpeaker)
        self.augmenter = (make_augmenter(augment_mix, musan_path, rir_path, max_frames, self.stats, augment_prob)
                          if augment else None)
        self.crops = TrainingCrops(max_frames, self.augmenter, spec_augment, self.stats)

    def _report_small_speakers(self, train_list: str, n_per_speaker: int) -> None:
        small = [self.speakers[label] for label, items in self.speaker_items.items() if len(items) < n_per_speaker]
        if small:
            warnings.warn(f"{len(small)} of {self.listed_speakers} speakers in {train_list} have fewer than "
                          f"nPerSpeaker={n_per_speaker} utterances and are never sampled: "
                          f"{', '.join(small[:5])}{' ...' if len(small) > 5 else ''}", stacklevel=3)

    @property
    def epoch(self) -> int:
        """The epoch the crops and augmentations are drawn for."""
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (seen by DataLoader workers, persistent ones included)."""
        self._epoch.value = epoch

    def __len__(self) -> int:
        return len(self.data_list)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, int]:
        rng = item_rng(self.seed, self.epoch, indices[0])
        speed, shift = (draw_item_speed(rng, self.listed_speakers) if self.speed_per_item
                        else (self.data_speed[indices[0]], 0))
        crops = [self.crops.finish(self._read_crop(index, speed, rng), rng) for index in indices]
        return torch.from_numpy(np.concatenate(crops, axis=0)), self.data_label[indices[-1]] + shift

    def _read_crop(self, index: int, speed: float, rng: np.random.Generator) -> np.ndarray:
        tried = set()
        while True:
            try:
                return self.crops.crop(self.data_list[index], speed, rng.random())
            except AudioReadError as error:
                if not self.skip_bad_audio:
                    raise AudioReadError(f"{error}. Remove it from the list, or pass --skip_bad_audio to replace "
                                         f"unreadable files with another utterance of the speaker") from error
                warnings.warn(f"skipping unreadable training file: {error}", stacklevel=2)
                self.stats.count_skipped()
                tried.add(index)
                others = [item for item in self.speaker_items[self.data_label[index]] if item not in tried]
                if not others:
                    raise AudioReadError(f"every utterance of speaker {self.speakers[self.data_label[index]]} "
                                         f"is unreadable") from error
                index = others[int(rng.integers(len(others)))]


def training_data(data, rank: int = 0, world_size: int = 1, check_files: bool = False):
    """(dataset, sampler) of the data settings for one process of `world_size` (files checked when asked); a
    --train_shards stream is both."""
    if data.train_shards:
        stream = shard_stream.ShardStream(**asdict(data), rank=rank, world_size=world_size)
        return stream, stream
    dataset = train_dataset_loader(**asdict(data), check_files=check_files)
    return dataset, make_sampler(dataset, data, rank, world_size)


def make_sampler(dataset: train_dataset_loader, data, rank: int = 0, world_size: int = 1) -> train_dataset_sampler:
    """The --sampler of the data settings over `dataset`, for one process of `world_size`."""
    kind = ShuffledSampler if data.sampler == "shuffled" else train_dataset_sampler
    return kind(dataset, **asdict(data), distributed=world_size > 1, rank=rank, world_size=world_size)


def steps_per_epoch(sampler: train_dataset_sampler, data) -> int:
    """Batches of one process in the first epoch (later epochs differ by a few): what per-step schedules count."""
    if isinstance(sampler, shard_stream.ShardStream):
        return sampler.steps
    sampler.set_epoch(1)
    return len(sampler) // data.batch_size


def check_sampler(data, trainfunc: str, classifies_speakers: bool) -> None:
    """--sampler is a known one, and shuffled only for a loss that classifies speakers and a --train_list."""
    if data.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {data.sampler} is unknown; use {' or '.join(SAMPLERS)}")
    if data.sampler == "shuffled" and data.train_shards:
        raise ConfigError("--sampler shuffled does not apply to --train_shards (shard streams make speaker-balanced "
                          "batches); leave --sampler at balanced or train from --train_list")
    if data.sampler == "shuffled" and not classifies_speakers:
        raise ConfigError(f"--sampler shuffled needs a loss that classifies speakers, and '{trainfunc}' compares the "
                          "speakers of a batch with each other; use --sampler balanced")


def check_training_data(data, world_size: int, classifies_speakers: bool = False) -> tuple[int, DataSettings]:
    """Check the train list, its files and that every process gets full batches; returns the speaker count and the
    data settings to train with: a loss that classifies speakers, given fewer speakers than --batch_size, gets the
    shuffled sampler instead of the balanced one."""
    if data.max_seg_per_spk < data.nPerSpeaker:
        raise DataError(f"--max_seg_per_spk {data.max_seg_per_spk} is below --nPerSpeaker {data.nPerSpeaker}: "
                        "no speaker can fill a batch item")
    check_mix(data.augment_mix, data.augment_prob)
    if data.train_shards:
        return shard_stream.check_stream(data, world_size), data
    dataset = train_dataset_loader(**{**asdict(data), "augment": False})
    usable = sum(len(items) >= data.nPerSpeaker for items in dataset.speaker_items.values())
    if data.sampler == "balanced" and usable < data.batch_size:
        if not classifies_speakers:
            raise DataError(f"--batch_size {data.batch_size} needs that many different speakers with at least "
                            f"--nPerSpeaker {data.nPerSpeaker} utterances in every batch, but {data.train_list} has "
                            f"{usable}; lower --batch_size to {usable} or less")
        data = replace(data, sampler="shuffled")
    sampler = make_sampler(dataset, data, world_size=world_size)
    sampler.set_epoch(1)
    if len(sampler) == 0:
        batch = (f"{data.batch_size} different speakers" if data.sampler == "balanced"
                 else f"{data.batch_size} x {data.nPerSpeaker} utterances")
        raise DataError(f"An epoch of {data.train_list} makes no batch of {batch} for each of the {world_size} "
                        "processes; lower --batch_size")
    return len(dataset.speakers), data


def check_augmentation_data(musan_path: str, rir_path: str, augment_mix: str = "original") -> None:
    """Check that --augment finds MUSAN and the RIRs of its mix; warn when the wespeaker mix finds no large rooms."""
    musan_index(os.path.normpath(musan_path))
    rirs = rir_index(os.path.normpath(rir_path))
    if augment_mix == "wespeaker" and not any(room_type(path) == LARGE_ROOMS for path in rirs):
        warnings.warn(f"--augment_mix wespeaker: no {LARGE_ROOMS} RIRs in {rir_path}, so reverberation uses the other "
                      "rooms only; run `python dataprep.py --augment` again to extract them", stacklevel=2)


def round_down(value: int, divisor: int) -> int:
    """Largest multiple of `divisor` not above `value`."""
    return value - value % divisor


def speaker_groups(labels: list[int], order: list[int], n_per_speaker: int,
                   max_seg_per_spk: int) -> tuple[list[list[int]], list[int]]:
    """Cut each speaker's utterances (in `order`) into groups of `n_per_speaker`, capped per speaker."""
    by_label = collections.defaultdict(list)
    for index in order:
        by_label[labels[index]].append(index)
    groups, group_labels = [], []
    for position, label in enumerate(sorted(by_label)):
        items = by_label[label]
        kept = round_down(min(len(items), max_seg_per_spk), n_per_speaker)
        for start in range(0, kept, n_per_speaker):
            groups.append(items[start:start + n_per_speaker])
            group_labels.append(position)
    return groups, group_labels


def drop_collisions(order: list[int], group_labels: list[int], batch_size: int) -> list[int]:
    """Walk groups in `order`, dropping one whose speaker is already in the batch being filled."""
    kept, batch_labels = [], set()
    for group in order:
        if len(kept) % batch_size == 0:
            batch_labels = set()
        if group_labels[group] not in batch_labels:
            batch_labels.add(group_labels[group])
            kept.append(group)
    return kept


class train_dataset_sampler(torch.utils.data.Sampler):
    """Speaker-balanced sampler: items are groups of nPerSpeaker utterances, distinct speakers per batch."""

    def __init__(self, data_source, nPerSpeaker: int, max_seg_per_spk: int, batch_size: int, distributed: bool,
                 seed: int, rank: int = 0, world_size: int = 1, **kwargs):
        self.data_label = data_source.data_label
        self.nPerSpeaker = nPerSpeaker
        self.max_seg_per_spk = max_seg_per_spk
        self.batch_size = batch_size
        self.distributed = distributed
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cache = (None, [])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; the order depends on seed + epoch only."""
        self.epoch = epoch

    def _rank_and_world(self) -> tuple[int, int]:
        """This process's share of the batches: (rank, world size) of the joined process group (the original's
        semantics), else as given; (0, 1) when not distributed."""
        if not self.distributed:
            return 0, 1
        return distributed.group_position() or (self.rank, self.world_size)

    def epoch_items(self) -> list[list[int]]:
        """This rank's items for the current epoch (computed once per epoch)."""
        rank, world_size = self._rank_and_world()
        key = (self.epoch, rank, world_size)
        if self._cache[0] != key:
            self._cache = (key, self._build(rank, world_size))
        return self._cache[1]

    def _build(self, rank: int, world_size: int) -> list[list[int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_label), generator=generator).tolist()
        groups, group_labels = speaker_groups(self.data_label, order, self.nPerSpeaker, self.max_seg_per_spk)
        mixed = torch.randperm(len(groups), generator=generator).tolist()
        items = [groups[group] for group in self.batch_order(mixed, group_labels)]
        total = round_down(len(items), self.batch_size * world_size)
        return items[int(rank / world_size * total):int((rank + 1) / world_size * total)]

    def batch_order(self, mixed: list[int], group_labels: list[int]) -> list[int]:
        """The groups in the order batches take them: `mixed` less the groups whose speaker is already in the
        batch being filled."""
        return drop_collisions(mixed, group_labels, self.batch_size)

    def __iter__(self):
        return iter(self.epoch_items())

    def __len__(self) -> int:
        return len(self.epoch_items())


class ShuffledSampler(train_dataset_sampler):
    """Items are groups of nPerSpeaker utterances of one speaker, every group of the epoch in a seeded random order:
    a speaker may appear several times in a batch (--sampler shuffled, for losses that classify speakers)."""

    def batch_order(self, mixed: list[int], group_labels: list[int]) -> list[int]:
        """The groups in their random order, none dropped."""
        return mixed


class test_dataset_loader(torch.utils.data.Dataset):
    """Evaluation crops of files given relative to `test_path` -> (`[num_eval, samples]`, relative path)."""

    def __init__(self, test_list: list[str], test_path: str, eval_frames: int, num_eval: int,
                 check_files: bool = True, **kwargs):
        self.test_list = list(test_list)
        self.test_path = test_path
        self.max_frames = eval_frames
        self.num_eval = num_eval
        self.stats = LoaderStats()
        if check_files:  # False when the caller has already checked them
            full_paths = [os.path.join(test_path, name) for name in self.test_list]
            check_files_exist(full_paths, "the trial list", "--test_path", test_path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path = os.path.join(self.test_path, self.test_list[index])
        audio = load_crops(path, self.max_frames, True, self.num_eval, stats=self.stats)
        return torch.from_numpy(audio), self.test_list[index]

    def __len__(self) -> int:
        return len(self.test_list)


class ResumedSampler(torch.utils.data.Sampler):
    """An epoch's sampler items less the first `skip` ones (trained before a restart)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def epoch_loader(dataset, sampler, data, skip_steps: int = 0) -> torch.utils.data.DataLoader:
    """The DataLoader of one epoch, starting after `skip_steps` batches: [speakers, per_speaker, samples] batches.

    It gets its own generator: creating its iterator would otherwise draw from torch's global generator, and a
    resumed epoch (one iterator more) would continue with other random numbers than an uninterrupted one."""
    if isinstance(dataset, shard_stream.ShardStream):  # it makes whole batches itself
        return torch.utils.data.DataLoader(dataset.resumed(skip_steps), batch_size=None, worker_init_fn=worker_init_fn,
                                           num_workers=data.nDataLoaderThread, generator=torch.Generator())
    if skip_steps:
        sampler = ResumedSampler(sampler, skip_steps * data.batch_size)
    return torch.utils.data.DataLoader(dataset, batch_size=data.batch_size, num_workers=data.nDataLoaderThread,
                                       sampler=sampler, pin_memory=False, drop_last=True,
                                       worker_init_fn=worker_init_fn, generator=torch.Generator())


def worker_init_fn(worker_id: int) -> None:
    """Seed python, numpy and torch in a worker from the dataset's seed, its epoch and the worker id.

    Workers ignore SIGTERM and SIGINT: schedulers (SLURM, torchrun) and Ctrl-C signal every process of the job,
    and the main process must outlive its workers to write its resume checkpoint; it stops them itself."""
    ignore_stop_signals()
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    if getattr(dataset, "seed", None) is None:
        seed = (info.seed if info is not None else 0) % 2 ** 63
    else:
        sequence = np.random.SeedSequence([dataset.seed % 2 ** 63, dataset.epoch, worker_id])
        seed = int(sequence.generate_state(1, dtype=np.uint64)[0]) % 2 ** 63
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
