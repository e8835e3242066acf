"""ReDimNet (Yakovlev et al., Interspeech 2024): a network that reshapes one feature volume between a 2-D map
[B, C, F, T] and a 1-D sequence [B, C * F, T], so 2-D convolution blocks and 1-D time-context blocks alternate on
the same volume.

A 3x3 stem lifts the log-mel map to C channels. Each stage takes a learnt softmax-weighted sum of all earlier
stages' 1-D outputs (the aggregation keeps C * F fixed), reshapes it to 2-D with its own (c, f), folds `stride`
frequency bins into channels (a (stride, 1) convolution), runs its 2-D blocks (ConvNeXt-like or residual, some with
a frequency-wise squeeze-excitation) widened `expansion` times and squeezed back, flattens to 1-D and, when it has
one, runs a time-context block (four depth-wise convolutions of growing width and a small transformer layer on a
reduced channel count). The final weighted sum of all outputs is pooled (attentive statistics), batch-normalised and
projected to the embedding, as the authors' released models (IDRnD/ReDimNet) are.

The state-dict layout follows the authors' releases, so `importModel.py --from redimnet` loads their files with
one renaming rule; each size's stage table is in SIZES.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.Fbanks import build_frontend, frontend_settings
from models.FrontEnd import check_input_length, min_frames_for
from models.StatsPooling import AttentiveStatsPooling

REDIMNET_OPTIONS = {  # the options every ReDimNet size declares
    "global_context": (bool, True, "ReDimNet: the attentive pooling also sees each channel's utterance mean and std "
                                   "(the released sizes' parameter counts match the paper with it)"),
    "emb_bn": (bool, False, "ReDimNet: BatchNorm on the embedding (the authors' emb_bn)"),
}
NORM_EPS = 1e-6
TIME_KERNELS = (7, 19, 31, 59)  # the depth-wise convolutions of a time-context block
ATTENTION_HEADS = 4


# size: (n_mels, C, 2-D block kind, group divisor, stages as (stride, blocks, expansion, time-context reduction))
SIZES = {
    "B0": (60, 10, "resnet", 1, [(1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10)]),
    "B1": (72, 12, "convnext", 8, [(1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8)]),
    "B2": (72, 16, "convnext", 4, [(1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
                                   (2, 4, 1, 4)]),
    "B3": (72, 16, "resnet_fwse", 1, [(1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16),
                                      (2, 8, 1, 16)]),
    "B4": (72, 32, "resnet_fwse", 1, [(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                                      (2, 4, 1, 16)]),
    "B5": (72, 32, "resnet_fwse", 16, [(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                                       (2, 4, 1, 16)]),
    "B6": (72, 32, "resnet", 32, [(1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16),
                                  (2, 8, 1, 16)]),
}


class ChannelNorm(nn.Module):
    """Layer normalisation over the channel axis (dim 1) of [B, C, ...], with a scale and shift per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each position's channel vector."""
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        shape = (-1,) + (1,) * (x.dim() - 2)
        return (x - mean) / torch.sqrt(variance + NORM_EPS) * self.weight.view(shape) + self.bias.view(shape)


class ToSequence(nn.Module):
    """[B, c, f, T] -> [B, f * c, T] (frequency-major, as the authors flatten)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, bins, frames = x.shape
        return x.transpose(1, 2).reshape(batch, bins * channels, frames)


class ToMap(nn.Module):
    """[B, f * c, T] -> [B, c, f, T], the inverse of ToSequence."""

    def __init__(self, channels: int, bins: int) -> None:
        super().__init__()
        self.channels, self.bins = channels, bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.bins, self.channels, x.shape[-1]).transpose(1, 2)


class WeightedSum(nn.Module):
    """Softmax-weighted sum of N earlier outputs [B, C * F, T], one weight per input, channel and bin (`w`).

    A single input has a frozen weight, of width 1 (ReDimNet) or of the full width (`wide_single`: ReDimNet2)."""

    def __init__(self, inputs: int, width: int, wide_single: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, inputs, width if inputs > 1 or wide_single else 1, 1),
                              requires_grad=inputs > 1)

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return (torch.softmax(self.w, dim=1) * torch.stack(outputs, dim=1)).sum(dim=1)


class ConvNeXtBlock(nn.Module):
    """x + pointwise(GELU(BN(depth-wise conv(x)))), 1-D or 2-D; `groups_divisor` channels share a filter group."""

    def __init__(self, channels: int, kernel, dims: int = 2, group_divisor: int = 1) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.dwconvs = nn.ModuleList([conv(channels, channels, kernel, padding="same",
                                           groups=channels // group_divisor)])
        self.norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
        self.pwconv1 = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv1(F.gelu(self.norm(self.dwconvs[0](x))))


class FrequencySqueezeExcite(nn.Module):
    """Gates each frequency bin of [B, C, F, T] by a sigmoid of two linear layers on the bins' mean activity."""

    def __init__(self, bins: int, hidden: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(bins, hidden)
        self.exitation = nn.Linear(hidden, bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.exitation(torch.relu(self.squeeze(x.mean(dim=(1, 3))))))
        return x * gate[:, None, :, None]


class ResidualBlock(nn.Module):
    """Two grouped 3x3 convolutions, each followed by a pointwise one (ReLU then BN after the first, BN after the
    second), an optional frequency squeeze-excitation, the input added, ReLU."""

    def __init__(self, channels: int, bins: int, group_divisor: int, frequency_gate: bool) -> None:
        super().__init__()
        groups = channels // group_divisor
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
        self.conv1pw = nn.Conv2d(channels, channels, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
        self.conv2pw = nn.Conv2d(channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = FrequencySqueezeExcite(bins, min(64, max(channels, 32))) if frequency_gate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(torch.relu(self.conv1pw(self.conv1(x))))
        out = self.se(self.bn2(self.conv2pw(self.conv2(out))))
        return torch.relu(out + x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over [B, T, C] with separate query, key, value and output projections."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, width = x.shape

        def split(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch, frames, self.heads, width // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(attended.transpose(1, 2).reshape(batch, frames, width))


class FeedForward(nn.Module):
    """Linear, tanh-approximated GELU, linear."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(width, hidden)
        self.output_dense = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """Post-norm transformer layer on [B, C, T]: attention, add, LayerNorm, feed-forward, add, LayerNorm."""

    def __init__(self, width: int, hidden: int, heads: int = ATTENTION_HEADS) -> None:
        super().__init__()
        self.attention = SelfAttention(width, heads)
        self.layer_norm = nn.LayerNorm(width, eps=NORM_EPS)
        self.feed_forward = FeedForward(width, hidden)
        self.final_layer_norm = nn.LayerNorm(width, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x)).transpose(1, 2)


class TimeContextBlock(nn.Module):
    """x + expand(context(reduce(x))) on [B, C * F, T]: a 1x1 reduction to C * F / reduction channels with channel
    norm, four depth-wise ConvNeXt blocks (kernels 7, 19, 31, 59) and a transformer layer, a 1x1 expansion."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.red_dim_conv = nn.Sequential(nn.Conv1d(width, hidden, 1), ChannelNorm(hidden))
        self.tcm = nn.Sequential(*[ConvNeXtBlock(hidden, kernel, dims=1, group_divisor=1) for kernel in TIME_KERNELS],
                                 TransformerLayer(hidden, hidden))
        self.exp_dim_conv = nn.Conv1d(hidden, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


def stage_layers(index: int, channels: int, bins: int, width: int, stage: tuple, block_kind: str,
                 group_divisor: int) -> list[nn.Module]:
    """The modules of stage `index` entered with (channels, bins): aggregation, reshape, frequency folding, 2-D
    blocks, squeeze back, flatten, time context (the index of each module is its state-dict position)."""
    stride, blocks, expansion, reduction = stage
    wide, out_channels, out_bins = channels * stride * expansion, channels * stride, bins // stride
    layers = [WeightedSum(index + 1, width), ToMap(channels, bins),
              nn.Conv2d(channels, wide, kernel_size=(stride, 1), stride=(stride, 1))]
    for _ in range(blocks):
        if block_kind == "convnext":
            layers.append(ConvNeXtBlock(wide, 3, group_divisor=group_divisor))
        else:
            layers.append(ResidualBlock(wide, out_bins, group_divisor, frequency_gate=block_kind == "resnet_fwse"))
    if expansion != 1:
        layers.append(nn.Sequential(
            nn.Conv2d(wide, out_channels, 3, padding="same", groups=out_channels // group_divisor),
            nn.BatchNorm2d(out_channels, eps=NORM_EPS), nn.GELU(), nn.Conv2d(out_channels, out_channels, 1)))
    layers.append(ToSequence())
    if reduction is not None:
        layers.append(TimeContextBlock(width, width // reduction))
    return layers


class ReDimNetBackbone(nn.Module):
    """Log-mel map [B, 1, F, T] -> aggregated sequence [B, C * F, T]."""

    time_stride = 1  # every stage runs on all frames

    def __init__(self, bins: int, channels: int, block_kind: str, group_divisor: int, stages: list[tuple]) -> None:
        super().__init__()
        width = self.out_dim = channels * bins
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding="same"), ChannelNorm(channels), ToSequence())
        self.stages = len(stages)
        for index, stage in enumerate(stages):
            setattr(self, f"stage{index}", nn.Sequential(*stage_layers(index, channels, bins, width, stage,
                                                                      block_kind, group_divisor)))
            channels, bins = channels * stage[0], bins // stage[0]
        self.fin_wght1d = WeightedSum(len(stages) + 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.stem(x)]
        for index in range(self.stages):
            outputs.append(getattr(self, f"stage{index}")(outputs))
        return self.fin_wght1d(outputs)


def check_bins(n_mels: int, channels: int, stages: list[tuple], model_name: str, authors_mels: int) -> None:
    """Refuse an --n_mels that the stages' frequency strides (first item of each stage) do not divide or whose
    time-context blocks (reduction: last item) would not split into the attention heads."""
    folding = math.prod(stage[0] for stage in stages)
    awkward = [reduction for *_, reduction in stages
               if reduction is not None and (channels * n_mels) % (reduction * ATTENTION_HEADS)]
    if n_mels % folding or awkward:
        raise ValueError(f"{model_name}: --n_mels must be a multiple of {folding} (its stages fold the frequency axis "
                         f"by that much) whose {channels} x n_mels channels divide by {ATTENTION_HEADS} x each "
                         f"time-context reduction; the authors use {authors_mels}, got {n_mels}")


class PooledBackbone(nn.Module):
    """Waveform -> log-mel [B, F, T] -> backbone -> attentive statistics -> BatchNorm -> linear (-> BatchNorm): the
    network of ReDimNet and ReDimNet2 around their backbones (which give out_dim channels every time_stride frames)."""

    takes_frontend = True

    def __init__(self, model_name: str, fbank: nn.Module, backbone: nn.Module, nOut: int, global_context: bool,
                 emb_bn: bool) -> None:
        super().__init__()
        self.model_name, self.fbank, self.backbone = model_name, fbank, backbone
        self.pool = AttentiveStatsPooling(backbone.out_dim, global_context=global_context)
        self.bn = nn.BatchNorm1d(self.pool.out_dim)
        self.linear = nn.Linear(self.pool.out_dim, nOut)
        self.bn2 = nn.BatchNorm1d(nOut) if emb_bn else nn.Identity()
        stride = backbone.time_stride
        self.min_samples = fbank.min_samples(min_frames_for(lambda frames: frames // stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform [B, samples] -> embedding [B, nOut]."""
        check_input_length(x, self.min_samples, self.model_name)
        x = self.backbone(self.fbank(x).unsqueeze(1))
        return self.bn2(self.linear(self.bn(self.pool(x))))


class ReDimNet(PooledBackbone):
    """ReDimNet of size `size` (SIZES) on `n_mels` mel bins."""

    def __init__(self, size: str, nOut: int, n_mels: int, global_context: bool = True, emb_bn: bool = False,
                 **frontend) -> None:
        authors_mels, channels, block_kind, group_divisor, stages = SIZES[size]
        check_bins(n_mels, channels, stages, f"ReDimNet{size}", authors_mels)
        fbank = build_frontend(n_mels, **frontend)
        backbone = ReDimNetBackbone(fbank.feature_dim, channels, block_kind, group_divisor, stages)
        super().__init__(f"ReDimNet{size}", fbank, backbone, nOut, global_context, emb_bn)


def redimnet(size: str):
    """The model plug-in's entry point of ReDimNet size `size` (B0 to B6)."""
    def build_model(nOut: int = 192, n_mels: int = SIZES[size][0], global_context: bool = True,
                    emb_bn: bool = False, **kwargs) -> nn.Module:
        return ReDimNet(size, nOut, n_mels, global_context, emb_bn, **frontend_settings(kwargs))

    build_model.__doc__ = f"Build ReDimNet{size}."
    build_model.takes_frontend = True  # as its network class: SpeakerNet lists it
    return build_model
