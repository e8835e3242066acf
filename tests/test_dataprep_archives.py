"""Safe zip/tar extraction, MUSAN/RIR preparation from small real-layout archives, and list helpers."""
import hashlib
import io
import tarfile
import zipfile
from glob import glob
from pathlib import Path

import numpy as np
import pytest
import soundfile
from test_dataprep_download import server  # noqa: F401  (fixture)

import dataprep
from preparation.archives import DataprepError, extract


def wav_bytes(seconds: float, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    samples = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * 16000))
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../escaped.txt", "good/../../escaped.txt", "/tmp/escaped_abs.txt"])
def test_zip_with_escaping_member_is_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("fine.txt", b"ok")
        handle.writestr(name, b"evil")
    target = tmp_path / "out"
    with pytest.raises(DataprepError, match="outside"):
        extract(archive, target, quiet=True)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (target / "fine.txt").exists(), "a zip is checked completely before anything is written"


def test_tar_with_escaping_member_or_link_is_refused(tmp_path):
    target = tmp_path / "deep" / "out"
    make_tar(tmp_path / "evil.tar.gz", {"ok.txt": b"ok", "../../escaped.txt": b"evil"})
    with pytest.raises(DataprepError, match="outside"):
        extract(tmp_path / "evil.tar.gz", target, quiet=True)
    assert not (tmp_path / "escaped.txt").exists()
    with tarfile.open(tmp_path / "link.tar", "w") as archive:
        link = tarfile.TarInfo("innocent")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(DataprepError, match="link"):
        extract(tmp_path / "link.tar", target, quiet=True)
    assert not (target / "innocent").exists()


def test_extraction_is_rerunnable_and_repairs_truncated_files(tmp_path):
    members = {f"musan/noise/free-sound/n{i}.wav": wav_bytes(0.5, i) for i in range(3)}
    make_tar(tmp_path / "a.tar.gz", members)
    target = tmp_path / "out"
    assert extract(tmp_path / "a.tar.gz", target, quiet=True) == 3
    assert extract(tmp_path / "a.tar.gz", target, quiet=True) == 0
    broken = target / "musan/noise/free-sound/n1.wav"
    broken.write_bytes(broken.read_bytes()[:100])
    assert extract(tmp_path / "a.tar.gz", target, quiet=True) == 1
    assert broken.read_bytes() == members["musan/noise/free-sound/n1.wav"]


@pytest.mark.integration
def test_augment_prepares_musan_and_rirs_in_the_loader_layout(server, tmp_path):  # noqa: F811
    musan = {"musan/noise/free-sound/noise-free-sound-0000.wav": wav_bytes(12.0, 1),
             "musan/music/fma/music-fma-0003.wav": wav_bytes(5.0, 2),
             "musan/speech/librivox/speech-librivox-0001.wav": wav_bytes(9.0, 3),
             "musan/noise/free-sound/ANNOTATIONS": b"x"}
    make_tar(tmp_path / "musan.tar.gz", musan)
    rooms = io.BytesIO()
    with zipfile.ZipFile(rooms, "w") as handle:
        for room in ("smallroom", "mediumroom", "largeroom"):
            handle.writestr(f"RIRS_NOISES/simulated_rirs/{room}/Room001/Room001-00001.wav", wav_bytes(0.3, 4))
        handle.writestr("RIRS_NOISES/real_rirs_isotropic_noises/air_1.wav", wav_bytes(0.3, 5))
    server.files["musan.tar.gz"] = (tmp_path / "musan.tar.gz").read_bytes()
    server.files["rirs_noises.zip"] = rooms.getvalue()
    server.public.update(server.files)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "augment.txt").write_text("".join(f"{number}/{name} {hashlib.md5(server.files[name]).hexdigest()}\n"
                                               for number, name in ((28, "rirs_noises.zip"), (17, "musan.tar.gz"))))
    data = tmp_path / "data"
    flags = ["--save_path", str(data), "--lists", str(lists), "--augment", "--openslr_url",
             server.url + "/resources/", "--quiet"]
    assert dataprep.main(flags) == 0
    chunks = sorted(Path(p).relative_to(data / "musan_split").as_posix()
                    for p in glob(f"{data}/musan_split/*/*/*/*.wav"))
    assert chunks == ["music/fma/music-fma-0003/00000.wav", "noise/free-sound/noise-free-sound-0000/00000.wav",
                      "noise/free-sound/noise-free-sound-0000/00003.wav",
                      "noise/free-sound/noise-free-sound-0000/00006.wav",
                      "speech/librivox/speech-librivox-0001/00000.wav",
                      "speech/librivox/speech-librivox-0001/00003.wav"]
    second, rate = soundfile.read(data / "musan_split/noise/free-sound/noise-free-sound-0000/00003.wav", dtype="int16")
    source, _ = soundfile.read(data / "musan/noise/free-sound/noise-free-sound-0000.wav", dtype="int16")
    assert rate == 16000 and np.array_equal(second, source[48000:128000])
    rirs = sorted(Path(p).parts[-3] for p in glob(f"{data}/RIRS_NOISES/simulated_rirs/*/*/*.wav"))
    assert rirs == ["largeroom", "mediumroom", "smallroom"]
    assert not (data / "RIRS_NOISES/real_rirs_isotropic_noises").exists()
    assert dataprep.main(flags) == 0, "re-running --augment is safe"
    assert dataprep.split_musan(data / "musan", data / "musan_split", quiet=True) == 0


def test_train_list_and_trial_check(tmp_path, capsys):
    wav = tmp_path / "voxceleb2" / "dev" / "wav"
    for name in ("id00002/vidB/00001.wav", "id00001/vidA/00002.wav", "id00001/vidA/00001.wav"):
        (wav / name).parent.mkdir(parents=True, exist_ok=True)
        (wav / name).write_bytes(wav_bytes(0.1))
    assert dataprep.main(["--save_path", str(tmp_path), "--make_train_list", "--quiet"]) == 0
    assert (tmp_path / "train_list.txt").read_text().splitlines() == [
        "id00001 id00001/vidA/00001.wav", "id00001 id00001/vidA/00002.wav", "id00002 id00002/vidB/00001.wav"]
    trials = tmp_path / "trials.txt"
    trials.write_text("1 id00001/vidA/00001.wav id00001/vidA/00002.wav\n0 id00001/vidA/00001.wav id09999/x/1.wav\n")
    flags = ["--save_path", str(tmp_path), "--check_trials", str(trials), "--test_path", str(wav)]
    assert dataprep.main(flags) == 1
    out = capsys.readouterr().out
    assert "3 files, 1 missing" in out and "id09999/x/1.wav" in out
    trials.write_text("1 a.wav b.wav\n1 a.wav b.wav c.wav d.wav\n")
    assert dataprep.main(flags) == 1
    assert "trials.txt, line 2" in capsys.readouterr().err
    with pytest.raises(DataprepError, match="run --convert first"):
        dataprep.write_train_list(tmp_path / "empty", tmp_path / "list.txt")


def test_no_step_chosen_is_a_usage_error(capsys):
    assert dataprep.main(["--save_path", "unused"]) == 1
    assert "choose at least one step" in capsys.readouterr().err
