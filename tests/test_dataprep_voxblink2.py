"""dataprep --corpus voxblink2 with the real ffmpeg: cropped utterances and whole downloads cut by timestamp
files, resumed conversion, the train lists (alone and with a VoxCeleb2 list), and the errors for bad input."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dataprep

pytestmark = [pytest.mark.integration,  # real CLI runs and ffmpeg
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)")]

HEADER = "Identity  : id000000\nReference : vidA\nOffset    : 0\nFV Conf   : 10.0\nASD Conf  : 5.0\n\nFRAME\tX\tY\tW\tH\n"


def m4a(path: Path, seconds: float) -> None:
    """A stereo 44.1 kHz AAC file made by ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 44100)) / 44100
    source = path.with_suffix(".source.wav")
    soundfile.write(source, np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], 1), 44100)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-c:a", "aac", str(path)],
                   check=True)
    source.unlink()


def timestamps(path: Path, first: int, last: int) -> None:
    """A timestamp file: the header, then a row per frame from first to last (25 a second)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{frame:06d}\t10\t20\t100\t100\n" for frame in range(first, last + 1)))


def run(tmp_path: Path, *flags: str) -> int:
    return dataprep.main(["--save_path", str(tmp_path / "data"), "--corpus", "voxblink2", "--quiet", "--jobs", "2",
                          *flags])


def frames(path: Path) -> int:
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    return info.frames


@pytest.fixture
def cropped(tmp_path):
    """Cropped utterances <speaker>/<video>/<utt>.<ext> as the authors' cropper writes them (m4a and wav)."""
    root = tmp_path / "vb2"
    m4a(root / "id000000/vidA/00000.m4a", 1.0)
    shutil.copy(root / "id000000/vidA/00000.m4a", root / "id000000/vidA/00001.m4a")
    m4a(root / "id000001/vidB/00000.m4a", 2.5)
    (root / "id000001/vidC").mkdir()
    soundfile.write(root / "id000001/vidC/00003.wav", np.zeros(8000), 16000)
    return root


def test_cropped_utterances_convert_resume_and_list(tmp_path, cropped, capsys):
    wav = tmp_path / "data/voxblink2/wav"
    assert run(tmp_path, "--convert", "--voxblink2_path", str(cropped), "--make_train_list") == 0
    outputs = sorted(path.relative_to(wav).as_posix() for path in wav.rglob("*.wav"))
    assert outputs == ["id000000/vidA/00000.wav", "id000000/vidA/00001.wav", "id000001/vidB/00000.wav",
                       "id000001/vidC/00003.wav"]
    assert abs(frames(wav / "id000001/vidB/00000.wav") - 40000) < 2000
    assert (tmp_path / "data/voxblink2_train_list.txt").read_text().splitlines() == [
        f"{name.split('/')[0]} {name}" for name in outputs]
    assert f"--train_path {wav}" in capsys.readouterr().out

    # An interrupted run: one wav never finished (only its hidden partial file is there); the others are done.
    (wav / "id000000/vidA/00001.wav").unlink()
    (wav / "id000000/vidA/.00001.wav.partial").write_bytes(b"RIFF half a wav")
    stamps = {path: path.stat().st_mtime_ns for path in wav.rglob("*.wav")}
    assert run(tmp_path, "--convert", "--voxblink2_path", str(cropped)) == 0
    assert "4 VoxBlink2 utterances, 3 already converted" in capsys.readouterr().out
    assert abs(frames(wav / "id000000/vidA/00001.wav") - 16000) < 2000, "the unfinished file is redone"
    assert not (wav / "id000000/vidA/.00001.wav.partial").exists()
    assert stamps == {path: path.stat().st_mtime_ns for path in stamps}, "finished files are not redone"


def test_whole_downloads_are_cut_by_timestamps(tmp_path, capsys):
    downloads, meta = tmp_path / "downloads", tmp_path / "meta"
    m4a(downloads / "id000000/vidA.m4a", 4.0)
    timestamps(meta / "id000000/vidA/00000.txt", 25, 75)  # 1 s to 3 s
    timestamps(meta / "id000000/vidA/00001.txt", 0, 25)
    timestamps(meta / "id000000/gone/00000.txt", 0, 25)  # a video that could not be downloaded
    assert run(tmp_path, "--convert", "--voxblink2_path", str(downloads), "--voxblink2_meta", str(meta)) == 0
    wav = tmp_path / "data/voxblink2/wav/id000000/vidA"
    assert abs(frames(wav / "00000.wav") - 32000) < 800
    assert abs(frames(wav / "00001.wav") - 16000) < 800
    assert "1 videos with timestamps are not in" in capsys.readouterr().out


def test_malformed_timestamp_line_names_file_and_line(tmp_path, capsys):
    downloads, meta = tmp_path / "downloads", tmp_path / "meta"
    m4a(downloads / "id000000/vidA.m4a", 2.0)
    timestamps(meta / "id000000/vidA/00000.txt", 0, 25)
    bad = meta / "id000000/vidA/00001.txt"
    timestamps(bad, 0, 25)
    bad.write_text(bad.read_text().replace("000010\t", "00001O\t"))
    assert run(tmp_path, "--convert", "--voxblink2_path", str(downloads), "--voxblink2_meta", str(meta)) == 1
    error = capsys.readouterr().err
    assert f"{bad}, line 18: expected '<frame> <x> <y> <w> <h>'" in error and "1 of 2 utterances failed" in error
    assert (tmp_path / "data/voxblink2/wav/id000000/vidA/00000.wav").is_file(), "the good utterance is converted"
    assert not (tmp_path / "data/voxblink2/wav/id000000/vidA/00001.wav").exists()


def test_combined_list_with_voxceleb2(tmp_path, cropped, capsys):
    vox2 = tmp_path / "data/voxceleb2/dev/wav"
    (vox2 / "id00012/abc").mkdir(parents=True)
    soundfile.write(vox2 / "id00012/abc/00001.wav", np.zeros(48000), 16000)
    (tmp_path / "data/train_list.txt").write_text("id00012 id00012/abc/00001.wav\n")
    assert run(tmp_path, "--convert", "--voxblink2_path", str(cropped), "--make_train_list", "--min_duration", "1.5",
               "--combine_list", str(tmp_path / "data/train_list.txt")) == 0
    out = capsys.readouterr().out
    assert "3 under 1.5 s left out" in out
    combined = (tmp_path / "data/voxblink2_combined_train_list.txt").read_text().splitlines()
    assert combined == ["id000001 voxblink2/wav/id000001/vidB/00000.wav", "id00012 voxceleb2/dev/wav/id00012/abc/00001.wav"]
    root = tmp_path / "data"
    assert f"--train_path {root}" in out
    assert all((root / line.split()[1]).is_file() for line in combined)


def test_speaker_in_both_lists_is_an_error(tmp_path, cropped, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/other.txt").write_text("id000000 x.wav\n")
    assert run(tmp_path, "--convert", "--voxblink2_path", str(cropped), "--make_train_list",
               "--combine_list", str(tmp_path / "data/other.txt")) == 1
    assert "Speaker id000000 is in both VoxBlink2 and --combine_list" in capsys.readouterr().err
    assert not (tmp_path / "data/voxblink2_combined_train_list.txt").exists()


@pytest.mark.parametrize("flags, message", [
    (["--convert"], "needs --voxblink2_path DIR"),
    (["--convert", "--voxblink2_path", "/nonexistent/vb2"], "--voxblink2_path /nonexistent/vb2 is not a folder"),
    (["--make_train_list"], "run --convert first"),
    (["--download"], "github.com/VoxBlink2/ScriptsForVoxBlink2"),
    (["--extract"], "has no --extract"),
])
def test_bad_input_says_what_to_do(tmp_path, capsys, flags, message):
    assert run(tmp_path, *flags) == 1
    assert message in capsys.readouterr().err


def test_whole_downloads_without_timestamps_are_explained(tmp_path, capsys):
    m4a(tmp_path / "downloads/id000000/vidA.m4a", 0.5)
    assert run(tmp_path, "--convert", "--voxblink2_path", str(tmp_path / "downloads")) == 1
    assert "--voxblink2_meta" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "data/voxblink2/wav")
