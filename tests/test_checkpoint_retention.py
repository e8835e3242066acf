"""Checkpoint retention: which epoch checkpoints --keep_last and --keep_best keep, what is never removed, and the real
training CLI removing old checkpoints only after the new one is on disk."""
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_train_cli import run_cli, small_run

import averageModels
from runtime import atomic_files, checkpoint_files
from runtime.checkpoint_retention import Retention, epochs_to_keep, remove_unkept_checkpoints

# A 30-epoch run evaluated every 5 epochs and saved at each of the last 3 (epoch 30 is both).
SAVED = [5, 10, 15, 20, 25, 28, 29, 30]
EERS = {5: 9.0, 10: 4.0, 15: 3.5, 20: 3.5, 25: 5.0, 30: 6.0}
OTHER_FILES = ["avg_last3.model", "model000000001.model.bak", "model12.model", "model_best.model", "notes.txt",
               "resume.model"]
REMOVED_LINE = re.compile(r"^Removed old checkpoint files \(--keep_last \d+ --keep_best \d+\): (.+)$", re.MULTILINE)


def fill_run_folder(folder) -> None:
    """Small checkpoints of SAVED written by the real writer, the .eer files of EERS, and files that are not epoch
    checkpoints."""
    for epoch in SAVED:
        stem = folder / f"model{epoch:09d}"
        checkpoint_files.write_atomically({"model_state_dict": {"__S__.w": torch.full((2,), float(epoch))},
                                           "epoch": epoch}, f"{stem}.model")
        if epoch in EERS:
            atomic_files.write_text(f"{stem}.eer", f"{EERS[epoch]:2.4f}")
    for name in OTHER_FILES:
        (folder / name).write_bytes(b"not an epoch checkpoint")


def epoch_files(epochs, evaluated=EERS) -> list[str]:
    """The names of the checkpoints of `epochs` and of the .eer files of those that were evaluated."""
    return sorted([f"model{epoch:09d}.model" for epoch in epochs]
                  + [f"model{epoch:09d}.eer" for epoch in epochs if epoch in evaluated])


@pytest.mark.parametrize("keep_last, keep_best, save_last_epochs, kept", [
    (0, 0, 3, SAVED),  # the default: every checkpoint stays
    (100, 0, 0, SAVED),
    (2, 0, 3, [28, 29, 30]),  # the newest 2, and the last 3 epochs for averaging
    (2, 1, 3, [20, 28, 29, 30]),  # and the best EER: 15 and 20 tie at 3.5, the newer stays
    (1, 2, 0, [15, 20, 30]),
    (0, 1, 0, [20, 30]),  # --keep_best alone: the best and the newest
    (4, 0, 0, [25, 28, 29, 30]),
])
def test_run_folder_keeps_exactly_what_the_policy_says(tmp_path, capsys, keep_last, keep_best, save_last_epochs,
                                                       kept):
    fill_run_folder(tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())
    retention = Retention(keep_last, keep_best, max_epoch=30, save_last_epochs=save_last_epochs)
    removed = [Path(path).name for path in remove_unkept_checkpoints(str(tmp_path / "model000000030.model"),
                                                                     retention)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(epoch_files(kept) + OTHER_FILES)
    assert sorted(removed) == sorted(set(before) - set(epoch_files(kept)) - set(OTHER_FILES))
    assert REMOVED_LINE.findall(capsys.readouterr().out) == ([", ".join(removed)] if removed else [])


def test_the_pure_policy():
    assert epochs_to_keep([], {}, Retention(2, 1)) == set()
    assert epochs_to_keep([1, 2, 3], {1: 1.0}, Retention(0, 0)) == {1, 2, 3}
    assert epochs_to_keep([1, 2, 3, 4], {1: 1.0, 2: 0.5}, Retention(1, 1)) == {2, 4}
    assert epochs_to_keep([1, 2, 3, 4], {}, Retention(0, 3)) == {4}  # no EER known: only the newest
    assert epochs_to_keep([1, 2, 3, 4], {}, Retention(1, 0, max_epoch=10, save_last_epochs=8)) == {3, 4}
    assert epochs_to_keep([2, 9, 4], {9: 2.0, 2: 1.0, 4: 1.0}, Retention(1, 1)) == {4, 9}


def test_nothing_is_removed_before_the_new_checkpoint_is_there(tmp_path, capsys):
    fill_run_folder(tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())
    assert remove_unkept_checkpoints(str(tmp_path / "model000000031.model"), Retention(1, 0, 31, 0)) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    assert "Removed" not in capsys.readouterr().out


def test_an_unreadable_eer_file_counts_as_not_evaluated(tmp_path):
    fill_run_folder(tmp_path)
    (tmp_path / "model000000020.eer").write_text("not a number")
    remove_unkept_checkpoints(str(tmp_path / "model000000030.model"), Retention(1, 1, 30, 0))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(epoch_files([15, 30]) + OTHER_FILES)


# ---------------------------------------------------------------- the training CLI


def retention_run(corpus: dict, save_path, max_epoch: int) -> list[str]:
    """A tiny run evaluated and saved every epoch that keeps the newest 2, the best 1 and the last 2 epochs."""
    return small_run(corpus, save_path, "--max_epoch", str(max_epoch), "--keep_last", "2", "--keep_best", "1",
                     "--save_last_epochs", "2")


def best_epoch(save_path) -> int:
    """The newest of the epochs with the lowest VEER in result/scores.txt."""
    eers = {int(epoch): float(eer) for epoch, eer in
            re.findall(r"^Epoch (\d+), VEER (\d+\.\d+)", (save_path / "result" / "scores.txt").read_text(), re.M)}
    return min(eers, key=lambda epoch: (eers[epoch], -epoch))


def model_folder(save_path) -> list[str]:
    return sorted(path.name for path in (save_path / "model").iterdir())


@pytest.fixture(scope="module")
def kept_run(tiny_corpus, tmp_path_factory):
    """A 6-epoch run with --keep_last 2 --keep_best 1 --save_last_epochs 2: (save path, its output)."""
    save_path = tmp_path_factory.mktemp("retention")
    return save_path, run_cli(retention_run(tiny_corpus, save_path, 6)).stdout


@pytest.mark.integration
def test_training_keeps_the_newest_the_best_and_the_last_epochs(kept_run, tmp_path, capsys):
    save_path, output = kept_run
    kept = {5, 6, best_epoch(save_path)}
    assert model_folder(save_path) == epoch_files(kept, evaluated=range(1, 7)) + ["resume.model"]
    removed = [name for line in REMOVED_LINE.findall(output) for name in line.split(", ")]
    assert sorted(removed) == epoch_files(set(range(1, 7)) - kept, evaluated=range(1, 7))

    output_path = tmp_path / "avg.model"
    assert averageModels.main(["--save_path", str(save_path), "--last", "2", "--output", str(output_path)]) == 0
    if best_epoch(save_path) != 4:
        assert averageModels.main(["--save_path", str(save_path), "--last", "3", "--output", str(output_path)]) == 1
        message = capsys.readouterr().err
        assert "--save_last_epochs 3" in message and "--keep_last and --keep_best never remove those" in message


@pytest.mark.integration
def test_a_run_resumes_after_old_checkpoints_were_removed(kept_run, tiny_corpus, tmp_path):
    save_path = tmp_path / "resumed"
    shutil.copytree(kept_run[0], save_path)
    output = run_cli(retention_run(tiny_corpus, save_path, 7)).stdout
    assert re.search(r"Resumed from .*resume.model; continuing with epoch 7", output)
    kept = {6, 7, best_epoch(save_path)}
    assert model_folder(save_path) == epoch_files(kept, evaluated=range(1, 8)) + ["resume.model"]


@pytest.mark.integration
def test_nothing_is_removed_when_the_new_checkpoint_cannot_be_written(kept_run, tiny_corpus, tmp_path):
    save_path = tmp_path / "failing"
    shutil.copytree(kept_run[0], save_path)
    before = model_folder(save_path)
    (save_path / "model" / ".model000000007.model.partial").mkdir()  # the writer's temporary name is taken
    policy = ["--max_epoch", "8", "--keep_last", "1"]  # would remove epochs 4 and 5 after saving epoch 7
    result = run_cli(small_run(tiny_corpus, save_path, *policy), check=False)
    assert result.returncode != 0 and "model000000007.model.partial" in result.stderr
    assert "Removed" not in result.stdout
    assert model_folder(save_path) == sorted(before + [".model000000007.model.partial"])
