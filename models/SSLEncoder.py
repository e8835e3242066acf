"""Self-supervised speech encoders as a front end (--frontend ssl): WavLM, HuBERT, wav2vec 2.0 and w2v-BERT 2.0.

The encoder is `transformers`' own model, read from a folder or hub name (--ssl_source). The front end maps a
waveform batch [B, samples] to features for the back end from all of the encoder's hidden states (the output of
its feature projection and of each transformer layer): their softmax-weighted sum with learnt weights, all of them
concatenated along channels (multi-layer feature aggregation), the last one, or all of them stacked for back ends
that weigh the layers themselves (MHFA, SSL_MFA). The encoder can be frozen, fine-tuned, or adapted with LoRA
(peft), with gradient checkpointing as an option. `transformers` and `peft` are imported only when it is built.
"""
from __future__ import annotations

import json
import math
import os
import re

import torch
from torch import nn

from runtime.errors import UserError

ENCODER_KINDS = ("wavlm", "hubert", "wav2vec2", "wav2vec2-bert")  # transformers' model_type of each
LAYER_MODES = ("weighted", "concat", "last")
# WavLM's attention hands its projection weights to torch's attention function without calling the layers, so
# adapters there would never act: its default targets are the feed-forward layers.
DEFAULT_LORA_TARGETS = {"wav2vec2-bert": "linear_q,linear_v", "wavlm": "intermediate_dense,output_dense"}
W2V_BERT_MELS, W2V_BERT_STRIDE, W2V_BERT_VARIANCE_FLOOR = 80, 2, 1e-7
LAYER_INDEX = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")
MAX_SAMPLES = 1 << 30


class EncoderSourceError(UserError, ValueError):
    """An --ssl_source that cannot be read or is not one of the encoders this front end knows."""


def read_encoder(source: str, init: str) -> nn.Module:
    """The encoder of `source` (a folder with config.json, or a hub name), float32, with its pretrained weights or,
    with init "random", freshly initialised. Its own training-time masking and layer drop are switched off."""
    from transformers import AutoConfig, AutoModel

    if init not in ("pretrained", "random"):
        raise EncoderSourceError(f"--ssl_init {init!r} is not an option; choose pretrained or random")
    if source.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(source)):
        raise EncoderSourceError(f"--ssl_source {source}: no such folder (give a folder with the encoder's "
                                 "config.json, or a hub name such as microsoft/wavlm-base-plus)")
    source = os.path.expanduser(source)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise EncoderSourceError(f"--ssl_source {source}: cannot read the encoder's config.json ({error})") from error
    if config.model_type not in ENCODER_KINDS:
        raise EncoderSourceError(f"--ssl_source {source} is a {config.model_type!r} model; the ssl front end takes "
                                 f"{', '.join(ENCODER_KINDS)}")
    config.apply_spec_augment, config.layerdrop = False, 0.0
    if init == "random":
        return AutoModel.from_config(config, dtype=torch.float32)
    try:
        return AutoModel.from_pretrained(source, config=config, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise EncoderSourceError(f"--ssl_source {source}: cannot read the encoder's weights ({error}); "
                                 "--ssl_init random builds it from config.json alone") from error


def reads_normalised_waveforms(source: str) -> bool:
    """Whether the encoder's preprocessor_config.json asks for zero-mean, unit-variance waveforms (do_normalize)."""
    path = os.path.join(source, "preprocessor_config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as file:
        return bool(json.load(file).get("do_normalize", False))


class W2VBertFeatures(nn.Module):
    """w2v-BERT 2.0's input: Kaldi fbank of 16-bit-scale audio (80 bins, Povey window, no dither), each bin
    normalised over time (unbiased variance), frame pairs stacked: [B, samples] -> [B, frames / 2, 160]."""

    def __init__(self) -> None:
        super().__init__()
        from models.Fbanks import KaldiFbank

        self.fbank = KaldiFbank(W2V_BERT_MELS, "povey", 32768.0, 0.97, 0.0, mean_norm=False)

    def frames(self, samples: int) -> int:
        """Encoder frames of `samples` samples (an odd fbank frame count is padded by one zero frame); the
        normalisation's variance needs two fbank frames."""
        fbank_frames = self.fbank.frames(samples)
        return math.ceil(fbank_frames / W2V_BERT_STRIDE) if fbank_frames >= 2 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            feats = self.fbank(x)
            feats = (feats - feats.mean(-1, keepdim=True)) / (feats.var(-1, keepdim=True) + W2V_BERT_VARIANCE_FLOOR
                                                              ).sqrt()
            feats = nn.functional.pad(feats, (0, feats.shape[-1] % W2V_BERT_STRIDE))
            return feats.transpose(1, 2).reshape(x.shape[0], -1, W2V_BERT_MELS * W2V_BERT_STRIDE)


class SSLFrontEnd(nn.Module):
    """A self-supervised encoder and the use of its layers; [B, samples] -> [B, feature_dim, frames], or with
    `stacked` (for back ends that weigh the layers themselves) [B, layers, hidden, frames]. See the module's
    docstring."""

    def __init__(self, ssl_source: str, ssl_init: str = "pretrained", ssl_layers: str = "weighted",
                 ssl_frozen: bool = False, lora_rank: int = 0, lora_alpha: float | None = None,
                 lora_targets: str | None = None, gradient_checkpointing: bool = False, mean_norm: bool = True,
                 waveform_norm: bool | None = None, stacked: bool = False) -> None:
        super().__init__()
        if not ssl_source:
            raise EncoderSourceError("--frontend ssl needs --ssl_source: a folder with the encoder's config.json "
                                     "(and weights) or a hub name such as microsoft/wavlm-base-plus")
        if ssl_layers not in LAYER_MODES:
            raise ValueError(f"--ssl_layers {ssl_layers!r} is not an option; choose {', '.join(LAYER_MODES)}")
        if lora_rank < 0:
            raise ValueError(f"--lora_rank must be 0 (no adapters) or more, got {lora_rank}")
        self.encoder = read_encoder(ssl_source, ssl_init)
        config = self.encoder.config
        self.kind, self.hidden_size = config.model_type, config.hidden_size
        self.num_layers = config.num_hidden_layers + 1  # the feature projection's output, then each layer's
        self.layers_mode = "stacked" if stacked else ssl_layers
        self.mean_norm, self.frozen = mean_norm, ssl_frozen
        if waveform_norm is None:
            waveform_norm = reads_normalised_waveforms(os.path.expanduser(ssl_source))
        self.waveform_norm = waveform_norm
        self.inputs = W2VBertFeatures() if self.kind == "wav2vec2-bert" else None
        self.layer_weights = nn.Parameter(torch.zeros(self.num_layers)) if self.layers_mode == "weighted" else None
        if ssl_frozen or lora_rank:
            self.encoder.requires_grad_(False)
        if getattr(self.encoder, "masked_spec_embed", None) is not None:
            self.encoder.masked_spec_embed.requires_grad_(False)  # used by the masking only, which is off
        if lora_rank:
            self.add_lora(lora_rank, 2.0 * lora_rank if lora_alpha is None else lora_alpha,
                          lora_targets or DEFAULT_LORA_TARGETS.get(self.kind, "q_proj,v_proj"))
        if gradient_checkpointing:
            self.encoder.activation_checkpointing_enable({"use_reentrant": False})
        self.feature_dim = self.hidden_size * (self.num_layers if self.layers_mode == "concat" else 1)

    def add_lora(self, rank: int, alpha: float, targets: str) -> None:
        """LoRA adapters (peft) on the encoder's `targets` linear layers; only they train in the encoder. The
        scaling alpha / rank is kept as a buffer so that a checkpoint's adapters can be merged without its flags."""
        from peft import LoraConfig, inject_adapter_in_model

        names = [name.strip() for name in targets.split(",") if name.strip()]
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, lora_dropout=0.0, bias="none")
        try:
            inject_adapter_in_model(config, self.encoder)
        except ValueError as error:
            raise ValueError(f"--lora_targets {targets}: {error}") from error
        self.register_buffer("lora_scaling", torch.tensor(alpha / rank))
        idle = self.adapters_not_called()
        if idle:
            raise ValueError(f"--lora_targets {targets}: the {self.kind} encoder never calls {', '.join(idle[:3])} "
                             f"(its attention reads their weights directly), so adapters there would not act; "
                             f"target layers it calls, e.g. {DEFAULT_LORA_TARGETS.get(self.kind, 'q_proj,v_proj')}")

    def adapters_not_called(self) -> list[str]:
        """The encoder's adapted layers that one short forward pass does not call."""
        from peft.tuners.lora import LoraLayer

        called, hooks = set(), []
        for name, module in self.encoder.named_modules():
            if isinstance(module, LoraLayer):
                hooks.append(module.register_forward_hook(lambda *_, name=name: called.add(name)))
        was_training = self.encoder.training
        try:
            with torch.no_grad():
                self.encoder.eval()(self.encoder_inputs(torch.zeros(1, self.min_samples(2))))
        finally:
            self.encoder.train(was_training)
            for hook in hooks:
                hook.remove()
        return [name for name, module in self.encoder.named_modules()
                if isinstance(module, LoraLayer) and name not in called]

    @property
    def encoder_trains(self) -> bool:
        """Whether any encoder weight (adapters included) can get a gradient."""
        return any(parameter.requires_grad for parameter in self.encoder.parameters())

    def train(self, mode: bool = True) -> SSLFrontEnd:
        """Training mode, with a frozen encoder (no adapters) kept in eval mode: no dropout in what does not train."""
        super().train(mode)
        if self.frozen and not self.encoder_trains:
            self.encoder.eval()
        return self

    def frames(self, samples: int) -> int:
        """Encoder frames of `samples` samples."""
        if self.inputs is not None:
            return self.inputs.frames(samples)
        length = samples
        for kernel, stride in zip(self.encoder.config.conv_kernel, self.encoder.config.conv_stride):
            length = (length - kernel) // stride + 1
            if length < 1:
                return 0
        return length

    def min_samples(self, frames: int) -> int:
        """The shortest input that gives at least `frames` encoder frames."""
        low, high = 1, MAX_SAMPLES
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if self.frames(middle) < frames else (low, middle)
        return low

    def encoder_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads of a [B, samples] batch: w2v-BERT's features, or the (normalised) waveforms."""
        if self.inputs is not None:
            return self.inputs(x)
        if self.waveform_norm:
            return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + 1e-7).sqrt()
        return x

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """All hidden states of a [B, samples] batch, [B, layers, frames, hidden]."""
        x = self.encoder_inputs(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_trains):
            return torch.stack(self.encoder(x, output_hidden_states=True).hidden_states, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a [B, samples] waveform batch, channels before time."""
        if x.shape[-1] < self.min_samples(1):
            raise ValueError(f"The ssl front end needs at least {self.min_samples(1)} samples, got {x.shape[-1]}")
        states = self.hidden_states(x)
        if self.layers_mode == "weighted":
            weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
            feats = torch.einsum("l,bltc->bct", weights, states)
        elif self.layers_mode == "concat":
            feats = states.permute(0, 1, 3, 2).flatten(1, 2)
        elif self.layers_mode == "last":
            feats = states[:, -1].transpose(1, 2)
        else:
            feats = states.transpose(2, 3)
        return feats - feats.mean(-1, keepdim=True) if self.mean_norm else feats

    def layer_depths(self, prefix: str = "") -> dict[str, int]:
        """Depth of each encoder parameter (named from `prefix`), for layer-wise learning-rate decay: the layers
        count from 1, what comes before them is 0 and a layer norm after the last layer is the top layer's."""
        top = self.num_layers - 1
        stable = getattr(self.encoder.config, "do_stable_layer_norm", False)  # a layer norm after the last layer
        depths = {}
        for name, _ in self.encoder.named_parameters():
            match = LAYER_INDEX.search("." + name)
            final_norm = stable and name.startswith("encoder.layer_norm")
            depth = int(match.group(1)) + 1 if match else (top if final_norm else 0)
            depths[f"{prefix}encoder.{name}"] = depth
        return depths

    def adapt_weights(self, prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's tensors, made to fit this front end: LoRA adapters merged into their layers' weights when
        this one has none (W + scaling B A), and plain layer weights taken as the base of this one's adapters."""
        own = {f"{prefix}{name}" for name in self.state_dict()}
        adapted = dict(weights)
        scaling = weights.get(f"{prefix}lora_scaling")
        for key in [key for key in weights if ".lora_A." in key]:
            layer = key.split(".lora_A.")[0]
            base_weight = f"{layer}.base_layer.weight"
            if base_weight in own or scaling is None or base_weight not in weights:
                continue
            down, up = adapted.pop(key), adapted.pop(key.replace(".lora_A.", ".lora_B."))
            merged = weights[base_weight].float() + scaling.float() * (up.float() @ down.float())
            adapted.pop(base_weight)
            adapted[f"{layer}.weight"] = merged.to(weights[base_weight].dtype)
            if f"{layer}.base_layer.bias" in adapted:
                adapted[f"{layer}.bias"] = adapted.pop(f"{layer}.base_layer.bias")
        if scaling is not None and f"{prefix}lora_scaling" not in own:
            adapted.pop(f"{prefix}lora_scaling")
        for key in list(adapted):
            for part in ("weight", "bias"):
                based = key[: -len(part)] + f"base_layer.{part}"
                if key.endswith(f".{part}") and key not in own and based in own:
                    adapted[based] = adapted.pop(key)
        return adapted
