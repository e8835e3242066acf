"""Prepare data: VoxCeleb download/join/extract/convert, MUSAN and RIR preparation, lists, and the demo corpus.

    python dataprep.py --save_path data --download --user USER --password PASS   # classic mirror
    python dataprep.py --save_path data --download --key KEY                      # current mirror
    python dataprep.py --save_path data --extract --convert --augment --make_train_list
    python dataprep.py --save_path data/demo --demo                               # offline demo corpus
    python dataprep.py --save_path data/shards --make_shards --train_list data/train_list.txt \
        --train_path data/voxceleb2/dev/wav                                       # tar shards to train from
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from preparation.archives import DataprepError
from preparation.demo_corpus import DemoSpec, make_demo_corpus
from preparation.noise_data import OPENSLR_URL, augment, split_musan  # noqa: F401 (split_musan: part of the API)
from preparation.shards import make_shards
from preparation.voxceleb import (
    CLASSIC_URL,
    KEY_URL,
    check_trials,
    concatenate,
    convert,
    download,
    extract_voxceleb,
    write_train_list,
)
from runtime.errors import run_command


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
    steps.add_argument("--make_shards", action="store_true", help="write tar shards of --train_list (files under "
                       "--train_path) to --save_path, with shards.list to pass to trainSpeakerNet.py --train_shards")
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
                       "(default <save_path>/train_list.txt), or to read with --make_shards")
    other.add_argument("--train_path", type=Path, default=None, help="--make_shards: root of the train list's paths")
    other.add_argument("--shard_size_mb", type=float, default=256.0, help="--make_shards: audio per shard in MB")
    other.add_argument("--test_path", type=Path, default=None, help="root of the trial list's files "
                       "(default <save_path>/voxceleb1/test/wav)")
    other.add_argument("--seed", type=int, default=0, help="seed of the demo corpus and of the --make_shards shuffle")
    other.add_argument("--demo_train_speakers", type=int, default=DemoSpec.train_speakers)
    other.add_argument("--demo_test_speakers", type=int, default=DemoSpec.test_speakers)
    other.add_argument("--quiet", action="store_true", help="no progress bars")
    other.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                       "line (also SPEAKERNET_DEBUG=1)")
    args = parser.parse_args(argv)
    if not (args.demo or args.download or args.concatenate or args.extract or args.convert or args.augment
            or args.make_train_list or args.make_shards or args.check_trials):
        parser.error("choose at least one step: --demo, --download, --concatenate, --extract, --convert, "
                     "--augment, --make_train_list, --make_shards or --check_trials LIST")
    if args.make_shards and (args.train_list is None or args.train_path is None):
        parser.error("--make_shards needs --train_list and --train_path")
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
    if args.make_shards:
        written, skipped = make_shards(args.train_list, args.train_path, args.save_path, args.shard_size_mb,
                                       args.seed, args.quiet)
        print(f"Wrote {written} shard(s) to {args.save_path} ({skipped} already complete); train with "
              f"--train_shards {args.save_path / 'shards.list'}")
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
