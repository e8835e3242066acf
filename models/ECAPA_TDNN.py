"""ECAPA-TDNN (Desplanques et al. 2020) in wespeaker's ECAPA_TDNN_GLOB form, on a mean-normalised fbank.

A 5-frame TDNN layer, three SE-Res2Net blocks (dilations 2, 3, 4, scale 8), multi-layer feature aggregation
into 1536 channels, channel- and context-dependent attentive statistics pooling (ASTP with the utterance mean
and std as global context), BatchNorm and a linear embedding. Every convolution is followed by ReLU then
BatchNorm. The pooling is ASTP by definition, so --encoder_type is ignored; the features are always log mel,
so --log_input is ignored. The recipes set --n_mels 80.

--ecapa_variant speechbrain builds SpeechBrain's ECAPA_TDNN (its spkrec-ecapa-voxceleb release: 1024 channels,
--aggregation_channels 3072): reflect padding, BatchNorm after the aggregation's ReLU, ReLU + BatchNorm inside
the attention, the first Res2Net group passed through, population standard deviations.
"""
from __future__ import annotations

import torch
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length, min_frames_for
from models.StatsPooling import AttentiveStatsPooling

VARIANTS = ("wespeaker", "speechbrain")
OPTIONS = {
    "channels": (int, 512, "ECAPA_TDNN: channels of the SE-Res2Net blocks (published: 512, 1024; any multiple of 8)"),
    "aggregation_channels": (int, 1536, "ECAPA_TDNN: width of the multi-layer feature aggregation (wespeaker: "
                                        "1536 for both sizes; SpeechBrain: 3 x channels)"),
    "global_context": (bool, True, "ECAPA_TDNN: the attentive pooling also sees each channel's utterance mean "
                                   "and std (wespeaker's _GLOB models and SpeechBrain)"),
    "ecapa_variant": (str, "wespeaker", "ECAPA_TDNN: wespeaker (zero padding, ReLU after the aggregation) or "
                                        "speechbrain (reflect padding, ReLU + BatchNorm after the aggregation and "
                                        "inside the attention, Res2Net pass-through chunk first, population std)"),
}

RES2NET_SCALE = 8
DILATIONS = (2, 3, 4)
SE_BOTTLENECK = 128
ATTENTION_BOTTLENECK = 128


class ConvReluBn(nn.Sequential):
    """1-D convolution (same length, with bias; zero or reflect padding) -> ReLU -> BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 padding_mode: str = "zeros") -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                      dilation=dilation, padding_mode=padding_mode),
            nn.ReLU(),
            nn.BatchNorm1d(out_channels),
        )


class Res2Conv(nn.Module):
    """Res2Net convolution: `scale` channel groups, each conv fed its group plus the previous conv's output.

    One group passes through unchanged, so the block mixes several receptive-field sizes: the last one
    (wespeaker), or the first one (SpeechBrain, `passthrough_first`).
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, padding_mode: str = "zeros",
                 passthrough_first: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.passthrough_first = passthrough_first
        width = channels // scale
        self.convs = nn.ModuleList(ConvReluBn(width, width, kernel_size, dilation, padding_mode)
                                   for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        groups = torch.chunk(x, self.scale, dim=1)
        passed, convolved = (groups[0], groups[1:]) if self.passthrough_first else (groups[-1], groups[:-1])
        outputs: list[torch.Tensor] = []
        for group, conv in zip(convolved, self.convs):
            outputs.append(conv(group if not outputs else group + outputs[-1]))
        return torch.cat([passed, *outputs] if self.passthrough_first else [*outputs, passed], dim=1)


class SqueezeExcitation1d(nn.Module):
    """Rescale each channel by a sigmoid gate computed from its mean over time."""

    def __init__(self, channels: int, bottleneck: int = SE_BOTTLENECK) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate [B, C, T] channel-wise."""
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(x.mean(dim=-1)))))
        return x * gate.unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 conv, dilated Res2Net conv (kernel 3), 1x1 conv, squeeze-excitation, plus the input."""

    def __init__(self, channels: int, dilation: int, speechbrain: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvReluBn(channels, channels),
            Res2Conv(channels, kernel_size=3, dilation=dilation, scale=RES2NET_SCALE,
                     padding_mode="reflect" if speechbrain else "zeros", passthrough_first=speechbrain),
            ConvReluBn(channels, channels),
            SqueezeExcitation1d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]."""
        return x + self.body(x)


class ECAPA_TDNN(nn.Module):
    """Waveform [B, samples] -> fbank -> TDNN + 3 SE-Res2Net blocks -> aggregation -> ASTP -> BN -> linear."""

    model_name = "ECAPA_TDNN"
    takes_frontend = True

    def __init__(self, nOut: int, channels: int, n_mels: int, aggregation_channels: int = 1536,
                 global_context: bool = True, variant: str = "wespeaker", **frontend) -> None:
        super().__init__()
        if channels < RES2NET_SCALE or channels % RES2NET_SCALE:
            raise ValueError(f"{self.model_name}: --channels must be a positive multiple of the Res2Net scale "
                             f"{RES2NET_SCALE} (published sizes: 512, 1024), got {channels}")
        if variant not in VARIANTS:
            raise ValueError(f"{self.model_name}: undefined --ecapa_variant '{variant}'; choose one of "
                             f"{', '.join(VARIANTS)}")
        speechbrain = variant == "speechbrain"
        self.fbank = build_frontend(n_mels, **frontend)
        self.layer1 = ConvReluBn(self.fbank.feature_dim, channels, kernel_size=5,
                                 padding_mode="reflect" if speechbrain else "zeros")
        self.blocks = nn.ModuleList(SERes2Block(channels, dilation, speechbrain) for dilation in DILATIONS)
        self.aggregate = nn.Conv1d(channels * len(DILATIONS), aggregation_channels, kernel_size=1)
        self.aggregate_bn = nn.BatchNorm1d(aggregation_channels) if speechbrain else None
        self.pool = AttentiveStatsPooling(aggregation_channels, ATTENTION_BOTTLENECK, global_context,
                                          population_std=speechbrain)
        self.bn = nn.BatchNorm1d(self.pool.out_dim)
        self.embedding = nn.Linear(self.pool.out_dim, nOut)
        # the time std needs two frames; reflect padding needs more frames than the widest padding
        shortest = 1 + max(DILATIONS) if speechbrain else 2
        self.min_samples = self.fbank.min_samples(min_frames_for(lambda frames: frames - shortest + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = self.layer1(self.fbank(x))
        block_outputs = []
        for block in self.blocks:
            x = block(x)
            block_outputs.append(x)
        x = torch.relu(self.aggregate(torch.cat(block_outputs, dim=1)))
        if self.aggregate_bn is not None:
            x = self.aggregate_bn(x)
        return self.embedding(self.bn(self.pool(x)))


def MainModel(nOut: int = 192, channels: int = 512, n_mels: int = 80, aggregation_channels: int = 1536,
              global_context: bool = True, ecapa_variant: str = "wespeaker", **kwargs) -> nn.Module:
    """Build ECAPA-TDNN with `channels` block channels (512: 6.19M, 1024: 14.66M parameters; 80 mels, nOut 192)."""
    return ECAPA_TDNN(nOut, channels, n_mels, aggregation_channels, global_context, ecapa_variant,
                      **frontend_settings(kwargs))
