"""AAM-softmax whose margin grows during training: 0 for the first --margin_start epochs, then rising to --margin
by --margin_end epochs on wespeaker's exponential-shaped curve, fixed afterwards (wespeaker's ResNet34 recipe).

With s = the epochs trained so far (fractions within an epoch count), the margin is
    0                                                 for s < margin_start,
    margin * (1 - 0.001 ** ((s - margin_start) / (margin_end - margin_start)))   in between,
    margin                                            for s >= margin_end.
The trainer sets it before every step through set_epoch_progress, so it is right after a resume too. The logits
are those of loss/aamsoftmax.py at the current margin (same --scale, --easy_margin, --aam_fallback and
--classifier_init)."""
from __future__ import annotations

from loss.aamsoftmax import LossFunction as AAMSoftmax
from loss.LossHelpers import AAM_OPTIONS, MARGIN_SCHEDULE_OPTIONS, MarginSchedule

OPTIONS = {**AAM_OPTIONS, **MARGIN_SCHEDULE_OPTIONS}


class LossFunction(AAMSoftmax):
    """aamsoftmax with the margin `self.m` following the margin schedule; it starts at the schedule's value at 0."""

    def __init__(self, margin: float = 0.3, margin_start: float = 20.0, margin_end: float = 40.0,
                 **kwargs) -> None:
        super().__init__(margin=margin, **kwargs)
        self.final_margin = margin
        self.schedule = MarginSchedule(margin_start, margin_end)
        self.set_epoch_progress(0.0)

    def set_epoch_progress(self, epochs_done: float) -> None:
        """Set the margin for training after `epochs_done` epochs."""
        self.m = self.final_margin * self.schedule.share(epochs_done)
