"""Checkpoint formats: every accepted layout, buffers from the file win, reports and errors, atomic writes."""
import pytest
import torch
import torch.nn as nn

from runtime import checkpoint_files


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("window", torch.ones(5))


class Net(nn.Module):
    """Stands for a SpeakerNet: `__S__` model and `__L__` loss."""

    def __init__(self):
        super().__init__()
        self.__S__ = Backbone()
        self.__L__ = nn.Linear(3, 2)


def source_weights() -> dict:
    torch.manual_seed(0)
    net = Net()
    net.__S__.window.fill_(0.5)  # e.g. the released ResNetSE34L's Hann window
    return net.state_dict()


def load_file(tmp_path, content) -> tuple[Net, checkpoint_files.LoadReport]:
    path = tmp_path / "weights.model"
    torch.save(content, path)
    net = Net()
    weights = checkpoint_files.model_weights(checkpoint_files.read_checkpoint(path), str(path))
    return net, checkpoint_files.load_weights(net, weights, str(path))


def assert_same(net: Net, weights: dict):
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("layout", ["bare", "head", "ours"])
def test_state_dict_layouts_load_with_buffers(tmp_path, layout):
    weights = source_weights()
    content = {"bare": weights, "head": {"model_state_dict": weights, "optimizer_state_dict": {}, "epoch": 3},
               "ours": {"model_state_dict": weights, "epoch": 3, "format": checkpoint_files.FORMAT_TAG}}[layout]
    net, report = load_file(tmp_path, content)
    assert_same(net, weights)
    assert net.__S__.window.tolist() == [0.5] * 5
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []


def test_release_dict_with_model_key_gets_prefix(tmp_path):
    weights = source_weights()
    release = {"model": {key[len("__S__."):]: value for key, value in weights.items() if key.startswith("__S__.")}}
    net, report = load_file(tmp_path, release)
    assert torch.equal(net.__S__.fc.weight, weights["__S__.fc.weight"])
    assert sorted(report.missing) == ["__L__.bias", "__L__.weight"]


def test_module_prefixes_are_removed(tmp_path):
    weights = source_weights()
    net, report = load_file(tmp_path, {"module." + key: value for key, value in weights.items()})
    assert_same(net, weights)
    assert report.unexpected == []


def test_report_lists_missing_unexpected_and_mismatched(tmp_path):
    weights = source_weights()
    weights["__S__.fc.weight"] = torch.zeros(7, 4)
    weights["__S__.extra"] = torch.zeros(2)
    del weights["__L__.bias"]
    net, report = load_file(tmp_path, weights)
    assert report.mismatched == [("__S__.fc.weight", (3, 4), (7, 4))]
    assert report.unexpected == ["__S__.extra"]
    assert sorted(report.missing) == ["__L__.bias", "__S__.fc.weight"]
    assert report.missing_in("__S__.") == ["__S__.fc.weight"]
    text = report.text()
    assert "shape differs" in text and "model [3, 4] file [7, 4]" in text and "__S__.extra" in text


def test_checkpoint_sharing_no_key_is_an_error(tmp_path):
    with pytest.raises(checkpoint_files.CheckpointError, match="shares no tensor with this model"):
        load_file(tmp_path, {"__S__.conv9.weight": torch.zeros(3), "__S__.fc.weight": torch.zeros(9, 9)})


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(checkpoint_files.CheckpointError, match="Checkpoint not found"):
        checkpoint_files.read_checkpoint(tmp_path / "absent.model")
    damaged = tmp_path / "model000000002.model"
    torch.save(source_weights(), damaged)
    damaged.write_bytes(damaged.read_bytes()[:200])  # a half-written file
    with pytest.raises(checkpoint_files.CheckpointError, match="Cannot read checkpoint"):
        checkpoint_files.read_checkpoint(damaged)
    text = tmp_path / "notes.model"
    text.write_text("not a checkpoint")
    with pytest.raises(checkpoint_files.CheckpointError, match="Cannot read checkpoint"):
        checkpoint_files.read_checkpoint(text)


def test_atomic_write_and_listing(tmp_path):
    weights = source_weights()
    for epoch in (10, 2):
        checkpoint_files.write_atomically({"model_state_dict": weights, "epoch": epoch}, tmp_path / f"model{epoch:09d}.model")
    (tmp_path / "model000000011.model.tmp").write_bytes(b"partial")
    listed = checkpoint_files.saved_checkpoints(str(tmp_path))
    assert [checkpoint_files.epoch_of(path) for path in listed] == [2, 10]
    assert not list(tmp_path.glob("model00000001[0].model.tmp"))
    content = torch.load(listed[-1], weights_only=True)  # how the original's HEAD loader reads it
    assert content["epoch"] == 10 and set(content["model_state_dict"]) == set(weights)


def test_speed_perturbed_classifier_keeps_its_first_classes(tmp_path, capsys):
    """A head trained on 3x the classes (--speed_perturb) loads into a head of the speakers at speed 1."""
    model = torch.nn.Module()
    model.__L__ = torch.nn.Linear(4, 5)
    model.__S__ = torch.nn.Linear(3, 4)
    file_weights = {"__L__.weight": torch.arange(60.0).reshape(15, 4), "__L__.bias": torch.arange(15.0),
                    "__S__.weight": torch.ones(4, 3), "__S__.bias": torch.ones(4)}
    report = checkpoint_files.load_weights(model, file_weights, "sp.model")
    assert torch.equal(model.__L__.weight, file_weights["__L__.weight"][:5])
    assert torch.equal(model.__L__.bias, torch.arange(5.0)) and not report.mismatched
    assert sorted(name for name, _, _ in report.truncated) == ["__L__.bias", "__L__.weight"]
    assert "loss classes kept: the first ones of the file's (2)" in report.text()
    odd = dict(file_weights, **{"__L__.weight": torch.zeros(7, 4)})  # 7 is no multiple of 5: not a class layout
    assert [name for name, _, _ in checkpoint_files.load_weights(model, odd, "x").mismatched] == ["__L__.weight"]
