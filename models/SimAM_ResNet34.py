"""SimAM_ResNet34 (wespeaker's SimAM_ResNet34_ASP): basic blocks 3, 4, 6, 3 with SimAM attention before each
shortcut, widths 64-512, ASP pooling, one linear embedding.

The blocks are ResNet34's with the parameter-free SimAM gate (Yang et al., 2021) on the second convolution's
output; the network is twice as wide as ResNet34 (--m_channels 64) and pools with ASP (wespeaker's attentive
statistics pooling with a ReLU and BatchNorm bottleneck). Runs on any front end of the fbank models; the
published models use wespeaker's Kaldi fbank (80 mels, nOut 256).
"""
from __future__ import annotations

from torch import nn

from models.Fbanks import frontend_settings
from models.ResNetFamily import RESNET_OPTIONS, FbankResNet, SimAMBasicBlock

OPTIONS = {**RESNET_OPTIONS,
           "pooling": (str, "ASP", RESNET_OPTIONS["pooling"][2]),
           "m_channels": (int, 64, RESNET_OPTIONS["m_channels"][2])}


def MainModel(nOut: int = 256, n_mels: int = 80, pooling: str = "ASP", two_emb_layer: bool = False,
              m_channels: int = 64, **kwargs) -> nn.Module:
    """Build SimAM_ResNet34."""
    return FbankResNet(SimAMBasicBlock, [3, 4, 6, 3], nOut, n_mels, pooling, "SimAM_ResNet34", two_emb_layer,
                       m_channels, **frontend_settings(kwargs))
