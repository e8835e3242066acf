"""Released models of wespeaker, 3D-Speaker and SpeechBrain, rebuilt for tests from small committed fixtures.

A fixture (`tests/fixtures/peers/<case>.json`, written by `tests/fixtures/peers/make_peer_fixtures.py` from the
peers' own code) stores no weights: every tensor of a release is a deterministic function of (case, key, shape,
kind) drawn with numpy's `default_rng(seed).random`, which gives the same bits on every platform. The fixture
keeps the key names, shapes, dtypes and kinds in order, the release's text files, and the embeddings that the
peer's own inference pipeline gave for the audio files in `tests/fixtures/audio/`. BatchNorm statistics carry one
stored scale and shift per layer (an entry `[key, shape, dtype, kind, scale, shift]`, value = base * scale + shift):
the generator sets them from the variance and mean that reach the layer on the audio, as training would, so that
deep residual networks stay numerically healthy (without it a ResNet293's activations grow by 2 ** 48). `write_release` writes the
files exactly as the toolkit publishes them; the test hands the returned path to the importer.

Needs only numpy, torch and PyYAML; never imports a peer.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PEER_FIXTURES = FIXTURES / "peers"
AUDIO_DIR = FIXTURES / "audio"
AUDIO_FILES = ("stella.wav", "birch.wav")

WESPEAKER_CASES = (
    "wespeaker_resnet34",
    "wespeaker_resnet34_two_emb",
    "wespeaker_resnet34_tap",
    "wespeaker_resnet34_tsdp",
    "wespeaker_resnet34_astp",
    "wespeaker_resnet34_mhastp",
    "wespeaker_resnet34_mqmhastp",
    "wespeaker_resnet221",
    "wespeaker_resnet293",
    "wespeaker_simam_resnet34",
    "wespeaker_ecapa_tdnn_glob_c512",
    "wespeaker_ecapa_tdnn_glob_c1024",
    "wespeaker_ecapa_tdnn_c512",
    "wespeaker_campplus",
    "wespeaker_redimnet2_b6",
)
THREED_SPEAKER_CASES = ("3dspeaker_campplus_voxceleb", "3dspeaker_campplus_cn_common",
                        "3dspeaker_eres2netv2_cn_common")
SPEECHBRAIN_CASES = ("speechbrain_ecapa_voxceleb",)
REDIMNET_CASES = ("redimnet_b0", "redimnet_b1", "redimnet_b5")
REDIMNET2_CASES = ("redimnet2_b0", "redimnet2_b6", "redimnet2_b6_vb2")
CASES = WESPEAKER_CASES + THREED_SPEAKER_CASES + SPEECHBRAIN_CASES + REDIMNET_CASES + REDIMNET2_CASES

# Value ranges by kind: uniform in [low, high); "weight" is He-uniform (variance 2 / fan_in) and "count" an integer.
RANGES = {
    "bias": (-0.05, 0.05),
    "bn_weight": (0.5, 1.5),
    "bn_bias": (-0.2, 0.2),
    "bn_mean": (-0.2, 0.2),
    "bn_var": (0.5, 2.0),
    "uniform": (-0.2, 0.2),
    "count": (1000, 100000),
}
KINDS = ("weight", *RANGES)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def infer_kind(key: str, shape: tuple[int, ...] | list[int]) -> str:
    """The kind of a state-dict entry from its name and shape alone (fixtures store the kind explicitly)."""
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return "count"
    if name == "running_mean":
        return "bn_mean"
    if name == "running_var":
        return "bn_var"
    if name == "weight":
        return "weight" if len(shape) >= 2 else "bn_weight"
    if name == "bias":
        return "bias"
    return "uniform"


def _seed(case: str, key: str, shape: tuple[int, ...], kind: str) -> int:
    """A 128-bit seed from the identity of one tensor."""
    text = f"{case}\n{key}\n{'x'.join(str(n) for n in shape)}\n{kind}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "little")


def seeded_tensor(case: str, key: str, shape, dtype: str | torch.dtype, kind: str | None = None,
                  scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """The deterministic tensor of one state-dict entry: base * scale + shift, the base drawn in the kind's range.

    `kind` defaults to `infer_kind(key, shape)`; "count" entries ignore scale and shift.
    """
    shape = tuple(int(n) for n in shape)
    kind = kind or infer_kind(key, shape)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} for {key}")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    count = math.prod(shape)
    uniform = np.random.default_rng(_seed(case, key, shape, kind)).random(count)  # float64 in [0, 1)
    if kind == "weight":
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        bound = math.sqrt(6.0 / fan_in)  # uniform(-b, b) has variance b^2 / 3 = 2 / fan_in
        values = ((2.0 * uniform - 1.0) * bound).reshape(shape[0], -1)
        if values.shape[1] > 1:  # each output unit's weights sum to zero: a constant input offset does not pass on
            values = values - values.mean(axis=1, keepdims=True)
        values = values.reshape(-1)
    else:
        low, high = RANGES[kind]
        values = low + (high - low) * uniform
        if kind == "count":
            values = np.floor(values)
    if kind != "count" and (scale != 1.0 or shift != 0.0):
        values = values * float(scale) + float(shift)
    if torch_dtype.is_floating_point:
        array = values.astype(np.float32 if torch_dtype == torch.float32 else np.float64)
    else:
        array = values.astype(np.int64)
    return torch.from_numpy(array.reshape(shape)).to(torch_dtype)


def seeded_state_dict(case: str, entries) -> dict[str, torch.Tensor]:
    """An ordered state dict from `[key, shape, dtype, kind, scale, shift]` entries (the last three optional)."""
    return {entry[0]: seeded_tensor(case, *entry) for entry in entries}


def load_case(name: str) -> dict:
    """The fixture of one case: toolkit, peer version, model, release files and the peer's embeddings."""
    path = PEER_FIXTURES / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no peer fixture {path}; cases are {', '.join(CASES)}")
    return json.loads(path.read_text(encoding="utf-8"))


def release_payload(case: dict, filename: str) -> dict:
    """The object that `torch.save` writes to one weight file of the release."""
    spec = case["release"]["weights"][filename]
    payload: dict = dict(spec.get("values_before", {}))
    tensors = seeded_state_dict(case["case"], spec["tensors"])
    if spec.get("wrapped_in"):  # {"model_config": ..., "state_dict": {tensors}}
        payload[spec["wrapped_in"]] = tensors
    else:
        payload.update(tensors)
    payload.update(spec.get("values_after", {}))
    return payload


def write_release(case: dict, folder: Path) -> Path:
    """Write the case's release into `folder` as its toolkit publishes it; returns the path for `--checkpoint`."""
    folder = Path(folder)
    release = case["release"]
    root = folder / release["folder"] if release.get("folder") else folder
    root.mkdir(parents=True, exist_ok=True)
    for filename, text in release.get("texts", {}).items():
        (root / filename).write_text(text, encoding="utf-8")
    for filename in release["weights"]:
        torch.save(release_payload(case, filename), root / filename)
    return root / release["checkpoint"] if release["checkpoint"] != "." else root


def peer_embedding(case: dict, audio_file: str) -> torch.Tensor:
    """The embedding the peer's own pipeline gave for one of the fixture audio files (float32, 1-D)."""
    return torch.tensor(case["embeddings"][audio_file], dtype=torch.float32)
