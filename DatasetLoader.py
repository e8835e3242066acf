"""Reading and cropping audio, augmentation, the train/test datasets and the speaker-balanced sampler."""

import collections
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import warnings

import numpy as np
import soundfile
import torch
import torch.distributed as dist
from scipy import signal
from tqdm import tqdm

import DataAugment

SAMPLE_RATE = 16000
FFMPEG_SUFFIXES = (".m4a", ".aac", ".mp4")
_warned_resample = False


class AudioReadError(RuntimeError):
    """An audio file that cannot be read, is empty or is truncated."""


def crop_length(max_frames: int) -> int:
    """Samples in a crop of `max_frames` 10 ms frames (25 ms window)."""
    return max_frames * 160 + 240


def eval_starts(length: int, max_audio: int, num_eval: int) -> list[int]:
    """Evaluation crop offsets: `num_eval` evenly spaced, truncated to int."""
    return [int(start) for start in np.linspace(0, length - max_audio, num=num_eval)]


def train_start(length: int, max_audio: int, draw: float) -> int:
    """Training crop offset for a uniform draw in [0, 1)."""
    return int(draw * (length - max_audio))


class LoaderStats:
    """Counters shared by the DataLoader workers of one dataset."""

    def __init__(self):
        self._resampled = multiprocessing.Value("q", 0)
        self._skipped = multiprocessing.Value("q", 0)

    @property
    def resampled(self) -> int:
        """Files read at another sample rate and resampled to 16 kHz."""
        return self._resampled.value

    @property
    def skipped(self) -> int:
        """Unreadable training files replaced by another utterance of the same speaker."""
        return self._skipped.value

    def count_resampled(self) -> None:
        """Add one resampled file."""
        with self._resampled.get_lock():
            self._resampled.value += 1

    def count_skipped(self) -> None:
        """Add one skipped file."""
        with self._skipped.get_lock():
            self._skipped.value += 1


class _ArraySource:
    """A decoded 16 kHz mono signal held in memory."""

    def __init__(self, samples: np.ndarray):
        self.samples = samples
        self.length = len(samples)

    def read(self, start: int, frames: int) -> np.ndarray:
        return self.samples[start:start + frames]


class _FileSource:
    """A 16 kHz seekable file from which only the requested range is read."""

    def __init__(self, handle: soundfile.SoundFile):
        self.handle = handle
        self.length = handle.frames

    def read(self, start: int, frames: int) -> np.ndarray:
        self.handle.seek(start)
        return _to_mono(self.handle.read(frames, dtype="float32", always_2d=True))


def _to_mono(samples: np.ndarray) -> np.ndarray:
    return samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)


def _resample(samples: np.ndarray, rate: int, path: str, stats: LoaderStats | None) -> np.ndarray:
    global _warned_resample
    if not _warned_resample:
        warnings.warn(f"{path} is sampled at {rate} Hz: resampling it and any other such file to {SAMPLE_RATE} Hz "
                      f"on the fly (shown once; the datasets count them in .stats.resampled)", stacklevel=2)
        _warned_resample = True
    if stats is not None:
        stats.count_resampled()
    divisor = math.gcd(rate, SAMPLE_RATE)
    return signal.resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)


def _decode_with_ffmpeg(path: str) -> np.ndarray:
    """Decode any ffmpeg-readable file (m4a, aac) to 16 kHz mono float32."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioReadError(
            f"reading {os.path.splitext(path)[1]} files needs ffmpeg, which is not installed. Install it "
            f"(`apt-get install ffmpeg`, `conda install -c conda-forge ffmpeg` or `brew install ffmpeg`) or convert "
            f"the data to wav once with `python dataprep.py --convert`")
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", path, "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(command, capture_output=True, timeout=300)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioReadError(f"ffmpeg could not decode it: {message[-1] if message else 'unknown error'}")
    return np.frombuffer(result.stdout, dtype="<f4")


def _open_source(path: str, stats: LoaderStats | None):
    """A source for `path`: a seekable file at 16 kHz, otherwise the decoded (resampled) signal."""
    if path.lower().endswith(FFMPEG_SUFFIXES):
        return _ArraySource(_decode_with_ffmpeg(path))
    handle = soundfile.SoundFile(path)
    if handle.samplerate == SAMPLE_RATE and handle.seekable():
        return _FileSource(handle)
    with handle:
        samples = _to_mono(handle.read(dtype="float32", always_2d=True))
    if handle.samplerate != SAMPLE_RATE:
        samples = _resample(samples, handle.samplerate, path, stats)
    return _ArraySource(samples)


def _cut_crops(source, max_frames: int, evalmode: bool, num_eval: int, draw: float) -> np.ndarray:
    max_audio = crop_length(max_frames)
    if source.length <= max_audio:
        source = _ArraySource(np.pad(source.read(0, source.length), (0, max_audio - source.length + 1), mode="wrap"))
    if evalmode and max_frames == 0:
        return source.read(0, source.length)[np.newaxis, :]
    if evalmode:
        starts = eval_starts(source.length, max_audio, num_eval)
    else:
        starts = [train_start(source.length, max_audio, draw)]
    span = source.read(starts[0], starts[-1] + max_audio - starts[0])
    if len(span) != starts[-1] + max_audio - starts[0]:
        raise AudioReadError("the file is shorter than its header says (truncated)")
    return np.stack([span[start - starts[0]:start - starts[0] + max_audio] for start in starts])


def load_crops(path: str, max_frames: int, evalmode: bool = True, num_eval: int = 10, draw: float | None = None,
               stats: LoaderStats | None = None) -> np.ndarray:
    """Crops `[n_crops, max_frames*160+240]` float32 of a 16 kHz mono version of `path`."""
    try:
        source = _open_source(path, stats)
        if source.length == 0:
            raise AudioReadError("the file holds no samples")
        try:
            return _cut_crops(source, max_frames, evalmode, num_eval, random.random() if draw is None else draw)
        finally:
            if isinstance(source, _FileSource):
                source.handle.close()
    except (soundfile.SoundFileError, OSError, AudioReadError, subprocess.TimeoutExpired) as error:
        raise AudioReadError(f"{path}: cannot read audio ({error})") from error


def loadWAV(filename: str, max_frames: int, evalmode: bool = True, num_eval: int = 10) -> np.ndarray:
    """The original's loadWAV: evaluation crops at even offsets, or one random training crop."""
    return load_crops(filename, max_frames, evalmode, num_eval)


class AugmentWAV:
    """MUSAN noise / babble / music and RIR reverberation of `[1, max_audio]` crops."""

    def __init__(self, musan_path: str, rir_path: str, max_frames: int, stats: LoaderStats | None = None):
        self.max_frames = max_frames
        self.noise_files = DataAugment.musan_index(os.path.normpath(musan_path))
        self.rir_files = DataAugment.rir_index(os.path.normpath(rir_path))
        self.stats = stats

    def additive_noise(self, noisecat: str, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mix 1 (noise, music) or 3-7 (speech) MUSAN crops into the audio at random SNRs."""
        draws = DataAugment.draw_noises(self.noise_files[noisecat], noisecat, rng)
        noises = [load_crops(path, self.max_frames, False, 1, rng.random(), self.stats) for path, _ in draws]
        return DataAugment.mix_noises(audio, noises, [snr for _, snr in draws])

    def reverberate(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Convolve the audio with a random unit-energy RIR."""
        path = self.rir_files[int(rng.integers(len(self.rir_files)))]
        return DataAugment.reverberate(audio, load_crops(path, 0, True, 1, stats=self.stats)[0])

    def augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One of none / reverb / music / speech / noise, each with probability 1/5."""
        kind = DataAugment.draw_augment_type(rng)
        if kind == "none":
            return audio
        if kind == "reverb":
            return self.reverberate(audio, rng)
        return self.additive_noise(kind, audio, rng)


def missing_files(paths: list[str], desc: str = "checking files") -> list[str]:
    """The paths that do not exist, in list order; lists each folder once instead of a stat per file."""
    by_folder = collections.defaultdict(list)
    for path in paths:
        by_folder[os.path.dirname(path)].append(os.path.basename(path))
    missing = set()
    for folder, names in tqdm(by_folder.items(), desc=desc, unit="folder", leave=False):
        try:
            present = set(os.listdir(folder or "."))
        except OSError:
            present = set()
        candidates = (os.path.join(folder, name) for name in names if name not in present)
        missing.update(path for path in candidates if not os.path.exists(path))
    return [path for path in paths if path in missing]


def check_files_exist(paths: list[str], list_name: str, root_flag: str, root: str) -> None:
    """Raise one error listing the first missing files and their count."""
    missing = missing_files(paths, f"checking {os.path.basename(list_name)}")
    if missing:
        shown = "\n  ".join(missing[:10])
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} files named in {list_name} do not exist under {root_flag} {root}; "
            f"first missing:\n  {shown}\nFix {root_flag} (paths are {root_flag}/<relative path>) or the list.")


def read_train_list(train_list: str, train_path: str) -> tuple[list[str], list[str]]:
    """Speaker ids and full paths from `<speaker_id> <relative_path>` lines (blank lines skipped)."""
    speakers, paths = [], []
    with open(train_list, encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{train_list} line {number}: expected '<speaker_id> <relative_path>', "
                                 f"got {line.strip()!r}")
            speakers.append(fields[0])
            paths.append(os.path.join(train_path, fields[1]))
    if not paths:
        raise ValueError(f"{train_list} holds no '<speaker_id> <relative_path>' lines")
    return speakers, paths


class train_dataset_loader(torch.utils.data.Dataset):
    """Training crops; an item is a list of indices (one sampler group) -> (`[len, max_audio]`, label)."""

    def __init__(self, train_list: str, augment: bool, musan_path: str, rir_path: str, max_frames: int,
                 train_path: str, seed: int = 10, nPerSpeaker: int = 1, skip_bad_audio: bool = False, **kwargs):
        self.max_frames = max_frames
        self.seed = seed
        self.skip_bad_audio = skip_bad_audio
        self.stats = LoaderStats()
        self._epoch = multiprocessing.Value("q", 0)
        speakers, self.data_list = read_train_list(train_list, train_path)
        check_files_exist(self.data_list, train_list, "--train_path", train_path)
        self.speakers = sorted(set(speakers))
        label_of = {speaker: label for label, speaker in enumerate(self.speakers)}
        self.data_label = [label_of[speaker] for speaker in speakers]
        self.speaker_items = collections.defaultdict(list)
        for index, label in enumerate(self.data_label):
            self.speaker_items[label].append(index)
        self._report_small_speakers(train_list, nPerSpeaker)
        self.augmenter = AugmentWAV(musan_path, rir_path, max_frames, self.stats) if augment else None

    def _report_small_speakers(self, train_list: str, n_per_speaker: int) -> None:
        small = [self.speakers[label] for label, items in self.speaker_items.items() if len(items) < n_per_speaker]
        if small:
            warnings.warn(f"{len(small)} of {len(self.speakers)} speakers in {train_list} have fewer than "
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
        rng = np.random.default_rng([self.seed % 2 ** 63, self.epoch, indices[0]])
        crops = []
        for index in indices:
            audio = self._read_crop(index, rng)
            crops.append(self.augmenter.augment(audio, rng) if self.augmenter is not None else audio)
        return torch.from_numpy(np.concatenate(crops, axis=0)), self.data_label[indices[-1]]

    def _read_crop(self, index: int, rng: np.random.Generator) -> np.ndarray:
        tried = set()
        while True:
            try:
                return load_crops(self.data_list[index], self.max_frames, False, 1, rng.random(), self.stats)
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
        if not self.distributed:
            return 0, 1
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return self.rank, self.world_size

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
        items = [groups[group] for group in drop_collisions(mixed, group_labels, self.batch_size)]
        total = round_down(len(items), self.batch_size * world_size)
        return items[int(rank / world_size * total):int((rank + 1) / world_size * total)]

    def __iter__(self):
        return iter(self.epoch_items())

    def __len__(self) -> int:
        return len(self.epoch_items())


class test_dataset_loader(torch.utils.data.Dataset):
    """Evaluation crops of files given relative to `test_path` -> (`[num_eval, samples]`, relative path)."""

    def __init__(self, test_list: list[str], test_path: str, eval_frames: int, num_eval: int, **kwargs):
        self.test_list = list(test_list)
        self.test_path = test_path
        self.max_frames = eval_frames
        self.num_eval = num_eval
        self.stats = LoaderStats()
        full_paths = [os.path.join(test_path, name) for name in self.test_list]
        check_files_exist(full_paths, "the trial list", "--test_path", test_path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path = os.path.join(self.test_path, self.test_list[index])
        audio = load_crops(path, self.max_frames, True, self.num_eval, stats=self.stats)
        return torch.from_numpy(audio), self.test_list[index]

    def __len__(self) -> int:
        return len(self.test_list)


def worker_init_fn(worker_id: int) -> None:
    """Seed python, numpy and torch in a worker from the dataset's seed, its epoch and the worker id."""
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
