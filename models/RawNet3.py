"""RawNet3: raw-waveform speaker embedding (sinc filterbank front end, Res2Net blocks, channel-context pooling).

Layers, forward pass and state_dict keys follow the original's models/RawNet3.py with its fixed settings (model
scale 8, context pooling, summed layer3 input, log sinc magnitudes with mean normalisation, no output
BatchNorm), so the original's release `models/weights/RawNet3/model.pt` loads. `bn1` and `bn6` are kept for
those keys but, as in the original, are not used.
"""
from __future__ import annotations

import torch
from torch import nn

from models.FrontEnd import check_input_length, conv_length
from models.Pooling import attentive_pooling, check_encoder
from models.RawNetBlocks import Bottle2neck, ChannelPreEmphasis
from models.SincFilterbank import SincConv

SINC_FILTERS = 256
SINC_KERNEL = 251
CHANNELS = 1024
EMBED_CHANNELS = 1536


def context_statistics(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, 3C, T]: x with its time mean and time std (clamped variance) repeated over time."""
    frames = x.shape[-1]
    mean = x.mean(dim=2, keepdim=True).expand(-1, -1, frames)
    std = x.var(dim=2, keepdim=True).clamp(min=1e-4, max=1e4).sqrt().expand(-1, -1, frames)
    return torch.cat((x, mean, std), dim=1)


class RawNet3(nn.Module):
    """Waveform [B, samples] -> speaker embedding [B, nOut]."""

    def __init__(self, nOut: int, encoder_type: str, sinc_stride: int) -> None:
        super().__init__()
        check_encoder(encoder_type, ("ECA", "ASP"), "RawNet3")
        if int(sinc_stride) < 1:
            raise ValueError(f"RawNet3: --sinc_stride must be a positive number of samples, got {sinc_stride}")
        self.sinc_stride = int(sinc_stride)
        self.preprocess = nn.Sequential(ChannelPreEmphasis(), nn.InstanceNorm1d(1, eps=1e-4, affine=True))
        self.conv1 = SincConv(SINC_FILTERS, SINC_KERNEL, stride=self.sinc_stride)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm1d(SINC_FILTERS)  # unused, kept for the original's keys
        self.layer1 = Bottle2neck(SINC_FILTERS, CHANNELS, kernel_size=3, dilation=2, scale=8, pool=5)
        self.layer2 = Bottle2neck(CHANNELS, CHANNELS, kernel_size=3, dilation=3, scale=8, pool=3)
        self.layer3 = Bottle2neck(CHANNELS, CHANNELS, kernel_size=3, dilation=4, scale=8)
        self.layer4 = nn.Conv1d(3 * CHANNELS, EMBED_CHANNELS, kernel_size=1)
        # ECA: one attention weight per channel and frame; ASP: one per frame, shared by all channels
        attention_channels = EMBED_CHANNELS if encoder_type == "ECA" else 1
        self.attention = nn.Sequential(
            nn.Conv1d(3 * EMBED_CHANNELS, 128, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(128),
            nn.Conv1d(128, attention_channels, kernel_size=1),
            nn.Softmax(dim=2),
        )
        self.bn5 = nn.BatchNorm1d(2 * EMBED_CHANNELS)
        self.fc6 = nn.Linear(2 * EMBED_CHANNELS, nOut)
        self.bn6 = nn.BatchNorm1d(nOut)  # unused (the original's out_bn is off), kept for its keys
        self.mp3 = nn.MaxPool1d(3)
        self.min_samples = self._min_samples()

    def frames(self, samples: int) -> int:
        """Frames left for pooling from an input of `samples` samples."""
        return conv_length(conv_length(conv_length(samples, SINC_KERNEL, self.sinc_stride), 5, 5), 3, 3)

    def _min_samples(self) -> int:
        """Shortest input that leaves two frames (the time std needs two)."""
        samples = SINC_KERNEL
        while self.frames(samples) < 2:
            samples += self.sinc_stride
        return samples

    def sinc_features(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> mean-normalised log sinc magnitudes [B, 256, frames], in float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.preprocess(x.float())
            x = torch.log(self.conv1(x).abs() + 1e-6)
            return x - x.mean(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, "RawNet3")
        x = self.sinc_features(x)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(self.mp3(x1) + x2)
        x = self.relu(self.layer4(torch.cat((self.mp3(x1), x2, x3), dim=1)))
        weights = self.attention(context_statistics(x))
        statistics = attentive_pooling(x, weights, dim=2, with_std=True, variance_bounds=(1e-4, 1e4))
        return self.fc6(self.bn5(statistics))


# Options of this model (flag --name and YAML key): name -> (type, default, help).
OPTIONS = {"sinc_stride": (int, 10, "RawNet3 sinc-conv stride")}


def MainModel(nOut: int = 256, encoder_type: str = "ECA", sinc_stride: int = 10, **kwargs) -> nn.Module:
    """Build RawNet3 (the original's settings; other arguments are ignored)."""
    return RawNet3(nOut, encoder_type, sinc_stride)
