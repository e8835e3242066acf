"""Kaldi data folders: `wav.scp`, `utt2spk` and `trials` files read into the framework's list semantics."""
from __future__ import annotations

import os

from audio.file_lists import is_wav_scp, read_list_lines, read_train_list
from runtime.errors import DataError, MissingFileError

TRIAL_LABELS = {"target": 1, "nontarget": 0}


def _table(path: str, what: str, flag: str) -> list[tuple[int, str, str]]:
    """(line number, key, rest of the line) of a Kaldi `<key> <value>` table; blank lines skipped."""
    rows = []
    for number, line in enumerate(read_list_lines(path, what, flag), start=1):
        fields = line.strip().split(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}, line {number}: expected '<utterance-id> <value>', got {line.strip()!r}")
        rows.append((number, fields[0], fields[1].strip()))
    if not rows:
        raise DataError(f"{what.capitalize()} {path} is empty")
    return rows


def read_wav_scp(path: str, flag: str = "") -> dict[str, str]:
    """Utterance id -> audio path (relative paths are taken from the wav.scp's folder); pipes are refused."""
    folder = os.path.dirname(os.path.abspath(path))
    table = {}
    for number, utterance, value in _table(path, "wav.scp", flag):
        if value.endswith("|"):
            raise DataError(f"{path}, line {number}: {utterance} is a piped command ({value!r}); only file paths "
                            "are read: write the audio to files first (e.g. with Kaldi's wav-copy)")
        if utterance in table:
            raise DataError(f"{path}, line {number}: utterance {utterance} appears twice")
        table[utterance] = os.path.join(folder, value)
    return table


def read_utt2spk(wav_scp: str, flag: str = "") -> list[tuple[int, str, str]]:
    """(line number, utterance, speaker) of the `utt2spk` beside a wav.scp."""
    path = os.path.join(os.path.dirname(wav_scp), "utt2spk")
    if not os.path.isfile(path):
        raise MissingFileError(f"{wav_scp} has no utt2spk beside it ({path}); a Kaldi data folder for training "
                               "needs both files")
    rows = _table(path, "utt2spk", flag)
    for number, utterance, speaker in rows:
        if len(speaker.split()) != 1:
            raise DataError(f"{path}, line {number}: expected '<utterance-id> <speaker-id>', got "
                            f"{utterance} {speaker!r}")
    return rows


def speakers_and_paths(wav_scp: str, flag: str = "--train_list") -> tuple[list[str], list[str]]:
    """(speaker, path) per utterance of a wav.scp + utt2spk pair, in utt2spk order: a train list's content."""
    paths = read_wav_scp(wav_scp, flag)
    utt2spk = os.path.join(os.path.dirname(wav_scp), "utt2spk")
    rows = read_utt2spk(wav_scp, flag)
    for number, utterance, _ in rows:
        if utterance not in paths:
            raise DataError(f"{utt2spk}, line {number}: utterance {utterance} is not in {wav_scp}")
    unlabelled = sorted(set(paths) - {utterance for _, utterance, _ in rows})
    if unlabelled:
        raise DataError(f"{len(unlabelled)} utterances of {wav_scp} have no speaker in {utt2spk} "
                        f"(first: {unlabelled[0]})")
    return [speaker for _, _, speaker in rows], [paths[utterance] for _, utterance, _ in rows]


def read_speaker_list(train_list: str, train_path: str, flag: str = "--train_list") -> tuple[list[str], list[str]]:
    """Speaker ids and full paths of a train list, or of a Kaldi wav.scp (with utt2spk beside it); errors name
    `flag`, the caller's flag of the list."""
    if is_wav_scp(train_list):
        return speakers_and_paths(train_list, flag)
    return read_train_list(train_list, train_path, flag)


def is_kaldi_trials(lines: list[str]) -> bool:
    """Whether a trial list is Kaldi's `<enrol-utt> <test-utt> target|nontarget` (told by its first line)."""
    first = next((line.split() for line in lines if line.strip()), [])
    return len(first) == 3 and first[2] in TRIAL_LABELS


def wav_scp_of(test_path: str, trials: str) -> str:
    """The wav.scp that --test_path names (the file itself, or the one in the folder) for a Kaldi trials file."""
    candidate = test_path if os.path.isfile(test_path) else os.path.join(test_path, "wav.scp")
    if not os.path.isfile(candidate):
        raise MissingFileError(f"{trials} is a Kaldi trials file (utterance ids), so --test_path must be a wav.scp "
                               f"or a folder holding one; {candidate} does not exist")
    return candidate


def trial_rows(path: str, lines: list[str], test_path: str) -> list[tuple[int, list[str]]]:
    """Kaldi trial lines as (line number, [label, enrol path, test path]), the original list's fields."""
    audio = read_wav_scp(wav_scp_of(test_path, path), "--test_path")
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in TRIAL_LABELS:
            raise DataError(f"{path}, line {number}: expected '<enrol-utt> <test-utt> target|nontarget', got "
                            f"{line.strip()!r}")
        unknown = [utterance for utterance in fields[:2] if utterance not in audio]
        if unknown:
            raise DataError(f"{path}, line {number}: utterance {unknown[0]} is not in the wav.scp of --test_path "
                            f"{test_path}")
        rows.append((number, [str(TRIAL_LABELS[fields[2]]), audio[fields[0]], audio[fields[1]]]))
    return rows
