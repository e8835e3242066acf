"""Embed audio and score pairs with an ONNX model from exportModel.py, on onnxruntime, numpy and soundfile alone.

Imports no torch: the crops come from audio.reading (numpy, soundfile; scipy only to resample non-16 kHz files)
and the scores are computed in numpy the way --eval computes them. Only --calibration loads the evaluation
package (which needs the training requirements)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime

from audio.file_lists import check_files_exist
from audio.reading import load_crops
from deployment.pair_verifier import PairVerifier
from runtime.errors import ConfigError, MissingFileError

METADATA_KEY = "speakernet"  # ONNX metadata / TorchScript extra file holding the settings as JSON
SETTINGS_OF_CROPS = {"eval_frames": int, "num_eval": int, "scoring": str}  # what a user may still choose


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_score(enrol: np.ndarray, test: np.ndarray, normalize: bool, scoring: str) -> float:
    """--eval's score of two files' crops [crops, D]: minus the mean crop distance ("original") or the cosine of
    the means of the unit-length crops ("cosine")."""
    if scoring == "cosine":
        return float(unit_rows(unit_rows(enrol).mean(0)) @ unit_rows(unit_rows(test).mean(0)))
    if normalize:
        enrol, test = unit_rows(enrol), unit_rows(test)
    distances = np.sqrt(((enrol[:, None, :].astype(np.float64) - test[None, :, :]) ** 2).sum(-1))
    return float(-distances.mean())


class OnnxEmbedder(PairVerifier):
    """An exported ONNX model ready to embed files and verify pairs like embedSpeaker's SpeakerEmbedder."""

    def __init__(self, path: str, calibration_path: str | None = None, threads: int = 0, **overrides):
        if not os.path.isfile(path):
            raise MissingFileError(f"ONNX model not found: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for foreign or damaged files
            raise ConfigError(f"Cannot load ONNX model {path}: {str(error).splitlines()[0]}") from error
        stored = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if stored is None:
            raise ConfigError(f"{path} carries no speakernet settings; export it with exportModel.py --format onnx")
        self.settings = json.loads(stored)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in SETTINGS_OF_CROPS:
                raise ConfigError(f"--{name} does not apply to an ONNX model (its settings are inside it)")
            self.settings[name] = SETTINGS_OF_CROPS[name](value)
        self.input_name = self.session.get_inputs()[0].name
        self.load_calibration(calibration_path, self.settings["scoring"])

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Embeddings [batch, D] of 16 kHz waveforms [batch, samples]."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(audio, dtype=np.float32)})[0]

    def embed_files(self, files: list[str], root: str = "", num_workers: int = 0,
                    length_tolerance: float = 0.0) -> dict[str, np.ndarray]:
        """`[crops, D]` float32 embeddings of files (paths relative to root), cropped like --eval. Files go one at
        a time, so whole utterances are never trimmed: `length_tolerance` (kept for the torch path's call) and
        `num_workers` change nothing here."""
        check_files_exist([os.path.join(root, name) for name in files], "the files to embed")
        frames, crops = self.settings["eval_frames"], self.settings["num_eval"]
        return {name: self.embed(load_crops(os.path.join(root, name), frames, True, crops)) for name in files}

    def score(self, enrol: str, test: str) -> float:
        """The --eval score of one pair of files (before any score normalisation)."""
        embeddings = self.embed_files([enrol, test])
        return pair_score(embeddings[enrol], embeddings[test], bool(self.settings["test_normalize"]),
                          self.settings["scoring"])
