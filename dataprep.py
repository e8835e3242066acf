"""Prepare data: VoxCeleb, CN-Celeb and VoxBlink2 (download/join/extract/convert, lists), MUSAN and the RIRs, and
the demo corpus.

    python dataprep.py --save_path data --download --user USER --password PASS   # classic mirror
    python dataprep.py --save_path data --download --key KEY                      # current mirror
    python dataprep.py --save_path data --extract --convert --augment --make_train_list
    python dataprep.py --save_path data/demo --demo                               # offline demo corpus
    python dataprep.py --save_path data --corpus cnceleb --download --extract --make_train_list --make_trials
    python dataprep.py --save_path data --corpus voxblink2 --convert --voxblink2_path DIR --make_train_list
    python dataprep.py --save_path data/shards --make_shards --train_list data/train_list.txt \
        --train_path data/voxceleb2/dev/wav                                       # tar shards to train from
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from preparation import cnceleb, voxblink2
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

CORPUS_STEPS = ("download", "concatenate", "extract", "convert", "make_train_list", "make_trials")
# Steps a corpus has no use for, and why.
NOT_FOR = {"voxceleb": {"make_trials": "VoxCeleb's trial lists come from the VoxCeleb site; check one with "
                                       "--check_trials LIST"},
           "cnceleb": {},
           "voxblink2": {"download": voxblink2.NO_DOWNLOAD,
                         "concatenate": "VoxBlink2 comes as audio files, not archives",
                         "extract": "VoxBlink2 comes as audio files, not archives",
                         "make_trials": "VoxBlink2 is used for training here; evaluate on VoxCeleb1 or CN-Celeb"}}


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
    steps.add_argument("--download", action="store_true", help="download the --corpus archives: VoxCeleb parts "
                       "(lists/fileparts.txt), CN-Celeb (lists/cnceleb.txt); VoxBlink2 cannot be downloaded")
    steps.add_argument("--concatenate", action="store_true", help="join downloaded parts into archives "
                       "(lists/files.txt, lists/cnceleb.txt)")
    steps.add_argument("--extract", action="store_true", help="join parts if needed, then extract the --corpus "
                       "archives (CN-Celeb into --cnceleb_path)")
    steps.add_argument("--convert", action="store_true", help="convert to 16 kHz wav with ffmpeg: VoxCeleb2 m4a, "
                       "VoxBlink2 audio from --voxblink2_path (CN-Celeb flac needs none)")
    steps.add_argument("--augment", action="store_true", help="download and prepare MUSAN and the simulated RIRs")
    steps.add_argument("--make_train_list", action="store_true", help="write the --corpus train list: VoxCeleb "
                       "and VoxBlink2 from --wav_path, CN-Celeb1 dev + CN-Celeb2 from --cnceleb_path")
    steps.add_argument("--make_trials", action="store_true", help="--corpus cnceleb: write the CN-Celeb1 eval trial "
                       f"list <save_path>/{cnceleb.TRIAL_LIST}")
    steps.add_argument("--make_shards", action="store_true", help="write tar shards of --train_list (files under "
                       "--train_path) to --save_path, with shards.list to pass to trainSpeakerNet.py --train_shards")
    steps.add_argument("--check_trials", type=Path, default=None, help="report files of this trial list missing "
                       "under --test_path")
    corpora = parser.add_argument_group("corpora")
    corpora.add_argument("--corpus", choices=("voxceleb", "cnceleb", "voxblink2"), default="voxceleb",
                         help="the corpus of --download, --concatenate, --extract, --convert, --make_train_list and "
                         "--make_trials (default voxceleb)")
    corpora.add_argument("--cnceleb_path", type=Path, default=None, help="folder holding CN-Celeb_flac and "
                         "CN-Celeb2_flac (default --save_path; --extract writes there)")
    corpora.add_argument("--voxblink2_path", type=Path, default=None, help="the VoxBlink2 audio you downloaded: "
                         "cropped utterances <speaker>/<video>/<utt>.<ext>, or whole downloads <speaker>/<video>.<ext> "
                         "with --voxblink2_meta")
    corpora.add_argument("--voxblink2_meta", type=Path, default=None, help="VoxBlink2 timestamp folder "
                         "(meta/<speaker>/<video>/<utt>.txt) to cut whole downloads into utterances")
    corpora.add_argument("--min_duration", type=float, default=0.0, help="--make_train_list of cnceleb and voxblink2: "
                         "leave out utterances shorter than this many seconds (default 0: keep all)")
    corpora.add_argument("--combine_list", type=Path, default=None, help="--corpus voxblink2 --make_train_list: also "
                         f"write <save_path>/{voxblink2.COMBINED_LIST}, VoxBlink2 plus this train list")
    corpora.add_argument("--combine_path", type=Path, default=None, help="root of --combine_list's paths "
                         "(default <save_path>/voxceleb2/dev/wav)")
    access = parser.add_argument_group("download")
    access.add_argument("--user", default=None, help="user name (classic mirror, HTTP basic auth)")
    access.add_argument("--password", default=None, help="password (classic mirror)")
    access.add_argument("--key", default=None, help="access key (current mirror)")
    access.add_argument("--base_url", default=None, help="mirror URL; '{file}' and '{key}' are filled in, else the "
                        f"file name is appended (default {CLASSIC_URL} or, with --key, {KEY_URL})")
    access.add_argument("--openslr_url", default=OPENSLR_URL, help="OpenSLR mirror for MUSAN, RIRs and CN-Celeb")
    access.add_argument("--retries", type=int, default=5, help="resume attempts after a broken connection")
    access.add_argument("--retry_wait", type=float, default=2.0, help="seconds before the first retry (doubles)")
    access.add_argument("--lists", type=Path, default=Path(__file__).resolve().parent / "lists",
                        help="folder with fileparts.txt, files.txt, augment.txt and cnceleb.txt")
    other = parser.add_argument_group("other")
    other.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel ffmpeg / generator processes")
    other.add_argument("--wav_path", type=Path, default=None, help="train wav root for --make_train_list "
                       "(default <save_path>/voxceleb2/dev/wav; voxblink2: <save_path>/voxblink2/wav)")
    other.add_argument("--train_list", type=Path, default=None, help="train list to write (default "
                       f"<save_path>/train_list.txt, {cnceleb.TRAIN_LIST} or {voxblink2.TRAIN_LIST}), or to read "
                       "with --make_shards")
    other.add_argument("--train_path", type=Path, default=None, help="--make_shards: root of the train list's paths")
    other.add_argument("--shard_size_mb", type=float, default=256.0, help="--make_shards: audio per shard in MB")
    other.add_argument("--test_path", type=Path, default=None, help="root of the trial list's files "
                       "(default <save_path>/voxceleb1/test/wav; cnceleb: --cnceleb_path)")
    other.add_argument("--seed", type=int, default=0, help="seed of the demo corpus and of the --make_shards shuffle")
    other.add_argument("--demo_train_speakers", type=int, default=DemoSpec.train_speakers)
    other.add_argument("--demo_test_speakers", type=int, default=DemoSpec.test_speakers)
    other.add_argument("--quiet", action="store_true", help="no progress bars")
    other.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                       "line (also SPEAKERNET_DEBUG=1)")
    args = parser.parse_args(argv)
    if not (args.demo or args.augment or args.make_shards or args.check_trials
            or any(getattr(args, step) for step in CORPUS_STEPS)):
        parser.error("choose at least one step: --demo, --download, --concatenate, --extract, --convert, "
                     "--augment, --make_train_list, --make_trials, --make_shards or --check_trials LIST")
    for step in CORPUS_STEPS:
        if getattr(args, step) and step in NOT_FOR[args.corpus]:
            parser.error(f"--corpus {args.corpus} has no --{step}: {NOT_FOR[args.corpus][step]}")
    if args.min_duration < 0:
        parser.error(f"--min_duration must be 0 or more seconds, got {args.min_duration}")
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
    steps = {"voxceleb": (download, concatenate, extract_voxceleb, convert, voxceleb_train_list, None),
             "cnceleb": (cnceleb.download, cnceleb.concatenate, cnceleb.extract, cnceleb.convert,
                         cnceleb.make_train_list, cnceleb.make_trials),
             "voxblink2": (None, None, None, voxblink2.convert, voxblink2.make_train_list, None)}[args.corpus]
    for name, step in zip(CORPUS_STEPS, steps):
        if name == "make_train_list" and args.augment:  # MUSAN and the RIRs, for any corpus, after --convert
            augment(args)
        if getattr(args, name):
            step(args)
    if args.make_shards:
        written, skipped = make_shards(args.train_list, args.train_path, args.save_path, args.shard_size_mb,
                                       args.seed, args.quiet)
        print(f"Wrote {written} shard(s) to {args.save_path} ({skipped} already complete); train with "
              f"--train_shards {args.save_path / 'shards.list'}")
    if args.check_trials:
        test_path = args.test_path or (args.cnceleb_path or args.save_path if args.corpus == "cnceleb"
                                       else args.save_path / "voxceleb1" / "test" / "wav")
        total, missing = check_trials(args.check_trials, test_path)
        print(f"{args.check_trials}: {total} files, {len(missing)} missing under {test_path}")
        for name in missing[:10]:
            print(f"  missing: {name}")
        return 1 if missing else 0
    return 0


def voxceleb_train_list(args: argparse.Namespace) -> None:
    """--make_train_list for VoxCeleb."""
    list_path = args.train_list or args.save_path / "train_list.txt"
    count = write_train_list(args.wav_path or args.save_path / "voxceleb2" / "dev" / "wav", list_path)
    print(f"Wrote {list_path}: {count} utterances")


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(lambda arguments: run(parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
