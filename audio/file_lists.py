"""Lists of audio files: reading list files, and checking at start-up that the files they name exist."""
from __future__ import annotations

import codecs
import collections
import os

from tqdm import tqdm

from runtime.errors import DataError, MissingFileError


def read_list_lines(path: str, what: str, flag: str = "") -> list[str]:
    """The lines of a list file (UTF-8, an optional byte-order mark dropped); errors name the file, the line and
    the caller's flag (if any)."""
    check = f"; check {flag}" if flag else ""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise MissingFileError(f"Cannot read {what} {path}: it does not exist{check}") from None
    except IsADirectoryError:
        raise DataError(f"Cannot read {what} {path}: it is a folder{check}") from None
    except OSError as error:
        raise DataError(f"Cannot read {what} {path}: {error.strerror}{check}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line, column = line_and_column(data[:error.start].decode("utf-8"))
        raise DataError(f"{path} line {line} is not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); "
                        f"save the {what} as UTF-8{check}") from None


def line_and_column(text: str) -> tuple[int, int]:
    """(line, column), from 1, of the character that would follow `text` (lines as str.splitlines counts them)."""
    lines = (text + "x").splitlines()
    return len(lines), len(lines[-1])


def read_train_list(train_list: str, train_path: str, flag: str = "--train_list") -> tuple[list[str], list[str]]:
    """Speaker ids and full paths from `<speaker_id> <relative_path>` lines (blank lines skipped)."""
    speakers, paths = [], []
    for number, line in enumerate(read_list_lines(train_list, "train list", flag), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{train_list} line {number}: expected '<speaker_id> <relative_path>', "
                            f"got {line.strip()!r}")
        speakers.append(fields[0])
        paths.append(os.path.join(train_path, fields[1]))
    if not paths:
        raise DataError(f"{train_list} holds no '<speaker_id> <relative_path>' lines")
    return speakers, paths


def missing_files(paths: list[str], desc: str = "checking files") -> list[str]:
    """The paths that do not exist, in list order; lists each folder once instead of a stat per file (with a
    progress bar when there are many folders)."""
    by_folder = collections.defaultdict(list)
    for path in paths:
        by_folder[os.path.dirname(path)].append(os.path.basename(path))
    missing = set()
    for folder, names in tqdm(by_folder.items(), desc=desc, unit="folder", leave=False,
                                disable=len(by_folder) < 50):
        try:
            present = set(os.listdir(folder or "."))
        except OSError:
            present = set()
        candidates = (os.path.join(folder, name) for name in names if name not in present)
        missing.update(path for path in candidates if not os.path.exists(path))
    return [path for path in paths if path in missing]


def check_files_exist(paths: list[str], list_name: str, root_flag: str = "", root: str = "") -> None:
    """Raise one error listing the first missing files and their count. `root_flag` is the caller's flag that gives
    the root of the list's relative paths; without one, or for a wav.scp (which holds its own paths), the paths
    are named as they are."""
    missing = missing_files(paths, f"checking {os.path.basename(list_name)}")
    if not missing:
        return
    first = f"(first: {', '.join(missing[:3])})"
    if is_wav_scp(list_name):
        raise MissingFileError(f"{len(missing)} of {len(paths)} files named in {list_name} do not exist {first}; a "
                               "wav.scp holds each file's path (a relative one is taken from its folder): fix them")
    if not root_flag:
        raise MissingFileError(f"{len(missing)} of {len(paths)} files named in {list_name} do not exist {first}")
    raise MissingFileError(f"{len(missing)} of {len(paths)} files named in {list_name} do not exist under {root_flag} "
                           f"{root} {first}; fix {root_flag} (paths are {root_flag}/<relative path>) or the list")


def is_wav_scp(path: str) -> bool:
    """Whether a list path names a Kaldi `wav.scp` (by its file name, as Kaldi's tools do)."""
    return os.path.basename(path) == "wav.scp"
