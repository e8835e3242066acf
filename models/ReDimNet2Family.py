"""ReDimNet2 (PalabraAI, Interspeech 2026): ReDimNet (models/ReDimNetFamily.py) with time pooling in its stages.

As in ReDimNet, every stage takes a learnt weighted sum of all earlier 1-D outputs [B, C * F, T], reshapes it to
2-D with its own (c, f) and folds frequency bins into channels, runs residual 2-D blocks and a time-context block.
What ReDimNet2 changes: each stage also pools time by its cumulative time stride (the folding convolution's kernel
and stride span (frequency stride, time stride), one group per input channel), so its 2-D and 1-D blocks run on
T / stride frames, and its output is repeated back to T frames (nearest upsampling) before the next aggregation.
Widening is squeezed back by a 1x1 convolution and BatchNorm; a 1x1 head can narrow the final sum, on the 1-D
sequence or (B6) per frequency bin. `dual_agg` hands the 2-D result and the time-context result of each stage on as
two outputs, `agg_gnorm` group-normalises every output before aggregation (the authors' VoxBlink2 B6).

The state-dict layout follows the authors' releases (PalabraAI/redimnet2), so `importModel.py --from redimnet2`
loads them with ReDimNet's renaming rule. SIZES holds the stage tables of wespeaker's port (ReDimNet2B0..B6).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.ReDimNetFamily import (
    NORM_EPS,
    REDIMNET_OPTIONS,
    ChannelNorm,
    PooledBackbone,
    ResidualBlock,
    TimeContextBlock,
    ToMap,
    ToSequence,
    WeightedSum,
    check_bins,
)

REDIMNET2_OPTIONS = {
    **REDIMNET_OPTIONS,
    "dual_agg": (bool, False, "ReDimNet2: each stage hands on its 2-D output and its time-context output as two "
                              "aggregation inputs (the authors' VoxBlink2 B6)"),
    "agg_gnorm": (bool, False, "ReDimNet2: GroupNorm (C groups) on every output before aggregation (the authors' "
                               "VoxBlink2 B6)"),
}
N_MELS = 72

# size: (C, head channels or None, head per frequency bin, stages as
#        (frequency stride, time stride, blocks, expansion, time-context reduction))
SIZES = {
    "B0": (12, 64, False, [(1, 1, 2, 2, 36), (2, 1, 3, 1, 36), (1, 2, 4, 1, 36), (2, 1, 5, 1, 36), (1, 2, 4, 1, 18),
                           (2, 1, 3, 1, 18)]),
    "B1": (16, 64, False, [(1, 1, 2, 2, 32), (2, 1, 3, 1, 32), (1, 2, 4, 1, 32), (2, 1, 5, 1, 32), (1, 2, 4, 1, 16),
                           (2, 1, 3, 1, 16)]),
    "B2": (20, 64, False, [(1, 1, 2, 2, 40), (2, 1, 3, 1, 30), (1, 2, 4, 1, 30), (3, 1, 5, 1, 20), (1, 2, 4, 1, 20),
                           (2, 1, 3, 1, 10)]),
    "B3": (24, 64, False, [(1, 1, 2, 2, 36), (2, 1, 3, 1, 36), (1, 2, 4, 1, 36), (2, 1, 5, 1, 36), (1, 2, 4, 1, 18),
                           (2, 1, 3, 1, 18)]),
    "B4": (32, None, False, [(1, 1, 2, 4, 24), (2, 1, 3, 3, 24), (1, 2, 4, 2, 24), (2, 1, 5, 1, 24),
                             (1, 2, 4, 1, 24), (2, 1, 3, 1, 24)]),
    "B5": (48, 256, False, [(1, 1, 2, 4, 48), (2, 1, 3, 3, 48), (1, 2, 4, 2, 48), (2, 1, 5, 1, 48),
                            (1, 2, 4, 1, 32), (2, 1, 3, 1, 32)]),
    "B6": (64, 224, True, [(1, 1, 3, 3, 64), (2, 1, 4, 2, 64), (1, 2, 5, 2, 48), (2, 1, 5, 1, 48),
                           (1, 2, 4, 0.75, 32), (2, 1, 3, 0.5, 24)]),
}


def to_full_rate(time_stride: int, groups: int, width: int, gnorm: bool) -> list[nn.Module]:
    """Repeat each pooled frame `time_stride` times, then the optional GroupNorm over the C * F sequence."""
    layers: list[nn.Module] = [nn.Upsample(scale_factor=time_stride, mode="nearest")]
    if gnorm:
        layers.append(nn.GroupNorm(groups, width))
    return layers


def pooled_2d_layers(inputs: int, channels: int, bins: int, width: int, time_stride: int,
                     stage: tuple) -> list[nn.Module]:
    """Aggregation, reshape, frequency folding with time pooling, residual 2-D blocks, squeeze back, flatten."""
    freq_stride, _, blocks, expansion, _ = stage
    out_channels, out_bins = channels * freq_stride, bins // freq_stride
    wide = int(out_channels * expansion)
    layers = [WeightedSum(inputs, width, wide_single=True), ToMap(channels, bins),
              nn.Conv2d(channels, wide, (freq_stride, time_stride), stride=(freq_stride, time_stride),
                        groups=math.gcd(channels, wide))]
    layers += [ResidualBlock(wide, out_bins, 1, frequency_gate=False) for _ in range(blocks)]
    if expansion != 1:
        layers.append(nn.Sequential(nn.Conv2d(wide, out_channels, 1), nn.BatchNorm2d(out_channels, eps=NORM_EPS)))
    return layers + [ToSequence()]


class ReDimNet2Backbone(nn.Module):
    """Log-mel map [B, 1, F, T] -> the head's sequence [B, D, T'] (T' = T cut to a multiple of the time stride)."""

    def __init__(self, bins: int, channels: int, head: int | None, head_2d: bool, stages: list[tuple],
                 dual_agg: bool = False, agg_gnorm: bool = False) -> None:
        super().__init__()
        base, width = channels, channels * bins
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding="same"), ChannelNorm(channels), ToSequence())
        if agg_gnorm:
            self.stem_gnorm = nn.GroupNorm(base, width)
        self.stages, self.dual_agg, self.agg_gnorm = len(stages), dual_agg, agg_gnorm
        inputs, time_stride = 1, 1
        for index, stage in enumerate(stages):
            time_stride *= stage[1]
            layers = pooled_2d_layers(inputs, channels, bins, width, time_stride, stage)
            context = TimeContextBlock(width, width // stage[4])
            if dual_agg:
                setattr(self, f"stage{index}_pre", nn.Sequential(*layers))
                setattr(self, f"stage{index}_1d", context)
                for branch in ("2d", "1d"):
                    setattr(self, f"stage{index}_up_{branch}",
                            nn.Sequential(*to_full_rate(time_stride, base, width, agg_gnorm)))
            else:
                setattr(self, f"stage{index}", nn.Sequential(
                    *layers, context, *to_full_rate(time_stride, base, width, agg_gnorm)))
            inputs += 2 if dual_agg else 1
            channels, bins = channels * stage[0], bins // stage[0]
        self.time_stride = time_stride
        self.fin_wght1d = WeightedSum(inputs, width, wide_single=True)
        self.to_map = ToMap(channels, bins) if head_2d else None
        if head is None:
            self.head, self.out_dim = nn.Identity(), width
        elif head_2d:
            self.head, self.out_dim = nn.Conv2d(channels, head, 1), head * bins
        else:
            self.head, self.out_dim = nn.Conv1d(width, head, 1), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :x.shape[-1] // self.time_stride * self.time_stride]
        outputs = [self.stem(x)]
        if self.agg_gnorm:
            outputs[0] = self.stem_gnorm(outputs[0])
        for index in range(self.stages):
            if self.dual_agg:
                pooled = getattr(self, f"stage{index}_pre")(outputs)
                outputs += [getattr(self, f"stage{index}_up_2d")(pooled),
                            getattr(self, f"stage{index}_up_1d")(getattr(self, f"stage{index}_1d")(pooled))]
            else:
                outputs.append(getattr(self, f"stage{index}")(outputs))
        x = self.fin_wght1d(outputs)
        if self.to_map is not None:  # [B, c, f, T] flattened channel-major, as the authors' pooling reads it
            return self.head(self.to_map(x)).flatten(1, 2)
        return self.head(x)


class ReDimNet2(PooledBackbone):
    """ReDimNet2 of size `size` (SIZES) on `n_mels` mel bins."""

    def __init__(self, size: str, nOut: int, n_mels: int, global_context: bool = True, emb_bn: bool = False,
                 dual_agg: bool = False, agg_gnorm: bool = False, **frontend) -> None:
        channels, head, head_2d, stages = SIZES[size]
        check_bins(n_mels, channels, stages, f"ReDimNet2{size}", N_MELS)
        fbank = build_frontend(n_mels, **frontend)
        backbone = ReDimNet2Backbone(fbank.feature_dim, channels, head, head_2d, stages, dual_agg, agg_gnorm)
        super().__init__(f"ReDimNet2{size}", fbank, backbone, nOut, global_context, emb_bn)


def redimnet2(size: str):
    """The model plug-in's entry point of ReDimNet2 size `size` (B0 to B6)."""
    def build_model(nOut: int = 192, n_mels: int = N_MELS, global_context: bool = True, emb_bn: bool = False,
                    dual_agg: bool = False, agg_gnorm: bool = False, **kwargs) -> nn.Module:
        return ReDimNet2(size, nOut, n_mels, global_context, emb_bn, dual_agg, agg_gnorm, **frontend_settings(kwargs))

    build_model.__doc__ = f"Build ReDimNet2{size}."
    build_model.takes_frontend = True  # as its network class: SpeakerNet lists it
    return build_model
