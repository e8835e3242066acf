"""VoxCeleb preparation steps: download (md5-checked, resumable), join, extract, convert m4a to wav, lists."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
from tqdm import tqdm

from audio.file_lists import read_list_lines
from preparation.archives import DataprepError, basic_auth, extract, fetch_verified, join_parts, md5sum
from runtime.atomic_files import partial_path, publish, write_text

CLASSIC_URL = "http://cnode01.mm.kaist.ac.kr/voxceleb/vox1a/{file}"
KEY_URL = "https://cn01.mmai.io/download/voxceleb?file={file}&key={key}"
# Archive -> folder under save_path (the current layout: train data/voxceleb2/dev/wav, test data/voxceleb1/test/wav).
ARCHIVE_FOLDERS = {"vox1_dev_wav.zip": "voxceleb1/dev", "vox1_test_wav.zip": "voxceleb1/test",
                   "vox2_dev_aac.zip": "voxceleb2", "vox2_test_aac.zip": "voxceleb2/test"}
FFMPEG_HELP = ("ffmpeg was not found on PATH; it converts VoxCeleb2's m4a files. Install it (Debian/Ubuntu: "
               "apt-get install ffmpeg; conda: conda install -c conda-forge ffmpeg; macOS: brew install ffmpeg) "
               "and run --convert again.")


def read_table(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of a list file, each with exactly `columns` fields."""
    if not path.is_file():
        raise DataprepError(f"List file {path} not found; point --lists at the folder holding it.")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if fields and len(fields) != columns:
            raise DataprepError(f"{path}, line {number}: expected {columns} fields, found {len(fields)}: {line!r}")
        if fields:
            rows.append(fields)
    return rows


def part_url(entry: str, base_url: str | None, key: str | None) -> tuple[str, str]:
    """(file name, URL) of a parts-list entry: a bare name (URL from the mirror template) or a full URL."""
    name = entry.rstrip("/").rsplit("/", 1)[-1]
    if "://" in entry and base_url is None:
        return name, entry
    template = base_url or (KEY_URL if key else CLASSIC_URL)
    if "{file}" not in template:
        template = template.rstrip("/") + "/{file}"
    return name, template.format(file=urllib.parse.quote(name), key=urllib.parse.quote(key or ""))


def download(args: argparse.Namespace) -> None:
    """Download every VoxCeleb part in lists/fileparts.txt, verifying md5 sums."""
    if not args.key and not (args.user and args.password):
        raise DataprepError("--download needs --user and --password (classic mirror) or --key (current mirror).")
    authorization = None if args.key else basic_auth(args.user, args.password)
    failed = []
    for entry, md5 in read_table(args.lists / "fileparts.txt", 2):
        name, url = part_url(entry, args.base_url, args.key)
        if not fetch_verified(url, args.save_path / name, md5, authorization, args.retries, args.retry_wait,
                              args.quiet):
            failed.append(name)
    if failed:
        raise DataprepError(f"md5 mismatch for {', '.join(failed)} (kept aside as *.md5-mismatch in "
                            f"{args.save_path}); run --download again, or use another mirror with --base_url.")


def concatenate(args: argparse.Namespace) -> None:
    """Join downloaded parts (lists/files.txt: glob, archive, md5) into archives, checking md5 sums."""
    for pattern, archive, md5 in read_table(args.lists / "files.txt", 3):
        target, parts = args.save_path / archive, sorted(args.save_path.glob(pattern))
        if target.exists() and not parts:
            continue
        if target.exists() and md5sum(target, args.quiet) == md5:
            print(f"{archive}: already joined and correct; the parts {pattern} can be deleted")
            continue
        if not parts:
            raise DataprepError(f"No parts matching {args.save_path / pattern}; run --download first.")
        join_parts(parts, target, md5, args.quiet)


def extract_voxceleb(args: argparse.Namespace) -> None:
    """Extract the VoxCeleb archives that are present into the current folder layout."""
    if any(args.save_path.glob("vox*_part*")):
        concatenate(args)
    present = [name for name in ARCHIVE_FOLDERS if (args.save_path / name).is_file()]
    if not present:
        raise DataprepError(f"None of {', '.join(ARCHIVE_FOLDERS)} is in {args.save_path}; run --download first.")
    for name in present:
        written = extract(args.save_path / name, args.save_path / ARCHIVE_FOLDERS[name], quiet=args.quiet)
        print(f"{name}: {written} files written to {args.save_path / ARCHIVE_FOLDERS[name]}")


def wav_destination(source: Path) -> Path:
    """The wav path for an m4a file: the last 'aac' folder becomes 'wav', the extension '.wav'."""
    parts = list(source.with_suffix(".wav").parts)
    if "aac" in parts:
        parts[len(parts) - 1 - parts[::-1].index("aac")] = "wav"
    return Path(*parts)


def to_wav(ffmpeg: str, source: Path, target: Path, span: tuple[float, float] | None = None) -> str | None:
    """Write source (or its span of (start, end) seconds) as 16 kHz mono 16-bit wav via a temporary name; returns
    an error line or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    seek = ["-ss", f"{span[0]:.3f}", "-t", f"{span[1] - span[0]:.3f}"] if span else []
    command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", *seek, "-i", str(source), "-ac", "1", "-vn",
               "-acodec", "pcm_s16le", "-ar", "16000", "-f", "wav", str(partial)]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return f"{source}: {(result.stderr.strip().splitlines() or [f'ffmpeg exit code {result.returncode}'])[-1]}"
        if soundfile.info(partial).frames == 0:
            where = f" from {span[0]:.2f} s (past its end?)" if span else ""
            return f"{source}: ffmpeg wrote no audio{where}"
        publish(partial, target)
        return None
    finally:
        partial.unlink(missing_ok=True)


def convert_one(ffmpeg: str, source: Path) -> str | None:
    """Convert one m4a to 16 kHz mono 16-bit wav beside its 'aac' tree; returns an error line or None."""
    return to_wav(ffmpeg, source, wav_destination(source))


def convert(args: argparse.Namespace) -> None:
    """Convert VoxCeleb2 m4a files to wav in parallel, skipping those already converted."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DataprepError(FFMPEG_HELP)
    folder = args.save_path / "voxceleb2"
    sources = sorted(folder.rglob("*.m4a"))
    if not sources:
        raise DataprepError(f"No .m4a files under {folder}; run --extract first.")
    todo = [source for source in sources if not wav_destination(source).exists()]
    print(f"{len(sources)} m4a files under {folder}, {len(sources) - len(todo)} already converted")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        errors = [e for e in tqdm(pool.map(lambda s: convert_one(ffmpeg, s), todo), total=len(todo),
                                  desc="convert", unit="file", disable=args.quiet) if e]
    if errors:
        raise DataprepError(f"ffmpeg failed on {len(errors)} file(s), e.g.\n  " + "\n  ".join(errors[:5]))


def write_train_list(wav_path: Path, list_path: Path) -> int:
    """Write '<speaker> <speaker>/<video>/<utt>.wav' lines for every wav under wav_path; returns the count."""
    files = sorted(path.relative_to(wav_path).as_posix() for path in wav_path.glob("*/*/*.wav"))
    if not files:
        raise DataprepError(f"No wav files matching {wav_path}/<speaker>/<video>/<utt>.wav; run --convert first "
                            "or pass the folder with --wav_path.")
    list_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(list_path, "".join(f"{name.split('/')[0]} {name}\n" for name in files))
    return len(files)


def check_trials(trial_list: Path, test_path: Path) -> tuple[int, list[str]]:
    """(number of distinct files, the missing ones) referenced by a trial list under test_path."""
    if not trial_list.is_file():
        raise DataprepError(f"Trial list {trial_list} not found.")
    names = set()
    for number, line in enumerate(read_list_lines(str(trial_list), "trial list", "--check_trials"), 1):
        fields = line.split()
        if fields and len(fields) not in (2, 3):
            raise DataprepError(f"{trial_list}, line {number}: expected '<label> <enrol> <test>', found {line!r}")
        names.update(fields[-2:])
    return len(names), sorted(name for name in names if not (test_path / name).is_file())
