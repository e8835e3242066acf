"""ERes2NetV2 (Chen et al., Interspeech 2024; 3D-Speaker's enhanced Res2Net, version 2) on a mean-normalised fbank.

A 3x3 stem and four stages of 3, 4, 6 and 3 Res2Net blocks with widths 64-512 (--m_channels doubled per stage), each
block's output --expansion times its width. A block: a 1x1 convolution (strided in the first block of stages 2-4)
widens to --res2net_scale groups of floor(width x --base_width / 64) channels; every group goes through a 3x3
convolution after taking in the previous group's output, added (stages 1-2) or mixed by attentional feature fusion
(AFF, stages 3-4); a 1x1 convolution restores the channels before the shortcut. The activations inside the blocks
are ReLUs clipped at 20. Stage 3's output, strided by a 3x3 convolution, is fused with stage 4's by one more AFF;
statistics pooling (TSTP, fixed) feeds a linear embedding. The recipes and releases use 80 mels and Kaldi's fbank.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length, min_frames_for
from models.ResNetFamily import halved_three_times
from models.StatsPooling import TemporalStatsPooling

OPTIONS = {
    "m_channels": (int, 64, "channels of the stem and the first stage, doubled by each later stage (wespeaker's and "
                            "3D-Speaker's m_channels; released ResNets: 32, SimAM-ResNets and ERes2NetV2: 64)"),
    "base_width": (int, 26, "ERes2NetV2: each Res2Net group has floor(stage width x base_width / 64) channels "
                            "(3D-Speaker's baseWidth; releases: 26, or 24 with scale 4 and expansion 4)"),
    "res2net_scale": (int, 2, "channel groups per Res2Net block (Res2NetSE34: 2, 4, 8, 16 or 32, default 4; "
                              "ERes2NetV2: 3D-Speaker's scale, default 2)"),
    "expansion": (int, 2, "ERes2NetV2: a block's output channels are its stage width times this (3D-Speaker's "
                          "expansion)"),
}
STAGE_BLOCKS = (3, 4, 6, 3)
FUSED_STAGES = 2  # the last two stages join their Res2Net groups with AFF
ACTIVATION_CLIP = 20.0
FUSION_REDUCTION = 4
VARIANCE_FLOOR = 1e-8  # 3D-Speaker's TSTP


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU capped at ACTIVATION_CLIP, the activation inside ERes2NetV2's blocks."""
    return F.hardtanh(x, 0.0, ACTIVATION_CLIP)


class AttentionalFusion(nn.Module):
    """AFF: two maps of the same shape mixed element by element, x (1 + g) + y (1 - g), with g = tanh of a 1x1 conv
    bottleneck (BatchNorm, SiLU) over both maps."""

    def __init__(self, channels: int, reduction: int = FUSION_REDUCTION) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Conv2d(2 * channels, channels // reduction, kernel_size=1), nn.BatchNorm2d(channels // reduction),
            nn.SiLU(), nn.Conv2d(channels // reduction, channels, kernel_size=1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fuse x and y [B, C, H, W]."""
        gate = torch.tanh(self.attention(torch.cat([x, y], dim=1)))
        return x * (1 + gate) + y * (1 - gate)


class ERes2NetV2Block(nn.Module):
    """1x1 conv (strided) into `scale` groups, each group's 3x3 conv fed the previous group's output (added, or
    fused with AFF when `fused`), 1x1 conv to `planes` x `expansion` channels, plus the (projected) input."""

    def __init__(self, in_channels: int, planes: int, stride: int, base_width: int, scale: int, expansion: int,
                 fused: bool) -> None:
        super().__init__()
        self.width = planes * base_width // 64
        self.conv1 = nn.Conv2d(in_channels, self.width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(self.width, self.width, kernel_size=3, padding=1, bias=False)
                                   for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(scale))
        self.fuses = nn.ModuleList(AttentionalFusion(self.width) for _ in range(scale - 1)) if fused else None
        self.conv3 = nn.Conv2d(self.width * scale, planes * expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.downsample = None
        if stride != 1 or in_channels != planes * expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, planes * expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        groups = clipped_relu(self.bn1(self.conv1(x))).split(self.width, dim=1)
        outputs: list[torch.Tensor] = []
        for index, (group, conv, bn) in enumerate(zip(groups, self.convs, self.bns)):
            if outputs:
                group = self.fuses[index - 1](outputs[-1], group) if self.fuses is not None else outputs[-1] + group
            outputs.append(clipped_relu(bn(conv(group))))
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        return clipped_relu(out + (x if self.downsample is None else self.downsample(x)))


class ERes2NetV2(nn.Module):
    """Waveform -> fbank [B, 1, n_mels, T] -> stem -> four Res2Net stages -> AFF of stages 3 and 4 -> TSTP -> linear."""

    model_name = "ERes2NetV2"
    takes_frontend = True

    def __init__(self, nOut: int, n_mels: int, m_channels: int, base_width: int, res2net_scale: int, expansion: int,
                 **frontend) -> None:
        super().__init__()
        for flag, value in (("m_channels", m_channels), ("res2net_scale", res2net_scale), ("expansion", expansion)):
            if value < 1:
                raise ValueError(f"ERes2NetV2: --{flag} must be at least 1, got {value}")
        if m_channels * base_width < 64:
            raise ValueError(f"ERes2NetV2: --base_width {base_width} with --m_channels {m_channels} leaves the first "
                             f"stage's Res2Net groups without channels (m_channels x base_width must be at least 64)")
        self.fbank = build_frontend(n_mels, **frontend)
        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        channels = m_channels
        for stage, blocks in enumerate(STAGE_BLOCKS):
            planes = m_channels * 2 ** stage
            layers = []
            for index in range(blocks):
                stride = 2 if stage and not index else 1
                layers.append(ERes2NetV2Block(channels, planes, stride, base_width, res2net_scale, expansion,
                                              fused=stage >= len(STAGE_BLOCKS) - FUSED_STAGES))
                channels = planes * expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.layer3_downsample = nn.Conv2d(channels // 2, channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.fuse = AttentionalFusion(channels)
        self.pool = TemporalStatsPooling(channels * halved_three_times(self.fbank.feature_dim),
                                         variance_floor=VARIANCE_FLOOR)
        self.embedding = nn.Linear(self.pool.out_dim, nOut)
        # the pooled time std needs two frames after the three time strides
        self.min_samples = self.fbank.min_samples(min_frames_for(lambda frames: halved_three_times(frames) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = torch.relu(self.bn1(self.conv1(self.fbank(x).unsqueeze(1))))
        stage3 = self.layer3(self.layer2(self.layer1(x)))
        x = self.fuse(self.layer4(stage3), self.layer3_downsample(stage3))
        return self.embedding(self.pool(x))


def MainModel(nOut: int = 192, n_mels: int = 80, m_channels: int = 64, base_width: int = 26, res2net_scale: int = 2,
              expansion: int = 2, **kwargs) -> nn.Module:
    """Build ERes2NetV2 (17,859,632 parameters at 80 mels and nOut 192, 3D-Speaker's published 17.8M)."""
    return ERes2NetV2(nOut, n_mels, m_channels, base_width, res2net_scale, expansion, **frontend_settings(kwargs))
