"""wespeaker-style ResNets on a mean-normalised fbank map: plain basic and bottleneck blocks, statistics pooling.

Shared by ResNet34, ResNet221 and ResNet293 (and the 2-D head of CAMPPlus). Unlike ResNetBlocks.py these blocks
have no squeeze-excitation and apply BatchNorm before each ReLU.
"""
from __future__ import annotations

import torch
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length, conv_length, min_frames_for
from models.ResNetBlocks import make_layer
from models.StatsPooling import statistics_pooling

BASE_WIDTH = 32  # wespeaker's m_channels: channels of the stem and the first stage; stages 2-4 double it each time
# The options ResNet34, ResNet221 and ResNet293 declare (their OPTIONS): the temporal pooling and the embedding.
RESNET_OPTIONS = {
    "pooling": (str, "TSTP", "ResNet34/152/221/293: temporal pooling: TSTP (mean and std over time), ASTP (attentive "
                             "statistics), TAP (mean), TSDP (std), MHASTP (2-head attentive), MQMHASTP (2 queries "
                             "of 8 channel-wise heads), as wespeaker's ResNets, or ASP (attentive statistics with "
                             "a ReLU and BatchNorm bottleneck, the SimAM-ResNets' default)"),
    "m_channels": (int, BASE_WIDTH, "ResNet34/152/221/293: channels of the stem and the first stage, doubled by each "
                                    "later stage (wespeaker's m_channels; released models: 32)"),
    "two_emb_layer": (bool, False, "ResNet34/152/221/293: a second embedding layer (linear, ReLU, BatchNorm without "
                                   "affine, linear) as wespeaker's two_emb_layer; the embedding is its output"),
}

# The SimAM-ResNets' (twice as wide, ASP pooling by default).
SIMAM_OPTIONS = {**RESNET_OPTIONS, "pooling": (str, "ASP", RESNET_OPTIONS["pooling"][2]),
                 "m_channels": (int, 64, RESNET_OPTIONS["m_channels"][2])}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and ReLU, plus the (possibly projected) input."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + residual)


def simam(x: torch.Tensor, energy_floor: float = 1e-4) -> torch.Tensor:
    """SimAM, parameter-free attention (Yang et al., 2021): each value of [B, C, H, W] gated by the sigmoid of its
    inverse energy (x - mean)^2 / (4 (var + floor)) + 0.5, with the channel's mean and unbiased variance over the
    map."""
    squared = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    variance = squared.sum(dim=(2, 3), keepdim=True) / (x.shape[2] * x.shape[3] - 1)
    return x * torch.sigmoid(squared / (4 * (variance + energy_floor)) + 0.5)


class SimAMBasicBlock(BasicBlock):
    """A basic block whose second convolution's output is reweighted by SimAM before the shortcut is added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(simam(self.bn2(self.conv2(out))) + residual)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions widening to 4x `planes`, plus the (possibly projected) input."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + residual)


def halved_three_times(size: int) -> int:
    """Length of an axis after three stride-2 3x3 convolutions (padding 1)."""
    for _ in range(3):
        size = conv_length(size, 3, 2, 1)
    return size


class FbankResNet(nn.Module):
    """Waveform -> fbank [B, 1, n_mels, T] -> 3x3 stem -> four stages (stride 2 in 2-4) -> pooling -> linear (-> ReLU,
    BatchNorm, linear with two_emb_layer)."""

    takes_frontend = True

    def __init__(self, block: type[nn.Module], layers: list[int], nOut: int, n_mels: int, pooling: str,
                 model_name: str, two_emb_layer: bool = False, m_channels: int = BASE_WIDTH, **frontend) -> None:
        super().__init__()
        self.model_name = model_name
        if m_channels < 1:
            raise ValueError(f"{model_name}: --m_channels must be at least 1, got {m_channels}")
        widths = [m_channels * 2 ** stage for stage in range(4)]
        self.fbank = build_frontend(n_mels, **frontend)
        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(block, m_channels, widths[0], layers[0])
        self.layer2 = make_layer(block, widths[0] * block.expansion, widths[1], layers[1], stride=2)
        self.layer3 = make_layer(block, widths[1] * block.expansion, widths[2], layers[2], stride=2)
        self.layer4 = make_layer(block, widths[2] * block.expansion, widths[3], layers[3], stride=2)
        pooled_channels = widths[3] * block.expansion * halved_three_times(self.fbank.feature_dim)
        self.pool = statistics_pooling(pooling, pooled_channels, model_name)
        self.embedding = nn.Linear(self.pool.out_dim, nOut)
        self.second_embedding = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(nOut, affine=False),
                                              nn.Linear(nOut, nOut)) if two_emb_layer else nn.Identity()
        # the pooled time std needs two frames after the three time strides
        self.min_samples = self.fbank.min_samples(min_frames_for(lambda frames: halved_three_times(frames) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = self.relu(self.bn1(self.conv1(self.fbank(x).unsqueeze(1))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.second_embedding(self.embedding(self.pool(x)))


def simam_resnet(layers: list[int], model_name: str):
    """The model plug-in's entry point of a SimAM-ResNet with `layers` basic blocks per stage."""
    def build_model(nOut: int = 256, n_mels: int = 80, pooling: str = "ASP", two_emb_layer: bool = False,
                  m_channels: int = 64, **kwargs) -> nn.Module:
        return FbankResNet(SimAMBasicBlock, layers, nOut, n_mels, pooling, model_name, two_emb_layer, m_channels,
                           **frontend_settings(kwargs))

    build_model.__doc__ = f"Build {model_name}."
    build_model.takes_frontend = True  # as its network class: SpeakerNet lists it
    return build_model
