"""CAM++ (Wang et al. 2023, as in 3D-Speaker and wespeaker): 2-D head, densely connected TDNN with masking.

A 2-D convolutional head (FCM, a small ResNet that strides frequency only) turns the fbank into frame features
for a strided TDNN layer and three densely connected TDNN blocks. Each D-TDNN layer (BN-ReLU, 1x1 conv to 128
channels, BN-ReLU, CAM) adds 32 channels to its block's input; transit layers halve the channels between
blocks. Context-aware masking (CAM) multiplies a dilated 3-frame convolution by a sigmoid mask computed from
the utterance mean plus the mean of the 100-frame segment around each frame. Statistics pooling (TSTP, so
--encoder_type is ignored) feeds a dense embedding layer: linear, then BatchNorm without affine parameters.
The features are always log mel (--log_input is ignored); the recipes set --n_mels 80.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length, conv_length, min_frames_for
from models.ResNetBlocks import make_layer
from models.ResNetFamily import BasicBlock, halved_three_times
from models.StatsPooling import VARIANCE_FLOOR, TemporalStatsPooling

OPTIONS = {"variance_floor": (float, VARIANCE_FLOOR, "CAMPPlus: added to each pooled variance before the square "
                                                   "root (wespeaker: 1e-7; 3D-Speaker's releases: 0)")}
HEAD_CHANNELS = 32
INIT_CHANNELS = 128
GROWTH_RATE = 32
BOTTLENECK_CHANNELS = 4 * GROWTH_RATE
DENSE_BLOCKS = ((12, 1), (24, 2), (16, 2))  # (layers, dilation) of each D-TDNN block, kernel 3
SEGMENT_FRAMES = 100


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm then ReLU over [B, C, T]."""
    return nn.Sequential(nn.BatchNorm1d(channels), nn.ReLU(inplace=True))


def segment_means(x: torch.Tensor, frames: int = SEGMENT_FRAMES) -> torch.Tensor:
    """[B, C, T] -> [B, C, T]: every frame gets the mean of its `frames`-long segment (the last may be shorter)."""
    means = F.avg_pool1d(x, kernel_size=frames, stride=frames, ceil_mode=True)
    return means.repeat_interleave(frames, dim=-1)[..., :x.shape[-1]]


class FCM(nn.Module):
    """2-D head: 3x3 stem, two stages of two residual blocks and a 3x3 conv, each striding frequency by 2."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, HEAD_CHANNELS, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(HEAD_CHANNELS)
        self.layer1 = make_layer(BasicBlock, HEAD_CHANNELS, HEAD_CHANNELS, 2, stride=(2, 1))
        self.layer2 = make_layer(BasicBlock, HEAD_CHANNELS, HEAD_CHANNELS, 2, stride=(2, 1))
        self.conv2 = nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, kernel_size=3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(HEAD_CHANNELS)
        self.out_channels = HEAD_CHANNELS * halved_three_times(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, n_mels, T] -> [B, out_channels, T] (channels x remaining frequency bins)."""
        x = torch.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = self.layer2(self.layer1(x))
        x = torch.relu(self.bn2(self.conv2(x)))
        return x.flatten(1, 2)


class ContextAwareMasking(nn.Module):
    """CAM: a dilated 3-frame convolution scaled by a mask from utterance- and segment-level context."""

    def __init__(self, channels: int, out_channels: int, dilation: int, reduction: int = 2) -> None:
        super().__init__()
        self.local = nn.Conv1d(channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation,
                               bias=False)
        self.squeeze = nn.Conv1d(channels, channels // reduction, kernel_size=1)
        self.excite = nn.Conv1d(channels // reduction, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, channels, T] -> [B, out_channels, T]."""
        context = x.mean(dim=-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.excite(torch.relu(self.squeeze(context))))
        return self.local(x) * mask


class DenseTDNNLayer(nn.Sequential):
    """BN-ReLU, 1x1 conv to the bottleneck, BN-ReLU, CAM: the GROWTH_RATE new channels of a D-TDNN layer."""

    def __init__(self, in_channels: int, dilation: int) -> None:
        super().__init__(
            bn_relu(in_channels),
            nn.Conv1d(in_channels, BOTTLENECK_CHANNELS, kernel_size=1, bias=False),
            bn_relu(BOTTLENECK_CHANNELS),
            ContextAwareMasking(BOTTLENECK_CHANNELS, GROWTH_RATE, dilation),
        )


class DenseTDNNBlock(nn.ModuleList):
    """Densely connected layers: each one sees the block input and every earlier layer's output."""

    def __init__(self, in_channels: int, layers: int, dilation: int) -> None:
        super().__init__(DenseTDNNLayer(in_channels + index * GROWTH_RATE, dilation) for index in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C + layers * GROWTH_RATE, T]."""
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def transit_layer(in_channels: int) -> nn.Sequential:
    """BN-ReLU then a 1x1 convolution halving the channels between D-TDNN blocks."""
    return nn.Sequential(bn_relu(in_channels), nn.Conv1d(in_channels, in_channels // 2, kernel_size=1, bias=False))


class CAMPPlus(nn.Module):
    """Waveform -> fbank -> FCM -> strided TDNN -> D-TDNN blocks with transits -> TSTP -> linear + BatchNorm."""

    model_name = "CAMPPlus"
    takes_frontend = True

    def __init__(self, nOut: int, n_mels: int, variance_floor: float = VARIANCE_FLOOR, **frontend) -> None:
        super().__init__()
        self.fbank = build_frontend(n_mels, **frontend)
        self.head = FCM(self.fbank.feature_dim)
        self.tdnn = nn.Sequential(
            nn.Conv1d(self.head.out_channels, INIT_CHANNELS, kernel_size=5, stride=2, padding=2, bias=False),
            bn_relu(INIT_CHANNELS),
        )
        blocks: list[nn.Module] = []
        channels = INIT_CHANNELS
        for layers, dilation in DENSE_BLOCKS:
            blocks += [DenseTDNNBlock(channels, layers, dilation), transit_layer(channels + layers * GROWTH_RATE)]
            channels = (channels + layers * GROWTH_RATE) // 2
        self.blocks = nn.Sequential(*blocks, bn_relu(channels))
        self.pool = TemporalStatsPooling(channels, variance_floor=variance_floor)
        self.embedding = nn.Linear(self.pool.out_dim, nOut, bias=False)
        self.embedding_bn = nn.BatchNorm1d(nOut, affine=False)
        self._init_weights()
        # the pooled time std needs two frames after the TDNN's time stride
        self.min_samples = self.fbank.min_samples(min_frames_for(lambda frames: conv_length(frames, 5, 2, 2) - 1))

    def _init_weights(self) -> None:
        """Kaiming-normal weights and zero biases for the 1-D convolutions and the linear layer, as CAM++ does."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = self.blocks(self.tdnn(self.head(self.fbank(x))))
        return self.embedding_bn(self.embedding(self.pool(x)))


def MainModel(nOut: int = 192, n_mels: int = 80, variance_floor: float = VARIANCE_FLOOR, **kwargs) -> nn.Module:
    """Build CAM++ (6.85M parameters at 80 mels and nOut 192; 7.18M at nOut 512, the published VoxCeleb size)."""
    return CAMPPlus(nOut, n_mels, variance_floor, **frontend_settings(kwargs))
