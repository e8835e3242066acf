"""MUSAN and the simulated RIRs for --augment: download (OpenSLR 17 and 28), extract, cut MUSAN into 5 s chunks."""
from __future__ import annotations

import argparse
from pathlib import Path

import soundfile
from tqdm import tqdm

from preparation.archives import DataprepError, extract, fetch_verified
from preparation.voxceleb import read_table
from runtime.atomic_files import atomic_write

OPENSLR_URL = "https://www.openslr.org/resources/"
# Every simulated room: --augment_mix original uses the small and medium ones, wespeaker all three.
RIR_ROOMS = tuple(f"RIRS_NOISES/simulated_rirs/{room}/" for room in ("smallroom", "mediumroom", "largeroom"))


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
