"""RawNet3: the release's key table (fact sheet 10.3), parameter counts, forward behaviour, the sinc filterbank,
loading a `{"model": ...}` release file, a training step through SpeakerNet and mixed precision."""
from importlib import import_module

import pytest
import torch
from test_models import bn_keys, count_parameters

import arguments
from models.SincFilterbank import ParamSincFilterbank, SincConv, hz_to_mel
from runtime import checkpoint_files
from SpeakerNet import SpeakerNet, WrappedModel
from training.trainer import ModelTrainer

HALF_SECOND = 8000
RECIPE = ["--config", "configs/RawNet3_AAM.yaml", "--nClasses", "5"]


@pytest.fixture(scope="module")
def model():
    """One RawNet3 (ECA, nOut 256, stride 10) in eval mode, built as the trainer does (all args as kwargs)."""
    torch.manual_seed(0)
    return import_module("models.RawNet3").MainModel(**vars(arguments.parse_arguments(RECIPE))).eval()


def bottle2neck_keys(prefix: str, inplanes: int) -> list[tuple[str, list[int]]]:
    """Keys of one Bottle2neck block (1024 channels, 8 groups of 128, residual conv when inplanes differ)."""
    keys = [(f"{prefix}.conv1.weight", [1024, inplanes, 1]), (f"{prefix}.conv1.bias", [1024]),
            *bn_keys(f"{prefix}.bn1", 1024)]
    keys += [(f"{prefix}.convs.{i}.{name}", shape) for i in range(7)
             for name, shape in (("weight", [128, 128, 3]), ("bias", [128]))]
    keys += [key for i in range(7) for key in bn_keys(f"{prefix}.bns.{i}", 128)]
    keys += [(f"{prefix}.conv3.weight", [1024, 1024, 1]), (f"{prefix}.conv3.bias", [1024]),
             *bn_keys(f"{prefix}.bn3", 1024),
             (f"{prefix}.afms.alpha", [1024, 1]), (f"{prefix}.afms.fc.weight", [1024, 1024]),
             (f"{prefix}.afms.fc.bias", [1024])]
    if inplanes != 1024:
        keys.append((f"{prefix}.residual.0.weight", [1024, inplanes, 1]))
    return keys


def release_keys(attention_out: int = 1536) -> list[tuple[str, list[int]]]:
    """The original's RawNet3 state_dict (nOut 256) in order; attention_out is 1536 for ECA, 1 for ASP."""
    return [("preprocess.0.flipped_filter", [1, 1, 2]), ("preprocess.1.weight", [1]), ("preprocess.1.bias", [1]),
            ("conv1.filterbank.low_hz_", [128, 1]), ("conv1.filterbank.band_hz_", [128, 1]),
            ("conv1.filterbank.window_", [125]), ("conv1.filterbank.n_", [1, 125]),
            *bn_keys("bn1", 256),
            *bottle2neck_keys("layer1", 256), *bottle2neck_keys("layer2", 1024), *bottle2neck_keys("layer3", 1024),
            ("layer4.weight", [1536, 3072, 1]), ("layer4.bias", [1536]),
            ("attention.0.weight", [128, 4608, 1]), ("attention.0.bias", [128]), *bn_keys("attention.2", 128),
            ("attention.3.weight", [attention_out, 128, 1]), ("attention.3.bias", [attention_out]),
            *bn_keys("bn5", 3072), ("fc6.weight", [256, 3072]), ("fc6.bias", [256]), *bn_keys("bn6", 256)]


def state_table(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    """(key, shape) of a module's state_dict, checking the dtypes on the way."""
    table = []
    for key, value in module.state_dict().items():
        assert value.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float32), key
        table.append((key, list(value.shape)))
    return table


# ---------------------------------------------------------------- keys, counts, construction

def test_keys_match_the_release(model):
    expected = release_keys()
    assert len(expected) == 234
    assert state_table(model) == expected
    assert count_parameters(model) == 16_280_322


def test_asp_variant():
    asp = import_module("models.RawNet3").MainModel(nOut=256, encoder_type="ASP", sinc_stride=10)
    assert state_table(asp) == release_keys(attention_out=1)
    assert count_parameters(asp) == 16_082_307
    with torch.no_grad():
        assert asp.eval()(torch.randn(2, HALF_SECOND)).shape == (2, 256)


@pytest.mark.parametrize("kwargs, message", [({"encoder_type": "SAP"}, "choose one of ECA, ASP"),
                                             ({"sinc_stride": 0}, "sinc_stride")])
def test_bad_settings_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        import_module("models.RawNet3").MainModel(**kwargs)


# ---------------------------------------------------------------- forward behaviour

def test_forward_shape_and_determinism(model):
    torch.manual_seed(1)
    waves = torch.randn(2, HALF_SECOND)
    with torch.no_grad():
        out = model(waves)
        assert out.shape == (2, 256) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(out, model(waves))
        # alone as inside a batch; and the waveform is instance-normalised first, so int16 scale changes nothing
        torch.testing.assert_close(model(waves[1:] * 32768), out[1:], rtol=1e-3, atol=1e-3)


def test_unused_batchnorms_do_not_change_the_output(model):
    """bn1 (after the sinc layer) and bn6 (after fc6) are in the release file but not in the forward pass."""
    waves = torch.randn(1, HALF_SECOND)
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    unused = [key for key, value in saved.items() if key.startswith(("bn1.", "bn6.")) and value.is_floating_point()]
    assert len(unused) == 8
    with torch.no_grad():
        before = model(waves)
        model.load_state_dict({**saved, **{key: saved[key] + torch.rand_like(saved[key]) + 1 for key in unused}})
        after = model(waves)
    model.load_state_dict(saved)
    assert torch.equal(before, after)


def test_too_short_input_names_the_minimum(model):
    minimum = model.min_samples
    assert minimum == 251 + 29 * 10  # two frames after the stride-10 sinc conv and the /5 and /3 pooling
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, minimum))).all()
        with pytest.raises(ValueError, match=f"at least {minimum} samples"):
            model(torch.randn(1, minimum - 1))


def test_sinc_front_end_runs_in_float32_under_autocast(model):
    waves = torch.randn(2, HALF_SECOND)
    with torch.no_grad():
        reference = model.sinc_features(waves)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.sinc_features(waves)
            after_conv = model.layer1.conv1(features)
    assert features.dtype == torch.float32 and torch.equal(features, reference)
    assert after_conv.dtype == torch.bfloat16  # the layers after the front end do run in reduced precision
    # log magnitudes minus their time mean: every filter channel has zero mean
    torch.testing.assert_close(features.mean(dim=-1), torch.zeros(2, 256), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- sinc filterbank

def test_initial_bands_are_asteroids():
    """Values measured from asteroid_filterbanks 0.4.0's ParamSincFB(256, 251) on one CPU.

    The mel-scale arithmetic runs in float32, whose last bits differ between CPU kinds (AVX2 and AVX-512
    give 44.20303 and 44.20295 for the second band), so the comparison allows 1e-5 relative: a wrong mel
    formula or band order moves these values by far more."""
    bank = ParamSincFilterbank(256, 251)
    torch.testing.assert_close(bank.low_hz_[[0, 1, 64, 127], 0],
                               torch.tensor([30.000019073486328, 44.20302963256836, 1805.5933837890625,
                                             7735.869140625]), rtol=1e-5, atol=0)
    torch.testing.assert_close(bank.band_hz_[[0, 1, 64, 127], 0],
                               torch.tensor([14.203010559082031, 14.479305267333984, 48.7496337890625,
                                             164.130859375]), rtol=1e-5, atol=0)
    filters = bank.filters().detach()
    expected = [-0.2318962961435318, 1.0, -0.8659334182739258, 0.8659334182739258, 0.006735082250088453]
    actual = [filters[5, 0, 100], filters[5, 0, 125], filters[133, 0, 100], filters[133, 0, 150], filters[127, 0, 0]]
    torch.testing.assert_close(torch.stack(actual), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_bands_are_mel_spaced_up_to_nyquist():
    low, high = ParamSincFilterbank(256, 251).band_edges()
    assert low[0].item() == pytest.approx(80.0, abs=1e-3)  # 30 Hz above the 50 Hz floor
    assert high[-1].item() == pytest.approx(8000.0)
    # without the floors (50 Hz on the low edge, 50 more on the band) the edges are equally spaced in mel
    points = torch.cat([low[:, 0] - 50, high[-1:, 0] - 100]).detach().double().numpy()
    steps = torch.from_numpy(hz_to_mel(points)).diff()
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-4, atol=0)


def test_filters_peak_inside_their_band_and_are_cos_sin_pairs():
    bank = ParamSincFilterbank(256, 251)
    with torch.no_grad():
        filters = bank.filters()[:, 0]
        low, high = (edge[:, 0].repeat(2) for edge in bank.band_edges())
    cos, sin = filters[:128], filters[128:]
    assert torch.equal(cos, cos.flip(1)) and torch.equal(sin, -sin.flip(1))  # even and odd
    assert torch.equal(cos[:, 125], torch.ones(128)) and torch.equal(sin[:, 125], torch.zeros(128))
    spectrum = torch.fft.rfft(filters, n=8192).abs()
    peak = torch.fft.rfftfreq(8192, 1 / 16000)[spectrum.argmax(dim=1)]
    assert ((peak >= low) & (peak <= high)).all()


@pytest.mark.parametrize("stride, samples", [(10, 8000), (7, 1000), (1, 300)])
def test_sinc_output_length(stride, samples):
    out = SincConv(256, 251, stride)(torch.randn(2, 1, samples))
    assert out.shape == (2, 256, (samples - 251) // stride + 1)


def test_sinc_conv_output_is_asteroids():
    """Encoder(ParamSincFB(256, 251, stride=10)) of asteroid_filterbanks 0.4.0 on a 440 Hz tone (measured)."""
    tone = torch.sin(torch.arange(4000) / 16000 * 2 * torch.pi * 440.0).view(1, 1, -1)
    with torch.no_grad():
        out = SincConv(256, 251, stride=10)(tone)
    assert out.shape == (1, 256, 375)
    actual = torch.stack([out[0, 20, 100], out[0, 148, 100], out.abs().sum()])
    torch.testing.assert_close(actual, torch.tensor([-22.494943618774414, 54.243404388427734, 189883.15625]))


# ---------------------------------------------------------------- through the framework

def test_release_file_loads_into_speakernet(model, tmp_path):
    """The original's release is {"model": <RawNet3 state_dict>}; its keys get the __S__. prefix."""
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict()}, path)
    torch.manual_seed(7)
    net = SpeakerNet(**vars(arguments.parse_arguments(RECIPE))).eval()
    waves = torch.randn(2, HALF_SECOND)
    assert not torch.equal(net.__S__.fc6.weight, model.fc6.weight)
    report = checkpoint_files.load_weights(net, checkpoint_files.model_weights(checkpoint_files.read_checkpoint(path)), str(path))
    assert len(report.loaded) == 234 and not report.unexpected and not report.mismatched
    assert report.missing == ["__L__.weight"]
    with torch.no_grad():
        assert torch.equal(net(waves), model(waves))


def test_one_training_step_with_aamsoftmax():
    args = arguments.parse_arguments(RECIPE)
    torch.manual_seed(3)
    net = SpeakerNet(**vars(args))
    trainer = ModelTrainer(WrappedModel(net), **dict(vars(args), device=torch.device("cpu")))
    before = {name: value.detach().clone() for name, value in net.named_parameters()}
    loss, prec1, finite = trainer.train_step(torch.randn(2, HALF_SECOND), torch.tensor([0, 4]))
    assert finite and torch.isfinite(loss) and loss > 0 and 0 <= prec1 <= 100
    changed = {name for name, value in net.named_parameters() if not torch.equal(value, before[name])}
    # the sinc band edges and the waveform normalisation learn too; the unused BatchNorms do not
    assert {"__S__.conv1.filterbank.low_hz_", "__S__.conv1.filterbank.band_hz_", "__S__.preprocess.1.weight",
            "__S__.fc6.weight", "__L__.weight"} <= changed
    assert not any(name.startswith(("__S__.bn1.", "__S__.bn6.")) for name in changed)
