"""MHFA: multi-head factorised attentive pooling over a self-supervised encoder's layers (--frontend ssl).

A light back end (Peng et al., SLT 2022): keys and values are two learnt softmax-weighted sums of all the
encoder's hidden layers, each compressed by a linear layer; each attention head weighs the frames from the keys
(softmax over time) and pools the compressed values; the heads' pooled values, concatenated, go through a linear
layer to the embedding.
"""
from __future__ import annotations

import torch
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length

OPTIONS = {"mhfa_heads": (int, 64, "MHFA: attention heads"),
           "mhfa_compression": (int, 128, "MHFA: width of the compressed keys and values")}


class LayerWeightedSum(nn.Module):
    """Softmax-weighted sum of stacked layers [B, layers, C, T] -> [B, C, T], the weights learnt (equal at first)."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return torch.einsum("l,blct->bct", torch.softmax(self.weights, dim=0).to(stacked.dtype), stacked)


class MHFA(nn.Module):
    """Waveform -> ssl encoder (all layers) -> keys and values -> multi-head attentive pooling -> linear."""

    model_name = "MHFA"
    takes_frontend = True
    pools_encoder_layers = True  # needs --frontend ssl

    def __init__(self, nOut: int, heads: int, compression: int, **frontend) -> None:
        super().__init__()
        if heads < 1 or compression < 1:
            raise ValueError(f"MHFA: --mhfa_heads and --mhfa_compression must be at least 1, got {heads} and "
                             f"{compression}")
        self.fbank = build_frontend(0, stacked=True, **frontend)
        layers, hidden = self.fbank.num_layers, self.fbank.hidden_size
        self.key_layers, self.value_layers = LayerWeightedSum(layers), LayerWeightedSum(layers)
        self.compress_keys = nn.Linear(hidden, compression)
        self.compress_values = nn.Linear(hidden, compression)
        self.attention = nn.Linear(compression, heads)
        self.embedding = nn.Linear(heads * compression, nOut)
        self.min_samples = self.fbank.min_samples(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        stacked = self.fbank(x)  # [B, layers, hidden, T]
        keys = self.compress_keys(self.key_layers(stacked).transpose(1, 2))  # [B, T, compression]
        values = self.compress_values(self.value_layers(stacked).transpose(1, 2))
        attention = torch.softmax(self.attention(keys), dim=1)  # [B, T, heads], over time
        pooled = torch.einsum("bth,btc->bhc", attention, values)
        return self.embedding(pooled.flatten(1))


def MainModel(nOut: int = 256, mhfa_heads: int = 64, mhfa_compression: int = 128, **kwargs) -> nn.Module:
    """Build MHFA on the --frontend ssl encoder given by --ssl_source."""
    return MHFA(nOut, mhfa_heads, mhfa_compression, **frontend_settings(kwargs))
