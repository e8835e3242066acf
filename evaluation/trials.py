"""Trial lists: reading '<label> <enrol> <test>' lines, and checking their files exist."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from audio.file_lists import check_files_exist as check_paths_exist
from audio.file_lists import read_list_lines
from audio.kaldi_data import is_kaldi_trials, trial_rows
from runtime.errors import DataError


@dataclass
class Trials:
    """A trial list: label (1 same, 0 different, -1 unlabelled), enrol and test path per line; its unique files."""

    labels: np.ndarray
    enrol: list[str]
    test: list[str]
    files: list[str]
    path: str


def read_trials(path: str, test_path: str = "") -> Trials:
    """Read `<label> <enrol> <test>` (or `<enrol> <test>`, unlabelled) lines; errors name the file and line.

    A Kaldi trials file (`<enrol-utt> <test-utt> target|nontarget`) is read too: its utterances become the
    paths that the wav.scp of `test_path` (the file, or the folder holding it) gives them."""
    lines = read_list_lines(path, "trial list", "--test_list")
    if is_kaldi_trials(lines):
        rows = trial_rows(path, lines, test_path)
    else:
        rows = [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]
    labels, enrol, test = [], [], []
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    duplicates = []
    for number, fields in rows:
        if len(fields) not in (2, 3):
            raise DataError(f"{path}, line {number}: expected '<label> <enrol> <test>' or '<enrol> <test>', "
                            f"got {len(fields)} fields: {' '.join(fields)!r}")
        if len(fields) == 3 and fields[0] not in ("0", "1"):
            raise DataError(f"{path}, line {number}: the label must be 0 (different speakers) or 1 "
                            f"(same speaker), got {fields[0]!r}")
        label = int(fields[0]) if len(fields) == 3 else -1
        pair = (fields[-2], fields[-1])
        if pair in seen:
            first_line, first_label = seen[pair]
            if first_label != label:
                raise DataError(f"{path}, lines {first_line} and {number}: the trial {pair[0]} {pair[1]} "
                                f"appears with labels {first_label} and {label}; fix the list")
            duplicates.append(number)
        else:
            seen[pair] = (number, label)
        labels.append(label)
        enrol.append(pair[0])
        test.append(pair[1])
    if not labels:
        raise DataError(f"Trial list {path} has no trials; expected lines '<label> <enrol> <test>'")
    if duplicates:
        warnings.warn(f"{path}: {len(duplicates)} duplicate trial lines (first at line {duplicates[0]}); "
                      "they are scored and counted again in the EER", stacklevel=2)
    return Trials(np.asarray(labels, dtype=np.int64), enrol, test, sorted(set(enrol) | set(test)), path)


def check_files_exist(files: list[str], test_path: str, list_name: str = "the trial list") -> None:
    """Raise one error listing the first files missing under test_path and how many there are."""
    check_paths_exist([os.path.join(test_path, name) for name in files], list_name, "--test_path",
                                    test_path)
