"""Every mistake in what the user gives ends with exit status 1 and one line naming the flag, file or line."""
import os
import re
import subprocess
import sys

import cli_checks
import pytest
import torch
import yaml
from test_train_cli import PROJECT_ROOT, small_run

import trainSpeakerNet
from runtime.errors import ConfigError, UserError, own_message
from SpeakerNet import SpeakerNet

pytestmark = pytest.mark.integration  # real CLI runs, subprocesses or servers


def stop_line(capsys, argv: list[str], env: dict | None = None) -> str:
    """trainSpeakerNet.main's one 'Error' line (cli_checks.stop_line)."""
    return cli_checks.stop_line(trainSpeakerNet.main, argv, capsys, env)


@pytest.fixture
def bad(tiny_corpus, tmp_path):
    """Helpers that write broken inputs beside a working tiny run."""
    class Bad:
        def file(self, name: str, text: str | bytes) -> str:
            path = tmp_path / name
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
            return str(path)

        def run(self, *extra: str) -> list[str]:
            return small_run(tiny_corpus, tmp_path / "exp", *extra)

        def yaml(self, content) -> str:
            return self.file("config.yaml", content if isinstance(content, str) else yaml.safe_dump(content))

    return Bad()


def trial_line(tiny_corpus) -> str:
    return open(tiny_corpus["test_list"]).readline()


CASES = {
    # name: (flags built from the fixture, expected fragment of the message)
    "missing train list": (lambda b, c: ["--train_list", "/no/such/list.txt"],
                           r"Cannot read train list /no/such/list.txt: it does not exist; check --train_list"),
    "train list is a folder": (lambda b, c: ["--train_list", c["train_path"]], r"it is a folder; check --train_list"),
    "3-field train line": (lambda b, c: ["--train_list", b.file("t.txt", "id0 a.wav extra\n")],
                           r"t.txt line 1: expected '<speaker_id> <relative_path>'"),
    "empty train list": (lambda b, c: ["--train_list", b.file("t.txt", "\n\n")], r"holds no '<speaker_id>"),
    "train list not text": (lambda b, c: ["--train_list", b.file("t.txt", b"\xff\xfe\x00\x81")],
                            r"t.txt line 1 is not UTF-8 text \(byte 0xff at column 1\); save the train list as UTF-8; "
                            r"check --train_list"),
    "trial list not text": (lambda b, c: ["--test_list", b.file("trials.txt",
                                                                trial_line(c).encode() + b"1 a\xe9.wav b.wav\n")],
                            r"trials.txt line 2 is not UTF-8 text \(byte 0xe9 at column 4\)"),
    "train files missing": (lambda b, c: ["--train_path", "/no/audio"],
                            r"24 of 24 files named in .*train_list.txt do not exist under --train_path /no/audio"),
    "augment without MUSAN": (lambda b, c: ["--augment", "--musan_path", "/no/musan"],
                              r"--augment needs split MUSAN files in /no/musan"),
    "augment without RIRs": (lambda b, c: ["--augment", "--musan_path", "/no/musan", "--rir_path", "/no/rir"],
                             r"--augment needs"),
    "batch above usable speakers": (lambda b, c: ["--batch_size", "7"],
                                    r"--batch_size 7 needs .* but .*train_list.txt has 6; lower --batch_size to 6"),
    "max_seg_per_spk below nPerSpeaker": (lambda b, c: ["--max_seg_per_spk", "1"],
                                          r"--max_seg_per_spk 1 is below --nPerSpeaker 2"),
    "max_frames 0": (lambda b, c: ["--max_frames", "0"], r"--max_frames must be at least 1, got 0"),
    "crop shorter than the model": (lambda b, c: ["--model", "VGGVox", "--max_frames", "5"],
                                    r"--max_frames 5 gives crops of 1040 samples, but VGGVox needs at least"),
    "negative eval_frames": (lambda b, c: ["--eval_frames", "-1"], r"--eval_frames must be at least 0"),
    "negative workers": (lambda b, c: ["--nDataLoaderThread", "-1"], r"--nDataLoaderThread must be at least 0"),
    "negative lr": (lambda b, c: ["--lr", "-1"], r"--lr must be above 0, got -1.0"),
    "prior out of range": (lambda b, c: ["--dcf_p_target", "1"], r"--dcf_p_target is a prior strictly between 0"),
    "save path is a file": (lambda b, c: ["--save_path", c["train_list"]], r"is a file; give a folder"),
    "missing trial list": (lambda b, c: ["--test_list", "/no/trials.txt"],
                           r"Cannot read trial list /no/trials.txt: it does not exist; check --test_list"),
    "trial label 2": (lambda b, c: ["--test_list", b.file("trials.txt", "2" + trial_line(c)[1:])],
                      r"trials.txt, line 1: the label must be 0 \(different speakers\) or 1"),
    "empty trial list": (lambda b, c: ["--test_list", b.file("trials.txt", "")], r"trials.txt has no trials"),
    "no trial list named": (lambda b, c: ["--test_list", ","], r"--test_list names no trial list"),
    "trial files missing": (lambda b, c: ["--test_path", "/no/test"], r"do not exist under --test_path /no/test"),
    "only target trials": (lambda b, c: ["--test_list", b.file("trials.txt", "1" + trial_line(c)[1:])],
                           r"needs target \(1\) and non-target \(0\) trials"),
    "unknown model": (lambda b, c: ["--model", "ResNet999"], r"--model got 'ResNet999'; available in models/"),
    "unknown loss": (lambda b, c: ["--trainfunc", "arcface"], r"--trainfunc got 'arcface'"),
    "no loss": (lambda b, c: ["--trainfunc", ""], r"--trainfunc got nothing"),
    "unknown optimizer": (lambda b, c: ["--optimizer", "lion"], r"--optimizer got 'lion'"),
    "per-speaker mismatch": (lambda b, c: ["--nPerSpeaker", "1"],
                             r"Loss 'angleproto' needs --nPerSpeaker 2 or more, got 1"),
    "too few classes": (lambda b, c: ["--trainfunc", "softmax", "--nPerSpeaker", "1", "--nClasses", "5"],
                        r"has --nClasses 5 outputs, fewer than the 6 speakers"),
    "classes for speed-perturbed speakers": (lambda b, c: ["--speed_perturb", "--trainfunc", "softmax", "--nPerSpeaker",
                                                            "1", "--nClasses", "6"],
                                             r"has --nClasses 6 outputs, fewer than the 18 speakers"),
    "unknown speed perturbation mode": (lambda b, c: ["--speed_perturb", "--speed_perturb_mode", "random"],
                                        r"--speed_perturb_mode random is unknown; use expand or per_epoch"),
    "unknown augmentation mix": (lambda b, c: ["--augment", "--augment_mix", "strong"],
                                 r"--augment_mix strong is unknown; use original or wespeaker"),
    "augmentation probability above 1": (lambda b, c: ["--augment_mix", "wespeaker", "--augment_prob", "1.5"],
                                         r"--augment_prob is a probability \(0 to 1\), got 1.5"),
    "bad encoder for the model": (lambda b, c: ["--model", "RawNet3"], r"RawNet3: undefined encoder_type 'SAP'"),
    "unknown flag": (lambda b, c: ["--lrr", "0.1"], r"unrecognized arguments: --lrr 0.1 \(see --help\)"),
    "flag of the wrong type": (lambda b, c: ["--batch_size", "many"],
                               r"argument --batch_size: invalid int value: 'many'"),
    "bad boolean": (lambda b, c: ["--augment", "maybe"], r"argument --augment: expected a boolean"),
    "missing config": (lambda b, c: ["--config", "/no/config.yaml"], r"Cannot read --config /no/config.yaml"),
    "config not YAML": (lambda b, c: ["--config", b.yaml("a: [1, 2\n")], r"config.yaml is not valid YAML"),
    "config is a list": (lambda b, c: ["--config", b.yaml("- a\n- b\n")], r"expected 'key: value' lines, found a list"),
    "config value of the wrong type": (lambda b, c: ["--config", b.yaml({"lr": "fast"})],
                                       r"key 'lr' has value 'fast', which is not a valid float"),
    "config value is a mapping": (lambda b, c: ["--config", b.yaml({"nOut": {"a": 1}})],
                                  r"key 'nOut' has value \{'a': 1\}, which is not a valid int"),
    "missing initial model": (lambda b, c: ["--initial_model", "/no/model.model"],
                              r"--initial_model /no/model.model does not exist"),
    "initial model is not a checkpoint": (lambda b, c: ["--initial_model", b.file("x.model", b"not a checkpoint")],
                                          r"Cannot read checkpoint .*x.model"),
    "eval without any checkpoint": (lambda b, c: ["--eval"], r"--eval needs --initial_model or a checkpoint in"),
    "no GPU": (lambda b, c: ["--device", "cuda"], r"--device cuda was given but PyTorch sees no CUDA GPU"),
    "bad device name": (lambda b, c: ["--device", "gpu0"], r"--device must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
    "one GPU with --distributed": (lambda b, c: ["--device", "cuda:1", "--distributed"],
                                   r"--device cuda:1 picks one GPU, but --distributed runs one process"),
    "two GPUs named": (lambda b, c: ["--device", "cuda:1", "--gpu_id", "2"],
                       r"--device cuda:1 and --gpu_id 2 name different GPUs"),
    "unknown score normalisation": (lambda b, c: ["--eval", "--initial_model", b.file("x.model", b"x"),
                                                  "--score_norm", "znorm"], r"--score_norm one of none, asnorm, snorm"),
    "calibration twice": (lambda b, c: ["--eval", "--initial_model", b.file("x.model", b"x"),
                                        "--fit_calibration", "a.json", "--calibration", "b.json"],
                          r"Give either --fit_calibration .* or --calibration"),
    "missing calibration": (lambda b, c: ["--eval", "--initial_model", b.file("x.model", b"x"),
                                          "--calibration", "/no/cal.json"], r"Cannot read calibration /no/cal.json"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_status_1(case, bad, tiny_corpus, tmp_path, capsys):
    flags, fragment = CASES[case]
    line = stop_line(capsys, bad.run(*flags(bad, tiny_corpus)))
    assert re.search(fragment, line), line
    assert not (tmp_path / "exp" / "result" / "scores.txt").exists(), "stopped before the first epoch"


def test_torchrun_without_distributed_is_refused(bad, capsys):
    line = stop_line(capsys, bad.run(), env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert "started by torchrun with 2 processes but without --distributed" in line


def test_checkpoint_of_another_network_stops_training(bad, tiny_corpus, tmp_path, capsys):
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                     log_input=True)
    few = {key: value for key, value in list(net.state_dict().items())[:3]}  # shares 3 tensors with the model
    torch.save(few, tmp_path / "other.model")
    line = stop_line(capsys, bad.run("--initial_model", str(tmp_path / "other.model")))
    assert re.search(r"other.model fills only 3 of the \d+ tensors of the embedding model", line), line
    assert not list((tmp_path / "exp" / "model").glob("*.model")), "nothing was trained or saved"


def test_debug_shows_the_traceback(bad):
    argv = [sys.executable, "trainSpeakerNet.py", *bad.run("--max_frames", "0")]
    plain = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True)
    debug = subprocess.run(argv + ["--debug"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert plain.returncode == 1 and plain.stderr.strip() == "Error: --max_frames must be at least 1, got 0"
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    environment = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                 env=dict(os.environ, SPEAKERNET_DEBUG="1"))
    assert "Traceback" in environment.stderr


@pytest.mark.integration
def test_unreadable_wav_in_a_loader_worker_is_one_line(tiny_corpus, tmp_path):
    train = tmp_path / "train"
    for line in open(tiny_corpus["train_list"]):
        target = train / line.split()[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(os.path.join(tiny_corpus["train_path"], line.split()[1]), "rb").read())
    broken = train / open(tiny_corpus["train_list"]).readline().split()[1]
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    argv = small_run(tiny_corpus, tmp_path / "exp", "--train_path", str(train), "--nDataLoaderThread", "2")
    result = subprocess.run([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and str(broken) in errors[0] and "cannot read audio" in errors[0]
    assert "--skip_bad_audio" in errors[0]


@pytest.mark.integration
def test_error_in_spawned_ranks_is_one_line(bad, tmp_path):
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                     log_input=True)
    torch.save(dict(list(net.state_dict().items())[:3]), tmp_path / "other.model")
    argv = bad.run("--distributed", "--nproc", "2", "--port", "29617", "--initial_model", str(tmp_path / "other.model"))
    result = subprocess.run([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and re.match(r"Error \(ranks? [0-9, ]+ of 2\): .*other.model fills only 3", errors[0])


def test_worker_traceback_is_dropped_from_the_message():
    wrapped = ("Caught AudioReadError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise AudioReadError("a.wav: cannot read audio (x)")\n'
               "AudioReader.AudioReadError: a.wav: cannot read audio (x). Remove it\n")
    assert own_message(wrapped, "AudioReadError") == "a.wav: cannot read audio (x). Remove it"
    assert own_message("plain message", "AudioReadError") == "plain message"
    assert str(ConfigError(wrapped.replace("AudioReadError", "ConfigError"))).startswith("a.wav: cannot read")
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, UserError)

