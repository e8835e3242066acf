"""Requests between training steps: a checkpoint on a timer, a checkpoint and a stop on SIGTERM/SIGINT."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import torch

from runtime import distributed


@dataclass
class RunControl:
    """Requests between training steps: checkpoint on a timer, checkpoint and stop on SIGTERM/SIGINT."""

    checkpoint_minutes: float = 0.0
    signal_received: int | None = None
    last_save: float = field(default_factory=time.monotonic)

    def install_signal_handlers(self) -> None:
        """Record SIGTERM/SIGINT instead of dying, so the loop can checkpoint first."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._record)

    def _record(self, signum, frame) -> None:
        self.signal_received = signum

    def poll(self, device: torch.device) -> tuple[bool, bool]:
        """(save now, stop now), agreed over all ranks."""
        stop = self.signal_received is not None
        due = self.checkpoint_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.checkpoint_minutes
        save, stop = distributed.any_rank([stop or due, stop], device)
        if save:
            self.last_save = time.monotonic()
        return save, stop
