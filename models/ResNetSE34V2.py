"""ResNetSE34V2: half-width SE-ResNet-34 (32-256 filters) with channel-wise attentive pooling (SAP / ASP)."""
from __future__ import annotations

import torch
from torch import nn

from models.FrontEnd import (
    PreEmphasis,
    check_input_length,
    conv_length,
    mel_filterbank,
    min_samples_for,
    normalised_features,
)
from models.Pooling import attentive_pooling, check_encoder
from models.ResNetBlocks import SEBasicBlock, init_resnet_weights, make_layer


class ResNetSEV2(nn.Module):
    """Pre-emphasis + mel front end -> SE-ResNet (no stem stride) -> attention over time per channel -> linear."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_filters: list[int], nOut: int,
                 encoder_type: str = "SAP", n_mels: int = 40, log_input: bool = True,
                 model_name: str = "ResNetSE34V2", block_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__()
        check_encoder(encoder_type, ("SAP", "ASP"), model_name)
        self.model_name = model_name
        self.encoder_type = encoder_type
        self.log_input = log_input
        self.n_mels = n_mels
        block_kwargs = block_kwargs or {}

        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = make_layer(block, num_filters[0], num_filters[0], layers[0], **block_kwargs)
        self.layer2 = make_layer(block, num_filters[0], num_filters[1], layers[1], stride=(2, 2), **block_kwargs)
        self.layer3 = make_layer(block, num_filters[1], num_filters[2], layers[2], stride=(2, 2), **block_kwargs)
        self.layer4 = make_layer(block, num_filters[2], num_filters[3], layers[3], stride=(2, 2), **block_kwargs)
        self.torchfb = nn.Sequential(PreEmphasis(), mel_filterbank(n_mels, torch.hamming_window, f_max=8000))

        # frequency bins left after three stride-2 stages (= n_mels // 8 when n_mels is a multiple of 8)
        outmap_size = self._strided(n_mels)
        channels = num_filters[3] * block.expansion * outmap_size
        self.attention = nn.Sequential(
            nn.Conv1d(channels, 128, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(128),
            nn.Conv1d(128, channels, kernel_size=1),
            nn.Softmax(dim=2),
        )
        out_dim = channels if encoder_type == "SAP" else channels * 2
        self.fc = nn.Linear(out_dim, nOut)
        init_resnet_weights(self)
        self.min_samples = min_samples_for(self._strided)

    @staticmethod
    def _strided(size: int) -> int:
        """Length of an axis after the three stride-2 stages."""
        for _ in range(3):
            size = conv_length(size, 3, 2, 1)
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = normalised_features(self.torchfb, x, self.log_input)
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, C * freq, T']
        weights = self.attention(x)
        x = attentive_pooling(x, weights, dim=2, with_std=self.encoder_type == "ASP")
        return self.fc(x)


def MainModel(nOut: int = 256, **kwargs) -> nn.Module:
    """Build ResNetSE34V2 (blocks 3-4-6-3, filters 32-64-128-256)."""
    return ResNetSEV2(SEBasicBlock, [3, 4, 6, 3], [32, 64, 128, 256], nOut, **kwargs)
