"""Prepare data: VoxCeleb download/join/extract/convert, MUSAN and RIR preparation, lists, and the demo corpus.

    python dataprep.py --save_path data --download --user USER --password PASS   # classic mirror
    python dataprep.py --save_path data --download --key KEY                      # current mirror
    python dataprep.py --save_path data --extract --convert --augment --make_train_list
    python dataprep.py --save_path data/demo --demo                               # offline demo corpus
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
from tqdm import tqdm

from archives import DataprepError, basic_auth, extract, fetch_verified, join_parts, md5sum
from democorpus import DemoSpec, make_demo_corpus
from runtime.atomic_files import atomic_write, write_text
from runtime.errors import run_command

CLASSIC_URL = "http://cnode01.mm.kaist.ac.kr/voxceleb/vox1a/{file}"
KEY_URL = "https://cn01.mmai.io/download/voxceleb?file={file}&key={key}"
OPENSLR_URL = "https://www.openslr.org/resources/"
# Archive -> folder under save_path (the current layout: train data/voxceleb2/dev/wav, test data/voxceleb1/test/wav).
ARCHIVE_FOLDERS = {"vox1_dev_wav.zip": "voxceleb1/dev", "vox1_test_wav.zip": "voxceleb1/test",
                   "vox2_dev_aac.zip": "voxceleb2", "vox2_test_aac.zip": "voxceleb2/test"}
RIR_ROOMS = ("RIRS_NOISES/simulated_rirs/smallroom/", "RIRS_NOISES/simulated_rirs/mediumroom/")
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


def convert_one(ffmpeg: str, source: Path) -> str | None:
    """Convert one m4a to 16 kHz mono 16-bit wav via a temporary name; returns an error line or None."""
    target = wav_destination(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as partial:
        command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-ac", "1", "-vn",
                   "-acodec", "pcm_s16le", "-ar", "16000", "-f", "wav", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            return f"{source}: {(result.stderr.strip().splitlines() or [f'ffmpeg exit code {result.returncode}'])[-1]}"
    return None


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


def split_musan(source: Path, target: Path, quiet: bool = False) -> int:
    """Cut every MUSAN recording into 5 s chunks every 3 s, named by start second; returns chunks written."""
    files, written = sorted(source.glob("*/*/*.wav")), 0
    if not files:
        raise DataprepError(f"No MUSAN recordings matching {source}/*/*/*.wav; is the MUSAN archive complete?")
    for path in tqdm(files, desc="split MUSAN", unit="file", disable=quiet):
        info = soundfile.info(path)
        folder = target / path.relative_to(source).with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, info.frames - 5 * info.samplerate + 1, 3 * info.samplerate):
            chunk = folder / f"{start // info.samplerate:05d}.wav"
            if chunk.exists():
                continue
            samples, rate = soundfile.read(path, start=start, frames=5 * info.samplerate, dtype="int16")
            with atomic_write(chunk) as partial:
                soundfile.write(partial, samples, rate, subtype="PCM_16", format="WAV")
            written += 1
    return written


def augment(args: argparse.Namespace) -> None:
    """Download MUSAN and the simulated RIRs (OpenSLR 17 and 28), extract them and split MUSAN."""
    for entry, md5 in read_table(args.lists / "augment.txt", 2):
        url = entry if "://" in entry else args.openslr_url.rstrip("/") + "/" + entry
        name = entry.rsplit("/", 1)[-1]
        if not fetch_verified(url, args.save_path / name, md5, None, args.retries, args.retry_wait, args.quiet):
            raise DataprepError(f"{name}: md5 mismatch (kept aside); run --augment again or use --openslr_url.")
    rirs = extract(args.save_path / "rirs_noises.zip", args.save_path, lambda name: name.startswith(RIR_ROOMS),
                   args.quiet)
    musan = extract(args.save_path / "musan.tar.gz", args.save_path, quiet=args.quiet)
    chunks = split_musan(args.save_path / "musan", args.save_path / "musan_split", args.quiet)
    print(f"Augmentation data ready: {rirs} RIR files, {musan} MUSAN files and {chunks} new 5 s chunks written "
          f"(MUSAN chunks in {args.save_path / 'musan_split'}, RIRs in "
          f"{args.save_path / 'RIRS_NOISES/simulated_rirs'}).")


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
    for number, line in enumerate(trial_list.read_text().splitlines(), 1):
        fields = line.split()
        if fields and len(fields) not in (2, 3):
            raise DataprepError(f"{trial_list}, line {number}: expected '<label> <enrol> <test>', found {line!r}")
        names.update(fields[-2:])
    return len(names), sorted(name for name in names if not (test_path / name).is_file())


class CommandLine(argparse.ArgumentParser):
    """argparse whose mistakes are one-line errors with exit status 1."""

    def error(self, message: str):
        raise DataprepError(f"{message} (see --help)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The dataprep command line."""
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save_path", type=Path, default=Path("data"), help="data folder (created if missing)")
    steps = parser.add_argument_group("steps (run in this order)")
    steps.add_argument("--demo", action="store_true", help="generate the offline demo corpus in --save_path")
    steps.add_argument("--download", action="store_true", help="download the VoxCeleb parts (lists/fileparts.txt)")
    steps.add_argument("--concatenate", action="store_true", help="join downloaded parts into zips (lists/files.txt)")
    steps.add_argument("--extract", action="store_true", help="join parts if needed, then extract the VoxCeleb zips")
    steps.add_argument("--convert", action="store_true", help="convert VoxCeleb2 m4a to 16 kHz wav with ffmpeg")
    steps.add_argument("--augment", action="store_true", help="download and prepare MUSAN and the simulated RIRs")
    steps.add_argument("--make_train_list", action="store_true", help="write the train list from --wav_path")
    steps.add_argument("--check_trials", type=Path, default=None, help="report files of this trial list missing "
                       "under --test_path")
    access = parser.add_argument_group("download")
    access.add_argument("--user", default=None, help="user name (classic mirror, HTTP basic auth)")
    access.add_argument("--password", default=None, help="password (classic mirror)")
    access.add_argument("--key", default=None, help="access key (current mirror)")
    access.add_argument("--base_url", default=None, help="mirror URL; '{file}' and '{key}' are filled in, else the "
                        f"file name is appended (default {CLASSIC_URL} or, with --key, {KEY_URL})")
    access.add_argument("--openslr_url", default=OPENSLR_URL, help="OpenSLR mirror for MUSAN and RIRs")
    access.add_argument("--retries", type=int, default=5, help="resume attempts after a broken connection")
    access.add_argument("--retry_wait", type=float, default=2.0, help="seconds before the first retry (doubles)")
    access.add_argument("--lists", type=Path, default=Path(__file__).resolve().parent / "lists",
                        help="folder with fileparts.txt, files.txt and augment.txt")
    other = parser.add_argument_group("other")
    other.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel ffmpeg / generator processes")
    other.add_argument("--wav_path", type=Path, default=None, help="train wav root for --make_train_list "
                       "(default <save_path>/voxceleb2/dev/wav)")
    other.add_argument("--train_list", type=Path, default=None, help="train list to write "
                       "(default <save_path>/train_list.txt)")
    other.add_argument("--test_path", type=Path, default=None, help="root of the trial list's files "
                       "(default <save_path>/voxceleb1/test/wav)")
    other.add_argument("--seed", type=int, default=0, help="demo corpus seed")
    other.add_argument("--demo_train_speakers", type=int, default=DemoSpec.train_speakers)
    other.add_argument("--demo_test_speakers", type=int, default=DemoSpec.test_speakers)
    other.add_argument("--quiet", action="store_true", help="no progress bars")
    other.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                       "line (also SPEAKERNET_DEBUG=1)")
    args = parser.parse_args(argv)
    if not (args.demo or args.download or args.concatenate or args.extract or args.convert or args.augment
            or args.make_train_list or args.check_trials):
        parser.error("choose at least one step: --demo, --download, --concatenate, --extract, --convert, "
                     "--augment, --make_train_list or --check_trials LIST")
    return args


def run(args: argparse.Namespace) -> int:
    """Run the chosen steps in order; returns the exit status."""
    try:
        args.save_path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataprepError(f"Cannot create --save_path {args.save_path}: {error.strerror}") from None
    if args.demo:
        spec = DemoSpec(train_speakers=args.demo_train_speakers, test_speakers=args.demo_test_speakers)
        make_demo_corpus(args.save_path, args.seed, spec, args.jobs, args.quiet)
    for chosen, step in ((args.download, download), (args.concatenate, concatenate), (args.extract, extract_voxceleb),
                         (args.convert, convert), (args.augment, augment)):
        if chosen:
            step(args)
    if args.make_train_list:
        list_path = args.train_list or args.save_path / "train_list.txt"
        count = write_train_list(args.wav_path or args.save_path / "voxceleb2" / "dev" / "wav", list_path)
        print(f"Wrote {list_path}: {count} utterances")
    if args.check_trials:
        test_path = args.test_path or args.save_path / "voxceleb1" / "test" / "wav"
        total, missing = check_trials(args.check_trials, test_path)
        print(f"{args.check_trials}: {total} files, {len(missing)} missing under {test_path}")
        for name in missing[:10]:
            print(f"  missing: {name}")
        return 1 if missing else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(lambda arguments: run(parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
