"""RawNet3's building blocks: channel-keeping pre-emphasis, feature map scaling (AFMS) and the 1-D Res2Net block."""
from __future__ import annotations

import torch
from torch import nn

from models.FrontEnd import PreEmphasis


class ChannelPreEmphasis(PreEmphasis):
    """Pre-emphasis of a [B, T] waveform batch that returns [B, 1, T] (a one-channel signal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter [B, T] -> [B, 1, T]."""
        return super().forward(x).unsqueeze(1)


class AFMS(nn.Module):
    """Alpha feature map scaling: (x + alpha) * sigmoid(linear(time average of x)), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale [B, C, T] channel-wise."""
        gate = torch.sigmoid(self.fc(x.mean(dim=-1))).unsqueeze(-1)
        return (x + self.alpha) * gate


class Bottle2neck(nn.Module):
    """1x1 conv, a hierarchy of dilated convs over `scale` channel groups, 1x1 conv, residual, max-pool, AFMS.

    Every conv is followed by ReLU then BatchNorm, as in the original.
    """

    def __init__(self, inplanes: int, planes: int, kernel_size: int, dilation: int, scale: int,
                 pool: int = 0) -> None:
        super().__init__()
        self.width = planes // scale
        self.conv1 = nn.Conv1d(inplanes, self.width * scale, kernel_size=1)
        self.bn1 = nn.BatchNorm1d(self.width * scale)
        padding = kernel_size // 2 * dilation
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, kernel_size, dilation=dilation, padding=padding)
            for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))
        self.conv3 = nn.Conv1d(self.width * scale, planes, kernel_size=1)
        self.bn3 = nn.BatchNorm1d(planes)
        self.relu = nn.ReLU()
        self.mp = nn.MaxPool1d(pool) if pool else nn.Identity()
        self.afms = AFMS(planes)
        if inplanes != planes:
            self.residual = nn.Sequential(nn.Conv1d(inplanes, planes, kernel_size=1, bias=False))
        else:
            self.residual = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, inplanes, T] -> [B, planes, T // pool]."""
        residual = self.residual(x)
        groups = torch.split(self.bn1(self.relu(self.conv1(x))), self.width, dim=1)
        outputs = []
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            group = groups[index] if index == 0 else outputs[-1] + groups[index]
            outputs.append(bn(self.relu(conv(group))))
        outputs.append(groups[-1])
        out = self.bn3(self.relu(self.conv3(torch.cat(outputs, dim=1))))
        return self.afms(self.mp(out + residual))
