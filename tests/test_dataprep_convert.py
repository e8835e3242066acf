"""dataprep --convert with the real ffmpeg: layout, skipping finished files, interruption, missing ffmpeg."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dataprep
from preparation.voxceleb import wav_destination

pytestmark = pytest.mark.integration  # real CLI runs, subprocesses or servers

PROJECT = Path(dataprep.__file__).resolve().parent
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (.ci/run installs it)")


def make_m4a(folder: Path, count: int, seconds: float = 1.0) -> list[Path]:
    """`count` AAC files in the VoxCeleb2 dev layout (aac/<speaker>/<video>/<utt>.m4a), made by ffmpeg."""
    source = folder / "source.wav"
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 44100)) / 44100
    soundfile.write(source, np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], 1),
                    44100)
    first = folder / "first.m4a"
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-c:a", "aac", str(first)],
                   check=True)
    paths = []
    for index in range(count):
        path = folder / "voxceleb2/dev/aac" / f"id{index % 3:05d}" / f"vid{index % 2}" / f"{index:05d}.m4a"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first, path)
        paths.append(path)
    return paths


def converted(m4a: Path) -> Path:
    return Path(str(m4a).replace("/aac/", "/wav/")).with_suffix(".wav")


@needs_ffmpeg
def test_convert_writes_16k_mono_wav_and_skips_finished(tmp_path, capsys):
    sources = make_m4a(tmp_path, 4)
    flags = ["--save_path", str(tmp_path), "--convert", "--jobs", "2", "--quiet"]
    assert dataprep.main(flags) == 0
    for source in sources:
        info = soundfile.info(converted(source))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames - 16000) < 2000
        assert source.exists(), "the m4a files are kept"
    stamps = [converted(s).stat().st_mtime_ns for s in sources]
    capsys.readouterr()
    assert dataprep.main(flags) == 0
    assert "4 already converted" in capsys.readouterr().out
    assert stamps == [converted(s).stat().st_mtime_ns for s in sources]


@needs_ffmpeg
def test_interrupted_conversion_leaves_no_truncated_wav(tmp_path):
    sources = make_m4a(tmp_path, 24)
    command = [sys.executable, str(PROJECT / "dataprep.py"), "--save_path", str(tmp_path), "--convert", "--jobs",
               "1", "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and len(list((tmp_path / "voxceleb2").rglob("*.wav"))) < 4:
        time.sleep(0.01)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for wav in (tmp_path / "voxceleb2").rglob("*.wav"):
        assert abs(soundfile.info(wav).frames - 16000) < 2000, f"{wav} is truncated"
    done = [s for s in sources if converted(s).exists()]
    assert dataprep.main(command[2:]) == 0
    assert all(converted(s).exists() for s in sources)
    assert not list(tmp_path.rglob("*.partial")), "a rerun overwrites the leftovers of a killed ffmpeg"
    assert len(done) >= 4


@needs_ffmpeg
def test_unreadable_m4a_is_reported(tmp_path, capsys):
    bad = tmp_path / "voxceleb2/dev/aac/id00001/vid/00001.m4a"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not audio at all")
    assert dataprep.main(["--save_path", str(tmp_path), "--convert", "--quiet"]) == 1
    assert "00001.m4a" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.wav"))


def test_missing_ffmpeg_says_how_to_install(tmp_path):
    (tmp_path / "voxceleb2/dev/aac/id1/v").mkdir(parents=True)
    result = subprocess.run([sys.executable, str(PROJECT / "dataprep.py"), "--save_path", str(tmp_path), "--convert"],
                            capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "ffmpeg was not found" in result.stderr and "apt-get install ffmpeg" in result.stderr


def test_wav_destination_follows_both_layouts():
    assert wav_destination(Path("d/voxceleb2/dev/aac/id1/v/00001.m4a")) == Path("d/voxceleb2/dev/wav/id1/v/00001.wav")
    assert wav_destination(Path("d/voxceleb2/id1/v/00001.m4a")) == Path("d/voxceleb2/id1/v/00001.wav")
