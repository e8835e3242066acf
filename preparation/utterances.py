"""Train lists of the corpora dataprep prepares: '<speaker> <relative path>' lines, with an optional length floor."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
from tqdm import tqdm

from preparation.archives import DataprepError
from runtime.atomic_files import write_text

Utterance = tuple[str, str]  # (speaker, path relative to the list's root)


def seconds(path: Path) -> float:
    """Length of an audio file from its header."""
    try:
        info = soundfile.info(path)
    except RuntimeError as error:
        raise DataprepError(f"{path}: cannot read its audio header ({error}); delete or replace the file") from None
    return info.frames / info.samplerate


def drop_short(utterances: list[Utterance], root: Path, min_duration: float, jobs: int,
               quiet: bool) -> list[Utterance]:
    """The utterances at least min_duration seconds long (all of them when min_duration is 0)."""
    if min_duration <= 0:
        return utterances
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        lengths = list(tqdm(pool.map(lambda utterance: seconds(root / utterance[1]), utterances),
                            total=len(utterances), desc="durations", unit="file", disable=quiet))
    return [utterance for utterance, length in zip(utterances, lengths) if length >= min_duration]


def write_list(path: Path, utterances: list[Utterance]) -> None:
    """Write '<speaker> <path>' lines atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(f"{speaker} {relative}\n" for speaker, relative in utterances))
