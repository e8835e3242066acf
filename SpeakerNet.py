"""SpeakerNet, the embedding model and its training loss, and WrappedModel; the original's ModelTrainer, which
trains and saves it, lives in training/trainer.py and keeps its name here for code written against the original."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.Fbanks import frontend_settings
from settings.plugins import PluginError, available_plugins, build_plugin, plugin_arguments, plugin_module
from training.trainer import ModelTrainer  # noqa: F401  (the original's `from SpeakerNet import ModelTrainer`)


class SpeakerNet(nn.Module):
    """The embedding model `__S__` and the training loss `__L__` (the original's state_dict keys).

    The keyword arguments are flags (all of them, as the original passes them, or some); each plug-in receives its
    part's (settings.plugins.plugin_arguments)."""

    def __init__(self, model: str, trainfunc: str = "", nPerSpeaker: int = 1, **kwargs):
        super().__init__()
        self.__S__ = build_plugin("models", model, kwargs)
        check_frontend_flags(model, self.__S__, kwargs)
        self.__L__ = build_plugin("loss", trainfunc, {**kwargs, "nPerSpeaker": nPerSpeaker})
        self.nPerSpeaker = nPerSpeaker
        # What shapes the embeddings besides the weights: the model's arguments, less the device it runs on.
        arguments = plugin_arguments("models", model, kwargs)
        self.model_settings = {"model": model, **{name: value for name, value in arguments.items() if name != "device"}}

    def forward(self, data: torch.Tensor, label: torch.Tensor | None = None,
                mix: tuple[torch.Tensor, float] | None = None):
        """Without a label: embeddings [N, nOut] of waveforms [N, samples]. With labels: waveforms
        [speakers, per_speaker, samples] (or [speakers, samples]) -> the loss of embeddings [speakers,
        per_speaker, nOut], as (loss, prec1). `mix` (the partners' labels, the own share) of a mixed batch: both
        loss and prec1 are the share-weighted sums of those against the own and the partners' labels."""
        if label is None:
            return self.__S__(data.reshape(-1, data.shape[-1]))
        batch = data if data.dim() == 3 else data.unsqueeze(1)
        speakers, per_speaker = batch.shape[:2]
        embeddings = self.__S__(batch.reshape(speakers * per_speaker, -1)).reshape(speakers, per_speaker, -1)
        if per_speaker == 1 and not hasattr(self.__L__, "min_per_speaker"):  # a loss written for the original
            embeddings = embeddings.squeeze(1)
        if mix is None:
            return self.__L__(embeddings, label)
        partners, share = mix
        (own_loss, own_prec1), (other_loss, other_prec1) = self.__L__(embeddings, label), self.__L__(embeddings,
                                                                                                        partners)
        return share * own_loss + (1 - share) * other_loss, share * own_prec1 + (1 - share) * other_prec1


def models_with(attribute: str) -> list[str]:
    """The model plug-ins whose network class (or the factory that builds it) has `attribute` set."""
    return [name for name in available_plugins("models")
            if any(callable(value) and getattr(value, attribute, False)
                   for value in vars(plugin_module("models", name)).values())]


def frontend_models() -> list[str]:
    """The model plug-ins that take the front-end flags (their network class has `takes_frontend`)."""
    return models_with("takes_frontend")


def ssl_back_ends() -> list[str]:
    """The model plug-ins that pool a self-supervised encoder's layers themselves (they need --frontend ssl)."""
    return models_with("pools_encoder_layers")


def check_frontend_flags(model: str, network: nn.Module, flags: dict) -> None:
    """Refuse --frontend (other than logmel) and its options for a model that computes its own features."""
    given = {name: value for name, value in frontend_settings(flags).items()
             if value is not None and (name, value) != ("frontend", "logmel")}
    if given and not getattr(network, "takes_frontend", False):
        name, value = next(iter(given.items()))
        raise PluginError(f"--{name} {value}: {model} computes its own features; the front-end flags apply to "
                          f"{', '.join(frontend_models())}")


class WrappedModel(nn.Module):
    """Gives a single-process model the `.module` attribute that DDP models have."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x, label=None, mix=None):
        return self.module(x, label, mix)
