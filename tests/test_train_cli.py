"""End-to-end runs of the real trainSpeakerNet.py CLI on generated audio."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration  # real CLI runs, subprocesses or servers

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EPOCH_LINE = re.compile(r"^Epoch (\d+), TEER/TAcc (\d+\.\d\d), TLOSS (-?\d+\.\d{6}), LR (\d+\.\d{6}) $")
VEER_LINE = re.compile(r"^Epoch (\d+), VEER (\d+\.\d{4}), MinDCF (\d+\.\d{5})$")


def small_run(corpus: dict, save_path: Path, *extra: str) -> list[str]:
    """Flags of a tiny but real training run."""
    return ["--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nPerSpeaker", "2", "--batch_size", "3",
            "--max_frames", "40", "--eval_frames", "60", "--num_eval", "2", "--nOut", "32", "--log_input", "true",
            "--nDataLoaderThread", "0", "--test_interval", "1", "--lr_decay", "0.5", "--device", "cpu",
            "--train_list", corpus["train_list"], "--train_path", corpus["train_path"],
            "--test_list", corpus["test_list"], "--test_path", corpus["test_path"],
            "--save_path", str(save_path), *extra]


def run_cli(argv: list[str], cwd: Path = PROJECT_ROOT, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "trainSpeakerNet.py", *argv], cwd=cwd, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def epoch_log(save_path: Path) -> dict[int, tuple[str, str]]:
    """Last (TLOSS, LR) logged for each epoch in result/scores.txt."""
    rows = {}
    for line in (save_path / "result" / "scores.txt").read_text().splitlines():
        match = EPOCH_LINE.match(line)
        if match:
            rows[int(match.group(1))] = (match.group(3), match.group(4))
        else:
            assert VEER_LINE.match(line), f"unexpected scores.txt line: {line!r}"
    return rows


def checkpoint_names(save_path: Path) -> list[str]:
    return sorted(path.name for path in (save_path / "model").iterdir())


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run."""
    save_path = tmp_path_factory.mktemp("uninterrupted")
    run_cli(small_run(tiny_corpus, save_path, "--max_epoch", "3"))
    return save_path


def test_training_writes_the_original_save_layout(trained):
    epochs = [f"model{e:09d}.{ext}" for e in (1, 2, 3) for ext in ("eer", "model")]
    assert checkpoint_names(trained) == epochs + ["resume.model"]
    rows = epoch_log(trained)
    assert sorted(rows) == [1, 2, 3]
    assert [lr for _, lr in rows.values()] == ["0.001000", "0.000500", "0.000250"]
    results = sorted(path.suffix for path in (trained / "result").iterdir())
    assert results == [".cmd", ".jsonl", ".txt", ".zip"]
    assert (trained / "config.yaml").is_file()
    content = torch.load(trained / "model" / "model000000003.model", weights_only=True)
    assert content["epoch"] == 3 and "optimizer_state_dict" in content and "scheduler_state_dict" in content
    assert any(key.startswith("__S__.") for key in content["model_state_dict"])
    assert re.fullmatch(r"\d+\.\d{4}", (trained / "model" / "model000000003.eer").read_text())


def test_killed_run_resumes_like_an_uninterrupted_one(tiny_corpus, tmp_path, trained):
    save_path = tmp_path / "killed"
    argv = small_run(tiny_corpus, save_path, "--max_epoch", "3")
    process = subprocess.Popen([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    first = save_path / "model" / "model000000001.eer"
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists()
    output = run_cli(argv).stdout
    assert "Resumed from" in output
    assert checkpoint_names(save_path) == checkpoint_names(trained)
    resumed, reference = epoch_log(save_path), epoch_log(trained)
    assert sorted(resumed) == [1, 2, 3]
    assert resumed == reference  # the same losses, not only the learning rates the schedule fixes


def test_half_written_checkpoint_is_ignored(tiny_corpus, tmp_path, trained):
    save_path = tmp_path / "half"
    shutil.copytree(trained, save_path)
    for name in ("model000000003.model", "resume.model"):
        newest = save_path / "model" / name
        newest.write_bytes(newest.read_bytes()[:1000])
    (save_path / "model" / "model000000004.model.tmp").write_bytes(b"partial")
    result = run_cli(small_run(tiny_corpus, save_path, "--max_epoch", "4"))
    assert re.search(r"Resumed from \S+model000000002.model; continuing with epoch 3", result.stdout)
    assert result.stderr.count("Skipping checkpoint") == 2
    assert sorted(epoch_log(save_path)) == [1, 2, 3, 4]


def test_eval_prints_eer_and_writes_score_file(tiny_corpus, tmp_path, trained):
    score_file = tmp_path / "scores.txt"
    argv = small_run(tiny_corpus, tmp_path / "unused", "--eval", "--initial_model",
                     str(trained / "model" / "model000000003.model"), "--score_file", str(score_file),
                     "--train_list", str(tmp_path / "no_train_list.txt"), "--musan_path", str(tmp_path / "none"))
    result = run_cli(argv)
    assert re.search(r"^EER \d+\.\d{4} MinDCF \d+\.\d{5}", result.stdout, re.M), result.stdout
    trials = Path(tiny_corpus["test_list"]).read_text().splitlines()
    lines = score_file.read_text().splitlines()
    assert len(lines) == len(trials)
    for line, trial in zip(lines, trials):
        score, enrol, test = line.split()
        assert float(score) <= 0 and f"{enrol} {test}" == trial.split(" ", 1)[1]


def test_eval_whole_utterances_and_unlabelled_lines(tiny_corpus, tmp_path, trained):
    trials = Path(tiny_corpus["test_list"]).read_text().splitlines()
    mixed = tmp_path / "mixed.txt"
    _, enrol, test = trials[0].split()
    mixed.write_text("\n".join(trials + [f"{test} {enrol}"]) + "\n")
    argv = small_run(tiny_corpus, tmp_path / "unused", "--eval", "--eval_frames", "0", "--test_list", str(mixed),
                     "--initial_model", str(trained / "model" / "model000000003.model"))
    output = run_cli(argv).stdout
    assert "1 trial lines" in output and re.search(r"^EER \d+\.\d{4}", output, re.M)


def test_eval_rejects_a_checkpoint_of_another_model(tiny_corpus, tmp_path, trained):
    argv = small_run(tiny_corpus, tmp_path / "unused", "--eval", "--nOut", "48",
                     "--initial_model", str(trained / "model" / "model000000003.model"))
    result = run_cli(argv, check=False)
    assert result.returncode != 0 and "does not fit the model" in result.stderr


def test_plugin_errors_name_the_choices(tiny_corpus, tmp_path):
    result = run_cli(small_run(tiny_corpus, tmp_path / "x", "--model", "ResNet999"), check=False)
    assert result.returncode != 0 and "--model got 'ResNet999'" in result.stderr and "ResNetSE34L" in result.stderr
    result = run_cli(small_run(tiny_corpus, tmp_path / "y", "--nPerSpeaker", "1"), check=False)
    assert result.returncode != 0 and "Loss 'angleproto' needs --nPerSpeaker 2 or more, got 1" in result.stderr
    result = run_cli(small_run(tiny_corpus, tmp_path / "z", "--model", "RawNet3"), check=False)  # default SAP
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "models/RawNet3.py: RawNet3: undefined encoder_type 'SAP'; choose one of ECA, ASP" in result.stderr


@pytest.mark.parametrize("trainfunc, n_per_speaker", [("aamsoftmax", "1"), ("softmaxproto", "2")])
def test_too_few_classes_for_the_speakers_is_a_clear_error(tiny_corpus, tmp_path, trainfunc, n_per_speaker):
    argv = small_run(tiny_corpus, tmp_path / "x", "--trainfunc", trainfunc, "--nPerSpeaker", n_per_speaker,
                     "--nClasses", "5")
    result = run_cli(argv, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (f"Loss '{trainfunc}' has --nClasses 5 outputs, fewer than the 6 speakers in "
            f"{tiny_corpus['train_list']}; set --nClasses 6") in result.stderr
    assert not list((tmp_path / "x" / "model").glob("*.model"))


def copy_of_project(tmp_path: Path) -> Path:
    """The project's code (no tests, data or venv) in tmp_path/project, to drop plug-in files into."""
    project = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv", "tests", "data", "exps",
                                                                          "__pycache__", "benchmarks"))
    return project


def conv_model_file(preamble: str = "\n", parameters: str = "", kernel: str = "400") -> str:
    """The source of a tiny model plug-in: one strided convolution over the waveform, pooled to nOut."""
    return ("import torch.nn as nn\n\n" + preamble +
            f"def MainModel(nOut=8{parameters}, **kwargs):\n"
            f"    return nn.Sequential(nn.Unflatten(1, (1, -1)), nn.Conv1d(1, 4, {kernel}, stride=160), nn.ReLU(),\n"
            "                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, nOut))\n")


def test_dropped_in_plugins_work_by_name(tiny_corpus, tmp_path):
    """Plug-ins written for the original, which take the original's flags by name, get them."""
    project = copy_of_project(tmp_path)
    (project / "models" / "TinyConv.py").write_text(conv_model_file(parameters=", *, n_mels, log_input, encoder_type"))
    (project / "loss" / "centroid.py").write_text(
        "import torch\nimport torch.nn as nn\n\n\n"
        "class LossFunction(nn.Module):\n"
        "    min_per_speaker, max_per_speaker = 2, None\n"
        "    test_normalize = True\n\n"
        "    def __init__(self, nOut, nClasses, margin, scale, hard_prob, hard_rank, nPerSpeaker, **kwargs):\n"
        "        super().__init__()\n\n"
        "    def forward(self, x, label=None):\n"
        "        spread = (x - x.mean(1, keepdim=True)).pow(2).mean()\n"
        "        return spread, torch.zeros(1)\n")
    save_path = tmp_path / "plugin_run"
    argv = small_run(tiny_corpus, save_path, "--model", "TinyConv", "--trainfunc", "centroid", "--max_epoch", "2")
    run_cli(argv, cwd=project)
    first, second = (torch.load(save_path / "model" / f"model00000000{epoch}.model", weights_only=True)
                     for epoch in (1, 2))
    assert second["args"]["model"] == "TinyConv" and second["args"]["trainfunc"] == "centroid"
    assert second["model_state_dict"]["__S__.1.weight"].shape == (4, 1, 400)
    assert not torch.equal(first["model_state_dict"]["__S__.1.weight"], second["model_state_dict"]["__S__.1.weight"])
    losses = [float(loss) for loss, _ in epoch_log(save_path).values()]
    assert len(losses) == 2 and all(0 <= loss < 1e3 for loss in losses)


def test_evaluate_from_list_matches_the_score_file(tiny_corpus, tmp_path, trained):
    """The original's ModelTrainer.evaluateFromList API gives the --eval scores."""
    import numpy as np

    import arguments
    from SpeakerNet import SpeakerNet, WrappedModel
    from training.trainer import ModelTrainer

    checkpoint = str(trained / "model" / "model000000003.model")
    score_file = tmp_path / "scores.txt"
    run_cli(small_run(tiny_corpus, tmp_path / "unused", "--eval", "--initial_model", checkpoint,
                      "--score_file", str(score_file)))
    args = arguments.parse_arguments(small_run(tiny_corpus, tmp_path / "unused", "--eval"))
    trainer = ModelTrainer(WrappedModel(SpeakerNet(**vars(args))), **dict(vars(args), device=torch.device("cpu")))
    trainer.loadParameters(checkpoint, strict_model=True)
    scores, labels, pairs = trainer.evaluateFromList(**vars(args))
    expected = [line.split(" ", 1) for line in score_file.read_text().splitlines()]
    assert pairs == [pair for _, pair in expected]
    np.testing.assert_allclose(scores, [float(score) for score, _ in expected], atol=2e-6)
    assert labels.tolist() == [int(line.split()[0]) for line in Path(tiny_corpus["test_list"]).read_text().splitlines()]


@pytest.mark.parametrize("config", ["kernel_width: 240\n", "model_args:\n  kernel_width: 240\n"],
                         ids=["flat", "section"])
def test_dropped_in_model_declares_its_own_option(tiny_corpus, tmp_path, config):
    """A model file with OPTIONS gets its flag and YAML key (flat or in model_args), and --help lists it, with no
    edit elsewhere."""
    project = copy_of_project(tmp_path)
    (project / "models" / "WideConv.py").write_text(conv_model_file(
        "OPTIONS = {\"kernel_width\": (int, 400, \"WideConv: width of the first convolution in samples\")}\n\n\n",
        ", kernel_width=400", "kernel_width"))
    help_text = run_cli(["--help"], cwd=project).stdout
    assert "--kernel_width" in help_text and "WideConv: width of the first convolution" in help_text
    (tmp_path / "wide.yaml").write_text(config)
    save_path = tmp_path / "wide_run"
    argv = small_run(tiny_corpus, save_path, "--model", "WideConv", "--max_epoch", "1", "--config",
                     str(tmp_path / "wide.yaml"))
    run_cli(argv, cwd=project)
    content = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    assert content["model_state_dict"]["__S__.1.weight"].shape == (4, 1, 240)
    assert content["args"]["kernel_width"] == 240
