"""Options per part: the YAML sections (model_args, frontend_args, loss_args, optimizer_args, scheduler_args) and
the keyword arguments each plug-in receives (settings.plugins.plugin_arguments)."""
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from ssl_encoders import write_tiny_encoder

import arguments
import trainSpeakerNet
from runtime.errors import ConfigError
from settings.flags import SECTION_FLAGS
from settings.plugins import (
    RECEIVED_FLAGS,
    available_plugins,
    declared_options,
    load_plugin,
    plugin_arguments,
    plugin_options,
)
from SpeakerNet import SpeakerNet, WrappedModel, ssl_back_ends
from training.trainer import ModelTrainer

PROJECT_ROOT = Path(arguments.__file__).resolve().parent
SHIPPED_CONFIGS = sorted([*PROJECT_ROOT.glob("configs/*.yaml"), *PROJECT_ROOT.glob("recipes/*/conf/*.yaml")])
# The flags the original's plug-ins read by name (its plug-in contract): each folder's plug-ins still receive them.
ORIGINAL_CONTRACT = {
    "models": {"nOut", "encoder_type", "log_input", "n_mels"},
    "loss": {"nOut", "nClasses", "margin", "scale", "hard_prob", "hard_rank", "nPerSpeaker"},
    "optimizer": {"lr", "weight_decay"},
    "scheduler": {"test_interval", "lr_decay", "max_epoch"},
}
FLAT = {
    "model": "ECAPA_TDNN", "nOut": 32, "n_mels": 40, "channels": 16, "aggregation_channels": 48,
    "frontend": "kaldi", "waveform_scale": 32768, "dither": 0.5,
    "trainfunc": "aamsoftmax_ramp", "nClasses": 7, "margin": 0.25, "scale": 20, "margin_start": 2, "margin_end": 4,
    "optimizer": "sgd_nesterov", "lr": 0.05, "weight_decay": 0.001, "momentum": 0.8,
    "scheduler": "warmup_exp", "warmup_epochs": 1, "final_lr": 0.0001, "max_epoch": 5, "batch_size": 16,
}
SECTIONED = {
    "model": "ECAPA_TDNN", "model_args": {"nOut": 32, "n_mels": 40, "channels": 16, "aggregation_channels": 48},
    "frontend_args": {"frontend": "kaldi", "waveform_scale": 32768, "dither": 0.5},
    "trainfunc": "aamsoftmax_ramp",
    "loss_args": {"nClasses": 7, "margin": 0.25, "scale": 20, "margin_start": 2, "margin_end": 4},
    "optimizer": "sgd_nesterov", "optimizer_args": {"lr": 0.05, "weight_decay": 0.001, "momentum": 0.8},
    "scheduler": "warmup_exp", "scheduler_args": {"warmup_epochs": 1, "final_lr": 0.0001},
    "max_epoch": 5, "batch_size": 16,
}


def write_yaml(tmp_path: Path, content: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def parsed(path: str, *argv: str) -> dict:
    """The flags of a --config run, without the config's own path."""
    values = vars(arguments.parse_arguments(["--config", path, *argv]))
    return {key: value for key, value in values.items() if key != "config"}


def test_sections_give_the_same_settings_model_and_loss_as_flat_keys(tmp_path):
    flat, sectioned = parsed(write_yaml(tmp_path, FLAT, "flat.yaml")), parsed(write_yaml(tmp_path, SECTIONED))
    assert sectioned == flat and sectioned["momentum"] == 0.8 and sectioned["dither"] == 0.5
    torch.manual_seed(0)
    from_flat = SpeakerNet(**flat).state_dict()
    torch.manual_seed(0)
    from_sections = SpeakerNet(**sectioned).state_dict()
    assert from_flat.keys() == from_sections.keys()
    assert all(torch.equal(from_flat[key], from_sections[key]) for key in from_flat)


def test_resnet34_recipe_in_sections_is_the_flat_recipe(tmp_path):
    content = yaml.safe_load((PROJECT_ROOT / "configs" / "ResNet34.yaml").read_text())
    assert {key for key in content if key.endswith("_args")} == set(SECTION_FLAGS)
    flat = {key: value for key, value in content.items() if not key.endswith("_args")}
    for section in SECTION_FLAGS:
        flat.update(content[section])
    assert parsed(str(PROJECT_ROOT / "configs" / "ResNet34.yaml")) == parsed(write_yaml(tmp_path, flat))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_every_shipped_config_loads(path):
    assert arguments.parse_settings(["--config", str(path)]).model.model


def test_the_run_writes_a_flat_config_that_loads_again(tmp_path):
    sectioned = parsed(write_yaml(tmp_path, SECTIONED))
    written = arguments.resolved_config(arguments.parse_arguments(["--config", write_yaml(tmp_path, SECTIONED)]))
    assert not any(key.endswith("_args") for key in written)
    assert parsed(write_yaml(tmp_path, written, "written.yaml")) == sectioned


def test_a_section_takes_the_plugin_chosen_on_the_command_line(tmp_path):
    path = write_yaml(tmp_path, {"model_args": {"channels": 16}})
    assert parsed(path, "--model", "ECAPA_TDNN")["channels"] == 16
    with pytest.raises(ConfigError, match="not a setting of the model ResNetSE34L"):
        parsed(path, "--model", "ResNetSE34L")
    overriding = write_yaml(tmp_path, {"model": "ECAPA_TDNN", "model_args": {"channels": 16}}, "overriding.yaml")
    with pytest.warns(UserWarning, match="--model ResNetSE34L from the command line is overridden"):
        assert parsed(overriding, "--model", "ResNetSE34L")["channels"] == 16


def test_a_section_wins_over_the_command_line_with_the_warning(tmp_path):
    path = write_yaml(tmp_path, {"optimizer_args": {"lr": 0.002}})
    with pytest.warns(UserWarning) as caught:
        assert parsed(path, "--lr", "0.1")["lr"] == 0.002
    assert [str(w.message) for w in caught] == [
        f"--lr 0.1 from the command line is overridden by {path} (optimizer_args.lr: 0.002); using 0.002"]


def test_an_empty_section_is_no_setting(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("model: ResNetSE34L\nmodel_args:\n")
    assert parsed(str(path))["nOut"] == 512


ERRORS = {
    "flat and in a section, same value": (
        {"lr": 0.1, "optimizer_args": {"lr": 0.1}},
        "key 'lr' is given twice, as 'lr' and as 'optimizer_args.lr'; keep one"),
    "in two sections": (
        {"model": "ResNetSE34L", "frontend_args": {"frontend": "logmel"}, "model_args": {"frontend": "logmel"}},
        "key 'model_args.frontend' is not a setting of the model ResNetSE34L; model_args takes nOut, n_mels, "
        "log_input, encoder_type ('frontend' belongs in frontend_args)"),
    "an option the plug-in does not declare": (
        {"model": "ResNetSE34L", "model_args": {"pooling": "TSTP"}},
        "key 'model_args.pooling' is not a setting of the model ResNetSE34L; model_args takes nOut, n_mels, "
        "log_input, encoder_type ('pooling' is an option of models/ResNet152, models/ResNet221, models/ResNet293, "
        "models/ResNet34, models/SimAM_ResNet100, models/SimAM_ResNet34)"),
    "a flag of another part": (
        {"trainfunc": "softmax", "loss_args": {"lr": 0.1}},
        "key 'loss_args.lr' is not a setting of the loss softmax; loss_args takes nClasses, margin, scale, "
        "easy_margin, hard_prob, hard_rank, nPerSpeaker ('lr' belongs in optimizer_args)"),
    "another plug-in's option": (
        {"optimizer": "adam", "optimizer_args": {"momentum": 0.9}},
        "key 'optimizer_args.momentum' is not a setting of the optimizer adam; optimizer_args takes lr, "
        "weight_decay ('momentum' is an option of optimizer/sgd_nesterov)"),
    "a scheduler option of another scheduler": (
        {"scheduler_args": {"warmup_epochs": 2}},
        "key 'scheduler_args.warmup_epochs' is not a setting of the scheduler steplr; scheduler_args takes "
        "lr_decay ('warmup_epochs' is an option of scheduler/warmup_cosine, scheduler/warmup_exp)"),
    "not a front-end flag": (
        {"frontend_args": {"n_mels": 80}},
        "key 'frontend_args.n_mels' is not a setting of the front end; frontend_args takes frontend, "
        "frontend_window, waveform_scale, preemphasis, mel_fmin, mel_fmax, dither, mean_norm, ssl_source, ssl_init, "
        "ssl_layers, ssl_frozen, lora_rank, lora_alpha, lora_targets, gradient_checkpointing, waveform_norm ('n_mels' "
        "belongs in model_args)"),
    "a section that is a list": (
        {"loss_args": ["margin", 0.2]}, "section 'loss_args' must hold 'key: value' lines, found ['margin', 0.2]"),
    "a section that is a value": (
        {"model_args": 256}, "section 'model_args' must hold 'key: value' lines, found 256"),
    "an unknown section": (
        {"data_args": {"batch_size": 2}},
        "unknown section 'data_args'; the sections are model_args, frontend_args, loss_args, optimizer_args, "
        "scheduler_args"),
    "a mistyped value in a section": (
        {"optimizer_args": {"lr": "fast"}}, "key 'optimizer_args.lr' has value 'fast', which is not a valid float"),
}


@pytest.mark.parametrize("content, message", ERRORS.values(), ids=ERRORS.keys())
def test_section_mistakes_are_one_line_errors(tmp_path, capsys, content, message):
    path = write_yaml(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        arguments.parse_arguments(["--config", path])
    assert str(error.value) == f"--config {path}: {message}"
    assert trainSpeakerNet.main(["--config", path]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"Error: --config {path}: {message}"]


@pytest.mark.parametrize("folder", RECEIVED_FLAGS)
def test_plugins_still_receive_the_flags_of_the_original_contract(folder):
    for name in available_plugins(folder):
        defaults = vars(arguments.parse_arguments([]))
        received = plugin_arguments(folder, name, {**defaults, "steps_per_epoch": 3})
        assert ORIGINAL_CONTRACT[folder] <= received.keys(), name
        assert received.keys() == {*RECEIVED_FLAGS[folder], *plugin_options(folder, name)}, name


def perturbed(flags: dict, keep: set[str]) -> dict:
    """`flags` with every value outside `keep` changed (numbers moved, booleans flipped, text altered)."""
    def change(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value * 3 + 7
        return value + "_changed" if isinstance(value, str) else value
    return {key: value if key in keep else change(value) for key, value in flags.items()}


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> str:
    """A tiny random encoder for the back ends that need --frontend ssl."""
    return write_tiny_encoder("wavlm", tmp_path_factory.mktemp("encoder") / "wavlm")


def plugin_flags(folder: str, name: str, encoder: str) -> dict:
    """The default flags of a run that selects plug-in `folder/name` (RawNet3 with its own pooling, ReDimNets with
    72 mel bins, the ssl back ends on `encoder`)."""
    selector = {"models": "--model", "loss": "--trainfunc", "optimizer": "--optimizer", "scheduler": "--scheduler"}
    extra = ["--encoder_type", "ECA"] if name == "RawNet3" else []
    if name.startswith("ReDimNet"):  # the global default of 40 mel bins does not fold into their stages
        extra = ["--n_mels", "72"]
    if folder == "models" and name in ssl_back_ends():
        extra = ["--frontend", "ssl", "--ssl_source", encoder]
    return {**vars(arguments.parse_arguments([selector[folder], name, *extra])), "steps_per_epoch": 3}


def built(folder: str, name: str, kwargs: dict):
    """What a plug-in builds from `kwargs`, as comparable values (weights, attributes, learning rates)."""
    torch.manual_seed(0)
    factory = load_plugin(folder, name)
    if folder in ("models", "loss"):
        module = factory(**kwargs)
        attributes = [repr({key: value for key, value in vars(part).items() if not key.startswith("_")})
                      for part in module.modules()]
        return repr(module), attributes, module.state_dict()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=kwargs.get("lr", 0.1))
    if folder == "optimizer":
        optimizer = factory([torch.nn.Parameter(torch.zeros(2))], **kwargs)
        return optimizer.defaults, [{**group, "params": None} for group in optimizer.param_groups]
    scheduler, lr_step = factory(optimizer, **kwargs)
    rates = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return lr_step, rates


@pytest.mark.parametrize("folder, name", [(folder, name) for folder in RECEIVED_FLAGS
                                          for name in available_plugins(folder)])
def test_every_plugin_builds_from_its_arguments_and_reads_no_other_flag(folder, name, encoder_folder):
    """Each plug-in builds from plugin_arguments of the default flags, and builds the same thing when it is given
    every flag with every other flag changed: it reads nothing beyond what it receives."""
    flags = plugin_flags(folder, name, encoder_folder)
    arguments_given = plugin_arguments(folder, name, flags)
    # Every flag, as the original passed them, less the name of a scheduler's first parameter.
    everything = perturbed({key: value for key, value in flags.items() if key != "optimizer" or folder != "scheduler"},
                           keep=set(arguments_given))
    reduced, full = built(folder, name, arguments_given), built(folder, name, everything)
    if folder in ("models", "loss"):
        assert reduced[:2] == full[:2]
        assert all(torch.equal(value, full[2][key]) for key, value in reduced[2].items())
    else:
        assert reduced == full
    known = {*flags, *declared_options()}
    factory = load_plugin(folder, name)
    parameters = list(inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters)
    named = parameters[1:]  # past self, an optimizer's parameters or a scheduler's optimizer
    assert {parameter for parameter in named if parameter in known} <= arguments_given.keys()


def test_the_settings_are_not_changed_on_the_way(tmp_path):
    """The model gets the device and the scheduler steps_per_epoch as arguments, not through the flags."""
    settings = arguments.parse_settings(["--model", "ResNetSE34L", "--trainfunc", "softmax", "--nOut", "8",
                                         "--nClasses", "3", "--scheduler", "warmup_exp"])
    before = dict(settings.flags)
    net = SpeakerNet(**{**settings.flags, "device": "cpu"})
    trainer = ModelTrainer(WrappedModel(net), **{**settings.flags, "device": torch.device("cpu")}, steps_per_epoch=4)
    assert settings.flags == before and "steps_per_epoch" not in trainer.record
    assert trainer.__scheduler__.lr_lambdas[0].keywords["total_steps"] == settings.optimisation.max_epoch * 4
    assert "device" not in net.model_settings and net.model_settings["nOut"] == 8


def test_inference_tools_read_the_sections_of_their_config(tmp_path):
    """embedSpeaker.py and exportModel.py resolve a sectioned config like the trainer."""
    from deployment.model_loading import resolve_settings

    path = write_yaml(tmp_path, {"model": "ECAPA_TDNN", "trainfunc": "softmax",
                                 "model_args": {"nOut": 32, "channels": 16}, "frontend_args": {"frontend": "kaldi"}})
    settings = resolve_settings({"model": "ResNetSE34L", "nOut": 64}, path, {})
    assert (settings["model"], settings["nOut"], settings["channels"], settings["frontend"]) == (
        "ECAPA_TDNN", 32, 16, "kaldi")
    bad = write_yaml(tmp_path, {"model_args": {"channels": 16}}, "bad.yaml")
    with pytest.raises(ConfigError, match="key 'model_args.channels' is not a setting of the model ResNetSE34L"):
        resolve_settings({"model": "ResNetSE34L", "trainfunc": "softmax"}, bad, {})
