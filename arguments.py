"""The command line and YAML configs (the original's flags and semantics, ours and the plug-ins' own options),
parsed once into Settings."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import yaml

from runtime.errors import ConfigError
from runtime.packages import package_settings
from settings.flags import (
    FLAG_GROUPS,
    LIST_KEYS,
    RUN_MODE_KEYS,
    RUNTIME_KEYS,
    SECTION_FLAGS,
    SECTION_FOLDERS,
    add_flag,
    check_ranges,
    str2bool,
)
from settings.plugins import PluginError, declared_options, plugin_options
from settings.sections import Settings

PLUGIN_FLAGS = {"models": "model", "loss": "trainfunc", "optimizer": "optimizer", "scheduler": "scheduler"}
# Flag groups whose values a package does not give a training run: everything but the model and its front end.
NOT_ARCHITECTURE_GROUPS = ("Data loader", "Training", "Optimizer and scheduler", "Loss functions", "Evaluation",
                           "Load and save", "Training and test data", "Run mode and hardware", "Evaluation back end")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are ConfigErrors (one line, exit status 1) instead of a usage dump."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The command line: the original's flags and defaults, ours, and the options plug-ins declare."""
    parser = ArgumentParser(description="SpeakerNet: train or evaluate speaker-embedding networks")
    parser.add_argument("--config", type=str, default=None, help="YAML file whose keys override the flags")
    for title, flags in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for name, kind, default, help_text in flags:
            add_flag(group, name, kind, default, help_text)
    add_plugin_options(parser)
    return parser


def add_plugin_options(parser: argparse.ArgumentParser) -> None:
    """A flag for each option a plug-in declares in its OPTIONS table. An option several plug-ins declare with
    different defaults gets the default of the plug-in the run selects (see plugin_defaults)."""
    group = parser.add_argument_group("Plug-in options (declared in the plug-in files)")
    taken = {action.dest for action in parser._actions}
    for option, declarations in sorted(declared_options().items()):
        kinds = {kind for kind, _, _ in declarations.values()}
        defaults = {repr(default) for _, default, _ in declarations.values()}
        if option in taken or len(kinds) > 1:
            raise PluginError(f"--{option} is declared by {', '.join(declarations)}"
                              + (" and is a framework flag" if option in taken else " with different types"))
        kind, default, help_text = next(iter(declarations.values()))
        add_flag(group, option, kind, default if len(defaults) == 1 else None,
                 f"{help_text} [{', '.join(declarations)}]")


def plugin_defaults(args: argparse.Namespace) -> None:
    """Fill plug-in options left at None with the default the selected plug-ins declare."""
    selected = {f"{folder}/{getattr(args, flag, '')}" for folder, flag in PLUGIN_FLAGS.items()}
    for option, declarations in declared_options().items():
        if getattr(args, option, None) is None:
            for where, (_, default, _) in declarations.items():
                if where in selected:
                    setattr(args, option, default)


def flags_given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options that appear on the command line."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
    return given


def section_keys(section: str, plugins: dict[str, str]) -> tuple[str, ...]:
    """The keys a YAML section takes: its part's framework flags and the options of the part's selected plug-in."""
    folder = SECTION_FOLDERS.get(section)
    return (*SECTION_FLAGS[section], *(plugin_options(folder, plugins[folder]) if folder else ()))


def config_entries(content: dict, config_path: str, plugins: dict[str, str]) -> list[tuple[str, object, str]]:
    """(key, value, where it was written) of each setting of a config, the keys of its sections (model_args: ...)
    brought to the top level; `plugins` names the selected plug-in of each folder (whose OPTIONS its section takes)."""
    entries = [(str(key), value, str(key)) for key, value in content.items() if not str(key).endswith("_args")]
    written = {key: where for key, _, where in entries}
    for section, values in content.items():
        if not str(section).endswith("_args") or values is None:
            continue
        if section not in SECTION_FLAGS:
            raise ConfigError(f"--config {config_path}: unknown section '{section}'; the sections are "
                              f"{', '.join(SECTION_FLAGS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"--config {config_path}: section '{section}' must hold 'key: value' lines, found "
                              f"{values!r}")
        allowed = section_keys(section, plugins)
        for key, value in values.items():
            where = f"{section}.{key}"
            if key not in allowed:
                raise ConfigError(f"--config {config_path}: key '{where}' is not a setting of "
                                  f"{part_name(section, plugins)}; {section} takes {', '.join(allowed)}{home_of(key)}")
            if key in written:
                raise ConfigError(f"--config {config_path}: key '{key}' is given twice, as '{written[key]}' and as "
                                  f"'{where}'; keep one")
            written[key] = where
            entries.append((key, value, where))
    return entries


def part_name(section: str, plugins: dict[str, str]) -> str:
    """The part a section configures, in words: 'the model ResNet34', 'the front end'."""
    folder = SECTION_FOLDERS.get(section)
    return f"the {section.removesuffix('_args')} {plugins[folder]}" if folder else "the front end"


def home_of(key: str) -> str:
    """Where a key given in the wrong section belongs (another section, or the plug-ins that declare it), as the end
    of an error ('' when nowhere)."""
    homes = [section for section, flags in SECTION_FLAGS.items() if key in flags]
    if homes:
        return f" ('{key}' belongs in {homes[0]})"
    declared = declared_options().get(key)
    return f" ('{key}' is an option of {', '.join(sorted(declared))})" if declared else ""


def selected_plugins(content: dict, args: argparse.Namespace) -> dict[str, str]:
    """The plug-in of each folder a config selects: its own key (model: ...), else the flag's value."""
    return {folder: str(content.get(flag) or getattr(args, flag)) for folder, flag in PLUGIN_FLAGS.items()}


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config_path: str,
                 given: set[str]) -> None:
    """YAML values (at the top level or in a part's section) win over the command line, cast with each flag's type
    (the original's semantics)."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read --config {config_path}: {getattr(error, 'strerror', None) or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {config_path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"--config {config_path}: expected 'key: value' lines, found a {type(content).__name__}")
    actions = {action.dest: action for action in parser._actions}
    for key, value, where in config_entries(content, config_path, selected_plugins(content, args)):
        if key not in actions or key == "config":
            warnings.warn(f"Ignored unknown parameter '{key}' in {config_path}", stacklevel=2)
            continue
        cast = actions[key].type
        if key in LIST_KEYS and isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = ",".join(value)
        try:
            if isinstance(value, (list, dict)):
                raise TypeError(f"a YAML {type(value).__name__}")
            value = value if value is None or cast is None else cast(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            type_name = "bool" if cast is str2bool else getattr(cast, "__name__", str(cast))
            raise ConfigError(f"--config {config_path}: key '{where}' has value {value!r}, "
                              f"which is not a valid {type_name}") from None
        if key in given and getattr(args, key) != value:
            warnings.warn(f"--{key} {getattr(args, key)} from the command line is overridden by "
                          f"{config_path} ({where}: {value}); using {value}", stacklevel=2)
        setattr(args, key, value)


def architecture_settings(saved: dict) -> dict:
    """The settings of a package that shape its embedding model: the model flags, its front end and the model's own
    options; not those of the loss, the evaluation, the data or the run."""
    other_parts = {name for title in NOT_ARCHITECTURE_GROUPS for name, *_ in FLAG_GROUPS[title]}
    model_plugin = f"models/{saved.get('model')}"
    options = declared_options()
    return {key: value for key, value in saved.items()
            if key not in other_parts and (key not in options or model_plugin in options[key])}


def apply_package_settings(args: argparse.Namespace, path: str, given: set[str]) -> None:
    """An inference package's saved settings fill the flags not given on the command line: all of them for --eval,
    its architecture for training (a fine-tuning run brings its own loss and evaluation settings)."""
    saved = package_settings(path)
    for key, value in (saved if args.eval else architecture_settings(saved)).items():
        if key not in given and hasattr(args, key):
            setattr(args, key, value)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, then the YAML file, then the plug-ins' defaults and the runtime paths the original adds."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.initial_model:
        apply_package_settings(args, args.initial_model, flags_given(parser, argv))
    if args.config is not None:
        apply_config(parser, args, args.config, flags_given(parser, argv))
    plugin_defaults(args)
    check_ranges(args)
    args.model_save_path = os.path.join(args.save_path, "model")
    args.result_save_path = os.path.join(args.save_path, "result")
    args.feat_save_path = ""
    args.gpu = 0
    return args


def resolved_config(args: argparse.Namespace) -> dict:
    """The configuration as YAML-able values, loadable again with --config (for training or --eval)."""
    return {key: value for key, value in vars(args).items() if key not in RUNTIME_KEYS + RUN_MODE_KEYS}


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Flags and the --config YAML, parsed and checked once, as Settings."""
    return Settings.from_namespace(parse_arguments(argv))
