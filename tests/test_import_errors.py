"""Importing releases from the internet: bad input ends with one line naming the file and key, exit status 1, and no
output file; an import never runs code from the file."""
import argparse
import os

import pytest
import torch
import yaml

import importModel
from models.ResNet34 import MainModel as ResNet34


def wespeaker_resnet34_weights() -> dict[str, torch.Tensor]:
    """A state dict under wespeaker's ResNet34 names (our ResNet34's tensors renamed back), with a classifier."""
    torch.manual_seed(0)
    ours = ResNet34(nOut=32, n_mels=80).state_dict()
    weights = {key.replace(".downsample.", ".shortcut.").replace("embedding.", "seg_1."): value
               for key, value in ours.items() if not key.startswith("fbank.")}
    weights["projection.weight"] = torch.randn(7, 32)
    return weights


WESPEAKER_CONFIG = {"model": "ResNet34",
                    "model_args": {"feat_dim": 80, "embed_dim": 32, "pooling_func": "TSTP", "two_emb_layer": False},
                    "dataset_args": {"fbank_args": {"num_mel_bins": 80, "frame_length": 25, "frame_shift": 10,
                                                    "dither": 1.0}},
                    "projection_args": {"project_type": "arc_margin", "scale": 32.0}}


def write_wespeaker(folder, config: dict | str | None = None, weights=None) -> str:
    os.makedirs(folder, exist_ok=True)
    if config is not None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        with open(os.path.join(folder, "config.yaml"), "w") as handle:
            handle.write(text)
    if weights is not None:
        torch.save(weights, os.path.join(folder, "avg_model.pt"))
    return str(folder)


def stop_line(capsys, toolkit: str, checkpoint: str, output: str) -> str:
    """Run importModel in this process; check exit status 1, one 'Error' line and no output; return the line."""
    status = importModel.main(["--from", toolkit, "--checkpoint", checkpoint, "--output", output])
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("Error")]
    assert status == 1 and len(lines) == 1 and "Traceback" not in error, error
    assert not os.path.exists(output) and not os.listdir(os.path.dirname(output))
    return lines[0]


@pytest.fixture
def output(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return str(folder / "imported.pkg")


def test_a_wespeaker_release_imports(tmp_path, output, capsys):
    release = write_wespeaker(tmp_path / "release", WESPEAKER_CONFIG, wespeaker_resnet34_weights())
    assert importModel.main(["--from", "wespeaker", "--checkpoint", release, "--output", output]) == 0
    assert "7-class training classifier left out" in capsys.readouterr().out
    content = torch.load(output, weights_only=True)
    assert content["provenance"]["toolkit"] == "wespeaker" and set(content["provenance"]["files"]) == {
        "config.yaml", "avg_model.pt"}
    assert content["args"]["model"] == "ResNet34" and content["args"]["nOut"] == 32
    assert content["args"]["scoring"] == "cosine" and content["args"]["eval_frames"] == 0


def test_missing_config(tmp_path, output, capsys):
    release = write_wespeaker(tmp_path / "release", None, wespeaker_resnet34_weights())
    assert "it has no config.yaml (found: avg_model.pt)" in stop_line(capsys, "wespeaker", release, output)


def test_model_we_lack_lists_the_ones_we_have(tmp_path, output, capsys):
    release = write_wespeaker(tmp_path / "release", {**WESPEAKER_CONFIG, "model": "ERes2Net34_Base"},
                              wespeaker_resnet34_weights())
    line = stop_line(capsys, "wespeaker", release, output)
    assert "model 'ERes2Net34_Base' is not available here" in line and "ResNet293" in line and "CAMPPlus" in line


def test_unknown_model_argument_is_named(tmp_path, output, capsys):
    config = {**WESPEAKER_CONFIG, "model_args": {**WESPEAKER_CONFIG["model_args"], "m_channels": 64}}
    release = write_wespeaker(tmp_path / "release", config, wespeaker_resnet34_weights())
    assert "model_args 'm_channels'" in stop_line(capsys, "wespeaker", release, output)


def test_weights_of_another_network(tmp_path, output, capsys):
    config = {**WESPEAKER_CONFIG, "model": "ECAPA_TDNN_GLOB_c512",
              "model_args": {"feat_dim": 80, "embed_dim": 32, "pooling_func": "ASTP"}}
    release = write_wespeaker(tmp_path / "release", config, wespeaker_resnet34_weights())
    line = stop_line(capsys, "wespeaker", release, output)
    assert "avg_model.pt does not hold a wespeaker ECAPA_TDNN_GLOB_c512" in line and "without a place" in line


def test_missing_tensor_is_named(tmp_path, output, capsys):
    weights = wespeaker_resnet34_weights()
    del weights["layer3.2.bn1.running_var"]
    release = write_wespeaker(tmp_path / "release", WESPEAKER_CONFIG, weights)
    assert "layer3.2.bn1.running_var" in stop_line(capsys, "wespeaker", release, output)


def test_truncated_file(tmp_path, output, capsys):
    release = write_wespeaker(tmp_path / "release", WESPEAKER_CONFIG, wespeaker_resnet34_weights())
    path = os.path.join(release, "avg_model.pt")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    assert "Is the download complete?" in stop_line(capsys, "wespeaker", release, output)


def test_pickled_code_is_refused_with_the_reason(tmp_path, output, capsys):
    weights = {**wespeaker_resnet34_weights(), "training_args": argparse.Namespace(lr=0.1)}
    release = write_wespeaker(tmp_path / "release", WESPEAKER_CONFIG, weights)
    line = stop_line(capsys, "wespeaker", release, output)
    assert "needs pickled code (argparse.Namespace)" in line and "never runs code" in line


def test_bad_yaml_names_the_file(tmp_path, output, capsys):
    release = write_wespeaker(tmp_path / "release", "model: [ResNet34\n", wespeaker_resnet34_weights())
    assert "config.yaml is not valid YAML" in stop_line(capsys, "wespeaker", release, output)


def test_a_3dspeaker_file_of_another_network(tmp_path, output, capsys):
    path = tmp_path / "eres2net.bin"
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, 3)}, path)
    line = stop_line(capsys, "3dspeaker", str(path), output)
    assert "is not a 3D-Speaker CAM++ state dict" in line and "importable 3D-Speaker models: CAM++" in line


SPEECHBRAIN_HYPERPARAMS = """n_mels: 80
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [64, 64, 64, 64, 192]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 32
"""


@pytest.mark.parametrize("change, message", [
    (("channels: [64, 64, 64, 64, 192]", "channels: [64, 128, 64, 64, 192]"), "embedding_model channels must be"),
    (("kernel_sizes: [5, 3, 3, 3, 1]", "kernel_sizes: [5, 5, 3, 3, 1]"), "embedding_model kernel_sizes is"),
    (("norm_type: sentence", "norm_type: global"), "mean_var_norm must be norm_type sentence"),
    (("speechbrain.lobes.features.Fbank", "speechbrain.lobes.features.MFCC"), "'compute_features' must be"),
    (("n_mels: !ref <n_mels>", "n_mels: 40"), "compute_features n_mels 40 differs"),
    (("    lin_neurons: 32\n", "    lin_neurons: 32\n    res2net_scale: 4\n"), "res2net_scale is 4"),
    (("input_size: !ref <n_mels>", "input_size: !ref <mels>"), "the reference <mels> names no key"),
])
def test_speechbrain_hyperparams_of_another_shape(tmp_path, output, capsys, change, message):
    release = tmp_path / "release"
    release.mkdir()
    (release / "hyperparams.yaml").write_text(SPEECHBRAIN_HYPERPARAMS.replace(*change))
    torch.save({"blocks.0.conv.conv.weight": torch.zeros(64, 80, 5)}, release / "embedding_model.ckpt")
    line = stop_line(capsys, "speechbrain", str(release), output)
    assert "hyperparams.yaml" in line and message in line


def test_speechbrain_folder_without_weights(tmp_path, output, capsys):
    release = tmp_path / "release"
    release.mkdir()
    (release / "hyperparams.yaml").write_text(SPEECHBRAIN_HYPERPARAMS)
    assert "it has no embedding_model.ckpt" in stop_line(capsys, "speechbrain", str(release), output)
