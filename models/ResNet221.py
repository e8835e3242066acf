"""ResNet221 (wespeaker): bottleneck blocks 6-16-48-3, widths 32-256 (x4), stats pooling, linear embedding.

Runs on a mean-normalised fbank (the recipes set --n_mels 80 and --nOut 256). The pooling is chosen with
--pooling (TSTP, ASTP and wespeaker's other poolings), with --two_emb_layer for a second embedding layer;
--encoder_type and --log_input are ignored (the features are always log mel).
"""
from __future__ import annotations

from torch import nn

from models.Fbanks import frontend_settings
from models.ResNetFamily import RESNET_OPTIONS, Bottleneck, FbankResNet

OPTIONS = dict(RESNET_OPTIONS)


def MainModel(nOut: int = 256, n_mels: int = 80, pooling: str = "TSTP", two_emb_layer: bool = False,
              m_channels: int = 32, **kwargs) -> nn.Module:
    """Build ResNet221 (23.79M parameters with 80 mels, nOut 256 and TSTP)."""
    return FbankResNet(Bottleneck, [6, 16, 48, 3], nOut, n_mels, pooling, "ResNet221", two_emb_layer, m_channels,
                       **frontend_settings(kwargs))
