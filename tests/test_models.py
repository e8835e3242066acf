"""Models: checkpoint key tables (fact sheet appendices A and B), parameter counts, shapes, lengths, front end."""
from importlib import import_module

import pytest
import torch
from torch import nn

from models.FrontEnd import PreEmphasis, normalised_features

SAMPLES_200_FRAMES = 200 * 160 + 240
SAMPLES_400_FRAMES = 400 * 160 + 240
ODD_SAMPLES = 12_345

# (model, encoder) -> pooling dimension checked via the fc input width; every model x encoder is covered.
MODEL_ENCODERS = [
    ("ResNetSE34L", "SAP"), ("ResNetSE34L", "ASP"),
    ("ResNetSE34V2", "SAP"), ("ResNetSE34V2", "ASP"),
    ("VGGVox", "SAP"), ("VGGVox", "TAP"), ("VGGVox", "MAX"), ("VGGVox40", "SAP"),
    ("ResNetSE34", "SAP"), ("ResNetSE34", "ASP"),
    ("Res2NetSE34", "SAP"), ("Res2NetSE34", "ASP"),
]

# Extra CLI arguments every constructor receives and must ignore.
CLI_NOISE = {"model": "x", "trainfunc": "softmax", "batch_size": 2, "nClasses": 7, "margin": 0.1, "augment": False}


def build(name: str, **kwargs) -> nn.Module:
    """Construct models.<name>.MainModel the way the trainer does (all args as kwargs)."""
    torch.manual_seed(0)
    return import_module(f"models.{name}").MainModel(**{**CLI_NOISE, **kwargs})


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- expected key tables (appendices A and B)

def bn_keys(prefix: str, channels: int) -> list[tuple[str, list[int]]]:
    """The five state_dict entries of a BatchNorm layer."""
    keys = [(f"{prefix}.{name}", [channels]) for name in ("weight", "bias", "running_mean", "running_var")]
    return keys + [(f"{prefix}.num_batches_tracked", [])]


def se_block_keys(prefix: str, inplanes: int, planes: int) -> list[tuple[str, list[int]]]:
    """Keys of one SEBasicBlock, with the 1x1 downsample when the channel count changes."""
    keys = [(f"{prefix}.conv1.weight", [planes, inplanes, 3, 3]), *bn_keys(f"{prefix}.bn1", planes),
            (f"{prefix}.conv2.weight", [planes, planes, 3, 3]), *bn_keys(f"{prefix}.bn2", planes),
            (f"{prefix}.se.fc.0.weight", [planes // 8, planes]), (f"{prefix}.se.fc.0.bias", [planes // 8]),
            (f"{prefix}.se.fc.2.weight", [planes, planes // 8]), (f"{prefix}.se.fc.2.bias", [planes])]
    if inplanes != planes:
        keys += [(f"{prefix}.downsample.0.weight", [planes, inplanes, 1, 1]), *bn_keys(f"{prefix}.downsample.1", planes)]
    return keys


def resnet_layer_keys(filters: list[int], blocks=(3, 4, 6, 3)) -> list[tuple[str, list[int]]]:
    """Keys of layer1..layer4 for the given stage widths."""
    keys, inplanes = [], filters[0]
    for stage, (count, planes) in enumerate(zip(blocks, filters), start=1):
        for index in range(count):
            keys += se_block_keys(f"layer{stage}.{index}", inplanes, planes)
            inplanes = planes
    return keys


def appendix_a() -> list[tuple[str, list[int]]]:
    """ResNetSE34L (nOut 512, SAP, 40 mels) + angleproto, in state_dict order."""
    model = [("attention", [128, 1]), ("conv1.weight", [16, 1, 7, 7]), *bn_keys("bn1", 16),
             *resnet_layer_keys([16, 32, 64, 128]),
             ("torchfb.spectrogram.window", [400]), ("torchfb.mel_scale.fb", [257, 40]),
             ("sap_linear.weight", [128, 128]), ("sap_linear.bias", [128]),
             ("fc.weight", [512, 128]), ("fc.bias", [512])]
    return [(f"__S__.{k}", s) for k, s in model] + [("__L__.w", []), ("__L__.b", [])]


def appendix_b() -> list[tuple[str, list[int]]]:
    """ResNetSE34V2 (nOut 512, ASP, 64 mels) + softmaxproto (5994 classes), in state_dict order."""
    model = [("conv1.weight", [32, 1, 3, 3]), ("conv1.bias", [32]), *bn_keys("bn1", 32),
             *resnet_layer_keys([32, 64, 128, 256]),
             ("torchfb.0.flipped_filter", [1, 1, 2]), ("torchfb.1.spectrogram.window", [400]),
             ("torchfb.1.mel_scale.fb", [257, 64]),
             ("attention.0.weight", [128, 2048, 1]), ("attention.0.bias", [128]), *bn_keys("attention.2", 128),
             ("attention.3.weight", [2048, 128, 1]), ("attention.3.bias", [2048]),
             ("fc.weight", [512, 4096]), ("fc.bias", [512])]
    loss = [("softmax.fc.weight", [5994, 512]), ("softmax.fc.bias", [5994]), ("angleproto.w", []), ("angleproto.b", [])]
    return [(f"__S__.{k}", s) for k, s in model] + [(f"__L__.{k}", s) for k, s in loss]


def speaker_net_state(model: nn.Module, loss: nn.Module) -> list[tuple[str, list[int]]]:
    """(key, shape) of a SpeakerNet-like module holding the model as __S__ and the loss as __L__."""
    holder = nn.Module()
    holder.add_module("__S__", model)
    holder.add_module("__L__", loss)
    state = holder.state_dict()
    for key, value in state.items():
        expected = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        assert value.dtype == expected, key
    return [(key, list(value.shape)) for key, value in state.items()]


def test_resnetse34l_keys_match_appendix_a():
    model = build("ResNetSE34L", nOut=512, encoder_type="SAP", n_mels=40, log_input=True)
    loss = import_module("loss.angleproto").LossFunction(**CLI_NOISE)
    expected = appendix_a()
    assert len(expected) == 289
    assert speaker_net_state(model, loss) == expected
    assert count_parameters(model) == 1_437_078


def test_resnetse34v2_keys_match_appendix_b():
    model = build("ResNetSE34V2", nOut=512, encoder_type="ASP", n_mels=64, log_input=True)
    loss = import_module("loss.softmaxproto").LossFunction(**{**CLI_NOISE, "nOut": 512, "nClasses": 5994})
    expected = appendix_b()
    assert len(expected) == 299
    assert speaker_net_state(model, loss) == expected
    assert count_parameters(model) == 8_028_492
    assert count_parameters(loss) == 5994 * 512 + 5994 + 2


def test_vggvox_layer_order():
    """netcnn indices of section 4.4: convs at 0, 4, 8, 11, 14, 18, each followed by its BatchNorm."""
    state = build("VGGVox", nOut=512, encoder_type="SAP").state_dict()
    conv_shapes = {0: [96, 1, 5, 7], 4: [256, 96, 5, 5], 8: [384, 256, 3, 3],
                   11: [256, 384, 3, 3], 14: [256, 256, 3, 3], 18: [512, 256, 4, 1]}
    for index, shape in conv_shapes.items():
        assert list(state[f"netcnn.{index}.weight"].shape) == shape
        assert list(state[f"netcnn.{index}.bias"].shape) == [shape[0]]
        assert list(state[f"netcnn.{index + 1}.running_var"].shape) == [shape[0]]
    assert list(state["attention"].shape) == [512, 1]
    assert list(state["sap_linear.weight"].shape) == [512, 512]
    assert list(state["torchfb.mel_scale.fb"].shape) == [257, 40]


@pytest.mark.parametrize("name, kwargs, expected", [
    ("ResNetSE34L", {"encoder_type": "SAP"}, 1_437_078),
    ("ResNetSE34V2", {"encoder_type": "ASP", "n_mels": 64}, 8_028_492),
    ("ResNetSE34V2", {"encoder_type": "SAP", "n_mels": 40}, 6_389_324),
    ("VGGVox", {"encoder_type": "SAP"}, 4_032_448),
    ("VGGVox", {"encoder_type": "TAP"}, 3_769_280),
    ("VGGVox40", {"encoder_type": "MAX"}, 3_769_280),
    ("ResNetSE34", {"encoder_type": "SAP"}, 1_437_078),
    ("Res2NetSE34", {"encoder_type": "ASP", "n_mels": 64}, 3_875_996),
    ("Res2NetSE34", {"encoder_type": "ASP", "n_mels": 64, "res2net_scale": 8}, 3_655_428),
])
def test_parameter_counts(name, kwargs, expected):
    assert count_parameters(build(name, nOut=512, **kwargs)) == expected


# ---------------------------------------------------------------- forward behaviour

@pytest.mark.parametrize("name, encoder", MODEL_ENCODERS)
def test_forward_shapes_and_determinism(name, encoder):
    model = build(name, nOut=24, encoder_type=encoder, n_mels=40, log_input=True).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        assert model(torch.randn(2, SAMPLES_200_FRAMES)).shape == (2, 24)
        assert model(torch.randn(1, SAMPLES_400_FRAMES)).shape == (1, 24)
        waves = torch.randn(2, ODD_SAMPLES)
        out = model(waves)
        assert out.shape == (2, 24) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(out, model(waves))
        # an utterance alone gives the same embedding as inside a batch (eval mode)
        torch.testing.assert_close(model(waves[1:]), out[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, layer, frames, expected", [
    ("ResNetSE34L", "layer4", 200, [2, 128, 5, 51]),
    ("ResNetSE34L", "layer4", 400, [1, 128, 5, 101]),
    ("ResNetSE34V2", "layer4", 200, [2, 256, 8, 26]),
    ("ResNetSE34V2", "layer4", 400, [1, 256, 8, 51]),
    ("VGGVox", "netcnn", 200, [2, 512, 1, 5]),
    ("VGGVox", "netcnn", 400, [1, 512, 1, 11]),
])
def test_feature_map_sizes(name, layer, frames, expected):
    """Intermediate shapes of fact sheet section 4 (64 mels for V2, 40 otherwise)."""
    model = build(name, nOut=8, encoder_type="SAP", n_mels=64 if name == "ResNetSE34V2" else 40).eval()
    seen = []
    getattr(model, layer).register_forward_hook(lambda module, inputs, output: seen.append(list(output.shape)))
    with torch.no_grad():
        model(torch.randn(expected[0], frames * 160 + 240))
    assert seen == [expected]


@pytest.mark.parametrize("name", ["ResNetSE34L", "ResNetSE34V2", "VGGVox", "ResNetSE34", "Res2NetSE34"])
def test_too_short_input_names_the_minimum(name):
    model = build(name, nOut=8, encoder_type="SAP").eval()
    minimum = model.min_samples
    with torch.no_grad():
        assert model(torch.randn(1, minimum)).shape == (1, 8)
        with pytest.raises(ValueError, match=f"at least {minimum} samples"):
            model(torch.randn(1, minimum - 1))


def test_vggvox_minimum_is_tight():
    """At the minimum length the CNN leaves exactly one frame; one hop less would leave none."""
    model = build("VGGVox", nOut=8, encoder_type="TAP").eval()
    seen = []
    model.netcnn.register_forward_hook(lambda module, inputs, output: seen.append(output.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, model.min_samples))
        with pytest.raises(RuntimeError):
            model.netcnn(normalised_features(model.torchfb, torch.randn(1, model.min_samples - 160), True))
    assert seen[0] == 1


@pytest.mark.parametrize("name, encoder", [("ResNetSE34L", "NetVLAD"), ("VGGVox", "ASP"), ("ResNetSE34V2", "TAP")])
def test_unknown_encoder_lists_choices(name, encoder):
    with pytest.raises(ValueError, match="choose one of"):
        build(name, encoder_type=encoder)


def test_res2net_scale_must_divide_widths():
    with pytest.raises(ValueError, match="res2net_scale"):
        build("Res2NetSE34", res2net_scale=3)


def test_v2_handles_n_mels_not_multiple_of_8():
    model = build("ResNetSE34V2", nOut=8, n_mels=50, encoder_type="SAP").eval()
    with torch.no_grad():
        assert model(torch.randn(2, SAMPLES_200_FRAMES)).shape == (2, 8)


def test_models_backpropagate_the_true_gradient():
    """The gradient of the first convolution matches a central difference along a random direction."""
    model = build("ResNetSE34L", nOut=8, encoder_type="ASP").eval()
    audio = torch.randn(3, 8000, generator=torch.Generator().manual_seed(1))

    def value() -> torch.Tensor:
        return model(audio).pow(2).sum()

    value().backward()
    weight = model.conv1.weight
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(2))
    direction /= direction.norm()
    step = 1e-3  # float32: 1e-2 is 2% off from kinks, 1e-3 within 0.5%
    with torch.no_grad():
        weight += step * direction
        above = value()
        weight -= 2 * step * direction
        below = value()
        weight += step * direction
    numeric = ((above - below) / (2 * step)).item()
    assert abs(numeric) > 1e-3
    assert (weight.grad * direction).sum().item() == pytest.approx(numeric, rel=2e-2)


# ---------------------------------------------------------------- front end

def test_pre_emphasis_formula():
    x = torch.tensor([[1.0, 2.0, 4.0, -1.0]])
    expected = torch.tensor([[1.0 - 0.97 * 2.0, 2.0 - 0.97 * 1.0, 4.0 - 0.97 * 2.0, -1.0 - 0.97 * 4.0]])
    torch.testing.assert_close(PreEmphasis()(x), expected)
    torch.testing.assert_close(PreEmphasis().flipped_filter, torch.tensor([[[-0.97, 1.0]]]))


def test_features_are_float32_without_grad_under_autocast():
    model = build("ResNetSE34V2", nOut=8, n_mels=40, encoder_type="SAP")
    waves = torch.randn(2, 4000, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = normalised_features(model.torchfb, waves, log_input=True)
    assert feats.dtype == torch.float32 and not feats.requires_grad
    assert feats.shape == (2, 1, 40, 4000 // 160 + 1)
    # instance normalisation: every mel band has zero mean and unit variance over time
    torch.testing.assert_close(feats.mean(dim=-1), torch.zeros(2, 1, 40), atol=1e-4, rtol=0)


def test_log_input_changes_features():
    model = build("ResNetSE34L", nOut=8)
    waves = torch.randn(1, 4000)
    linear = normalised_features(model.torchfb, waves, log_input=False)
    assert not torch.allclose(linear, normalised_features(model.torchfb, waves, log_input=True))


def test_window_from_checkpoint_wins():
    """The released ResNetSE34L carries a Hann window; loading it must replace our Hamming window."""
    model = build("ResNetSE34L", nOut=8).eval()
    assert torch.allclose(model.torchfb.spectrogram.window, torch.hamming_window(400))
    waves = torch.randn(1, 8000)
    with torch.no_grad():
        before = model(waves)
    state = model.state_dict()
    state["torchfb.spectrogram.window"] = torch.hann_window(400)
    model.load_state_dict(state)
    assert torch.equal(model.torchfb.spectrogram.window, torch.hann_window(400))
    with torch.no_grad():
        assert not torch.allclose(before, model(waves))
