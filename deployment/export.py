"""ONNX and TorchScript export of an embedding model, front end included, checked against PyTorch right after."""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from deployment.onnx_embedder import METADATA_KEY
from deployment.spectrogram import replace_spectrograms
from runtime.atomic_files import atomic_write
from runtime.errors import UserError

OPSET = 17
SAMPLE_RATE = 16000
MIN_COSINE = 0.99999  # per clip, between float32 embeddings
# Clip lengths in seconds: the tracing example (batch 2), then two clips checked alone and together (batch 2)
CLIP_SECONDS = (2.0, 3.1, 2.6)
FORMAT_TAGS = {"onnx": "voxceleb_trainer_next-onnx/1", "torchscript": "voxceleb_trainer_next-torchscript/1"}


class ExportError(UserError, RuntimeError):
    """An export that failed or whose output does not match the PyTorch model."""


@dataclass
class Parity:
    """How closely the exported model reproduces PyTorch: the worst clip's cosine and largest absolute difference."""

    min_cosine: float
    max_abs_diff: float
    clips: int

    def text(self) -> str:
        """One line of the measured figures."""
        return (f"min cosine {self.min_cosine:.8f} (cosine distance {1 - self.min_cosine:.1e}), "
                f"max |diff| {self.max_abs_diff:.2e} over {self.clips} clips")


def parity_clips(seconds: tuple[float, float, float] = CLIP_SECONDS) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(tracing example [2, samples], checked batches): clip A and clip B alone, then both cut to B's length.

    The audio is reproducible: a voiced tone with harmonics plus noise, different for every clip."""
    generator = torch.Generator().manual_seed(0)

    def clip(length: float, pitch: float) -> torch.Tensor:
        t = torch.arange(int(length * SAMPLE_RATE)) / SAMPLE_RATE
        voiced = sum(torch.sin(2 * torch.pi * pitch * harmonic * t) / harmonic for harmonic in range(1, 12))
        noise = 0.02 * torch.randn(len(t), generator=generator)
        return 0.1 * voiced * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t)) + noise

    example = torch.stack([clip(seconds[0], 110.0), clip(seconds[0], 190.0)])
    first, second = clip(seconds[1], 130.0), clip(seconds[2], 220.0)
    cut = second.shape[0]
    return example, [first[None], second[None], torch.stack([first[:cut], second])]


def compare(reference: np.ndarray, exported: np.ndarray) -> tuple[float, float]:
    """(smallest per-row cosine, largest absolute difference) of two [batch, D] embedding arrays."""
    if reference.shape != exported.shape:
        raise ExportError(f"The exported model returns shape {list(exported.shape)}, PyTorch {list(reference.shape)}")
    reference, exported = reference.astype(np.float64), exported.astype(np.float64)
    cosine = (reference * exported).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(exported, axis=1))
    return float(cosine.min()), float(np.abs(reference - exported).max())


Runner = Callable[[np.ndarray], np.ndarray]  # float32 waveforms [batch, samples] -> embeddings [batch, D]


def measure_parity(model: nn.Module, run_exported: Runner, batches: list[torch.Tensor]) -> Parity:
    """Run every batch through the PyTorch model and the exported one."""
    cosines, differences = [], []
    for batch in batches:
        with torch.no_grad():
            reference = model(batch).numpy()
        cosine, difference = compare(reference, np.asarray(run_exported(batch.numpy()), dtype=np.float32))
        cosines.append(cosine)
        differences.append(difference)
    return Parity(min(cosines), max(differences), sum(batch.shape[0] for batch in batches))


def onnx_runner(path: str | os.PathLike) -> Runner:
    """A function running a [batch, samples] float32 array through the ONNX file with onnxruntime on the CPU."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda audio: session.run(None, {name: audio.astype(np.float32)})[0]


def torchscript_runner(path: str | os.PathLike) -> Runner:
    """A function running a [batch, samples] float32 array through the saved TorchScript module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is marked deprecated; it still loads what it saved
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(audio: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(audio)).numpy()
    return run


def write_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, metadata: dict) -> None:
    """Trace `model` to ONNX (opset OPSET; batch and samples axes dynamic), the spectrograms as DFT convolutions."""
    exportable = copy.deepcopy(model).eval()
    replace_spectrograms(exportable)
    torch.onnx.export(exportable, (example,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["waveform"], output_names=["embedding"],
                      dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}})
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(graph, str(path))


def write_torchscript(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, metadata: dict) -> None:
    """Trace `model` to TorchScript (torch.stft kept), with the settings as an extra file."""
    with torch.no_grad():
        traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


WRITERS = {"onnx": (write_onnx, onnx_runner), "torchscript": (write_torchscript, torchscript_runner)}


def export_model(net: nn.Module, settings: dict, kind: str, output: str, min_cosine: float = MIN_COSINE,
                 seconds: tuple[float, float, float] = CLIP_SECONDS) -> Parity:
    """Export SpeakerNet `net`'s embedding model to `output` and check it; below `min_cosine` nothing is written."""
    model = net.__S__.eval()
    metadata = {"format": FORMAT_TAGS[kind], "sample_rate": SAMPLE_RATE, "opset": OPSET if kind == "onnx" else None,
                "test_normalize": bool(net.__L__.test_normalize), **settings}
    write, runner = WRITERS[kind]
    example, batches = parity_clips(seconds)
    with atomic_write(output) as temporary:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write(model, example, temporary, metadata)
        except Exception as error:  # the exporters raise many types for an unsupported operation
            raise ExportError(f"{kind} export of {settings.get('model')} failed: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from error
        parity = measure_parity(model, runner(temporary), batches)
        if not parity.min_cosine >= min_cosine:
            raise ExportError(f"The {kind} export of {settings.get('model')} differs from PyTorch: {parity.text()}; "
                              f"needs cosine >= {min_cosine}. Nothing was written to {output}")
    print(f"Wrote {kind}{f' (opset {OPSET})' if kind == 'onnx' else ''} {output}: parity with PyTorch at batch 1 "
          f"and 2, {min(seconds[1:]):g}-{max(seconds[1:]):g} s clips (traced on {seconds[0]:g} s): {parity.text()}")
    return parity
