"""VGGVox40 ("VGG-M-40"): a VGG-M CNN on 40 log-mel bands with MAX, TAP or SAP pooling."""
from __future__ import annotations

import torch
from torch import nn

from models.FrontEnd import check_input_length, conv_length, mel_filterbank, min_samples_for, normalised_features
from models.Pooling import attentive_pooling, check_encoder, self_attention_weights

N_MELS = 40


def _conv_bn_relu(in_channels: int, out_channels: int, **conv_kwargs) -> list[nn.Module]:
    """Conv2d (with bias) -> BatchNorm2d -> ReLU."""
    return [nn.Conv2d(in_channels, out_channels, **conv_kwargs), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _frames_after_cnn(frames: int) -> int:
    """Time frames left after `netcnn` (only the strided layers change the length)."""
    frames = conv_length(frames, 7, 2, 2)
    frames = conv_length(frames, 3, 2)
    frames = conv_length(frames, 5, 2, 1)
    frames = conv_length(frames, 3, 2)
    return conv_length(frames, 3, 2)


class VGGVox(nn.Module):
    """Mel front end (Hann window, 40 bands) -> VGG-M CNN -> MAX / TAP / SAP over time -> linear embedding."""

    def __init__(self, nOut: int = 1024, encoder_type: str = "SAP", log_input: bool = True, **kwargs) -> None:
        super().__init__()
        check_encoder(encoder_type, ("SAP", "TAP", "MAX"), "VGGVox")
        self.encoder_type = encoder_type
        self.log_input = log_input
        # Sequential indices are part of the checkpoint keys (netcnn.0 ... netcnn.19)
        self.netcnn = nn.Sequential(
            *_conv_bn_relu(1, 96, kernel_size=(5, 7), stride=(1, 2), padding=(2, 2)),
            nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2)),
            *_conv_bn_relu(96, 256, kernel_size=(5, 5), stride=(2, 2), padding=(1, 1)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_conv_bn_relu(256, 384, kernel_size=(3, 3), padding=(1, 1)),
            *_conv_bn_relu(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            *_conv_bn_relu(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_conv_bn_relu(256, 512, kernel_size=(4, 1), padding=(0, 0)),
        )
        if encoder_type == "SAP":
            self.sap_linear = nn.Linear(512, 512)
            self.attention = nn.Parameter(torch.empty(512, 1))
            nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(512, nOut)
        self.torchfb = mel_filterbank(N_MELS, torch.hann_window, f_max=8000)
        self.min_samples = min_samples_for(_frames_after_cnn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, "VGGVox")
        x = self.netcnn(normalised_features(self.torchfb, x, self.log_input))  # [B, 512, 1, T']
        if self.encoder_type == "MAX":
            x = x.amax(dim=(2, 3))
        elif self.encoder_type == "TAP":
            x = x.mean(dim=(2, 3))
        else:
            x = x.flatten(2).transpose(1, 2)  # [B, T', 512]
            x = attentive_pooling(x, self_attention_weights(x, self.sap_linear, self.attention), 1, False)
        return self.fc(x)


def MainModel(nOut: int = 1024, **kwargs) -> nn.Module:
    """Build VGGVox40 (the VGG-M network on 40 mel bands; n_mels is fixed)."""
    return VGGVox(nOut=nOut, **kwargs)
