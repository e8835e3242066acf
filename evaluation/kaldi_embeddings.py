"""Embeddings as a Kaldi/wespeaker folder: `embedding.ark` + `embedding.scp` (float32 vectors), `utt2spk`, `spk2utt`.

kaldiio writes and reads Kaldi's binary ark format; it is imported only here, when such a folder is used."""
from __future__ import annotations

import io
import os

import numpy as np

from audio.file_lists import is_wav_scp, read_list_lines
from audio.kaldi_data import read_utt2spk, read_wav_scp
from audio.reading import AUDIO_EXTENSIONS
from runtime.atomic_files import atomic_write, write_text
from runtime.errors import DataError, MissingFileError

KALDI_FOLDER_FILES = ("embedding.ark", "embedding.scp", "utt2spk", "spk2utt")  # what write_kaldi_embeddings writes


def _check_keys(keys: list[str]) -> None:
    """Kaldi keys are one word each: refuse a key with white space (e.g. a file name with a space)."""
    bad = [key for key in keys if not key or len(key.split()) != 1]
    if bad:
        raise DataError(f"{len(bad)} utterance ids contain white space, which Kaldi files cannot hold (first: "
                        f"{bad[0]!r}); rename the files or embed from a wav.scp with one-word ids")


def write_kaldi_embeddings(folder: str, vectors: dict[str, np.ndarray], speakers: dict[str, str] | None = None
                           ) -> None:
    """Write float32 vectors keyed by utterance id (sorted, as Kaldi expects), and utt2spk/spk2utt when the
    speakers are known; each file is written under a temporary name, then renamed."""
    import kaldiio

    keys = sorted(vectors)
    _check_keys(keys)
    os.makedirs(folder, exist_ok=True)
    ark = os.path.abspath(os.path.join(folder, "embedding.ark"))
    scp = io.StringIO()
    with atomic_write(ark) as temporary:
        kaldiio.save_ark(str(temporary), {key: np.asarray(vectors[key], dtype=np.float32) for key in keys}, scp=scp)
    lines = [line.rsplit(":", 1) for line in scp.getvalue().splitlines()]  # '<key> <temporary ark>:<offset>'
    write_text(os.path.join(folder, "embedding.scp"),
               "".join(f"{line[0].split()[0]} {ark}:{line[1]}\n" for line in lines))
    if speakers is not None:
        write_text(os.path.join(folder, "utt2spk"), "".join(f"{key} {speakers[key]}\n" for key in keys))
        by_speaker: dict[str, list[str]] = {}
        for key in keys:
            by_speaker.setdefault(speakers[key], []).append(key)
        write_text(os.path.join(folder, "spk2utt"),
                   "".join(f"{speaker} {' '.join(by_speaker[speaker])}\n" for speaker in sorted(by_speaker)))


def read_kaldi_embeddings(scp: str) -> dict[str, np.ndarray]:
    """Utterance id -> vector of an `embedding.scp` (or any scp of float vectors), in the scp's order."""
    import kaldiio

    try:
        return {key: np.asarray(value) for key, value in kaldiio.load_scp(scp).items()}
    except FileNotFoundError as error:
        raise MissingFileError(f"Cannot read the embeddings of {scp}: {error.filename} does not exist") from None


def utterance_names(source: str, files: list[str]) -> tuple[dict[str, str], dict[str, str] | None]:
    """(file -> utterance id, utterance id -> speaker, or None when unknown) of the files embedded from `source`.

    A wav.scp gives its ids (and the speakers of the utt2spk beside it, when there is one); otherwise the id is
    the file's name as given, and a train-style list (`<speaker> <path>` on every line) gives the speakers."""
    if is_wav_scp(source):
        ids = {path: utterance for utterance, path in read_wav_scp(source).items()}
        has_speakers = os.path.isfile(os.path.join(os.path.dirname(source), "utt2spk"))
        return ids, {utt: spk for _, utt, spk in read_utt2spk(source)} if has_speakers else None
    ids = {name: name for name in files}
    if not os.path.isfile(source) or source.lower().endswith(AUDIO_EXTENSIONS):
        return ids, None
    rows = [line.split() for line in read_list_lines(source, "list of paths") if line.strip()]
    return ids, {row[1]: row[0] for row in rows} if all(len(row) == 2 for row in rows) else None
