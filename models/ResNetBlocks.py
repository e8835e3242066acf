"""Residual building blocks with squeeze-excitation (ResNet basic, bottleneck, Res2Net), shared by the models."""
from __future__ import annotations

import torch
from torch import nn


class SELayer(nn.Module):
    """Squeeze-excitation: rescale each channel by a gate computed from its global average."""

    def __init__(self, channel: int, reduction: int = 8) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate [B, C, H, W] channel-wise."""
        b, c = x.shape[:2]
        gate = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * gate


class SEBasicBlock(nn.Module):
    """Two 3x3 convolutions (ReLU before the first BatchNorm, as the original) with SE and a residual."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + residual)


class SEBottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) bottleneck with SE and a residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes * 4, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + residual)


class SERes2NetBlock(nn.Module):
    """Res2Net block with SE: 1x1 conv, `scale` channel groups with hierarchical 3x3 convs, 1x1 conv, residual.

    Group i (except the last) sees its own channels plus the output of group i-1, so the block mixes
    several receptive-field sizes. A strided block convolves the groups independently and average-pools
    the last group, as Res2Net does at the start of a stage.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None, scale: int = 4, reduction: int = 8) -> None:
        super().__init__()
        if scale < 2 or planes % scale:
            raise ValueError(f"res2net_scale must be at least 2 and divide the stage width {planes}; got {scale}")
        width = planes // scale
        self.scale = scale
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        self.pool = None if stride in (1, (1, 1)) else nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(planes, planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes, reduction)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to [B, C, H, W]."""
        residual = x if self.downsample is None else self.downsample(x)
        groups = torch.chunk(self.relu(self.bn1(self.conv1(x))), self.scale, dim=1)
        outputs: list[torch.Tensor] = []
        for group, conv, bn in zip(groups, self.convs, self.bns):
            if outputs and self.pool is None:
                group = group + outputs[-1]
            outputs.append(self.relu(bn(conv(group))))
        outputs.append(groups[-1] if self.pool is None else self.pool(groups[-1]))
        out = self.se(self.bn3(self.conv3(torch.cat(outputs, dim=1))))
        return self.relu(out + residual)


def make_layer(block: type[nn.Module], inplanes: int, planes: int, blocks: int,
               stride: int | tuple[int, int] = 1, **block_kwargs) -> nn.Sequential:
    """Stack `blocks` blocks; the first one gets the stride and a 1x1 conv + BN shortcut when shapes change."""
    downsample = None
    if stride not in (1, (1, 1)) or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, **block_kwargs)]
    layers += [block(planes * block.expansion, planes, **block_kwargs) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_resnet_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) for every Conv2d; BatchNorm2d weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
