"""ResNetSE34L: the "fast ResNet-34" (quarter-width, 16-128 filters) of "In defence of metric learning"."""
from __future__ import annotations

import torch
from torch import nn

from models.FrontEnd import check_input_length, mel_filterbank, min_samples_for, normalised_features
from models.Pooling import attentive_pooling, check_encoder, self_attention_weights
from models.ResNetBlocks import SEBasicBlock, init_resnet_weights, make_layer


class ResNetSE(nn.Module):
    """Mel front end -> SE-ResNet (freq-strided stem) -> mean over frequency -> SAP/ASP -> linear embedding."""

    model_name = "ResNetSE34L"
    center = True  # whether the front end pads the signal (STFT center=True)

    def __init__(self, block: type[nn.Module], layers: list[int], num_filters: list[int], nOut: int,
                 encoder_type: str = "SAP", n_mels: int = 40, log_input: bool = True,
                 layer4_stride: tuple[int, int] = (1, 1), **kwargs) -> None:
        super().__init__()
        check_encoder(encoder_type, ("SAP", "ASP"), self.model_name)
        self.encoder_type = encoder_type
        self.log_input = log_input
        self.n_mels = n_mels

        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(block, num_filters[0], num_filters[0], layers[0])
        self.layer2 = make_layer(block, num_filters[0], num_filters[1], layers[1], stride=(2, 2))
        self.layer3 = make_layer(block, num_filters[1], num_filters[2], layers[2], stride=(2, 2))
        self.layer4 = make_layer(block, num_filters[2], num_filters[3], layers[3], stride=layer4_stride)
        self.torchfb = self.make_front_end(n_mels)

        channels = num_filters[3] * block.expansion
        self.sap_linear = nn.Linear(channels, channels)
        self.attention = nn.Parameter(torch.empty(channels, 1))
        nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(channels if encoder_type == "SAP" else channels * 2, nOut)
        init_resnet_weights(self)
        self.min_samples = min_samples_for(lambda frames: frames, self.center)  # time strides keep >= 1 frame

    def make_front_end(self, n_mels: int) -> nn.Module:
        """Mel spectrogram with a Hamming window (a checkpoint's window buffer replaces it on load)."""
        return mel_filterbank(n_mels, window_fn=torch.hamming_window)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """First convolution block on features [B, 1, bins, frames]."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = self.stem(normalised_features(self.torchfb, x, self.log_input))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(dim=2).transpose(1, 2)  # [B, T', C]
        weights = self_attention_weights(x, self.sap_linear, self.attention)
        x = attentive_pooling(x, weights, dim=1, with_std=self.encoder_type == "ASP")
        return self.fc(x)


def MainModel(nOut: int = 256, **kwargs) -> nn.Module:
    """Build ResNetSE34L (blocks 3-4-6-3, filters 16-32-64-128)."""
    return ResNetSE(SEBasicBlock, [3, 4, 6, 3], [16, 32, 64, 128], nOut, **kwargs)
