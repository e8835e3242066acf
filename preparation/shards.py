"""dataprep --make_shards: a train list's utterances, shuffled with a seed, written to tar shards of about a
given size, with the shard list and index to train from. A rerun skips the shards that are already complete."""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from audio.file_lists import missing_files, read_list_lines, read_train_list
from audio.shard_files import AUDIO_SUFFIXES, INDEX_NAME, LIST_NAME, shard_name, write_shard
from runtime.atomic_files import write_text
from runtime.errors import DataError, MissingFileError

PLAN_NAME = "shards.plan.json"  # which utterance goes to which shard: a rerun must find the same plan

Member = tuple[str, str, str]  # (key, speaker, audio path)


def read_members(train_list: str, train_path: str) -> list[Member]:
    """The list's utterances as shard members; errors name the list and the line."""
    speakers, paths = read_train_list(train_list, train_path)
    lines = [number for number, line in enumerate(read_list_lines(train_list, "train list", "--train_list"), 1)
             if line.split()]
    members, seen = [], {}
    for line, speaker, path in zip(lines, speakers, paths):
        stem, suffix = os.path.splitext(os.path.relpath(path, train_path))
        if suffix.lower() not in AUDIO_SUFFIXES:
            raise DataError(f"{train_list} line {line}: {path} is not a .wav or .flac file; shards hold wav or "
                            "flac (convert first with dataprep.py --convert)")
        if stem in seen:
            raise DataError(f"{train_list} line {line}: {stem} is already on line {seen[stem]}")
        seen[stem] = line
        members.append((stem.replace(os.sep, "/"), speaker, path))
    missing = set(missing_files(paths, f"checking {os.path.basename(train_list)}"))
    if missing:
        line, path = next((line, path) for line, (_, _, path) in zip(lines, members) if path in missing)
        raise MissingFileError(f"{train_list} line {line}: {path} does not exist ({len(missing)} of {len(paths)} "
                               "files missing); check --train_path or the list")
    return members


def plan_shards(members: list[Member], shard_size_mb: float, seed: int) -> list[list[Member]]:
    """Members shuffled with `seed` and cut into shards of at most `shard_size_mb` of audio (at least one each)."""
    limit, shards, size = shard_size_mb * 1e6, [[]], 0
    for index in np.random.default_rng(seed).permutation(len(members)):
        member = members[index]
        bytes_ = os.path.getsize(member[2])
        if shards[-1] and size + bytes_ > limit:
            shards.append([])
            size = 0
        shards[-1].append(member)
        size += bytes_
    return shards


def check_plan(save_path: Path, plan: dict[str, list[str]]) -> None:
    """Save the plan of a new set of shards; refuse to continue one that was planned differently."""
    plan_path = save_path / PLAN_NAME
    if plan_path.is_file() and json.loads(plan_path.read_text(encoding="utf-8")) != plan:
        raise DataError(f"{save_path} holds shards of another list, seed or --shard_size_mb ({plan_path}); "
                        "use another --save_path or remove the old shards")
    write_text(plan_path, json.dumps(plan))


def write_index(save_path: Path, shards: list[list[Member]], train_list: str, seed: int) -> None:
    """The index (speaker -> shard -> utterances, totals) and then the shard list, which marks completion."""
    speakers = collections.defaultdict(collections.Counter)
    for number, members in enumerate(shards):
        for _, speaker, _ in members:
            speakers[speaker][shard_name(number)] += 1
    index = {"utterances": sum(map(len, shards)), "speaker_count": len(speakers),
             "shards": {shard_name(number): len(members) for number, members in enumerate(shards)},
             "speakers": {speaker: dict(sorted(counts.items())) for speaker, counts in sorted(speakers.items())},
             "train_list": str(train_list), "seed": seed}
    write_text(save_path / INDEX_NAME, json.dumps(index, indent=1))
    write_text(save_path / LIST_NAME, "".join(f"{shard_name(number)}\n" for number in range(len(shards))))


def make_shards(train_list: str, train_path: str, save_path: Path, shard_size_mb: float, seed: int,
                quiet: bool = False) -> tuple[int, int]:
    """Write the shards not yet complete, then the index and list; returns (shards written, shards skipped)."""
    if shard_size_mb <= 0:
        raise DataError(f"--shard_size_mb must be above 0, got {shard_size_mb}")
    shards = plan_shards(read_members(str(train_list), str(train_path)), shard_size_mb, seed)
    save_path.mkdir(parents=True, exist_ok=True)
    check_plan(save_path, {shard_name(number): [key for key, _, _ in members] for number, members in enumerate(shards)})
    written = 0
    with tqdm(total=sum(map(len, shards)), unit="file", desc="writing shards", disable=quiet) as bar:
        for number, members in enumerate(shards):
            path = save_path / shard_name(number)
            if not path.is_file():
                write_shard(path, members)
                written += 1
            bar.update(len(members))
    write_index(save_path, shards, train_list, seed)
    return written, len(shards) - written
