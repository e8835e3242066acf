"""Plug-ins found by file name in models/, loss/, optimizer/ and scheduler/, and the options they declare."""
from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

from runtime.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_KINDS = {  # folder -> (flag, attribute every plug-in must define)
    "models": ("--model", "MainModel"),
    "loss": ("--trainfunc", "LossFunction"),
    "optimizer": ("--optimizer", "Optimizer"),
    "scheduler": ("--scheduler", "Scheduler"),
}
OPTION_TYPES = (int, float, str, bool)


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


def build_plugin(folder: str, name: str, kwargs: dict, *args):
    """Construct a plug-in (`args` first: an optimizer's parameters, a scheduler's optimizer); a setting it
    rejects (a ValueError) becomes a PluginError naming it."""
    factory = load_plugin(folder, name)
    try:
        return factory(*args, **kwargs)
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

