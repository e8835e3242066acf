"""Checkpoint averaging: runtime.averaging.average_weights on fabricated weights, the averageModels.py command line and
its one-line errors, and the average of a real tiny training run loading for --eval and as --initial_model."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import averageModels
from runtime import checkpoint_files
from runtime.averaging import average_weights
from runtime.checkpoint_files import CheckpointError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def weights(scale: float, batches: int = 5) -> dict:
    """A small model state_dict: float weights that are multiples of `scale` and an integer BatchNorm counter."""
    return {"__S__.conv.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale,
            "__S__.bn.running_mean": torch.full((3,), scale, dtype=torch.float64),
            "__S__.bn.num_batches_tracked": torch.tensor(batches),
            "__L__.weight": torch.full((4, 2), scale, dtype=torch.float16)}


def save(path: Path, state: dict, epoch: int = 1, args: dict | None = None) -> str:
    """Write `state` as one of our training checkpoints."""
    torch.save({"model_state_dict": state, "epoch": epoch, "format": checkpoint_files.FORMAT_TAG,
                "args": args or {"model": "ResNetSE34L", "epoch_of_args": epoch}}, path)
    return str(path)


def test_two_checkpoints_average_to_their_mean(tmp_path):
    first = save(tmp_path / "a.model", weights(1.0, batches=5))
    second = save(tmp_path / "b.model", weights(4.0, batches=9))
    average = average_weights([first, second])
    assert set(average) == set(weights(1.0))
    torch.testing.assert_close(average["__S__.conv.weight"], torch.arange(6.0).reshape(2, 3) * 2.5)
    torch.testing.assert_close(average["__S__.bn.running_mean"], torch.full((3,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(average["__L__.weight"], torch.full((4, 2), 2.5, dtype=torch.float16))
    assert average["__S__.bn.num_batches_tracked"].item() == 9  # integers come from the last checkpoint
    assert {key: value.dtype for key, value in average.items()} == {key: value.dtype
                                                                    for key, value in weights(1.0).items()}


def test_any_checkpoint_layout_and_many_files(tmp_path):
    bare = tmp_path / "bare.model"
    torch.save(weights(3.0), bare)  # the original's bare state_dict
    paths = [save(tmp_path / "a.model", weights(0.0)), str(bare), save(tmp_path / "c.model", weights(1.5))]
    average = average_weights(paths)
    torch.testing.assert_close(average["__S__.conv.weight"], torch.arange(6.0).reshape(2, 3) * 1.5)


def test_different_keys_are_an_error_naming_the_files(tmp_path):
    other = weights(1.0)
    other["__S__.extra.bias"] = other.pop("__S__.conv.weight")
    first, second = save(tmp_path / "a.model", weights(1.0)), save(tmp_path / "b.model", other)
    with pytest.raises(CheckpointError) as error:
        average_weights([first, second])
    message = str(error.value)
    assert first in message and second in message and "\n" not in message
    assert "__S__.conv.weight only in the first" in message and "__S__.extra.bias only in the second" in message


def test_different_shapes_are_an_error(tmp_path):
    other = weights(1.0)
    other["__L__.weight"] = torch.zeros(5, 2, dtype=torch.float16)
    paths = [save(tmp_path / "a.model", weights(1.0)), save(tmp_path / "b.model", other)]
    with pytest.raises(CheckpointError, match=r"__L__.weight has shape \[4, 2\] in the first and \[5, 2\]"):
        average_weights(paths)


def test_cli_averages_the_newest_epochs_by_number(tmp_path, capsys):
    model = tmp_path / "exp" / "model"
    model.mkdir(parents=True)
    for epoch in (7, 8, 9, 10, 11):  # unpadded names: by name model010 would come before model09
        save(model / f"model0{epoch}.model", weights(float(epoch)), epoch=epoch)
    output = tmp_path / "avg.model"
    assert averageModels.main(["--save_path", str(tmp_path / "exp"), "--last", "3", "--output", str(output)]) == 0
    content = torch.load(output, weights_only=True)
    assert content["format"] == checkpoint_files.FORMAT_TAG
    assert [Path(path).name for path in content["averaged_from"]] == ["model09.model", "model010.model",
                                                                      "model011.model"]
    assert content["args"] == {"model": "ResNetSE34L", "epoch_of_args": 11}
    torch.testing.assert_close(content["model_state_dict"]["__S__.conv.weight"], torch.arange(6.0).reshape(2, 3) * 10)
    assert "Averaged 3 checkpoints" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*partial"))  # written through a temporary file


def test_last_takes_the_last_epochs_and_refuses_gaps(tmp_path, capsys):
    """Checkpoints every 5 epochs and each of the last 3: --last 3 averages epochs 148-150, --last 10 has gaps."""
    model = tmp_path / "exp" / "model"
    model.mkdir(parents=True)
    for epoch in (*range(5, 150, 5), 148, 149, 150):
        save(model / f"model{epoch:09d}.model", weights(float(epoch)), epoch=epoch)
    picked = averageModels.last_epoch_checkpoints(str(tmp_path / "exp"), 3)
    assert [checkpoint_files.epoch_of(path) for path in picked] == [148, 149, 150]
    message = one_line_error(["--save_path", str(tmp_path / "exp"), "--last", "10", "--output",
                              str(tmp_path / "avg.model")], capsys)
    assert "no checkpoint of epoch 141-144, 146-147 of the last 10 epochs (to 150)" in message
    assert "--save_last_epochs 10" in message and not (tmp_path / "avg.model").exists()


def test_cli_averages_the_inputs_it_names(tmp_path):
    paths = [save(tmp_path / "a.model", weights(2.0), args={"nOut": 8}), save(tmp_path / "b.model", weights(6.0))]
    output = tmp_path / "avg.model"
    assert averageModels.main(["--inputs", *paths, "--output", str(output)]) == 0
    content = checkpoint_files.read_checkpoint(output)
    assert content["averaged_from"] == paths and content["args"]["epoch_of_args"] == 1
    torch.testing.assert_close(checkpoint_files.model_weights(content)["__L__.weight"],
                               torch.full((4, 2), 4.0, dtype=torch.float16))


def one_line_error(argv: list[str], capsys) -> str:
    """The message of a command line that must fail with status 1 and one line on stderr."""
    assert averageModels.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_cli_mismatched_keys_are_one_line(tmp_path, capsys):
    other = weights(1.0)
    del other["__L__.weight"]
    paths = [save(tmp_path / "a.model", weights(1.0)), save(tmp_path / "b.model", other)]
    message = one_line_error(["--inputs", *paths, "--output", str(tmp_path / "avg.model")], capsys)
    assert "Cannot average" in message and "__L__.weight only in the first" in message
    assert not (tmp_path / "avg.model").exists()


@pytest.mark.parametrize("case, words", [
    ("too_few", "is of epoch 2; give --last 2 or fewer"),
    ("no_model_folder", "has no model/ folder"),
    ("last_zero", "--last must be 1 or more"),
    ("last_with_inputs", "--last goes with --save_path"),
    ("missing_input", "Checkpoint not found"),
    ("output_folder", "does not exist"),
    ("both_sources", "not allowed with argument"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, case, words):
    model = tmp_path / "exp" / "model"
    model.mkdir(parents=True)
    for epoch in (1, 2):
        save(model / f"model{epoch:09d}.model", weights(float(epoch)), epoch=epoch)
    output = str(tmp_path / "avg.model")
    argv = {"too_few": ["--save_path", str(tmp_path / "exp"), "--last", "3", "--output", output],
            "no_model_folder": ["--save_path", str(tmp_path), "--last", "1", "--output", output],
            "last_zero": ["--save_path", str(tmp_path / "exp"), "--last", "0", "--output", output],
            "last_with_inputs": ["--inputs", str(model / "model000000001.model"), "--last", "1", "--output", output],
            "missing_input": ["--inputs", str(tmp_path / "nothing.model"), "--output", output],
            "output_folder": ["--inputs", str(model / "model000000001.model"), "--output",
                              str(tmp_path / "no" / "avg.model")],
            "both_sources": ["--save_path", str(tmp_path / "exp"), "--inputs", "x.model", "--output", output]}[case]
    assert words in one_line_error(argv, capsys)


@pytest.mark.integration
def test_average_of_a_real_run_loads_for_eval_and_training(tiny_corpus, tmp_path):
    from test_train_cli import run_cli, small_run

    # the wespeaker-style pieces together: sub-center AAM on the margin schedule, Nesterov SGD, warm-up + exp LR
    recipe = ["--trainfunc", "subcenter_aamsoftmax", "--nPerSpeaker", "1", "--nClasses", "6", "--topk_negatives", "2",
              "--margin_start", "0", "--margin_end", "1", "--margin", "0.2", "--scale", "32",
              "--optimizer", "sgd_nesterov", "--weight_decay", "1e-4", "--scheduler", "warmup_exp", "--lr", "0.01",
              "--warmup_epochs", "1", "--final_lr", "1e-4"]
    save_path = tmp_path / "run"
    run_cli(small_run(tiny_corpus, save_path, "--max_epoch", "2", *recipe))
    scores = (save_path / "result" / "scores.txt").read_text()
    # LR at the start of each epoch: 0 (warm-up from 0), then 0.01 * (1e-4 / 0.01) ** (1 / 2) after one epoch
    assert "LR 0.000000" in scores.splitlines()[0] and "Epoch 2, TEER/TAcc" in scores and "LR 0.001000" in scores

    output = tmp_path / "avg.model"
    averaged = subprocess.run([sys.executable, "averageModels.py", "--save_path", str(save_path), "--last", "2",
                               "--output", str(output)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert averaged.returncode == 0, averaged.stderr
    epochs = [checkpoint_files.model_weights(checkpoint_files.read_checkpoint(save_path / "model" / f"model{e:09d}.model"))
              for e in (1, 2)]
    content = checkpoint_files.read_checkpoint(output)
    key = "__L__.weight"
    torch.testing.assert_close(content["model_state_dict"][key], (epochs[0][key] + epochs[1][key]) / 2)
    assert content["args"]["trainfunc"] == "subcenter_aamsoftmax"

    evaluated = run_cli(small_run(tiny_corpus, tmp_path / "unused", "--eval", "--initial_model", str(output),
                                  *recipe))
    assert "EER " in evaluated.stdout and "MinDCF" in evaluated.stdout
    fine_tuned = run_cli(small_run(tiny_corpus, tmp_path / "lm", "--max_epoch", "1", "--initial_model", str(output),
                                   *recipe, "--margin_start", "0", "--margin_end", "0", "--margin", "0.5"))
    assert f"from {output}" in fine_tuned.stdout and (tmp_path / "lm" / "model" / "model000000001.model").is_file()
