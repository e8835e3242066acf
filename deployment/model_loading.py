"""A trained model ready for inference: its settings resolved from checkpoint, config and flags, then built and
loaded (any checkpoint layout, inference packages included)."""
from __future__ import annotations

import argparse
from dataclasses import fields

import torch
import yaml

import arguments
from runtime import checkpoint_files
from runtime.device import place_on
from runtime.errors import ConfigError, MissingFileError
from settings.flags import FLAG_GROUPS, str2bool
from settings.plugins import declared_options
from settings.sections import ModelSettings
from SpeakerNet import SpeakerNet

# The settings that build and score a model, the flags of the tools that only embed: the model section less the
# loss's training options (a loss changes scoring by its name alone; nClasses stays, as it shapes the loss head
# that a checkpoint holds), the model plug-ins' own options and the crops and scoring of --eval. Their types and
# defaults come from the trainer's parser.
LOSS_TRAINING_OPTIONS = {name for name, *_ in FLAG_GROUPS["Loss functions"]} - {"nClasses"}
MODEL_OPTIONS = {option for option, where in declared_options().items()
                 if any(plugin.startswith("models/") for plugin in where)}
MODEL_SETTINGS = (*(field.name for field in fields(ModelSettings) if field.name not in LOSS_TRAINING_OPTIONS),
                  *sorted(MODEL_OPTIONS), "eval_frames", "num_eval", "scoring")
TRAINER_FLAGS = {action.dest: action for action in arguments.build_parser()._actions
                 if action.default is not argparse.SUPPRESS}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """A --<setting> flag for each of MODEL_SETTINGS (None when not given)."""
    for name in MODEL_SETTINGS:
        parser.add_argument(f"--{name}", type=str, default=None,
                            help="model setting (default: checkpoint args, --config, else the trainer's)")


def _cast(name: str, value, source: str):
    """A setting converted with the trainer flag's type; errors name the setting and where it came from."""
    kind = TRAINER_FLAGS[name].type
    try:
        return kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ConfigError(f"{source}: {name} must be {'bool' if kind is str2bool else kind.__name__}, "
                         f"got {value!r}") from error


def config_values(content: dict, config: str, checkpoint_args: dict, overrides: dict) -> dict:
    """A config's settings with its sections (model_args: ...) flattened; each section is checked against the
    plug-in the command line, else the config, else the checkpoint selects."""
    plugins = {folder: str(overrides.get(flag) or content.get(flag) or checkpoint_args.get(flag)
                           or TRAINER_FLAGS[flag].default) for folder, flag in arguments.PLUGIN_FLAGS.items()}
    return {key: value for key, value, _ in arguments.config_entries(content, config, plugins)}


def resolve_settings(checkpoint_args: dict, config: str | None, overrides: dict) -> dict:
    """Model settings: trainer defaults < the checkpoint's saved args < the config YAML < explicit values.

    Keys of the checkpoint args and the config that are not in MODEL_SETTINGS (e.g. a loss's or an optimiser's
    options) are passed on to the model unchanged."""
    settings = {name: action.default for name, action in TRAINER_FLAGS.items()}
    layers = [(checkpoint_args, "checkpoint args")]
    if config:
        try:
            with open(config, encoding="utf-8") as handle:
                content = yaml.safe_load(handle) or {}
        except OSError as error:
            raise MissingFileError(f"Cannot read config {config}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"--config {config} is not valid YAML: {' '.join(str(error).split())}") from None
        if not isinstance(content, dict):
            raise ConfigError(f"--config {config}: expected 'key: value' lines, found a {type(content).__name__}")
        layers.append((config_values(content, config, checkpoint_args, overrides), config))
    layers.append((overrides, "command line"))
    for values, source in layers:
        for name, value in values.items():
            if name in MODEL_SETTINGS and value is not None:
                settings[name] = _cast(name, value, source)
            elif name not in MODEL_SETTINGS and source != "command line":
                settings[name] = value
    namespace = argparse.Namespace(**settings)
    arguments.plugin_defaults(namespace)
    settings = {name: value for name, value in vars(namespace).items() if value is not None}
    missing = [name for name in ("model", "trainfunc") if not settings.get(name)]
    if missing:
        raise ConfigError(f"Cannot tell the {' and '.join(missing)} of this checkpoint: give "
                         + " and ".join(f"--{name}" for name in missing)
                         + " or --config with the run's config.yaml")
    return settings


def load_speaker_net(checkpoint: str, config: str | None, device: torch.device,
                     overrides: dict) -> tuple[SpeakerNet, dict]:
    """(SpeakerNet in eval mode with the checkpoint's weights, its resolved settings); every `__S__` tensor must fit."""
    content = checkpoint_files.read_checkpoint(checkpoint)
    saved_args = content.get("args", {}) if isinstance(content.get("args"), dict) else {}
    settings = resolve_settings(saved_args, config, overrides)
    net = place_on(SpeakerNet(**{**settings, "device": str(device)}), device).eval()
    report = checkpoint_files.load_weights(net, checkpoint_files.model_weights(content, checkpoint), checkpoint)
    if report.missing_in("__S__.") or report.mismatched_in("__S__."):
        print(report.text())
        raise checkpoint_files.CheckpointError(
            f"Checkpoint {checkpoint} does not fit a {settings['model']} built with these settings (see the "
            "list above); check --model, --encoder_type, --n_mels, --nOut, --log_input and --frontend (or --config)")
    return net, settings
