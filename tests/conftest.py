"""Shared test set-up: the project root on sys.path and a tiny generated speaker corpus."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


def speaker_tone(speaker: int, seconds: float, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """A voiced, speaker-specific waveform: harmonics of a speaker pitch with a speaker formant, plus noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 90.0 + 35.0 * speaker + rng.uniform(-3, 3)
    formant = 500.0 + 400.0 * (speaker % 4)
    wave = np.zeros_like(t)
    for harmonic in range(1, 30):
        frequency = pitch * harmonic
        if frequency > 7000:
            break
        gain = np.exp(-((frequency - formant) / 400.0) ** 2) + 0.1 / harmonic
        wave += gain * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    wave = wave * envelope + 0.05 * rng.standard_normal(len(t))
    return (0.3 * wave / np.max(np.abs(wave))).astype(np.float32)


def write_corpus(root: Path, speakers: int, utterances: int, seconds: float, seed: int) -> list[str]:
    """Write `<root>/<speaker>/<session>/<NNNNN>.wav` files; returns their relative paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for speaker in range(speakers):
        for utterance in range(utterances):
            relative = f"id{speaker:05d}/sess{utterance % 2}/{utterance:05d}.wav"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(root / relative, speaker_tone(speaker, seconds, rng), 16000)
            paths.append(relative)
    return paths


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict:
    """6 train speakers x 4 utterances and 3 test speakers x 2 utterances of 1.5 s, with lists."""
    root = tmp_path_factory.mktemp("corpus")
    train = write_corpus(root / "train", speakers=6, utterances=4, seconds=1.5, seed=1)
    (root / "train_list.txt").write_text("".join(f"{path.split('/')[0]} {path}\n" for path in train))
    test = write_corpus(root / "test", speakers=3, utterances=2, seconds=1.5, seed=2)
    trials = []
    for i, enrol in enumerate(test):
        for test_path in test[i + 1:]:
            trials.append(f"{int(enrol.split('/')[0] == test_path.split('/')[0])} {enrol} {test_path}\n")
    (root / "test_list.txt").write_text("".join(trials))
    return {"root": root, "train_list": str(root / "train_list.txt"), "train_path": str(root / "train"),
            "test_list": str(root / "test_list.txt"), "test_path": str(root / "test"), "trials": len(trials)}


def pytest_collection_modifyitems(items) -> None:
    """Tests without the integration marker form the unit tier (`bash test.sh -m unit`)."""
    for item in items:
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)
