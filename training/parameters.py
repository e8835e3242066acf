"""What the optimiser works on: parameter groups, learning rates scaled by the batch, BatchNorm statistics."""
from __future__ import annotations

import torch
import torch.nn as nn

from settings.plugins import plugin_module


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of `model`."""
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running statistics of every BatchNorm layer (updated by each training forward pass)."""
    return [buffer for module in batchnorm_layers(model)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked) if buffer is not None]


def parameter_groups(net: nn.Module, lr: float, backbone_lr_factor: float, encoder_lr_factor: float = 1.0,
                     layer_decay: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups: all parameters in one; with a --backbone_lr_factor other than 1 the
    embedding model's at lr times the factor, then the loss head's at lr (the last group is always the head's);
    with an ssl front end's --encoder_lr_factor or --layer_decay other than 1 also a group per encoder depth (its
    rate times encoder_lr_factor x layer_decay^(top - depth)) before the embedding model's other parameters."""
    encoder_depths = ssl_encoder_depths(net.__S__)
    if encoder_depths and (encoder_lr_factor != 1 or layer_decay != 1):
        top = max(encoder_depths.values())
        named = dict(net.__S__.named_parameters())
        groups = [{"params": [named[name] for name, depth in encoder_depths.items() if depth == level],
                   "lr": lr * backbone_lr_factor * encoder_lr_factor * layer_decay ** (top - level)}
                  for level in sorted(set(encoder_depths.values()))]
        rest = [parameter for name, parameter in named.items() if name not in encoder_depths]
        return [*groups, {"params": rest, "lr": lr * backbone_lr_factor}, {"params": list(net.__L__.parameters())}]
    if backbone_lr_factor == 1:
        return [{"params": list(net.parameters())}]
    return [{"params": list(net.__S__.parameters()), "lr": lr * backbone_lr_factor},
            {"params": list(net.__L__.parameters())}]


def ssl_encoder_depths(model: nn.Module) -> dict[str, int]:
    """Depth of each parameter of the model's self-supervised encoder, by name in `model`; {} without one."""
    depths = {}
    for name, module in model.named_modules():
        if hasattr(module, "layer_depths"):
            depths.update(module.layer_depths(f"{name}." if name else ""))
    return depths


def scale_learning_rates(flags: dict, scheduler: str, processes: int) -> tuple[dict, str]:
    """--lr_reference_batch N: (the flags with --lr and the scheduler plug-in's LR_OPTIONS multiplied by processes x
    --batch_size x --nPerSpeaker / N, as wespeaker's scale_ratio does with N = 64, and a line saying so); with N 0
    the flags unchanged and ''."""
    reference = flags.get("lr_reference_batch", 0)
    if not reference:
        return flags, ""
    batch, per_speaker = flags["batch_size"], flags["nPerSpeaker"]
    factor = processes * batch * per_speaker / reference
    plugin = plugin_module("scheduler", scheduler)
    given = {"lr": flags["lr"], **{name: flags.get(name, plugin.OPTIONS[name][1])
                                   for name in getattr(plugin, "LR_OPTIONS", ())}}
    scaled = {name: value * factor for name, value in given.items()}
    changes = ", ".join(f"--{name} {given[name]:g} -> {value:g}" for name, value in scaled.items())
    return {**flags, **scaled}, (f"Learning rates scaled by processes {processes} x --batch_size {batch} x "
                                 f"--nPerSpeaker {per_speaker} / --lr_reference_batch {reference} = {factor:g}: "
                                 f"{changes}")
