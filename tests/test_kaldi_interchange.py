"""Kaldi interchange: wav.scp/utt2spk/trials read as the original lists, ark/scp embeddings, one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT

import embedSpeaker
from audio.kaldi_data import read_speaker_list
from evaluation.kaldi_embeddings import read_kaldi_embeddings, write_kaldi_embeddings
from evaluation.trials import read_trials
from runtime.errors import DataError, MissingFileError
from SpeakerNet import SpeakerNet


def utterance_id(relative: str) -> str:
    return relative.replace("/", "-").removesuffix(".wav")


def kaldi_folder(corpus: dict, tmp_path: Path) -> dict:
    """The tiny corpus as Kaldi data folders: train/ with absolute paths, test/ with paths relative to test/."""
    train = tmp_path / "kaldi" / "train"
    train.mkdir(parents=True)
    rows = [line.split() for line in Path(corpus["train_list"]).read_text().splitlines()]
    (train / "wav.scp").write_text("".join(f"{utterance_id(path)} {corpus['train_path']}/{path}\n"
                                           for _, path in rows))
    (train / "utt2spk").write_text("".join(f"{utterance_id(path)} {speaker}\n" for speaker, path in rows))
    test = tmp_path / "kaldi" / "test"
    test.mkdir()
    trials = [line.split() for line in Path(corpus["test_list"]).read_text().splitlines()]
    files = sorted({name for trial in trials for name in trial[1:]})
    (test / "wav.scp").write_text("".join(f"{utterance_id(name)} "
                                          f"{os.path.relpath(os.path.join(corpus['test_path'], name), test)}\n"
                                          for name in files))
    kaldi_trials = tmp_path / "kaldi" / "trials"
    kaldi_trials.write_text("".join(f"{utterance_id(enrol)} {utterance_id(other)} "
                                    f"{'target' if label == '1' else 'nontarget'}\n" for label, enrol, other in trials))
    return {"train_scp": str(train / "wav.scp"), "test_scp": str(test / "wav.scp"), "trials": str(kaldi_trials)}


@pytest.fixture(scope="module")
def kaldi(tiny_corpus, tmp_path_factory) -> dict:
    return kaldi_folder(tiny_corpus, tmp_path_factory.mktemp("kaldi"))


def test_wav_scp_train_list_has_the_original_semantics(tiny_corpus, kaldi):
    original = read_speaker_list(tiny_corpus["train_list"], tiny_corpus["train_path"])
    assert read_speaker_list(kaldi["train_scp"], "ignored") == original
    assert len(original[0]) == 24


def test_kaldi_trials_read_as_the_original_list(tiny_corpus, kaldi):
    original = read_trials(tiny_corpus["test_list"])
    for test_path in (kaldi["test_scp"], os.path.dirname(kaldi["test_scp"])):
        converted = read_trials(kaldi["trials"], test_path)
        assert converted.labels.tolist() == original.labels.tolist()
        for paths, names in ((converted.enrol, original.enrol), (converted.test, original.test)):
            assert [os.path.realpath(p) for p in paths] == [os.path.realpath(os.path.join(tiny_corpus["test_path"], n))
                                                            for n in names]


def test_ark_scp_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {f"spk{i % 3}-utt{i}": rng.standard_normal(192).astype(np.float32) for i in range(7)}
    speakers = {key: key.split("-")[0] for key in vectors}
    write_kaldi_embeddings(str(tmp_path / "out"), vectors, speakers)
    read = read_kaldi_embeddings(str(tmp_path / "out" / "embedding.scp"))
    assert list(read) == sorted(vectors)
    for key, value in vectors.items():
        assert read[key].dtype == np.float32 and np.array_equal(read[key], value)
    assert (tmp_path / "out" / "utt2spk").read_text().splitlines()[:2] == ["spk0-utt0 spk0", "spk0-utt3 spk0"]
    assert (tmp_path / "out" / "spk2utt").read_text().splitlines() == [
        "spk0 spk0-utt0 spk0-utt3 spk0-utt6", "spk1 spk1-utt1 spk1-utt4", "spk2 spk2-utt2 spk2-utt5"]
    assert not [name for name in os.listdir(tmp_path / "out") if name.endswith(".partial")]
    with pytest.raises(MissingFileError, match="Cannot read the embeddings of .*none.scp"):
        read_kaldi_embeddings(str(tmp_path / "none.scp"))
    with pytest.raises(DataError, match="contain white space"):
        write_kaldi_embeddings(str(tmp_path / "bad"), {"a b": np.zeros(2, dtype=np.float32)})


@pytest.mark.parametrize("wav_scp, utt2spk, error, message", [
    ("a x.wav\n", None, MissingFileError, r"has no utt2spk beside it"),
    ("a x.wav\n", "a s1\nb s2\n", DataError, r"utt2spk, line 2: utterance b is not in .*wav.scp"),
    ("a x.wav\nb\n", "a s1\n", DataError, r"wav.scp, line 2: expected '<utterance-id> <value>'"),
    ("a x.wav\nb sox y.wav -t wav - |\n", "a s1\nb s1\n", DataError, r"wav.scp, line 2: b is a piped command"),
    ("a x.wav\nb y.wav\n", "a s1\n", DataError, r"1 utterances of .*wav.scp have no speaker"),
])
def test_bad_kaldi_train_folders_name_file_and_line(tmp_path, wav_scp, utt2spk, error, message):
    (tmp_path / "wav.scp").write_text(wav_scp)
    if utt2spk is not None:
        (tmp_path / "utt2spk").write_text(utt2spk)
    with pytest.raises(error, match=message):
        read_speaker_list(str(tmp_path / "wav.scp"), "")


@pytest.mark.parametrize("trials, message", [
    ("a b target\na c maybe\n", r"trials, line 2: expected '<enrol-utt> <test-utt> target\|nontarget'"),
    ("a b target\na z nontarget\n", r"trials, line 2: utterance z is not in the wav.scp"),
])
def test_bad_kaldi_trials_name_file_and_line(tmp_path, trials, message):
    (tmp_path / "wav.scp").write_text("a a.wav\nb b.wav\nc c.wav\n")
    (tmp_path / "trials").write_text(trials)
    with pytest.raises(DataError, match=message):
        read_trials(str(tmp_path / "trials"), str(tmp_path))
    with pytest.raises(MissingFileError, match="--test_path must be a wav.scp"):
        read_trials(str(tmp_path / "trials"), str(tmp_path / "elsewhere"))


def train_and_evaluate(corpus: dict, save_path: Path, *lists: str) -> subprocess.CompletedProcess:
    """One tiny epoch of training with evaluation, as the CLI runs it."""
    argv = ["--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nPerSpeaker", "2", "--batch_size", "3",
            "--max_frames", "40", "--eval_frames", "60", "--num_eval", "2", "--nOut", "32", "--log_input", "true",
            "--nDataLoaderThread", "0", "--test_interval", "1", "--max_epoch", "1", "--device", "cpu",
            "--save_path", str(save_path), *lists]
    return subprocess.run([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)


@pytest.mark.integration
def test_training_and_evaluation_on_kaldi_folders_match_the_original_lists(tiny_corpus, kaldi, tmp_path):
    original = train_and_evaluate(tiny_corpus, tmp_path / "lists", "--train_list", tiny_corpus["train_list"],
                                  "--train_path", tiny_corpus["train_path"], "--test_list", tiny_corpus["test_list"],
                                  "--test_path", tiny_corpus["test_path"])
    converted = train_and_evaluate(tiny_corpus, tmp_path / "kaldi", "--train_list", kaldi["train_scp"],
                                   "--test_list", kaldi["trials"], "--test_path", kaldi["test_scp"])
    assert original.returncode == 0 and converted.returncode == 0, converted.stderr[-2000:]
    logs = [(path / "result" / "scores.txt").read_text() for path in (tmp_path / "lists", tmp_path / "kaldi")]
    loss = [float(re.search(r"TLOSS (-?[\d.]+)", log).group(1)) for log in logs]
    eer = [float(re.search(r"VEER ([\d.]+)", log).group(1)) for log in logs]
    assert loss[1] == pytest.approx(loss[0], abs=1e-5)
    assert eer[1] == pytest.approx(eer[0], abs=1e-4)


@pytest.mark.integration
def test_bad_kaldi_input_stops_with_one_line(tiny_corpus, tmp_path):
    (tmp_path / "wav.scp").write_text(f"u1 {tiny_corpus['train_path']}/id00000/sess0/00000.wav\n")
    result = train_and_evaluate(tiny_corpus, tmp_path / "run", "--train_list", str(tmp_path / "wav.scp"),
                                "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"])
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "has no utt2spk beside it" in result.stderr


@pytest.mark.integration
def test_embed_writes_a_kaldi_folder_keyed_by_utterance(tiny_corpus, kaldi, tmp_path):
    torch.manual_seed(3)
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                     log_input=True, encoder_type="SAP", n_mels=40)
    checkpoint = str(tmp_path / "model000000001.model")
    torch.save(net.state_dict(), checkpoint)
    flags = ["--initial_model", checkpoint, "--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "32",
             "--log_input", "true", "--eval_frames", "50", "--num_eval", "2"]
    assert embedSpeaker.main(["embed", kaldi["train_scp"], "--kaldi_dir", str(tmp_path / "scp"), *flags]) == 0
    assert embedSpeaker.main(["embed", tiny_corpus["train_list"], "--root", tiny_corpus["train_path"], "--kaldi_dir",
                              str(tmp_path / "list"), "--output", str(tmp_path / "list.npz"), "--average",
                              *flags]) == 0
    by_utterance = read_kaldi_embeddings(str(tmp_path / "scp" / "embedding.scp"))
    by_path = read_kaldi_embeddings(str(tmp_path / "list" / "embedding.scp"))
    npz = np.load(tmp_path / "list.npz")
    assert len(by_utterance) == len(by_path) == 24
    for path, vector in by_path.items():
        assert vector.shape == (32,) and vector.dtype == np.float32
        np.testing.assert_allclose(by_utterance[utterance_id(path)], vector, atol=1e-5)
        np.testing.assert_array_equal(npz[path], vector)
    utt2spk = (tmp_path / "scp" / "utt2spk").read_text().splitlines()
    assert utt2spk[0] == "id00000-sess0-00000 id00000" and len(utt2spk) == 24
    assert (tmp_path / "list" / "spk2utt").read_text().splitlines()[5].split()[0] == "id00005"
