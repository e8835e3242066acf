"""Reading and cropping audio: offsets, wrap padding, formats, sample rates and bad inputs."""
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import soundfile

from audio import reading as AudioReader
from audio.reading import AudioReadError, crop_length, load_crops
from DatasetLoader import loadWAV, test_dataset_loader

RAMP_SCALE = 2.0 ** 17  # sample i holds i / 2**17, exactly representable in float32


def write_ramp(path, length, rate=16000):
    soundfile.write(path, (np.arange(length) / RAMP_SCALE).astype(np.float32), rate, subtype="FLOAT")
    return str(path)


def offsets(crops):
    return [int(round(row[0] * RAMP_SCALE)) for row in crops]


def test_crop_length():
    assert [crop_length(frames) for frames in (200, 300, 400)] == [32240, 48240, 64240]


def test_eval_crop_offsets_hand_computed(tmp_path):
    path = write_ramp(tmp_path / "ramp.wav", 50000)
    crops = loadWAV(path, 200, evalmode=True, num_eval=10)
    assert crops.shape == (10, 32240)
    # linspace(0, 50000 - 32240 = 17760, 10) truncated
    assert offsets(crops) == [0, 1973, 3946, 5920, 7893, 9866, 11840, 13813, 15786, 17760]
    np.testing.assert_array_equal(crops[3] * RAMP_SCALE, np.arange(5920, 5920 + 32240))


def test_train_crop_offset_hand_computed(tmp_path):
    path = write_ramp(tmp_path / "ramp.wav", 50000)
    assert offsets(load_crops(path, 200, evalmode=False, draw=0.5)) == [8880]
    assert offsets(load_crops(path, 200, evalmode=False, draw=0.0)) == [0]
    assert offsets(load_crops(path, 200, evalmode=False, draw=0.99999)) == [17759]
    assert loadWAV(path, 200, evalmode=False).shape == (1, 32240)


def test_whole_file_when_eval_frames_zero(tmp_path):
    path = write_ramp(tmp_path / "ramp.wav", 20000)
    crops = loadWAV(path, 0, evalmode=True)
    assert crops.shape == (1, 20000)
    np.testing.assert_array_equal(crops[0] * RAMP_SCALE, np.arange(20000))


def test_wrap_padding_of_short_file(tmp_path):
    path = write_ramp(tmp_path / "short.wav", 1000)
    expected = np.arange(1840) % 1000  # max_frames 10 -> 1840 samples, padded to 1841 by repeating
    crops = loadWAV(path, 10, evalmode=True, num_eval=10)
    assert crops.shape == (10, 1840)
    assert offsets(crops) == [0] * 9 + [1]  # linspace(0, 1841 - 1840, 10)
    np.testing.assert_array_equal(crops[0] * RAMP_SCALE, expected)
    train = load_crops(path, 10, evalmode=False, draw=0.9)
    np.testing.assert_array_equal(train[0] * RAMP_SCALE, expected)


def test_stereo_is_averaged_to_mono(tmp_path):
    rng = np.random.default_rng(0)
    left, right = rng.uniform(-0.5, 0.5, (2, 40000)).astype(np.float32)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    crops = load_crops(str(tmp_path / "stereo.wav"), 200, evalmode=False, draw=0.5)
    start = int(0.5 * (40000 - 32240))
    np.testing.assert_allclose(crops[0], (left + right)[start:start + 32240] / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_are_resampled(tmp_path, monkeypatch, rate):
    monkeypatch.setattr(AudioReader, "_warned_resample", False)
    seconds = 2.0
    time = np.arange(int(seconds * rate)) / rate
    soundfile.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * time), rate)
    soundfile.write(tmp_path / "tone2.wav", 0.5 * np.sin(2 * np.pi * 440 * time), rate)
    stats = AudioReader.LoaderStats()
    with pytest.warns(UserWarning, match=f"tone.wav is sampled at {rate} Hz"):
        whole = load_crops(str(tmp_path / "tone.wav"), 0, stats=stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is shown once
        load_crops(str(tmp_path / "tone2.wav"), 0, stats=stats)
    assert stats.resampled == 2
    assert stats.summary() == "2 file(s) at other sample rates resampled to 16000 Hz"
    assert whole.shape == (1, 32000)
    spectrum = np.abs(np.fft.rfft(whole[0]))
    assert abs(np.argmax(spectrum) * 16000 / 32000 - 440) <= 1


@pytest.mark.parametrize("subtype,channels,wav_format", [
    ("PCM_16", 1, "WAV"), ("PCM_16", 2, "WAV"), ("FLOAT", 1, "WAV"), ("PCM_16", 1, "WAVEX"), ("PCM_24", 1, "WAV"),
    ("PCM_U8", 1, "WAV"), ("DOUBLE", 2, "WAVEX")])
def test_wav_variants_read_like_soundfile(tmp_path, subtype, channels, wav_format):
    audio = np.random.default_rng(2).uniform(-0.9, 0.9, (40000, channels))
    path = str(tmp_path / "a.wav")
    soundfile.write(path, audio, 16000, subtype=subtype, format=wav_format)
    reference = soundfile.read(path, dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
    start = int(0.3 * (40000 - 32240))
    np.testing.assert_array_equal(load_crops(path, 200, evalmode=False, draw=0.3)[0], reference[start:start + 32240])
    source = AudioReader._open_source(path, None)  # PCM-16 and float32 take the decoder-free path
    source.close()
    assert isinstance(source, AudioReader._WavSource) == (subtype in ("PCM_16", "FLOAT"))


def test_wav_with_chunk_before_data(tmp_path):
    audio = (np.random.default_rng(3).uniform(-0.5, 0.5, 20000) * 32767).astype("<i2")
    info = b"INFOISFT" + (14).to_bytes(4, "little") + b"made by a test"
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little") \
        + (32000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    body = (b"WAVE" + b"fmt " + (16).to_bytes(4, "little") + fmt + b"LIST" + len(info).to_bytes(4, "little") + info
            + b"data" + (audio.nbytes).to_bytes(4, "little") + audio.tobytes())
    (tmp_path / "list.wav").write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    whole = loadWAV(str(tmp_path / "list.wav"), 0)
    np.testing.assert_array_equal(whole[0], audio.astype(np.float32) / 32768)
    np.testing.assert_array_equal(whole, soundfile.read(str(tmp_path / "list.wav"), dtype="float32")[0][None])


def test_flac_reads_like_wav(tmp_path):
    audio = (np.random.default_rng(1).uniform(-0.5, 0.5, 40000) * 32767).astype(np.int16)
    soundfile.write(tmp_path / "a.wav", audio, 16000)
    soundfile.write(tmp_path / "a.flac", audio, 16000)
    np.testing.assert_array_equal(loadWAV(str(tmp_path / "a.wav"), 200), loadWAV(str(tmp_path / "a.flac"), 200))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (.ci/run installs it)")
def test_m4a_is_decoded_with_ffmpeg(tmp_path):
    time = np.arange(48000) / 16000
    soundfile.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * time), 16000)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(tmp_path / "tone.wav"), "-c:a", "aac",
                    str(tmp_path / "tone.m4a")], check=True)
    whole = loadWAV(str(tmp_path / "tone.m4a"), 0)
    assert abs(whole.shape[1] - 48000) < 2048  # the AAC encoder adds priming samples
    spectrum = np.abs(np.fft.rfft(whole[0]))
    assert abs(np.argmax(spectrum) * 16000 / whole.shape[1] - 440) <= 1
    assert loadWAV(str(tmp_path / "tone.m4a"), 200, num_eval=5).shape == (5, 32240)


def test_m4a_without_ffmpeg_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.m4a").write_bytes(b"\0" * 100)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AudioReadError, match=r"a\.m4a.*needs ffmpeg.*apt-get install ffmpeg"):
        loadWAV(str(tmp_path / "a.m4a"), 200)


@pytest.mark.parametrize("name,content", [
    ("empty.wav", None), ("zero_bytes.wav", b""), ("text.wav", b"this is not audio\n" * 50)])
def test_unreadable_files_name_the_file(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    else:
        path.write_bytes(content)
    with pytest.raises(AudioReadError, match=name):
        loadWAV(str(path), 200)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(AudioReadError, match="nothere.wav"):
        loadWAV(str(tmp_path / "nothere.wav"), 200)


def test_truncated_flac_is_an_error(tmp_path):
    path = tmp_path / "cut.flac"
    soundfile.write(path, (np.random.default_rng(0).uniform(-0.5, 0.5, 50000) * 32767).astype(np.int16), 16000)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(AudioReadError, match="cut.flac"):
        loadWAV(str(path), 200)


def test_test_dataset_items_and_missing_files(tmp_path):
    write_ramp(tmp_path / "a.wav", 50000)
    write_ramp(tmp_path / "b.wav", 20000)
    dataset = test_dataset_loader(["a.wav", "b.wav"], str(tmp_path), eval_frames=300, num_eval=10)
    audio, name = dataset[1]
    assert name == "b.wav" and audio.shape == (10, 48240) and audio.dtype.is_floating_point
    whole = test_dataset_loader(["a.wav"], str(tmp_path), eval_frames=0, num_eval=10)
    assert whole[0][0].shape == (1, 50000)
    with pytest.raises(FileNotFoundError, match=r"2 of 3 files.*--test_path.*\(first: \S*x\.wav, \S*y\.wav\)"):
        test_dataset_loader(["a.wav", "x.wav", "y.wav"], str(tmp_path), eval_frames=300, num_eval=10)
