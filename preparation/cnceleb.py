"""CN-Celeb (OpenSLR 82, CC BY-SA 4.0) for dataprep: download and join the archives, extract, train and trial lists.

Layout after --extract, in --cnceleb_path (default --save_path):

    CN-Celeb_flac/data/<speaker>/<genre>-<session>-<n>.flac      every CN-Celeb1 speaker
    CN-Celeb_flac/dev/dev.lst                                     the 800 training speakers (one id a line)
    CN-Celeb_flac/eval/enroll/<speaker>-enroll.flac               enrolment utterances (joined by the authors)
    CN-Celeb_flac/eval/test/<speaker>-<genre>-<session>-<n>.flac  test utterances
    CN-Celeb_flac/eval/lists/enroll.lst, trials.lst               the lists name .wav files; the audio is .flac
    CN-Celeb2_flac/data/<speaker>/...flac, CN-Celeb2_flac/spk.lst (all training speakers)

The audio is 16 kHz flac, which training, evaluation and --make_shards read directly: nothing is converted.
"""
from __future__ import annotations

import argparse
import os
import tarfile
import urllib.parse
import zlib
from pathlib import Path

from tqdm import tqdm

from audio.file_lists import read_list_lines
from preparation.archives import DataprepError, fetch, fetch_verified, join_parts, md5sum, set_aside
from preparation.archives import extract as extract_archive
from preparation.utterances import Utterance, drop_short, write_list
from runtime.atomic_files import atomic_write

CORPUS_FOLDERS = {"cn-celeb_v2.tar.gz": "CN-Celeb_flac", "cn-celeb2_v2.tar.gz": "CN-Celeb2_flac"}
AUDIO = (".flac", ".wav")
TRAIN_LIST = "cnceleb_train_list.txt"
TRIAL_LIST = "cnceleb_trials.txt"


def read_archives(lists: Path) -> list[tuple[str, str, list[str]]]:
    """(archive, md5, parts) from lists/cnceleb.txt: 'archive md5 [part ...]' lines, parts joined in their order."""
    path = lists / "cnceleb.txt"
    rows = []
    for number, line in enumerate(read_list_lines(str(path), "archive list", "--lists"), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2 or len(fields[1]) != 32 or not all(c in "0123456789abcdef" for c in fields[1].lower()):
            raise DataprepError(f"{path}, line {number}: expected '<archive> <md5 (32 hex digits)> [<part> ...]', "
                                f"found {line!r}")
        rows.append((fields[0], fields[1].lower(), fields[2:]))
    return rows


def archive_url(openslr_url: str, name: str) -> str:
    """The OpenSLR 82 address of an archive or part."""
    return f"{openslr_url.rstrip('/')}/82/{urllib.parse.quote(name)}"


def download(args: argparse.Namespace) -> None:
    """Download the CN-Celeb archives (resumable), join the split CN-Celeb2 archive and check every md5."""
    failed = []
    for archive, md5, parts in read_archives(args.lists):
        target = args.save_path / archive
        if not parts:
            if not fetch_verified(archive_url(args.openslr_url, archive), target, md5, None, args.retries,
                                  args.retry_wait, args.quiet):
                failed.append(archive)
            continue
        if target.exists():
            if md5sum(target, args.quiet) == md5:
                print(f"{archive}: already downloaded, md5 correct")
                continue
            print(f"{archive}: md5 is wrong, kept aside as {set_aside(target).name}; downloading the parts again")
        for part in parts:
            if not (args.save_path / part).exists():
                fetch(archive_url(args.openslr_url, part), args.save_path / part, None, args.retries,
                      args.retry_wait, args.quiet)
        join_parts([args.save_path / part for part in parts], target, md5, args.quiet)
    if failed:
        raise DataprepError(f"md5 mismatch for {', '.join(failed)} (kept aside as *.md5-mismatch in "
                            f"{args.save_path}); run --download again, or use another mirror with --openslr_url.")


def concatenate(args: argparse.Namespace) -> None:
    """Join the downloaded parts of split archives whose parts are all present, checking the md5."""
    for archive, md5, parts in read_archives(args.lists):
        paths, target = [args.save_path / part for part in parts], args.save_path / archive
        if parts and all(path.exists() for path in paths):
            if target.exists() and md5sum(target, args.quiet) == md5:
                print(f"{archive}: already joined and correct; the parts {', '.join(parts)} can be deleted")
                continue
            join_parts(paths, target, md5, args.quiet)
        elif any(path.exists() for path in paths):
            missing = [path.name for path in paths if not path.exists()]
            raise DataprepError(f"{archive}: parts {', '.join(missing)} are missing in {args.save_path}; run "
                                "--download again.")


def extract(args: argparse.Namespace) -> None:
    """Extract the CN-Celeb archives in --save_path into --cnceleb_path, skipping files already there."""
    concatenate(args)
    present = [name for name in CORPUS_FOLDERS if (args.save_path / name).is_file()]
    if not present:
        raise DataprepError(f"None of {', '.join(CORPUS_FOLDERS)} is in {args.save_path}; run --download first "
                            "(or put the archives there).")
    root = args.cnceleb_path or args.save_path
    for name in present:
        try:
            written = extract_archive(args.save_path / name, root, quiet=args.quiet)
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise DataprepError(f"{args.save_path / name} cannot be read ({error}): it is incomplete or corrupt. "
                                "Delete it and run --download again.") from None
        print(f"{name}: {written} files written to {root / CORPUS_FOLDERS[name]}")


def convert(args: argparse.Namespace) -> None:
    """Nothing to convert: say why."""
    print("CN-Celeb is 16 kHz flac, which training, evaluation and --make_shards read directly: nothing to convert.")


def speakers(path: Path) -> list[str]:
    """Speaker ids of a CN-Celeb speaker list (one id a line)."""
    if not path.is_file():
        raise DataprepError(f"{path} not found: is --cnceleb_path the folder that holds {path.parent.name}? Run "
                            "--extract first.")
    ids = []
    for number, line in enumerate(read_list_lines(str(path), "speaker list"), 1):
        fields = line.split()
        if len(fields) > 1:
            raise DataprepError(f"{path}, line {number}: expected one speaker id, found {line!r}")
        ids.extend(fields)
    return ids


def speaker_utterances(root: Path, corpus: str, speaker_list: str) -> list[Utterance]:
    """(speaker, path under root) of every audio file of the listed speakers of one corpus folder."""
    utterances = []
    lst = root / corpus / speaker_list
    for speaker in tqdm(speakers(lst), desc=f"listing {corpus}", unit="speaker", leave=False):
        folder = root / corpus / "data" / speaker
        if not folder.is_dir():
            raise DataprepError(f"{lst} names speaker {speaker}, but {folder} does not exist; is the archive "
                                "completely extracted? Run --extract again.")
        names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(AUDIO))
        utterances.extend((speaker, f"{corpus}/data/{speaker}/{name}") for name in names)
    return utterances


def write_train_list(root: Path, list_path: Path, min_duration: float, jobs: int,
                     quiet: bool) -> tuple[int, int, int]:
    """Write the CN-Celeb1 dev + CN-Celeb2 train list (paths under root); returns (written, speakers, too short)."""
    corpora = [(corpus, lst) for corpus, lst in (("CN-Celeb_flac", "dev/dev.lst"), ("CN-Celeb2_flac", "spk.lst"))
               if (root / corpus).is_dir()]
    if not corpora:
        raise DataprepError(f"Neither CN-Celeb_flac nor CN-Celeb2_flac is in {root}; run --extract first or point "
                            "--cnceleb_path at the folder that holds them.")
    utterances = []
    for corpus, lst in corpora:
        found = speaker_utterances(root, corpus, lst)
        overlap = {speaker for speaker, _ in utterances} & {speaker for speaker, _ in found}
        if overlap:
            raise DataprepError(f"Speaker {min(overlap)} is in both CN-Celeb1 dev and CN-Celeb2 ({len(overlap)} "
                                "shared ids); the lists would merge two people.")
        utterances.extend(found)
    if not utterances:
        raise DataprepError(f"No .flac or .wav files under {root}/CN-Celeb*_flac/data; run --extract first.")
    kept = drop_short(utterances, root, min_duration, jobs, quiet)
    write_list(list_path, kept)
    return len(kept), len({speaker for speaker, _ in kept}), len(utterances) - len(kept)


def audio_index(eval_folder: Path) -> dict[str, str]:
    """'enroll/<stem>' and 'test/<stem>' -> the file's path under eval_folder, whatever its audio suffix."""
    index = {}
    for sub in ("enroll", "test"):
        if not (eval_folder / sub).is_dir():
            raise DataprepError(f"{eval_folder / sub} does not exist; run --extract first.")
        for entry in os.scandir(eval_folder / sub):
            stem, suffix = os.path.splitext(entry.name)
            if suffix in AUDIO:
                index[f"{sub}/{stem}"] = f"{sub}/{entry.name}"
    return index


def read_enrolment(path: Path) -> dict[str, str]:
    """Enrolment id -> listed file from enroll.lst ('<id> enroll/<id>.wav' lines)."""
    if not path.is_file():
        raise DataprepError(f"{path} not found; run --extract first.")
    enrolment = {}
    for number, line in enumerate(read_list_lines(str(path), "enrolment list"), 1):
        fields = line.split()
        if fields and len(fields) != 2:
            raise DataprepError(f"{path}, line {number}: expected '<enrol id> <file>', found {line!r}")
        if fields:
            enrolment[fields[0]] = fields[1]
    return enrolment


def write_trials(root: Path, trial_path: Path, quiet: bool) -> tuple[int, int]:
    """Write CN-Celeb1 eval as '<label> <enrol file> <test file>' lines (paths under root); returns (trials,
    targets)."""
    eval_folder = root / "CN-Celeb_flac" / "eval"
    enrolment = read_enrolment(eval_folder / "lists" / "enroll.lst")
    index = audio_index(eval_folder)
    trials_lst = eval_folder / "lists" / "trials.lst"
    if not trials_lst.is_file():
        raise DataprepError(f"{trials_lst} not found; run --extract first.")

    def resolve(listed: str, where: str) -> str:
        found = index.get(os.path.splitext(listed)[0])
        if found is None:
            raise DataprepError(f"{where}: {listed} is not in {eval_folder} (as .flac or .wav); is the archive "
                                "completely extracted? Run --extract again.")
        return f"CN-Celeb_flac/eval/{found}"

    trial_path.parent.mkdir(parents=True, exist_ok=True)
    trials = targets = 0
    with atomic_write(trial_path) as partial, open(partial, "w", encoding="utf-8") as out, \
            open(trials_lst, encoding="utf-8-sig") as lines:
        for number, line in enumerate(tqdm(lines, desc="trials", unit="trial", disable=quiet), 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{trials_lst}, line {number}"
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise DataprepError(f"{where}: expected '<enrol id> <test file> <0 or 1>', found {line.strip()!r}")
            if fields[0] not in enrolment:
                raise DataprepError(f"{where}: enrolment id {fields[0]} is not in {eval_folder / 'lists/enroll.lst'}")
            out.write(f"{fields[2]} {resolve(enrolment[fields[0]], where)} {resolve(fields[1], where)}\n")
            trials += 1
            targets += fields[2] == "1"
    if not trials:
        raise DataprepError(f"{trials_lst} holds no trials.")
    return trials, targets


def make_train_list(args: argparse.Namespace) -> None:
    """--make_train_list for CN-Celeb: write the list and say how to train on it."""
    root = args.cnceleb_path or args.save_path
    list_path = args.train_list or args.save_path / TRAIN_LIST
    written, speakers, short = write_train_list(root, list_path, args.min_duration, args.jobs, args.quiet)
    left_out = f" ({short} under {args.min_duration} s left out)" if short else ""
    print(f"Wrote {list_path}: {written} utterances of {speakers} speakers{left_out}; train with --train_path {root}")


def make_trials(args: argparse.Namespace) -> None:
    """--make_trials for CN-Celeb: write the CN-Celeb1 eval trial list and say how to evaluate on it."""
    root = args.cnceleb_path or args.save_path
    trial_path = args.save_path / TRIAL_LIST
    trials, targets = write_trials(root, trial_path, args.quiet)
    print(f"Wrote {trial_path}: {trials} trials ({targets} target); evaluate with --test_list {trial_path} "
          f"--test_path {root}")
