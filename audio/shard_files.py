"""Tar shards of training audio: `<key>.wav|flac` + `<key>.spk` members (wespeaker's layout), the shard list
(`shards.list`, one shard path per line) and its index (`shards.index.json`: speaker -> shard -> utterances)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Iterator

from audio.file_lists import read_list_lines
from audio.reading import AudioBytes
from runtime.atomic_files import atomic_write
from runtime.errors import DataError, MissingFileError

LIST_NAME = "shards.list"
INDEX_NAME = "shards.index.json"
AUDIO_SUFFIXES = (".wav", ".flac")


def shard_name(number: int) -> str:
    """The file name of shard `number`."""
    return f"shard_{number:06d}.tar"


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one member with fixed metadata, so the same input writes the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    archive.addfile(info, io.BytesIO(data))


def write_shard(path: str | os.PathLike, members: list[tuple[str, str, str]]) -> None:
    """Write (key, speaker, audio path) members to a tar atomically (a `.partial` file renamed when complete)."""
    with atomic_write(path) as temporary, tarfile.open(temporary, "w") as archive:
        for key, speaker, audio_path in members:
            with open(audio_path, "rb") as handle:
                add_member(archive, key + os.path.splitext(audio_path)[1].lower(), handle.read())
            add_member(archive, key + ".spk", speaker.encode("utf-8"))


def read_shard(path: str) -> Iterator[tuple[str, str, AudioBytes]]:
    """(key, speaker, audio) of each utterance of a shard, in the shard's order, reading it front to back."""
    key, parts = None, {}
    try:
        with open(path, "rb") as handle:
            for name, content in tar_members(handle):
                stem, suffix = os.path.splitext(name)
                if stem != key and parts:
                    yield utterance(path, key, parts)
                    parts = {}
                key, parts[suffix] = stem, content
        if parts:
            yield utterance(path, key, parts)
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"Cannot read shard {path}: {error}; write it again with dataprep.py --make_shards") from None


BLOCK = 512  # tar's header and padding unit


def tar_members(handle) -> Iterator[tuple[str, bytes]]:
    """(name, content) of the regular files of a tar stream, front to back. The headers are parsed here because
    Python's tarfile spent most of a shard's reading time on them; long names (pax `path` records, GNU `L`
    members) are followed, other kinds of member skipped, and every header's checksum is verified."""
    long_name = None
    while True:
        header = handle.read(BLOCK)
        if not header.strip(b"\0"):
            return  # the end-of-archive blocks (or the end of the file)
        if len(header) < BLOCK or _checksum(header) != _octal(header[148:156]):
            raise tarfile.ReadError("invalid or truncated member header")
        size = _octal(header[124:136])
        content = handle.read(size)
        handle.read(-size % BLOCK)
        if len(content) < size:
            raise tarfile.ReadError("unexpected end of data")
        kind = header[156:157]
        if kind == b"x":
            long_name = _pax_path(content) or long_name
        elif kind == b"L":
            long_name = content.rstrip(b"\0").decode("utf-8")
        else:
            if kind in (b"0", b"\0", b"7"):
                yield long_name or _ustar_name(header), content
            long_name = None


def _octal(field: bytes) -> int:
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise tarfile.ReadError("invalid number in a member header") from None


def _checksum(header: bytes) -> int:
    """The header's byte sum with its own checksum field counted as spaces."""
    return sum(header) - sum(header[148:156]) + 8 * ord(" ")


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode("utf-8")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8") if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _pax_path(records: bytes) -> str | None:
    """The `path` of a pax extended header ("<length> <key>=<value>\\n" records), if it has one."""
    position = 0
    while position < len(records):
        length = int(records[position:records.index(b" ", position)])
        key, _, value = records[records.index(b" ", position) + 1:position + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        position += length
    return None


def utterance(path: str, key: str, parts: dict[str, bytes]) -> tuple[str, str, AudioBytes]:
    """One utterance from its members; an incomplete one is an error naming the shard and key."""
    audio = [suffix for suffix in parts if suffix in AUDIO_SUFFIXES]
    if ".spk" not in parts or len(audio) != 1:
        raise DataError(f"Shard {path}: {key} needs one .spk and one .wav or .flac member, has "
                        f"{', '.join(sorted(parts))}")
    return key, parts[".spk"].decode("utf-8").strip(), AudioBytes(f"{path}:{key}{audio[0]}", parts[audio[0]])


@dataclass(frozen=True)
class ShardSet:
    """The shards of a shard list and what its index says about them."""

    list_path: str
    paths: tuple[str, ...]  # the shard files, in list order
    counts: dict[str, dict[str, int]]  # speaker -> shard path -> utterances

    @property
    def speakers(self) -> list[str]:
        """Speaker ids in sorted order (their labels)."""
        return sorted(self.counts)

    def utterances(self, speaker: str, shards=None) -> int:
        """Utterances of a speaker, in all shards or in the given ones."""
        return sum(count for path, count in self.counts[speaker].items() if shards is None or path in shards)


def open_shards(list_path: str) -> ShardSet:
    """Read a shard list and the index beside it; every shard must exist and be in the index."""
    folder = os.path.dirname(os.path.abspath(list_path))
    names = [line.strip() for line in read_list_lines(list_path, "shard list", "--train_shards") if line.strip()]
    if not names:
        raise DataError(f"{list_path} names no shard")
    index_path = os.path.join(folder, INDEX_NAME)
    try:
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
        speakers = index["speakers"]
    except FileNotFoundError:
        raise MissingFileError(f"{index_path} does not exist: a shard list needs the index dataprep.py "
                               "--make_shards writes beside it") from None
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{index_path} is not a shard index ({error}); write it again with --make_shards") from None
    paths = [name if os.path.isabs(name) else os.path.join(folder, name) for name in names]
    for number, (name, path) in enumerate(zip(names, paths), start=1):
        if not any(name in shards for shards in speakers.values()):
            raise DataError(f"{list_path} line {number}: {name} is not in the index {index_path}")
        if not os.path.isfile(path):
            raise MissingFileError(f"{list_path} line {number}: shard {path} does not exist")
    listed = dict(zip(names, paths))
    counts = {speaker: {listed[name]: count for name, count in shards.items() if name in listed}
              for speaker, shards in speakers.items()}
    return ShardSet(list_path, tuple(paths), {speaker: shards for speaker, shards in counts.items() if shards})
