"""What both embedders (a checkpoint's and an ONNX model's) do alike: the calibration and the verdict on a pair."""
from __future__ import annotations

from runtime.errors import ConfigError


class PairVerifier:
    """Turns a subclass's `score(enrol, test)` into `verify`: with a calibration also the pair's LLR, the
    probability of one speaker and the decision. Imports no torch."""

    calibration = None

    def load_calibration(self, path: str | None, scoring: str) -> None:
        """Load --calibration when given and check that it was fitted for this scoring without score
        normalisation (the evaluation package, imported here, needs the training requirements)."""
        if not path:
            return
        from evaluation.calibration import Calibration

        self.calibration = Calibration.load(path)
        if self.calibration.score_norm != "none":
            raise ConfigError(f"Calibration {path} was fitted on {self.calibration.score_norm}-normalised scores, but "
                              "verify scores a pair without score normalisation: fit one with trainSpeakerNet.py "
                              "--eval --score_norm none --fit_calibration")
        if self.calibration.scoring != scoring:
            raise ConfigError(f"Calibration {path} was fitted on --scoring {self.calibration.scoring} scores, but "
                              f"these are --scoring {scoring}; give --scoring {self.calibration.scoring}")

    def verify(self, enrol: str, test: str, p_target: float = 0.5) -> dict:
        """Score a pair; with a calibration also its LLR, the probability of one speaker and the decision."""
        result = {"score": self.score(enrol, test)}
        if self.calibration:
            result.update(self.calibration.decide(result["score"], p_target))
        return result
