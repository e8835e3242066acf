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


def parameter_groups(net: nn.Module, lr: float, backbone_lr_factor: float) -> list[dict]:
    """The optimiser's parameter groups: all parameters in one, or with a --backbone_lr_factor other than 1 the
    embedding model's at lr times the factor, then the loss head's at lr (the last group is always the head's)."""
    if backbone_lr_factor == 1:
        return [{"params": list(net.parameters())}]
    return [{"params": list(net.__S__.parameters()), "lr": lr * backbone_lr_factor},
            {"params": list(net.__L__.parameters())}]


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
