"""Res2NetSE34: ResNetSE34V2's front end, stages and pooling with SE-Res2Net blocks (our design; never published)."""
from __future__ import annotations

from torch import nn

from models.ResNetBlocks import SERes2NetBlock
from models.ResNetSE34V2 import ResNetSEV2

# Options of this model (flag --name and YAML key): name -> (type, default, help).
OPTIONS = {"res2net_scale": (int, 4, "Res2NetSE34: channel groups per block (2, 4, 8, 16 or 32)")}


def MainModel(nOut: int = 256, res2net_scale: int = 4, **kwargs) -> nn.Module:
    """Build Res2NetSE34 (blocks 3-4-6-3, filters 32-64-128-256, `res2net_scale` channel groups per block)."""
    return ResNetSEV2(SERes2NetBlock, [3, 4, 6, 3], [32, 64, 128, 256], nOut, model_name="Res2NetSE34",
                      block_kwargs={"scale": res2net_scale}, **kwargs)
