"""3D-Speaker releases: the CAM++ or ERes2NetV2 state-dict file as ModelScope publishes it (e.g. campplus_voxceleb.bin,
pretrained_eres2netv2.ckpt), with no config: the sizes come from the tensors, the front end is 3D-Speaker's (Kaldi
filterbank, Povey window, audio in [-1, 1], mean normalisation)."""
from __future__ import annotations

import os
import re

import torch

from importers.release_files import ImportedRelease, ReleaseError, read_state_dict
from importers.transfer import Rule
from importers.wespeaker import CAMPPLUS_RULES
from models.CAMPPlus import HEAD_CHANNELS

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CAMPPLUS_KEYS = ("head.conv1.weight", "xvector.tdnn.linear.weight", "xvector.dense.linear.weight")
ERES2NETV2_KEYS = ("conv1.weight", "layer1.0.conv3.weight", "layer4.0.conv1.weight", "layer3_ds.weight",
                   "fuse34.local_att.0.weight", "seg_1.weight")
ERES2NETV2_RULES: list[Rule] = [
    (r"\.shortcut\.", ".downsample."), (r"\.fuse_models\.", ".fuses."), (r"\.local_att\.", ".attention."),
    (r"^layer3_ds\.", "layer3_downsample."), (r"^fuse34\.", "fuse."), (r"^seg_1\.", "embedding."),
]
FRONT_END = {"frontend": "kaldi", "frontend_window": "povey", "waveform_scale": 1.0, "dither": 0.0, "mean_norm": True}


def weights_file(path: str) -> str:
    """The state-dict file itself, or the only one inside a downloaded model folder."""
    if not os.path.isdir(path):
        return path
    found = sorted(name for name in os.listdir(path) if name.endswith(WEIGHT_SUFFIXES))
    if len(found) != 1:
        raise ReleaseError(f"--checkpoint {path}: give the 3D-Speaker weights file itself (found "
                           f"{', '.join(found) or 'no .bin/.pt/.ckpt file'} in the folder)")
    return os.path.join(path, found[0])


def campplus_settings(weights: dict[str, torch.Tensor]) -> dict:
    """CAMPPlus settings read off a CAM++ state dict's shapes."""
    head_channels = weights["xvector.tdnn.linear.weight"].shape[1]  # HEAD_CHANNELS x (n_mels // 8)
    return {"model": "CAMPPlus", "nOut": int(weights["xvector.dense.linear.weight"].shape[0]),
            "n_mels": 8 * int(head_channels) // HEAD_CHANNELS,
            "variance_floor": 0.0}  # 3D-Speaker pools with a plain std, no floor


def eres2netv2_settings(weights: dict[str, torch.Tensor]) -> dict:
    """ERes2NetV2 settings read off its state dict's shapes (the released 80 mels; 3D-Speaker sizes the embedding
    layer for feat_dim // 8 frequency bins)."""
    m_channels = int(weights["conv1.weight"].shape[0])
    expansion = int(weights["layer1.0.conv3.weight"].shape[0]) // m_channels
    scale = sum(bool(re.fullmatch(r"layer1\.0\.convs\.\d+\.weight", key)) for key in weights)
    last_width = int(weights["layer4.0.conv1.weight"].shape[0]) // scale  # floor(8 m_channels x baseWidth / 64)
    pooled_channels = 8 * m_channels * expansion
    return {"model": "ERes2NetV2", "nOut": int(weights["seg_1.weight"].shape[0]),
            "n_mels": 8 * (int(weights["seg_1.weight"].shape[1]) // (2 * pooled_channels)),
            "m_channels": m_channels, "base_width": -(-8 * last_width // m_channels), "res2net_scale": scale,
            "expansion": expansion}


def read(path: str) -> ImportedRelease:
    """Read a 3D-Speaker CAM++ or ERes2NetV2 release (its state-dict file)."""
    path = weights_file(path)
    weights = read_state_dict(path)
    if all(key in weights for key in CAMPPLUS_KEYS):
        settings, name, rules = campplus_settings(weights), "CAM++", CAMPPLUS_RULES
    elif all(key in weights for key in ERES2NETV2_KEYS):
        settings, name, rules = eres2netv2_settings(weights), "ERes2NetV2", ERES2NETV2_RULES
    else:
        raise ReleaseError(f"{path} is not a 3D-Speaker CAM++ state dict (no {', '.join(CAMPPLUS_KEYS)}) nor an "
                           f"ERes2NetV2 one (no {', '.join(ERES2NETV2_KEYS)}); importable 3D-Speaker models: CAM++, "
                           "ERes2NetV2")
    return ImportedRelease("3dspeaker", f"{name} ({settings['nOut']}-d)", {**settings, **FRONT_END}, weights, rules,
                           (), [path])
