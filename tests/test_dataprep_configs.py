"""The shipped YAML recipes use only known flags, existing plug-ins and a valid nPerSpeaker for their loss."""
import importlib
from pathlib import Path

import pytest
import yaml

import arguments

CONFIGS = sorted((Path(arguments.__file__).resolve().parent / "configs").glob("*.yaml"))


def test_the_recipes_are_there():
    assert {path.name for path in CONFIGS} >= {"demo.yaml", "ResNetSE34L_AP.yaml", "ResNetSE34L_AM.yaml",
                                                "ResNetSE34V2_SMP.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_recipe_is_consistent(path):
    content = yaml.safe_load(path.read_text())
    plugins = arguments.selected_plugins(content, arguments.parse_arguments([]))
    config = {key: value for key, value, _ in arguments.config_entries(content, str(path), plugins)}
    known = {action.dest for action in arguments.build_parser()._actions}
    assert set(config) <= known, f"unknown keys {set(config) - known}"
    importlib.import_module(f"models.{config['model']}")
    loss = importlib.import_module(f"loss.{config['trainfunc']}").LossFunction
    per_speaker = config.get("nPerSpeaker", 1)
    assert loss.min_per_speaker <= per_speaker <= (loss.max_per_speaker or per_speaker)
    args = arguments.parse_arguments(["--config", str(path)])
    assert args.model == config["model"] and args.nPerSpeaker == per_speaker
