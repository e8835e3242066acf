"""ResNetSE34: the "Thin ResNet-34" of the paper (|STFT| input, max-pooled stem, every stage strided)."""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

from models.FrontEnd import (HOP_LENGTH, N_FFT, WIN_LENGTH, check_input_length, min_samples_for,
                             normalised_features)
from models.Pooling import attentive_pooling, check_encoder, self_attention_weights
from models.ResNetBlocks import SEBasicBlock, init_resnet_weights, make_layer


class ThinResNetSE(nn.Module):
    """Magnitude spectrogram (257 bins) -> SE-ResNet with 3x3 max-pool stem -> mean over frequency -> SAP/ASP."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_filters: list[int], nOut: int,
                 encoder_type: str = "SAP", log_input: bool = False, **kwargs) -> None:
        super().__init__()
        check_encoder(encoder_type, ("SAP", "ASP"), "ResNetSE34")
        self.encoder_type = encoder_type
        self.log_input = log_input

        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxPool = nn.MaxPool2d(kernel_size=3, stride=(2, 1), padding=1)
        self.layer1 = make_layer(block, num_filters[0], num_filters[0], layers[0])
        self.layer2 = make_layer(block, num_filters[0], num_filters[1], layers[1], stride=(2, 2))
        self.layer3 = make_layer(block, num_filters[1], num_filters[2], layers[2], stride=(2, 2))
        self.layer4 = make_layer(block, num_filters[2], num_filters[3], layers[3], stride=(2, 2))
        self.torchfb = torchaudio.transforms.Spectrogram(
            n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH, window_fn=torch.hann_window,
            center=False, power=1.0)

        channels = num_filters[3] * block.expansion
        self.sap_linear = nn.Linear(channels, channels)
        self.attention = nn.Parameter(torch.empty(channels, 1))
        nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(channels if encoder_type == "SAP" else channels * 2, nOut)
        init_resnet_weights(self)
        self.min_samples = min_samples_for(lambda frames: frames, center=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, "ResNetSE34")
        x = normalised_features(self.torchfb, x, self.log_input)
        x = self.maxPool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(dim=2).transpose(1, 2)  # [B, T', C]
        weights = self_attention_weights(x, self.sap_linear, self.attention)
        x = attentive_pooling(x, weights, dim=1, with_std=self.encoder_type == "ASP")
        return self.fc(x)


def MainModel(nOut: int = 256, **kwargs) -> nn.Module:
    """Build ResNetSE34 / Thin ResNet-34 (blocks 3-4-6-3, filters 16-32-64-128)."""
    return ThinResNetSE(SEBasicBlock, [3, 4, 6, 3], [16, 32, 64, 128], nOut, **kwargs)
