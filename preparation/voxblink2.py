"""VoxBlink2 for dataprep: 16 kHz wav from the audio a user downloaded, and train lists (alone or with VoxCeleb2).

VoxBlink2 (Lin et al., 2024; CC BY-NC-SA 4.0) is released as metadata only: YouTube ids, timestamps and speaker
labels, from the Google Drive folder linked in github.com/VoxBlink2/ScriptsForVoxBlink2. The audio may not be
redistributed, so nothing is downloaded here. --voxblink2_path takes what the authors' scripts (or the audio they
send on request) give:

    <speaker>/<video>/<utt>.<ext>    cropped utterances (cropper_audio.py, cropper_video.py), any format ffmpeg reads
    <speaker>/<video>.<ext>          whole downloads (downloader.py), with --voxblink2_meta <meta folder>, whose
                                     <speaker>/<video>/<utt>.txt timestamp files give each utterance's span

--convert writes <save_path>/voxblink2/wav/<speaker>/<video>/<utt>.wav (16 kHz mono 16-bit).
"""
from __future__ import annotations

import argparse
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from audio.file_lists import read_train_list
from preparation.archives import DataprepError
from preparation.utterances import drop_short, write_list
from preparation.voxceleb import FFMPEG_HELP, to_wav

SOURCE_SUFFIXES = (".wav", ".m4a", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".aac", ".mp4", ".mkv")
HEADER_LINES = 7  # timestamp files: 7 header lines, then '<frame>\t<x>\t<y>\t<w>\t<h>' rows
FPS = 25  # frames per second of the timestamps
TRAIN_LIST = "voxblink2_train_list.txt"
COMBINED_LIST = "voxblink2_combined_train_list.txt"
NO_DOWNLOAD = ("VoxBlink2's audio may not be redistributed and its metadata is on Google Drive: get both with the "
               "authors' scripts (github.com/VoxBlink2/ScriptsForVoxBlink2) or the audio they send on request, then "
               "run --corpus voxblink2 --convert --voxblink2_path DIR")

Job = tuple[Path, Path, Path | None]  # (source audio, target wav, timestamp file or None)


def timestamp_span(path: Path) -> tuple[float, float]:
    """(start, end) in seconds of one utterance: its first and last frame, as the official cropper reads them."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    frames = []
    for number, line in enumerate(lines[HEADER_LINES:], HEADER_LINES + 1):
        fields = line.split()
        if fields and not fields[0].isdigit():
            raise DataprepError(f"{path}, line {number}: expected '<frame> <x> <y> <w> <h>' (frame numbers at "
                                f"{FPS} per second after {HEADER_LINES} header lines), found {line.strip()!r}")
        if fields:
            frames.append(int(fields[0]))
    if len(frames) < 2 or frames[-1] <= frames[0]:
        raise DataprepError(f"{path}: needs at least two frame lines after its {HEADER_LINES} header lines, the last "
                            "after the first; is the file complete?")
    return frames[0] / FPS, frames[-1] / FPS


def audio_files(folder: Path) -> list[os.DirEntry]:
    """The audio files directly in a folder (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return [entry for entry in os.scandir(folder) if entry.is_file() and entry.name.endswith(SOURCE_SUFFIXES)]


def cropped_jobs(audio_root: Path, wav_root: Path) -> list[Job]:
    """A job per cropped utterance <speaker>/<video>/<utt>.<ext>."""
    jobs = []
    for speaker in tqdm(sorted(entry.name for entry in os.scandir(audio_root) if entry.is_dir()),
                        desc="finding utterances", unit="speaker", leave=False):
        for video in sorted(entry.name for entry in os.scandir(audio_root / speaker) if entry.is_dir()):
            for entry in audio_files(audio_root / speaker / video):
                target = wav_root / speaker / video / f"{os.path.splitext(entry.name)[0]}.wav"
                jobs.append((Path(entry.path), target, None))
    return sorted(jobs)


def timestamp_jobs(audio_root: Path, meta_root: Path, wav_root: Path) -> tuple[list[Job], int]:
    """A job per timestamp file whose video was downloaded, and the number of videos not downloaded."""
    jobs, missing = [], 0
    for speaker in tqdm(sorted(entry.name for entry in os.scandir(meta_root) if entry.is_dir()),
                        desc="reading timestamps", unit="speaker", leave=False):
        downloads = {os.path.splitext(entry.name)[0]: Path(entry.path) for entry in audio_files(audio_root / speaker)}
        for video in sorted(entry.name for entry in os.scandir(meta_root / speaker) if entry.is_dir()):
            if video not in downloads:
                missing += 1
                continue
            for entry in os.scandir(meta_root / speaker / video):
                if entry.name.endswith(".txt"):
                    target = wav_root / speaker / video / f"{entry.name[:-4]}.wav"
                    jobs.append((downloads[video], target, Path(entry.path)))
    return sorted(jobs), missing


def convert_job(ffmpeg: str, job: Job) -> str | None:
    """Convert one utterance; returns an error line or None."""
    source, target, timestamps = job
    try:
        span = timestamp_span(timestamps) if timestamps else None
    except DataprepError as error:
        return str(error)
    return to_wav(ffmpeg, source, target, span)


def check_folder(path: Path | None, flag: str) -> Path:
    """A folder named by a flag, which must exist."""
    if path is None:
        raise DataprepError(f"--corpus voxblink2 --convert needs {flag} DIR (the audio you downloaded).")
    if not path.is_dir():
        raise DataprepError(f"{flag} {path} is not a folder.")
    return path


def convert(args: argparse.Namespace) -> None:
    """Write every VoxBlink2 utterance not yet converted as 16 kHz mono wav, --jobs ffmpeg processes at once."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DataprepError(FFMPEG_HELP)
    audio_root = check_folder(args.voxblink2_path, "--voxblink2_path")
    wav_root = args.save_path / "voxblink2" / "wav"
    missing = 0
    if args.voxblink2_meta is not None:
        jobs, missing = timestamp_jobs(audio_root, check_folder(args.voxblink2_meta, "--voxblink2_meta"), wav_root)
        if not jobs:
            raise DataprepError(f"No download in {audio_root} matches a timestamp folder {args.voxblink2_meta}/"
                                "<speaker>/<video>: downloads must be named <speaker>/<video>.<ext>.")
    else:
        jobs = cropped_jobs(audio_root, wav_root)
        if not jobs:
            raise DataprepError(f"No audio matching {audio_root}/<speaker>/<video>/<utt>.<ext>; for whole downloads "
                                "(<speaker>/<video>.<ext>) also pass the timestamp folder with --voxblink2_meta.")
    todo = [job for job in jobs if not job[1].exists()]
    print(f"{len(jobs)} VoxBlink2 utterances, {len(jobs) - len(todo)} already converted"
          + (f"; {missing} videos with timestamps are not in {audio_root} (skipped)" if missing else ""))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        errors = [error for error in tqdm(pool.map(lambda job: convert_job(ffmpeg, job), todo), total=len(todo),
                                          desc="convert", unit="file", disable=args.quiet) if error]
    if errors:
        raise DataprepError(f"{len(errors)} of {len(todo)} utterances failed (the others are converted; run again "
                            "after fixing them), e.g.\n  " + "\n  ".join(errors[:5]))


def make_train_list(args: argparse.Namespace) -> None:
    """Write the VoxBlink2 train list and, with --combine_list, one list of VoxBlink2 and that list together."""
    wav_root = Path(os.path.abspath(args.wav_path or args.save_path / "voxblink2" / "wav"))
    files = sorted(wav_root.glob("*/*/*.wav"))
    utterances = [(path.parts[-3], path.relative_to(wav_root).as_posix()) for path in files]
    if not utterances:
        raise DataprepError(f"No wav files matching {wav_root}/<speaker>/<video>/<utt>.wav; run --convert first or "
                            "pass the folder with --wav_path.")
    kept = drop_short(utterances, wav_root, args.min_duration, args.jobs, args.quiet)
    list_path = args.train_list or args.save_path / TRAIN_LIST
    write_list(list_path, kept)
    print(f"Wrote {list_path}: {len(kept)} utterances of {len({speaker for speaker, _ in kept})} speakers"
          + (f" ({len(utterances) - len(kept)} under {args.min_duration} s left out)" if len(kept) < len(utterances)
             else "") + f"; train with --train_path {wav_root}")
    if args.combine_list:
        combine(kept, wav_root, args.combine_list, args.combine_path or args.save_path / "voxceleb2" / "dev" / "wav",
                args.save_path / COMBINED_LIST)


def combine(voxblink2: list[tuple[str, str]], wav_root: Path, other_list: Path, other_root: Path,
            list_path: Path) -> None:
    """Write VoxBlink2 and another train list as one list whose paths share a root."""
    other_root = os.path.abspath(other_root)
    speakers, paths = read_train_list(str(other_list), other_root, "--combine_list")
    shared = {speaker for speaker, _ in voxblink2} & set(speakers)
    if shared:
        raise DataprepError(f"Speaker {min(shared)} is in both VoxBlink2 and --combine_list {other_list} "
                            f"({len(shared)} shared ids); the combined list would merge two people.")
    root = os.path.commonpath([wav_root, other_root])
    lines = [(speaker, Path(os.path.relpath(wav_root / path, root)).as_posix()) for speaker, path in voxblink2]
    lines += [(speaker, Path(os.path.relpath(path, root)).as_posix()) for speaker, path in zip(speakers, paths)]
    write_list(list_path, lines)
    print(f"Wrote {list_path}: {len(voxblink2)} VoxBlink2 and {len(paths)} {other_list.name} utterances of "
          f"{len({speaker for speaker, _ in lines})} speakers; train with --train_path {root}")
