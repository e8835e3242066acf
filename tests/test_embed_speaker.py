"""embedSpeaker: embeddings of a file, folder and list; pair verification matching --eval; bad input."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import PROJECT_ROOT

import embedSpeaker
from evaluation import calibration
from SpeakerNet import SpeakerNet

pytestmark = pytest.mark.integration  # real CLI runs, subprocesses or servers

MODEL_FLAGS = ["--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "32", "--log_input", "true",
               "--eval_frames", "50", "--num_eval", "3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A bare state_dict, as the original saves it."""
    torch.manual_seed(3)
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                     log_input=True, encoder_type="SAP", n_mels=40)
    path = tmp_path_factory.mktemp("ckpt") / "model000000001.model"
    torch.save(net.state_dict(), path)
    return str(path)


def test_embed_file_folder_and_list(checkpoint, tiny_corpus, tmp_path, capsys):
    test_path = tiny_corpus["test_path"]
    one = tmp_path / "new" / "one.npy"
    embedSpeaker.main(["embed", f"{test_path}/id00000/sess0/00000.wav", "--output", str(one),
                       "--initial_model", checkpoint, *MODEL_FLAGS])
    assert np.load(one).shape == (3, 32) and np.load(one).dtype == np.float32
    folder = tmp_path / "folder.npz"
    embedSpeaker.main(["embed", test_path, "--output", str(folder), "--initial_model", checkpoint, *MODEL_FLAGS])
    stored = np.load(folder)
    assert sorted(stored.keys()) == sorted(f"id0000{s}/sess{u}/0000{u}.wav" for s in range(3) for u in range(2))
    np.testing.assert_allclose(stored["id00000/sess0/00000.wav"], np.load(one), rtol=1e-4, atol=1e-5)
    path_list = tmp_path / "paths.txt"
    path_list.write_text("id00001/sess0/00000.wav\nid00002/sess1/00001.wav\n")
    listed = tmp_path / "listed.npz"
    embedSpeaker.main(["embed", str(path_list), "--root", test_path, "--output", str(listed), "--average",
                       "--initial_model", checkpoint, *MODEL_FLAGS])
    vectors = np.load(listed)
    assert sorted(vectors.keys()) == ["id00001/sess0/00000.wav", "id00002/sess1/00001.wav"]
    assert vectors["id00001/sess0/00000.wav"].shape == (32,)
    assert np.linalg.norm(vectors["id00001/sess0/00000.wav"]) == pytest.approx(1.0, abs=1e-5)
    assert "Saved 2 embeddings of shape [32]" in capsys.readouterr().out


def test_verify_matches_eval_score_file(checkpoint, tiny_corpus, tmp_path, capsys):
    score_file = tmp_path / "scores.txt"
    subprocess.run([sys.executable, "trainSpeakerNet.py", "--eval", "--initial_model", checkpoint, *MODEL_FLAGS,
                    "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                    "--score_file", str(score_file), "--save_path", str(tmp_path / "exp"),
                    "--nDataLoaderThread", "0", "--device", "cpu"], cwd=PROJECT_ROOT, check=True,
                   capture_output=True, text=True)
    score, enrol, test = open(score_file).readline().split()
    embedSpeaker.main(["verify", f"{tiny_corpus['test_path']}/{enrol}", f"{tiny_corpus['test_path']}/{test}",
                       "--initial_model", checkpoint, *MODEL_FLAGS])
    output = capsys.readouterr().out
    assert float(output.split("score ")[1].split()[0]) == pytest.approx(float(score), abs=2e-5)


def test_verify_with_calibration_and_config(checkpoint, tiny_corpus, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": "ResNetSE34L", "trainfunc": "angleproto", "nOut": 32,
                                      "log_input": "True", "eval_frames": 50, "num_eval": 3, "lr": 0.001}))
    cal = calibration.Calibration(10.0, 12.0, 0.5, "original", "none", "dev.txt", 10, 10)
    cal.save(str(tmp_path / "cal.json"))
    test_path = tiny_corpus["test_path"]
    embedSpeaker.main(["verify", f"{test_path}/id00000/sess0/00000.wav", f"{test_path}/id00000/sess1/00001.wav",
                       "--initial_model", checkpoint, "--config", str(config), "--calibration",
                       str(tmp_path / "cal.json"), "--prior", "0.01"])
    lines = capsys.readouterr().out.splitlines()
    score = float(lines[-2].split()[1])
    llr = float(lines[-1].split()[1])
    assert llr == pytest.approx(10.0 * score + 12.0, abs=1e-3)
    assert "(prior 0.01)" in lines[-1] and "decision" in lines[-1]


def test_bad_input(checkpoint, tiny_corpus, tmp_path, capsys):
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"

    def fails_with(message, argv):
        assert embedSpeaker.main(argv) == 1
        error = capsys.readouterr().err
        assert re.search(message, error) and error.startswith("Error: ") and error.count("\n") == 1, error

    fails_with("give --model and --trainfunc", ["verify", wav, wav, "--initial_model", checkpoint])
    fails_with("does not fit a ResNetSE34L", ["verify", wav, wav, "--initial_model", checkpoint, "--model",
                                              "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "64",
                                              "--log_input", "true"])
    fails_with("cannot go into one .npy", ["embed", tiny_corpus["test_path"], "--output", str(tmp_path / "x.npy"),
                                           "--initial_model", checkpoint, *MODEL_FLAGS])
    fails_with("must end in .npy .one file. or .npz", ["embed", wav, "--output", str(tmp_path / "x.txt"),
                                                       "--initial_model", checkpoint, *MODEL_FLAGS])
    fails_with("neither an audio file", ["embed", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.npz"),
                                         "--initial_model", checkpoint, *MODEL_FLAGS])
    fails_with("log_input must be bool, got 'maybe'", ["verify", wav, wav, "--initial_model", checkpoint,
                                                       *MODEL_FLAGS, "--log_input", "maybe"])
