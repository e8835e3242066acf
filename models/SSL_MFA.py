"""SSL_MFA: multi-layer feature aggregation of a self-supervised encoder (--frontend ssl), as in the w2v-BERT 2.0
speaker-verification recipe: each hidden layer goes through its own small adapter (linear, layer norm, ReLU,
linear), the adapted layers are concatenated along channels, attentive statistics pooling and a linear layer give
the embedding. --mfa_layers keeps only the last N hidden layers.
"""
from __future__ import annotations

import torch
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length
from models.StatsPooling import AttentiveStatsPooling

OPTIONS = {"mfa_adapter_dim": (int, 128, "SSL_MFA: width of each layer's adapter (and of the pooling's attention)"),
           "mfa_layers": (int, 0, "SSL_MFA: aggregate the last N hidden layers (0: all)")}


def layer_adapter(hidden: int, width: int) -> nn.Module:
    """One hidden layer's adapter, [B, T, hidden] -> [B, T, width]."""
    return nn.Sequential(nn.Linear(hidden, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width))


class SSL_MFA(nn.Module):
    """Waveform -> ssl encoder (all layers) -> per-layer adapters -> concatenation -> ASTP -> linear."""

    model_name = "SSL_MFA"
    takes_frontend = True
    pools_encoder_layers = True  # needs --frontend ssl

    def __init__(self, nOut: int, adapter_dim: int, layers: int, **frontend) -> None:
        super().__init__()
        self.fbank = build_frontend(0, stacked=True, **frontend)
        available = self.fbank.num_layers
        self.layers = layers or available
        if not 1 <= self.layers <= available or adapter_dim < 1:
            raise ValueError(f"SSL_MFA: --mfa_layers must be 0 (all) or 1 to {available} (the encoder's hidden "
                             f"layers) and --mfa_adapter_dim at least 1, got {layers} and {adapter_dim}")
        self.adapters = nn.ModuleList(layer_adapter(self.fbank.hidden_size, adapter_dim) for _ in range(self.layers))
        self.pool = AttentiveStatsPooling(adapter_dim * self.layers, adapter_dim)
        self.embedding = nn.Linear(self.pool.out_dim, nOut)
        self.min_samples = self.fbank.min_samples(2)  # the pooled std needs two frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        stacked = self.fbank(x)[:, -self.layers:].transpose(2, 3)  # [B, layers, T, hidden]
        adapted = torch.cat([adapter(stacked[:, index]) for index, adapter in enumerate(self.adapters)], dim=-1)
        return self.embedding(self.pool(adapted.transpose(1, 2)))


def MainModel(nOut: int = 256, mfa_adapter_dim: int = 128, mfa_layers: int = 0, **kwargs) -> nn.Module:
    """Build SSL_MFA on the --frontend ssl encoder given by --ssl_source."""
    return SSL_MFA(nOut, mfa_adapter_dim, mfa_layers, **frontend_settings(kwargs))
