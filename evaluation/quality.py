"""Quality measures of trials for quality-aware calibration (QMF): durations, embedding norms, cohort statistics."""
from __future__ import annotations

import math

import numpy as np
import soundfile
import torch

from audio.reading import SAMPLE_RATE, load_crops
from runtime.errors import ConfigError

# --calibration_quality term -> the per-file measures it adds (each enters a trial as its two sides' min and max)
TERMS = {"duration": ("log_duration",), "norm": ("norm",), "cohort": ("cohort_mean", "cohort_std")}


def parse_terms(text: str, score_norm: str) -> tuple[str, ...]:
    """The terms of --calibration_quality ('duration,norm,cohort'); unknown terms and cohort without a score
    normalisation are errors."""
    terms = tuple(dict.fromkeys(term.strip() for term in text.split(",") if term.strip()))
    unknown = [term for term in terms if term not in TERMS]
    if unknown:
        raise ConfigError(f"--calibration_quality: unknown term {unknown[0]!r}; choose from {', '.join(TERMS)}")
    if "cohort" in terms and score_norm == "none":
        raise ConfigError("--calibration_quality cohort needs the cohort statistics of --score_norm asnorm or snorm")
    return terms


def feature_names(terms: tuple[str, ...]) -> list[str]:
    """The trial features of these terms, in the order the calibration stores them."""
    return [f"{measure}_{side}" for term in terms for measure in TERMS[term] for side in ("min", "max")]


def measures_of(names: list[str]) -> set[str]:
    """The per-file measures that these trial features need."""
    return {name.rsplit("_", 1)[0] for name in names}


def log_duration(path: str) -> float:
    """Natural log of a file's duration in seconds (from its header; decoded when the header cannot tell)."""
    try:
        seconds = soundfile.info(path).duration
    except (RuntimeError, soundfile.LibsndfileError):
        seconds = load_crops(path, 0, True, 1).shape[-1] / SAMPLE_RATE
    return math.log(max(seconds, 1e-3))


def file_measures(paths: list[str], embeddings: list[torch.Tensor], needed: set[str],
                  cohort_mean: np.ndarray | None = None, cohort_std: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Per-file measures (one value per path): log duration, mean crop-embedding norm, cohort mean and std."""
    measures = {}
    if "log_duration" in needed:
        measures["log_duration"] = np.array([log_duration(path) for path in paths])
    if "norm" in needed:
        measures["norm"] = np.array([float(crops.float().norm(dim=-1).mean()) for crops in embeddings])
    if "cohort_mean" in needed:
        measures["cohort_mean"], measures["cohort_std"] = cohort_mean, cohort_std
    return measures


def trial_features(measures: dict[str, np.ndarray], names: list[str], enrol_rows: np.ndarray,
                   test_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each named feature per trial: the min or max of the enrol-side and test-side measure."""
    features = {}
    for name in names:
        measure, side = name.rsplit("_", 1)
        pair = np.stack([measures[measure][enrol_rows], measures[measure][test_rows]])
        features[name] = pair.min(0) if side == "min" else pair.max(0)
    return features
