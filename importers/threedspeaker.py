"""3D-Speaker releases: the CAM++ state-dict file as ModelScope publishes it (e.g. campplus_voxceleb.bin),
with no config: the sizes come from the tensors, the front end is 3D-Speaker's (Kaldi filterbank, Povey window,
audio in [-1, 1], mean normalisation)."""
from __future__ import annotations

import os

from importers.release_files import ImportedRelease, ReleaseError, read_state_dict
from importers.wespeaker import CAMPPLUS_RULES
from models.CAMPPlus import HEAD_CHANNELS

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CAMPPLUS_KEYS = ("head.conv1.weight", "xvector.tdnn.linear.weight", "xvector.dense.linear.weight")


def weights_file(path: str) -> str:
    """The state-dict file itself, or the only one inside a downloaded model folder."""
    if not os.path.isdir(path):
        return path
    found = sorted(name for name in os.listdir(path) if name.endswith(WEIGHT_SUFFIXES))
    if len(found) != 1:
        raise ReleaseError(f"--checkpoint {path}: give the 3D-Speaker weights file itself (found "
                           f"{', '.join(found) or 'no .bin/.pt/.ckpt file'} in the folder)")
    return os.path.join(path, found[0])


def read(path: str) -> ImportedRelease:
    """Read a 3D-Speaker CAM++ release (its state-dict file)."""
    path = weights_file(path)
    weights = read_state_dict(path)
    if not all(key in weights for key in CAMPPLUS_KEYS):
        raise ReleaseError(f"{path} is not a 3D-Speaker CAM++ state dict (no {', '.join(CAMPPLUS_KEYS)}); "
                           "importable 3D-Speaker models: CAM++")
    head_channels = weights["xvector.tdnn.linear.weight"].shape[1]  # HEAD_CHANNELS x (n_mels // 8)
    settings = {"model": "CAMPPlus", "nOut": int(weights["xvector.dense.linear.weight"].shape[0]),
                "n_mels": 8 * int(head_channels) // HEAD_CHANNELS,
                "variance_floor": 0.0,  # 3D-Speaker pools with a plain std, no floor
                "frontend": "kaldi", "frontend_window": "povey", "waveform_scale": 1.0, "dither": 0.0,
                "mean_norm": True}
    return ImportedRelease("3dspeaker", f"CAM++ ({settings['nOut']}-d)", settings, weights, CAMPPLUS_RULES, (),
                           [path])
