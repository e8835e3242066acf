"""The helper that rebuilds released peer models (wespeaker, 3D-Speaker, SpeechBrain) from their fixtures."""
import math

import numpy as np
import peer_releases
import pytest
import soundfile
import torch
import yaml
from peer_releases import CASES, load_case, seeded_state_dict, seeded_tensor, write_release

# one case of each release layout (a ResNet293 release is 110 MB, so not every case is written here)
WRITTEN = ("wespeaker_resnet34_two_emb", "3dspeaker_campplus_cn_common", "speechbrain_ecapa_voxceleb")


class _TaggedLoader(yaml.SafeLoader):
    """Reads HyperPyYAML text (!new:, !ref, !apply:...) as plain YAML, keeping tagged nodes as their values."""


def _tagged(loader, suffix, node):
    """A tagged node as its plain value."""
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TaggedLoader.add_multi_constructor("!", _tagged)


def test_seeded_tensors_are_reproducible_and_distinct():
    first = seeded_tensor("case", "layer.weight", (8, 4, 3), "float32", "weight")
    assert torch.equal(first, seeded_tensor("case", "layer.weight", [8, 4, 3], torch.float32, "weight"))
    assert not torch.equal(first, seeded_tensor("other", "layer.weight", (8, 4, 3), "float32", "weight"))
    assert not torch.equal(first, seeded_tensor("case", "layer2.weight", (8, 4, 3), "float32", "weight"))
    assert first.dtype == torch.float32 and first.shape == (8, 4, 3)


def test_seeded_values_are_pinned():
    """numpy's PCG64 stream is the same on every platform: these bits must never change."""
    values = seeded_tensor("pin", "bn.running_var", (4,), "float32", "bn_var")
    again = torch.from_numpy(0.5 + 1.5 * np.random.default_rng(peer_releases._seed("pin", "bn.running_var", (4,),
                                                                                     "bn_var")).random(4))
    assert torch.equal(values, again.to(torch.float32))
    assert values.tolist() == [1.8870772123336792, 1.3477206230163574, 1.4162547588348389, 1.9179866313934326]
    weight = seeded_tensor("pin", "conv.weight", (2, 3), "float32", "weight")
    assert weight.tolist() == [[-0.18331170082092285, 0.7027546763420105, -0.5194429755210876],
                               [0.1902628391981125, 0.18328285217285156, -0.37354570627212524]]


@pytest.mark.parametrize("kind, low, high", [("bias", -0.05, 0.05), ("bn_weight", 0.5, 1.5), ("bn_bias", -0.2, 0.2),
                                             ("bn_mean", -0.2, 0.2), ("bn_var", 0.5, 2.0), ("uniform", -0.2, 0.2)])
def test_seeded_ranges(kind, low, high):
    values = seeded_tensor("ranges", "x", (4000,), "float32", kind)
    assert low <= float(values.min()) and float(values.max()) <= high
    assert float(values.max() - values.min()) > 0.9 * (high - low)


def test_seeded_weights_are_he_scaled_and_centred():
    weight = seeded_tensor("ranges", "conv.weight", (64, 32, 3, 3), "float32", "weight").double()
    fan_in = 32 * 3 * 3
    assert float(weight.var()) == pytest.approx(2.0 / fan_in, rel=0.05)
    assert float(weight.abs().max()) <= 2 * math.sqrt(6.0 / fan_in)
    assert torch.allclose(weight.reshape(64, -1).sum(dim=1), torch.zeros(64, dtype=torch.float64), atol=1e-5)


def test_counts_scale_and_shift():
    count = seeded_tensor("ranges", "bn.num_batches_tracked", (), "int64", "count")
    assert count.dtype == torch.int64 and 1000 <= int(count) < 100000
    as_float = seeded_tensor("ranges", "bn.num_batches_tracked", (), "float32", "count", 7.0, 3.0)
    assert float(as_float) == float(count)  # counts ignore scale and shift; wespeaker stores them as floats
    base = seeded_tensor("ranges", "bn.running_mean", (16,), "float64", "bn_mean")
    moved = seeded_tensor("ranges", "bn.running_mean", (16,), "float64", "bn_mean", 2.5, -1.0)
    assert torch.allclose(moved, base * 2.5 - 1.0)


def test_inferred_kinds():
    assert peer_releases.infer_kind("a.bn.num_batches_tracked", ()) == "count"
    assert peer_releases.infer_kind("a.bn.running_var", (8,)) == "bn_var"
    assert peer_releases.infer_kind("a.bn.weight", (8,)) == "bn_weight"
    assert peer_releases.infer_kind("a.conv.weight", (8, 4, 3)) == "weight"
    assert peer_releases.infer_kind("a.conv.bias", (8,)) == "bias"


def test_state_dict_keeps_the_manifest_order():
    entries = [["b.weight", [3, 2], "float32", "weight"], ["a.running_var", [3], "float32", "bn_var", 4.0],
               ["a.num_batches_tracked", [], "int64", "count"]]
    state = seeded_state_dict("order", entries)
    assert list(state) == ["b.weight", "a.running_var", "a.num_batches_tracked"]
    assert 2.0 <= float(state["a.running_var"].min()) and float(state["a.running_var"].max()) <= 8.0


def test_audio_files():
    total = 0
    for name in peer_releases.AUDIO_FILES:
        path = peer_releases.AUDIO_DIR / name
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.5 < info.duration < 4.0
        total += path.stat().st_size
    assert total < 150_000


@pytest.mark.parametrize("name", CASES)
def test_fixture(name):
    case = load_case(name)
    assert case["case"] == name and case["toolkit"] in ("wespeaker", "3d-speaker", "speechbrain", "redimnet",
                                                        "redimnet2")
    release = case["release"]
    for spec in release["weights"].values():
        keys = [entry[0] for entry in spec["tensors"]]
        assert len(keys) == len(set(keys))
        for entry in spec["tensors"]:
            assert entry[2] in peer_releases.DTYPES and entry[3] in peer_releases.KINDS
            assert len(entry) in (4, 5, 6)
            if entry[3] in ("bn_mean", "bn_var") and len(entry) > 4:
                assert entry[4] > 0
    dims = set()
    for audio in peer_releases.AUDIO_FILES:
        vector = peer_releases.peer_embedding(case, audio)
        assert torch.isfinite(vector).all() and 1.0 < float(vector.norm()) < 1000.0
        dims.add(vector.numel())
    assert len(dims) == 1
    first, second = (peer_releases.peer_embedding(case, audio) for audio in peer_releases.AUDIO_FILES)
    assert float(torch.nn.functional.cosine_similarity(first, second, dim=0)) < 0.99
    if case["toolkit"] == "wespeaker":
        config = yaml.safe_load(release["texts"]["config.yaml"])
        assert config["model_args"]["embed_dim"] == dims.pop()
        tensors = {entry[0]: entry for entry in release["weights"]["avg_model.pt"]["tensors"]}
        assert tensors["projection.weight"][1] == [config["projection_args"]["num_class"],
                                                   config["model_args"]["embed_dim"]]
        # average_model.py divides every tensor by the number of checkpoints: the counts are floats
        assert {entry[2] for entry in tensors.values() if entry[3] == "count"} == {"float32"}
    elif case["toolkit"] == "3d-speaker":
        assert case["model"]["args"]["embedding_size"] == dims.pop()
    elif case["toolkit"] in ("redimnet", "redimnet2"):
        assert case["model"]["args"]["embed_dim"] == dims.pop()
    else:
        hyperparams = yaml.load(release["texts"]["hyperparams.yaml"], Loader=_TaggedLoader)
        assert hyperparams["embedding_model"]["lin_neurons"] == dims.pop()


@pytest.mark.parametrize("name", WRITTEN)
def test_write_release(name, tmp_path):
    case = load_case(name)
    checkpoint = write_release(case, tmp_path)
    release = case["release"]
    if case["toolkit"] == "wespeaker":
        assert checkpoint.is_dir() and checkpoint.parent == tmp_path
        assert sorted(p.name for p in checkpoint.iterdir()) == ["avg_model.pt", "config.yaml"]
        config = yaml.safe_load((checkpoint / "config.yaml").read_text())
        assert config["model"] == "ResNet34" and config["model_args"]["two_emb_layer"] is True
        assert config["dataset_args"]["fbank_args"]["num_mel_bins"] == 80
    elif case["toolkit"] == "3d-speaker":
        assert checkpoint == tmp_path / "campplus_cn_common.bin" and checkpoint.is_file()
        assert [p.name for p in tmp_path.iterdir()] == ["campplus_cn_common.bin"]
    else:
        assert checkpoint == tmp_path / "spkrec-ecapa-voxceleb" and checkpoint.is_dir()
        assert sorted(p.name for p in checkpoint.iterdir()) == [
            "classifier.ckpt", "embedding_model.ckpt", "hyperparams.yaml", "label_encoder.txt",
            "mean_var_norm_emb.ckpt"]
        hyperparams = yaml.load((checkpoint / "hyperparams.yaml").read_text(), Loader=_TaggedLoader)
        assert hyperparams["embedding_model"]["channels"] == [1024, 1024, 1024, 1024, 3072]
        classes = hyperparams["out_n_neurons"]
        assert len((checkpoint / "label_encoder.txt").read_text().split("================\n")[0].splitlines()) == classes
        stats = torch.load(checkpoint / "mean_var_norm_emb.ckpt", weights_only=True)
        assert stats["count"] == 5000 and stats["glob_mean"].shape == (192,) and stats["glob_std"].min() > 0
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for filename, spec in release["weights"].items():
        state = torch.load(folder / filename, map_location="cpu", weights_only=True)
        tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
        assert list(tensors) == [entry[0] for entry in spec["tensors"]]
        for key, shape, dtype, *_ in spec["tensors"]:
            assert list(tensors[key].shape) == shape and tensors[key].dtype == peer_releases.DTYPES[dtype]
        assert all(torch.equal(tensors[key], value) for key, value in
                   seeded_state_dict(case["case"], spec["tensors"]).items())
    for filename, text in release["texts"].items():
        assert (folder / filename).read_text() == text


def test_unknown_case():
    with pytest.raises(FileNotFoundError):
        load_case("no_such_case")
