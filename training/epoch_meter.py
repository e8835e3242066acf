"""The running sums of one training epoch and where its time went."""
from __future__ import annotations

import time

import torch

from runtime.errors import DataError, UserError
from runtime.training_state import EpochTotals


class NonFiniteLossError(UserError, RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class EpochMeter:
    """Running sums of one epoch (resumable through EpochTotals) and where its time went."""

    def __init__(self, totals: EpochTotals, batches: int, device: torch.device):
        self.totals = totals
        self.last_step = totals.steps + batches
        self.loss_sum = torch.tensor(totals.loss_sum, device=device)  # summed on the device: no per-step sync
        self.prec_sum = torch.tensor(totals.prec_sum, device=device)
        self.in_a_row, self.samples, self.data_wait = 0, 0, 0.0
        self.started = self.waiting_since = time.perf_counter()

    def arrived(self) -> None:
        """A batch came out of the loader."""
        self.data_wait += time.perf_counter() - self.waiting_since

    def waiting(self) -> None:
        """The step is done; waiting for the next batch."""
        self.waiting_since = time.perf_counter()

    def count(self, loss: torch.Tensor, prec1: torch.Tensor, finite: bool, samples: int) -> None:
        """Add one step (a non-finite one counts apart and lengthens the run of them)."""
        self.totals.steps += 1
        self.samples += samples
        if finite:
            self.loss_sum += loss
            self.prec_sum += prec1
            self.in_a_row = 0
        else:
            self.totals.nonfinite += 1
            self.in_a_row += 1

    def current_totals(self) -> EpochTotals:
        """The sums so far, to save in a mid-epoch checkpoint."""
        totals = self.totals
        return EpochTotals(totals.lr, totals.steps, self.loss_sum.item(), self.prec_sum.item(), totals.nonfinite)

    def progress(self) -> str:
        """The progress bar's text: mean loss and accuracy so far, speed and data-wait share."""
        elapsed = time.perf_counter() - self.started
        good = max(1, self.totals.steps - self.totals.nonfinite)
        return (f"Loss {self.loss_sum.item() / good:.5f} TEER/TAcc {self.prec_sum.item() / good:2.3f}% - "
                f"{self.samples / elapsed:.2f} Hz, data wait {100 * self.data_wait / elapsed:.0f}%")

    def means(self) -> tuple[float, float]:
        """(mean loss, mean prec1) over the epoch's finite steps."""
        good = self.totals.steps - self.totals.nonfinite
        if self.totals.steps == 0:
            raise DataError("The epoch had no training step: the train list has fewer speakers with --nPerSpeaker "
                            "utterances than --batch_size")
        if good == 0:
            raise NonFiniteLossError(f"All {self.totals.steps} training steps of the epoch had a non-finite loss or "
                                     "gradient; try a lower --lr or check the data")
        return self.loss_sum.item() / good, self.prec_sum.item() / good

    def timing(self) -> dict:
        """Where the epoch's time went, for the log and result/timing.jsonl."""
        elapsed = time.perf_counter() - self.started
        return {"lr": self.totals.lr, "seconds": elapsed, "data_wait_seconds": self.data_wait,
                "data_wait_share": self.data_wait / elapsed, "samples_per_second": self.samples / elapsed,
                "nonfinite_steps": self.totals.nonfinite}
