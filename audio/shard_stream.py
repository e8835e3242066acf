"""Speaker-balanced training batches streamed from tar shards (--train_shards).

Each epoch the shards are shuffled with the seed; rank r of w takes every w-th of them from r, and its loader
worker k of K every K-th of those from k. A reader fills per-speaker buffers from its shards; a batch takes
--nPerSpeaker utterances from each of --batch_size distinct speakers. Every rank yields the same number of
batches, set by the index, re-reading its shards when they run out. Everything random is a function of (seed,
epoch, rank, worker), so a resumed epoch can skip to the batch where it stopped."""
from __future__ import annotations

import collections
import copy
import itertools
import warnings
from dataclasses import asdict
from typing import Iterable, Iterator

import numpy as np
import torch

from audio.augmentation import make_augmenter
from audio.reading import AudioBytes, AudioReadError, LoaderStats
from audio.shard_files import ShardSet, open_shards, read_shard
from audio.training_crops import SPEED_FACTORS, TrainingCrops, draw_item_speed, expand_speakers, item_rng, listed_speeds
from runtime.errors import DataError

Group = list[tuple[AudioBytes, float]]  # one speaker's utterances of a batch item, each with its speed


def share(total: int, worker: int, workers: int) -> int:
    """How many of the items 0..total-1, dealt round-robin to `workers`, go to `worker`."""
    return max(0, (total - worker + workers - 1) // workers)


def speaker_balanced_batches(items: Iterable[tuple[int, tuple]], batch_size: int, n_per_speaker: int,
                             rng: np.random.Generator) -> Iterator[list[tuple[int, list]]]:
    """Batches of (label, group) from a stream of (label, item): a label's items are grouped by `n_per_speaker`;
    as soon as `batch_size` labels have a complete group, `batch_size` of those labels are drawn at random and
    give their oldest group."""
    pending, ready = collections.defaultdict(list), {}
    for label, item in items:
        pending[label].append(item)
        if len(pending[label]) == n_per_speaker:
            ready.setdefault(label, collections.deque()).append(pending.pop(label))
            if len(ready) >= batch_size:
                labels = sorted(ready)
                chosen = [labels[i] for i in rng.choice(len(labels), batch_size, replace=False)]
                batch = [(label, ready[label].popleft()) for label in chosen]
                for label in chosen:
                    if not ready[label]:
                        del ready[label]
                yield batch


class ShardStream(torch.utils.data.IterableDataset):
    """One process's batches `([batch_size, nPerSpeaker, samples], [batch_size] labels)` from --train_shards;
    labels index the sorted speakers of the index (with --speed_perturb, label + k * speakers at speed k; with
    --speed_perturb_mode per_epoch, batches are made of the speakers at speed 1 and each item draws its speed)."""

    def __init__(self, train_shards: str, max_frames: int, batch_size: int, nPerSpeaker: int, max_seg_per_spk: int,
                 nDataLoaderThread: int, augment: bool, musan_path: str, rir_path: str, seed: int,
                 skip_bad_audio: bool = False, speed_perturb: bool = False, spec_augment: bool = False,
                 speed_perturb_mode: str = "expand", augment_mix: str = "original", augment_prob: float = 0.6,
                 rank: int = 0, world_size: int = 1, **kwargs):
        self.shards: ShardSet = open_shards(train_shards)
        self.batch_size, self.n_per_speaker, self.max_seg_per_spk = batch_size, nPerSpeaker, max_seg_per_spk
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = max(1, nDataLoaderThread)
        self.skip_bad_audio = skip_bad_audio
        self.speeds = listed_speeds(speed_perturb, speed_perturb_mode)  # each utterance is streamed at these
        self.speed_per_item = speed_perturb and speed_perturb_mode == "per_epoch"
        self.label_of = {speaker: label for label, speaker in enumerate(self.shards.speakers)}
        self.speakers = expand_speakers([], self.shards.speakers, SPEED_FACTORS if speed_perturb else (1.0,))[3]
        self.stats = LoaderStats()
        augmenter = (make_augmenter(augment_mix, musan_path, rir_path, max_frames, self.stats, augment_prob)
                     if augment else None)
        self.crops = TrainingCrops(max_frames, augmenter, spec_augment, self.stats)
        self.epoch, self.skip = 0, 0
        readers = world_size * self.workers
        if len(self.shards.paths) < readers:
            raise DataError(f"--train_shards {train_shards} has {len(self.shards.paths)} shard(s), fewer than the "
                            f"{readers} readers ({world_size} process(es) x {self.workers} loader worker(s)); "
                            "write smaller shards (dataprep.py --shard_size_mb) or lower --nDataLoaderThread")
        usable = sum(min(self.shards.utterances(speaker), max_seg_per_spk) // nPerSpeaker * nPerSpeaker
                     for speaker in self.shards.speakers)
        self.steps = usable * len(self.speeds) // (batch_size * nPerSpeaker * world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the shard order, the batches and the crops depend on seed + epoch."""
        self.epoch = epoch

    def resumed(self, skip: int) -> ShardStream:
        """This stream less the epoch's first `skip` batches (trained before a restart)."""
        stream = copy.copy(self)
        stream.skip = skip
        return stream

    def __len__(self) -> int:
        return max(0, self.steps - self.skip)

    def partition(self, epoch: int, rank: int, worker: int) -> list[str]:
        """The shards that a rank's loader worker reads in an epoch."""
        order = item_rng(self.seed, epoch).permutation(len(self.shards.paths))  # the same on every rank
        return [self.shards.paths[i] for i in order][rank::self.world_size][worker::self.workers]

    def check_partition(self, shards: list[str], rank: int, worker: int) -> None:
        """A reader must see --batch_size speakers with --nPerSpeaker utterances, or it could never fill a batch."""
        chosen = set(shards)
        usable = sum(self.shards.utterances(speaker, chosen) >= self.n_per_speaker
                     for speaker in self.shards.speakers) * len(self.speeds)
        if usable < self.batch_size:
            raise DataError(f"Rank {rank} loader worker {worker} reads {len(shards)} shard(s) of "
                            f"{self.shards.list_path} holding {usable} speakers with --nPerSpeaker "
                            f"{self.n_per_speaker} utterances, fewer than --batch_size {self.batch_size}: write "
                            "smaller shards, or lower --nDataLoaderThread or --batch_size")

    def utterances(self, shards: list[str], rng: np.random.Generator) -> Iterator[tuple[int, tuple]]:
        """(label, (audio, speed)) of the shards, read over and over in a new random order each pass; each
        speaker gives at most --max_seg_per_spk utterances per pass."""
        for _ in itertools.count():
            seen = collections.Counter()
            for index in rng.permutation(len(shards)):
                for _, speaker, audio in read_shard(shards[index]):
                    seen[speaker] += 1
                    if seen[speaker] <= self.max_seg_per_spk:
                        for k, speed in enumerate(self.speeds):
                            yield self.label_of[speaker] + k * len(self.label_of), (audio, speed)

    def plans(self, worker: int) -> Iterator[list[tuple[int, Group]]]:
        """The endless batches of (label, group) of this rank's loader worker in the current epoch."""
        shards = self.partition(self.epoch, self.rank, worker)
        self.check_partition(shards, self.rank, worker)
        rng = item_rng(self.seed, self.epoch, self.rank, worker)  # this reader's stream
        return speaker_balanced_batches(self.utterances(shards, rng), self.batch_size, self.n_per_speaker, rng)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Worker k of the DataLoader plays worker (k + skip) % K, so that after skipping, the loader's
        round-robin over its workers gives the batches in their uninterrupted order."""
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info is not None else 0) + self.skip) % self.workers
        done = share(self.skip, worker, self.workers)
        for number, plan in enumerate(itertools.islice(self.plans(worker), share(self.steps, worker, self.workers))):
            if number >= done:
                yield self.batch(plan, worker, number)

    def batch(self, plan: list[tuple[int, Group]], worker: int, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops `[batch_size, nPerSpeaker, samples]` and labels of a batch, from each item's own generator (with
        --speed_perturb_mode per_epoch, first the item's speed and its label shift)."""
        crops, labels = [], []
        for slot, (label, group) in enumerate(plan):
            rng = item_rng(self.seed, self.epoch, self.rank, worker, number, slot)
            if self.speed_per_item:
                speed, shift = draw_item_speed(rng, len(self.label_of))
                group, label = [(audio, speed) for audio, _ in group], label + shift
            crops.append(np.concatenate([self.crops.finish(self.read_crop(group, index, rng), rng)
                                         for index in range(len(group))]))
            labels.append(label)
        return torch.from_numpy(np.stack(crops)), torch.tensor(labels)

    def read_crop(self, group: Group, index: int, rng: np.random.Generator) -> np.ndarray:
        """A crop of the group's utterance `index`; with --skip_bad_audio an unreadable one is replaced by
        another of the group (the same speaker)."""
        for audio, speed in group[index:] + group[:index]:
            try:
                return self.crops.crop(audio, speed, rng.random())
            except AudioReadError as error:
                if not self.skip_bad_audio:
                    raise AudioReadError(f"{error}. Write the shard again from readable files, or pass "
                                         "--skip_bad_audio to replace it with another utterance of the speaker"
                                         ) from error
                warnings.warn(f"skipping unreadable training utterance: {error}", stacklevel=2)
                self.stats.count_skipped()
        raise AudioReadError(f"every utterance of a batch item of {group[0][0]} is unreadable")


def check_stream(data, world_size: int) -> int:
    """Check --train_shards before training: the index, enough shards and speakers for every reader of the
    first epoch, and at least one batch per epoch; returns the speaker count (classes)."""
    stream = ShardStream(**{**asdict(data), "augment": False, "world_size": world_size})
    usable = sum(stream.shards.utterances(speaker) >= data.nPerSpeaker for speaker in stream.shards.speakers)
    if usable * len(stream.speeds) < data.batch_size:
        raise DataError(f"--batch_size {data.batch_size} needs that many different speakers with at least "
                        f"--nPerSpeaker {data.nPerSpeaker} utterances in every batch, but {data.train_shards} has "
                        f"{usable}; lower --batch_size")
    for rank in range(world_size):
        for worker in range(stream.workers):
            stream.check_partition(stream.partition(1, rank, worker), rank, worker)
    if stream.steps == 0:
        raise DataError(f"An epoch of {data.train_shards} makes no batch of {data.batch_size} x {data.nPerSpeaker} "
                        f"utterances for each of the {world_size} processes; lower --batch_size")
    return len(stream.speakers)

