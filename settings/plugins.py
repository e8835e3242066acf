"""Plug-ins found by file name in models/, loss/, optimizer/ and scheduler/, the options they declare and the
keyword arguments each receives."""
from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

from runtime.errors import UserError
from settings.flags import SECTION_FLAGS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_KINDS = {  # folder -> (flag, attribute every plug-in must define)
    "models": ("--model", "MainModel"),
    "loss": ("--trainfunc", "LossFunction"),
    "optimizer": ("--optimizer", "Optimizer"),
    "scheduler": ("--scheduler", "Scheduler"),
}
OPTION_TYPES = (int, float, str, bool)
# The framework flags the plug-ins of each folder receive as keyword arguments besides their own OPTIONS: their
# part's YAML section, the flags of other parts that the original's plug-ins read (a loss's nOut, a scheduler's lr,
# max_epoch and test_interval), a model's front end and device, and a scheduler's steps_per_epoch.
RECEIVED_FLAGS = {
    "models": (*SECTION_FLAGS["model_args"], *SECTION_FLAGS["frontend_args"], "device"),
    "loss": ("nOut", *SECTION_FLAGS["loss_args"]),
    "optimizer": SECTION_FLAGS["optimizer_args"],
    "scheduler": ("lr", "max_epoch", "test_interval", *SECTION_FLAGS["scheduler_args"], "steps_per_epoch"),
}


class PluginError(UserError, ValueError):
    """An unknown plug-in name or a plug-in that cannot serve this run."""


def available_plugins(folder: str) -> list[str]:
    """Names of the plug-ins in `folder` (files that define the folder's entry point)."""
    attribute = PLUGIN_KINDS[folder][1]
    return [path.stem for path in sorted((PROJECT_ROOT / folder).glob("*.py"))
            if not path.stem.startswith("_") and attribute in path.read_text(encoding="utf-8")]


def plugin_module(folder: str, name: str):
    """The module of plug-in `folder/name.py` (an unknown name lists the ones that exist)."""
    flag = PLUGIN_KINDS[folder][0]
    names = available_plugins(folder)
    if name not in names:
        given = f"'{name}'" if name else "nothing"
        raise PluginError(f"{flag} got {given}; available in {folder}/: {', '.join(names)}")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    return importlib.import_module(f"{folder}.{name}")


def load_plugin(folder: str, name: str):
    """The entry point (MainModel, LossFunction, Optimizer, Scheduler) of plug-in `folder/name.py`."""
    return getattr(plugin_module(folder, name), PLUGIN_KINDS[folder][1])


def plugin_options(folder: str, name: str) -> tuple[str, ...]:
    """The names of the options plug-in `folder/name.py` declares in its OPTIONS."""
    return tuple(getattr(plugin_module(folder, name), "OPTIONS", {}))


def plugin_arguments(folder: str, name: str, flags: dict) -> dict:
    """The keyword arguments of plug-in `folder/name.py`: the values in `flags` of its folder's RECEIVED_FLAGS and
    of its own OPTIONS (a key missing from `flags` is left to the plug-in's default)."""
    wanted = (*RECEIVED_FLAGS[folder], *plugin_options(folder, name))
    return {key: flags[key] for key in wanted if key in flags}


def build_plugin(folder: str, name: str, flags: dict, *args):
    """Construct a plug-in from its plugin_arguments of `flags` (`args` first: an optimizer's parameters, a
    scheduler's optimizer); a setting it rejects (a ValueError) becomes a PluginError naming it."""
    factory = load_plugin(folder, name)
    try:
        return factory(*args, **plugin_arguments(folder, name, flags))
    except ValueError as error:
        raise PluginError(f"{folder}/{name}.py: {error}") from error


@functools.cache
def declared_options() -> dict[str, dict[str, tuple]]:
    """Every plug-in's own options: {option name: {"folder/plugin": (type, default, help)}}.

    A plug-in declares them as a module-level dict `OPTIONS = {"name": (type, default, help)}`; only files that
    mention OPTIONS are imported."""
    found: dict[str, dict[str, tuple]] = {}
    for folder in PLUGIN_KINDS:
        for name in available_plugins(folder):
            if "OPTIONS" not in (PROJECT_ROOT / folder / f"{name}.py").read_text(encoding="utf-8"):
                continue
            for option, declaration in getattr(plugin_module(folder, name), "OPTIONS", {}).items():
                check_declaration(f"{folder}/{name}.py", option, declaration)
                found.setdefault(option, {})[f"{folder}/{name}"] = tuple(declaration)
    return found


def check_declaration(where: str, option: str, declaration) -> None:
    """A plug-in's OPTIONS entry must be (type, default, help) with a plain type."""
    if not (isinstance(declaration, tuple) and len(declaration) == 3 and declaration[0] in OPTION_TYPES):
        raise PluginError(f"{where}: OPTIONS['{option}'] must be (type, default, help) with type int, float, str "
                          f"or bool, got {declaration!r}")

