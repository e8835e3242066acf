"""Files are replaced whole or not at all, and checkpoints are flushed to disk with their folder."""
import os

import pytest
import torch

from runtime import atomic_files, checkpoint_files


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "scores.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_files.atomic_write(target) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and sorted(path.name for path in tmp_path.iterdir()) == ["scores.txt"]


def test_a_completed_write_replaces_the_file(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_files.write_text(target, "a: 1\n")
    atomic_files.write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n" and [path.name for path in tmp_path.iterdir()] == ["config.yaml"]
    assert atomic_files.partial_path(target).name == ".config.yaml.partial"
    assert not checkpoint_files.CHECKPOINT_GLOB.startswith(".")  # temporary names never look like checkpoints


def test_checkpoints_are_flushed_with_their_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda handle: synced.append(os.path.realpath(f"/proc/self/fd/{handle}"))
                        or real_fsync(handle))
    path = tmp_path / "model000000001.model"
    checkpoint_files.write_atomically({"epoch": 1, "weights": torch.ones(3)}, path)
    assert synced == [str(tmp_path / ".model000000001.model.partial"), str(tmp_path)]
    assert torch.load(path, weights_only=True)["epoch"] == 1
