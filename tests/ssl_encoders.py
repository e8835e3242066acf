"""Tiny random self-supervised encoders of each kind the ssl front end takes, written as transformers folders
(config.json and weights) for the tests: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

WAVEFORM_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        conv_dim=(16, 16, 16), conv_kernel=(10, 8, 4), conv_stride=(5, 8, 8),  # 20 ms frames
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
KINDS = ("wavlm", "hubert", "wav2vec2", "wav2vec2-bert")


def tiny_config(kind: str):
    """A two-layer, 32-wide configuration of `kind` (transformers' model_type)."""
    from transformers import HubertConfig, Wav2Vec2BertConfig, Wav2Vec2Config, WavLMConfig

    if kind == "wavlm":
        return WavLMConfig(**WAVEFORM_ENCODER, num_buckets=32, max_bucket_distance=64)
    if kind == "hubert":
        return HubertConfig(**WAVEFORM_ENCODER)
    if kind == "wav2vec2":  # the large models' layout: layer norm first and after the last layer
        return Wav2Vec2Config(**WAVEFORM_ENCODER, do_stable_layer_norm=True, feat_extract_norm="layer")
    return Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              output_hidden_size=32, conv_depthwise_kernel_size=3, feature_projection_input_dim=160)


def write_tiny_encoder(kind: str, folder: Path, seed: int = 0) -> str:
    """Save a seeded random encoder of `kind` to `folder`; its path."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(kind)).save_pretrained(folder)
    return str(folder)
