"""Which epoch checkpoints a run keeps (--keep_last, --keep_best), and removing the others once a new one is on
disk. Only files named model<9 digits>.model and their .eer files are ever removed; resume.model never."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

EPOCH_CHECKPOINT = re.compile(r"model(\d{9})\.model")


@dataclass(frozen=True)
class Retention:
    """The retention settings: --keep_last, --keep_best, and --max_epoch with --save_last_epochs, whose checkpoints
    averageModels.py --last needs."""

    keep_last: int = 0
    keep_best: int = 0
    max_epoch: int = 0
    save_last_epochs: int = 0

    @property
    def removes_any(self) -> bool:
        """Whether the policy removes checkpoints at all (--keep_last 0 with --keep_best 0 keeps every one)."""
        return self.keep_last > 0 or self.keep_best > 0


def epochs_to_keep(saved: list[int], eers: dict[int, float], retention: Retention) -> set[int]:
    """The saved epochs whose checkpoints stay: all of them when the policy removes none; else the newest
    `keep_last`, the `keep_best` of lowest EER (ties: the newer), the newest epoch, and every epoch of the last
    `save_last_epochs` up to `max_epoch`."""
    if not retention.removes_any or not saved:
        return set(saved)
    newest_first = sorted(saved, reverse=True)
    best_first = sorted((epoch for epoch in saved if epoch in eers), key=lambda epoch: (eers[epoch], -epoch))
    for_averaging = {epoch for epoch in saved
                     if retention.max_epoch - retention.save_last_epochs < epoch <= retention.max_epoch}
    return {newest_first[0], *newest_first[:retention.keep_last], *best_first[:retention.keep_best], *for_averaging}


def epoch_checkpoints(folder: str) -> dict[int, str]:
    """{epoch: path} of the files named model<9 digits>.model in `folder`."""
    found = {}
    for name in os.listdir(folder):
        match = EPOCH_CHECKPOINT.fullmatch(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def validation_eer(checkpoint: str) -> float | None:
    """The EER in the .eer file beside a checkpoint, or None when there is none or it cannot be read."""
    try:
        with open(checkpoint.removesuffix(".model") + ".eer", encoding="utf-8") as handle:
            return float(handle.read())
    except (OSError, ValueError):
        return None


def remove_unkept_checkpoints(written: str, retention: Retention) -> list[str]:
    """Once the epoch checkpoint `written` is on disk, remove the epoch checkpoints beside it that `retention` does
    not keep, with their .eer files; print one line naming them and return their paths. Nothing is removed when
    `written` is not there (no checkpoint was saved this epoch)."""
    if not retention.removes_any or not os.path.isfile(written):
        return []
    saved = epoch_checkpoints(os.path.dirname(written) or ".")
    eers = {epoch: eer for epoch, path in saved.items() if (eer := validation_eer(path)) is not None}
    removed = []
    for epoch in sorted(set(saved) - epochs_to_keep(list(saved), eers, retention)):
        for path in (saved[epoch], saved[epoch].removesuffix(".model") + ".eer"):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as error:
                print(f"Could not remove the old checkpoint file {path}: {error.strerror}", file=sys.stderr)
                continue
            removed.append(path)
    if removed:
        print(f"Removed old checkpoint files (--keep_last {retention.keep_last} --keep_best {retention.keep_best}): "
              + ", ".join(os.path.basename(path) for path in removed))
    return removed
