"""Reading audio files as 16 kHz mono float32 crops: wav, flac and other soundfile formats, m4a/aac via ffmpeg."""

import io
import math
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import warnings
from dataclasses import dataclass

import numpy as np
import soundfile

from runtime.errors import ConfigError, UserError

SAMPLE_RATE = 16000
FFMPEG_SUFFIXES = (".m4a", ".aac", ".mp4")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".m4a", ".mp3")  # what a folder of audio is searched for
_warned_resample = False


class AudioReadError(UserError, RuntimeError):
    """An audio file that cannot be read, is empty or is truncated."""


def crop_length(max_frames: int) -> int:
    """Samples in a crop of `max_frames` 10 ms frames (25 ms window)."""
    return max_frames * 160 + 240


def check_crop_lengths(min_samples: int, max_frames: int, eval_frames: int, model_name: str) -> None:
    """Stop early when --max_frames or --eval_frames gives crops shorter than the model's `min_samples`."""
    for flag, frames in (("max_frames", max_frames), ("eval_frames", eval_frames)):
        if frames and crop_length(frames) < min_samples:
            raise ConfigError(f"--{flag} {frames} gives crops of {crop_length(frames)} samples, but {model_name} "
                              f"needs at least {min_samples}; use --{flag} "
                              f"{math.ceil((min_samples - crop_length(0)) / 160)} or more")


def eval_starts(length: int, max_audio: int, num_eval: int) -> list[int]:
    """Evaluation crop offsets: `num_eval` evenly spaced, truncated to int."""
    return [int(start) for start in np.linspace(0, length - max_audio, num=num_eval)]


def train_start(length: int, max_audio: int, draw: float) -> int:
    """Training crop offset for a uniform draw in [0, 1)."""
    return int(draw * (length - max_audio))


@dataclass(frozen=True)
class AudioBytes:
    """An encoded audio file held in memory (e.g. a member of a tar shard), named for error messages."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


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

    def summary(self) -> str:
        """One line with the counts for the end of an epoch or evaluation; empty when both are zero."""
        parts = []
        if self.resampled:
            parts.append(f"{self.resampled} file(s) at other sample rates resampled to {SAMPLE_RATE} Hz")
        if self.skipped:
            parts.append(f"{self.skipped} unreadable training file(s) replaced (--skip_bad_audio)")
        return "; ".join(parts)

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

    def close(self) -> None:
        pass


class _SoundFileSource:
    """A seekable 16 kHz file in any soundfile format; only the requested range is decoded."""

    def __init__(self, handle: soundfile.SoundFile):
        self.handle = handle
        self.length = handle.frames

    def read(self, start: int, frames: int) -> np.ndarray:
        self.handle.seek(start)
        return _to_mono(self.handle.read(frames, dtype="float32", always_2d=True))

    def close(self) -> None:
        self.handle.close()


class _WavSource:
    """A plain 16 kHz PCM-16 or float32 WAV file: one seek and one read per range, no decoder."""

    def __init__(self, handle, data_offset: int, frames: int, channels: int, dtype: str):
        self.handle = handle
        self.data_offset = data_offset
        self.length = frames
        self.channels = channels
        self.dtype = np.dtype(dtype)

    def read(self, start: int, frames: int) -> np.ndarray:
        frame_bytes = self.channels * self.dtype.itemsize
        self.handle.seek(self.data_offset + start * frame_bytes)
        raw = self.handle.read(min(frames, self.length - start) * frame_bytes)
        samples = np.frombuffer(raw, self.dtype, count=len(raw) // frame_bytes * self.channels)
        samples = samples.reshape(-1, self.channels).astype(np.float32)
        if self.dtype.kind == "i":
            samples *= np.float32(1 / 32768)  # the scale soundfile uses for PCM-16
        return _to_mono(samples)

    def close(self) -> None:
        self.handle.close()


# (WAVE format tag, bits per sample) -> sample dtype of the files _WavSource reads
_PLAIN_WAV_TYPES = {(1, 16): "<i2", (3, 32): "<f4"}


def _plain_wav(handle) -> _WavSource | None:
    """A _WavSource of a binary handle (at its start) holding a 16 kHz PCM-16 / float32 WAV whose data starts in
    the first 4 KiB; otherwise None, and the handle is closed."""
    header = handle.read(4096)
    position, layout = 12, None
    while header[:4] == b"RIFF" and header[8:12] == b"WAVE" and position + 8 <= len(header):
        chunk, size = header[position:position + 4], int.from_bytes(header[position + 4:position + 8], "little")
        body = position + 8
        if chunk == b"fmt " and size >= 16 and body + size <= len(header):
            tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", header[body:body + 16])
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                tag = int.from_bytes(header[body + 24:body + 26], "little")
            dtype = _PLAIN_WAV_TYPES.get((tag, bits))
            if dtype and rate == SAMPLE_RATE and channels and block_align == channels * bits // 8:
                layout = (channels, dtype, block_align)
        elif chunk == b"data" and layout is not None:
            channels, dtype, block_align = layout
            available = (handle.seek(0, io.SEEK_END) - body) // block_align
            frames = available if size in (0, 0xFFFFFFFF) else min(size // block_align, available)
            return _WavSource(handle, body, frames, channels, dtype)
        position = body + size + (size & 1)
    handle.close()
    return None


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
    from scipy import signal  # imported here: the torch-free ONNX embedder reads 16 kHz files without scipy

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


def _open_source(path: str | AudioBytes, stats: LoaderStats | None):
    """A source for `path`: a seekable file at 16 kHz, otherwise the decoded (resampled) signal."""
    if not isinstance(path, AudioBytes) and path.lower().endswith(FFMPEG_SUFFIXES):
        return _ArraySource(_decode_with_ffmpeg(path))
    in_memory = isinstance(path, AudioBytes)
    wav = _plain_wav(io.BytesIO(path.data) if in_memory else open(path, "rb", buffering=0))
    if wav is not None:
        return wav
    handle = soundfile.SoundFile(io.BytesIO(path.data) if in_memory else path)
    if handle.samplerate == SAMPLE_RATE and handle.seekable():
        return _SoundFileSource(handle)
    with handle:
        samples = _to_mono(handle.read(dtype="float32", always_2d=True))
    if handle.samplerate != SAMPLE_RATE:
        samples = _resample(samples, handle.samplerate, str(path), stats)
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


def load_crops(path: str | AudioBytes, max_frames: int, evalmode: bool = True, num_eval: int = 10,
               draw: float | None = None, stats: LoaderStats | None = None) -> np.ndarray:
    """Crops `[n_crops, max_frames*160+240]` float32 of a 16 kHz mono version of `path`."""
    try:
        source = _open_source(path, stats)
        try:
            if source.length == 0:
                raise AudioReadError("the file holds no samples")
            return _cut_crops(source, max_frames, evalmode, num_eval, random.random() if draw is None else draw)
        finally:
            source.close()
    except (soundfile.SoundFileError, OSError, AudioReadError, subprocess.TimeoutExpired) as error:
        raise AudioReadError(f"{path}: cannot read audio ({error})") from error


def loadWAV(filename: str, max_frames: int, evalmode: bool = True, num_eval: int = 10) -> np.ndarray:
    """The original's loadWAV: evaluation crops at even offsets, or one random training crop."""
    return load_crops(filename, max_frames, evalmode, num_eval)
