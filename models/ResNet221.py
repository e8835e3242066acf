"""ResNet221 (wespeaker): bottleneck blocks 6-16-48-3, widths 32-256 (x4), stats pooling, linear embedding.

Runs on a mean-normalised fbank (the recipes set --n_mels 80 and --nOut 256). The pooling is chosen with
--pooling (TSTP or ASTP); --encoder_type and --log_input are ignored (the features are always log mel).
"""
from __future__ import annotations

from torch import nn

from models.Fbanks import frontend_settings
from models.ResNetFamily import POOLING_OPTION, Bottleneck, FbankResNet

OPTIONS = {"pooling": POOLING_OPTION}


def MainModel(nOut: int = 256, n_mels: int = 80, pooling: str = "TSTP", **kwargs) -> nn.Module:
    """Build ResNet221 (23.79M parameters with 80 mels, nOut 256 and TSTP)."""
    return FbankResNet(Bottleneck, [6, 16, 48, 3], nOut, n_mels, pooling, "ResNet221", **frontend_settings(kwargs))
