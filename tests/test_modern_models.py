"""Fbank models (ECAPA_TDNN, ResNet34/221/293, CAMPPlus): sizes against the published ones, shapes, lengths,
a training step through SpeakerNet, state_dict round trips, bfloat16 autocast, front end, pooling, options."""
import inspect
import io
import math
from importlib import import_module

import pytest
import torch
from torch import nn

from models.CAMPPlus import segment_means
from models.FrontEnd import MeanNormalisedFbank
from models.ResNetFamily import simam
from models.StatsPooling import AttentiveStatsPooling, TemporalStatsPooling
from runtime.device import cpu_has_fast_bfloat16
from settings.plugins import available_plugins, load_plugin
from SpeakerNet import SpeakerNet

# Global flags every constructor receives; encoder_type and log_input carry the global defaults, which these
# models ignore (their pooling and log features are fixed or chosen with their own options).
CLI_NOISE = {"model": "x", "trainfunc": "softmax", "batch_size": 2, "nClasses": 7, "margin": 0.1, "augment": False,
             "encoder_type": "SAP", "log_input": False, "n_mels": 80}
ODD_SAMPLES = 12_345
integration = pytest.mark.integration

# id -> (plug-in, options, recipe nOut, samples of the forward tests). The large ResNets take ~1 s of audio.
MODELS = {
    "ECAPA_TDNN-c512": ("ECAPA_TDNN", {"channels": 512}, 192, 32_000),
    "ECAPA_TDNN-c1024": ("ECAPA_TDNN", {"channels": 1024}, 192, 32_000),
    "ResNet34": ("ResNet34", {}, 256, 32_000),
    "ResNet221": ("ResNet221", {}, 256, 16_000),
    "ResNet293": ("ResNet293", {}, 256, 16_000),
    "CAMPPlus": ("CAMPPlus", {}, 192, 32_000),
    "SimAM_ResNet34": ("SimAM_ResNet34", {"m_channels": 16}, 256, 16_000),  # a quarter of the published width
    "SimAM_ResNet100": ("SimAM_ResNet100", {"m_channels": 16}, 256, 16_000),
}
LARGE = {"ResNet221", "ResNet293"}  # a few seconds per forward/backward on 2 CPU cores: integration tier


def model_ids() -> list:
    """Every model id as a pytest param, the large ResNets marked as slow."""
    return [pytest.param(key, id=key, marks=integration if key in LARGE else ()) for key in MODELS]


def build(key: str, seed: int = 0, **overrides) -> nn.Module:
    """Construct a model of MODELS the way the trainer does (all flags as kwargs), with its recipe nOut."""
    name, options, n_out, _ = MODELS[key]
    torch.manual_seed(seed)
    return import_module(f"models.{name}").MainModel(**{**CLI_NOISE, "nOut": n_out, **options, **overrides})


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters())


def waves(samples: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A reproducible batch of noise waveforms [batch, samples]."""
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- sizes

# Published sizes (reference/anchors.md 1.1 and 1.2) are given to 0.01M, rounded or truncated, so the same
# structure lands within 0.01M of them; that bound is much tighter than 2% and catches a missing layer.
@pytest.mark.parametrize("key, n_out, expected, published", [
    ("ECAPA_TDNN-c512", 192, 6_190_720, 6.19e6),
    ("ECAPA_TDNN-c1024", 192, 14_657_088, 14.65e6),
    ("ResNet34", 256, 6_634_336, 6.63e6),
    ("ResNet221", 256, 23_792_224, 23.79e6),
    ("ResNet293", 256, 28_626_016, 28.62e6),
    ("CAMPPlus", 512, 7_176_224, 7.18e6),  # 7.18M is 3D-Speaker's VoxCeleb model, whose embedding is 512
])
def test_parameter_count_matches_published(key, n_out, expected, published):
    count = count_parameters(build(key, nOut=n_out))
    assert count == expected
    assert abs(count - published) < 0.01e6


@pytest.mark.parametrize("key, expected, published", [
    ("SimAM_ResNet34", 25_213_760, 25.2e6), ("SimAM_ResNet100", 50_232_896, 50.2e6),  # wespeaker's README, 0.1M
])
def test_simam_resnet_sizes_match_published(key, expected, published):
    count = count_parameters(build(key, m_channels=64))
    assert count == expected and abs(count - published) < 0.05e6


def test_simam_gate_is_the_sigmoid_of_the_inverse_energy():
    """SimAM by its formula, one channel at a time: x * sigmoid((x - mean)^2 / (4 (var + 1e-4)) + 0.5), with the
    unbiased variance over the channel's map."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(3):
            channel = x[b, c]
            energy = (channel - channel.mean()) ** 2 / (4 * (channel.var(unbiased=True) + 1e-4)) + 0.5
            expected[b, c] = channel * torch.sigmoid(energy)
    torch.testing.assert_close(simam(x), expected)


def test_campplus_recipe_size():
    """With the recipe's 192-d embedding CAM++ has 320 x 1024 fewer weights in its embedding layer."""
    assert count_parameters(build("CAMPPlus")) == 6_848_544 == 7_176_224 - (512 - 192) * 1024


def test_resnet_attentive_pooling_size():
    """ASTP adds a 1x1 conv bottleneck (2560 -> 128 -> 2560) to ResNet34's TSTP."""
    assert count_parameters(build("ResNet34", pooling="ASTP")) == 6_634_336 + 2560 * 128 + 128 + 128 * 2560 + 2560


# ---------------------------------------------------------------- forward behaviour

@pytest.mark.parametrize("key", model_ids())
def test_forward_shapes_and_determinism(key):
    model, n_out, samples = build(key).eval(), MODELS[key][2], MODELS[key][3]
    batch = waves(samples)
    with torch.no_grad():
        out = model(batch)
        assert out.shape == (2, n_out) and out.dtype == torch.float32 and torch.isfinite(out).all()
        torch.testing.assert_close(model(batch), out)
        # eval mode: an utterance alone gives the same embedding as inside a batch
        torch.testing.assert_close(model(batch[1:]), out[1:], rtol=1e-4, atol=1e-5)
        assert model(waves(ODD_SAMPLES)).shape == (2, n_out)


@pytest.mark.parametrize("key, minimum", [("ECAPA_TDNN-c512", 257), ("ResNet34", 1280), ("ResNet293", 1280),
                                          ("CAMPPlus", 320)])
def test_too_short_input_names_the_minimum(key, minimum):
    """The minimum leaves two frames for the pooled time std (ResNets: after three time strides of 2)."""
    model = build(key).eval()
    assert model.min_samples == minimum
    with torch.no_grad():
        assert torch.isfinite(model(waves(minimum, batch=1))).all()
        with pytest.raises(ValueError, match=f"at least {minimum} samples"):
            model(waves(minimum - 1, batch=1))


@pytest.mark.parametrize("pooling, pooled", [("TSTP", 2 * 2560), ("TAP", 2560), ("TSDP", 2560), ("ASTP", 2 * 2560),
                                             ("MHASTP", 2 * 2560), ("MQMHASTP", 4 * 2560)])
def test_resnet_poolings_run_with_their_widths(pooling, pooled):
    """Every wespeaker pooling feeds the embedding its own width (ResNet34 at 80 mels: 256 x 10 channels)."""
    model = build("ResNet34", pooling=pooling).eval()
    assert model.embedding.in_features == pooled
    with torch.no_grad():
        assert model(waves(ODD_SAMPLES)).shape == (2, 256)


def test_second_embedding_layer():
    """--two_emb_layer: linear -> ReLU -> BatchNorm without affine -> linear; the embedding is the last output."""
    model = build("ResNet34", two_emb_layer=True).eval()
    assert [type(layer).__name__ for layer in model.second_embedding] == ["ReLU", "BatchNorm1d", "Linear"]
    assert count_parameters(model) == 6_634_336 + 256 * 256 + 256
    with torch.no_grad():
        first = model.embedding(model.pool(torch.randn(2, 256, 10, 4)))
        bn = model.second_embedding[1]
        expected = model.second_embedding[2]((first.relu() - bn.running_mean) / (bn.running_var + bn.eps).sqrt())
        torch.testing.assert_close(model.second_embedding(first), expected)


def test_speechbrain_ecapa_variant():
    """SpeechBrain's ECAPA: 3072 aggregated channels, BatchNorm after the aggregation and in the attention, reflect
    padding (five frames at least), the first Res2Net group passed through unchanged."""
    model = build("ECAPA_TDNN-c1024", ecapa_variant="speechbrain", aggregation_channels=3072).eval()
    assert model.aggregate.out_channels == 3072 and model.aggregate_bn.num_features == 3072
    assert model.pool.attention_bn.num_features == 128 and model.bn.num_features == 6144
    assert model.layer1[0].padding_mode == "reflect" and model.min_samples == 4 * 160  # five centred frames
    res2 = model.blocks[0].body[1]
    x = torch.randn(1, 1024, 7)
    with torch.no_grad():
        torch.testing.assert_close(res2(x)[:, :128], x[:, :128])
        assert torch.isfinite(model(waves(model.min_samples, batch=1))).all()
    with pytest.raises(ValueError, match="undefined --ecapa_variant 'kaldi'"):
        build("ECAPA_TDNN-c512", ecapa_variant="kaldi")


def test_campplus_variance_floor():
    """--variance_floor 0 pools the plain standard deviation (3D-Speaker), 1e-7 adds it to the variance."""
    x = torch.randn(2, 6, 20)
    plain = build("CAMPPlus", variance_floor=0.0).pool(x)
    torch.testing.assert_close(plain[:, 6:], x.std(dim=-1))
    floored = build("CAMPPlus").pool(x)
    torch.testing.assert_close(floored[:, 6:], (x.var(dim=-1) + 1e-7).sqrt())


def test_resnet152_size():
    """wespeaker's ResNet152 (bottleneck blocks 3-8-36-3); wespeaker publishes no size for it."""
    model = import_module("models.ResNet152").MainModel(**CLI_NOISE, nOut=256)
    assert count_parameters(model) == 19_814_880


@pytest.mark.parametrize("name", ["ResNet34", "ResNet221", "ResNet293"])
def test_unknown_pooling_lists_choices(name):
    with pytest.raises(ValueError, match="undefined pooling 'SAP'; choose one of TSTP, ASTP, TAP, TSDP, MHASTP"):
        import_module(f"models.{name}").MainModel(**CLI_NOISE, pooling="SAP")


@pytest.mark.parametrize("channels", [0, 500])
def test_ecapa_channels_must_fit_the_res2net_scale(channels):
    with pytest.raises(ValueError, match="multiple of the Res2Net scale 8"):
        build("ECAPA_TDNN-c512", channels=channels)


@pytest.mark.parametrize("key", ["ECAPA_TDNN-c512", "ResNet34", "CAMPPlus"])
def test_other_mel_counts_build_and_run(key):
    """n_mels need not be 80 (nor a multiple of 8): the frequency bins left are computed, not assumed."""
    model = build(key, n_mels=50).eval()
    with torch.no_grad():
        assert model(waves(ODD_SAMPLES)).shape == (2, MODELS[key][2])


# ---------------------------------------------------------------- training, checkpoints, precision

@pytest.mark.parametrize("key", model_ids())
def test_training_step_through_speakernet(key):
    """One trainer-style step: SpeakerNet(data [speakers, per_speaker, samples], label) -> finite loss -> Adam step."""
    name, options, n_out, samples = MODELS[key]
    torch.manual_seed(0)
    net = SpeakerNet(model=name, optimizer="adam", trainfunc="aamsoftmax", nPerSpeaker=1, nOut=n_out, nClasses=5,
                     n_mels=80, margin=0.2, scale=30, encoder_type="SAP", log_input=False, **options)
    optimizer = load_plugin("optimizer", "adam")(net.parameters(), lr=1e-3, weight_decay=0)
    parameters = list(net.__S__.named_parameters())
    assert parameters[-1][0].startswith("embedding.")  # the embedding layer is the model's last layer
    (first_name, first), (last_name, last) = parameters[0], ("embedding.weight", net.__S__.embedding.weight)
    before = first.detach().clone(), last.detach().clone()
    loss, prec1 = net(waves(samples // 2).unsqueeze(1), torch.tensor([0, 3]))
    assert torch.isfinite(loss) and 0 <= float(prec1) <= 100
    loss.backward()
    optimizer.step()
    assert (first.detach() - before[0]).abs().max() > 0, first_name
    assert (last.detach() - before[1]).abs().max() > 0, last_name


@pytest.mark.parametrize("key", model_ids())
def test_state_dict_round_trip(key):
    model = build(key).train()
    with torch.no_grad():
        model(waves(8000, seed=2))  # moves the BatchNorm statistics away from their initial values
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(key, seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    batch = waves(8000)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(batch), model.eval()(batch))


@pytest.mark.skipif(not cpu_has_fast_bfloat16(), reason="this CPU has no fast bfloat16 units")
@pytest.mark.parametrize("key", model_ids())
def test_bfloat16_autocast_keeps_features_float32(key):
    model = build(key).eval()
    feature_dtypes = []
    model.fbank.register_forward_hook(lambda module, inputs, output: feature_dtypes.append(output.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(waves(16_000))
    assert feature_dtypes == [torch.float32]
    assert out.shape == (2, MODELS[key][2]) and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------- front end and pooling

def test_fbank_shape_and_mean_normalisation():
    feats = MeanNormalisedFbank(80)(waves(16_000))
    assert feats.shape == (2, 80, 16_000 // 160 + 1) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.mean(dim=-1), torch.zeros(2, 80), atol=1e-4, rtol=0)
    assert not torch.allclose(feats.std(dim=-1), torch.ones(2, 80), atol=0.1)  # no variance normalisation


def test_fbank_removes_gain_and_works_per_utterance():
    """A gain only shifts the log mel energies, which the mean removes; utterances do not mix in a batch."""
    fbank = MeanNormalisedFbank(80)
    batch = waves(8000)
    feats = fbank(batch)
    torch.testing.assert_close(fbank(batch * 10), feats, rtol=0, atol=1e-3)
    torch.testing.assert_close(fbank(batch[1:]), feats[1:])


def test_fbank_under_autocast_is_float32_without_grad():
    batch = waves(4000).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = MeanNormalisedFbank(80)(batch)
    assert feats.dtype == torch.float32 and not feats.requires_grad


def test_temporal_stats_pooling_of_a_2d_map():
    x = torch.randn(2, 3, 4, 10)
    flat = x.reshape(2, 12, 10)
    expected = torch.cat([flat.mean(dim=-1), flat.std(dim=-1)], dim=1)
    torch.testing.assert_close(TemporalStatsPooling(12)(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("global_context", [False, True])
def test_attentive_pooling_with_uniform_attention_is_plain_statistics(global_context):
    """With the attention's output conv zeroed every frame weighs 1/T: the mean and the (biased) std."""
    pool = AttentiveStatsPooling(6, bottleneck=4, global_context=global_context)
    nn.init.zeros_(pool.linear2.weight)
    nn.init.zeros_(pool.linear2.bias)
    x = torch.randn(2, 6, 30)
    expected = torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=False)], dim=1)
    torch.testing.assert_close(pool(x), expected, rtol=1e-4, atol=1e-4)


def test_campplus_segment_means():
    """Each frame gets its 100-frame segment's mean; the last, shorter segment averages only its own frames."""
    x = torch.randn(1, 2, 250)
    means = segment_means(x)
    for start, end in [(0, 100), (100, 200), (200, 250)]:
        torch.testing.assert_close(means[..., start:end], x[..., start:end].mean(dim=-1, keepdim=True).expand(
            -1, -1, end - start))


# ---------------------------------------------------------------- plug-in registration and options

def test_models_are_found_and_helpers_are_not():
    names = available_plugins("models")
    assert {"ECAPA_TDNN", "ResNet34", "ResNet221", "ResNet293", "CAMPPlus"} <= set(names)
    assert not {"ResNetFamily", "StatsPooling"} & set(names)


@pytest.mark.parametrize("name, option, default", [
    ("ECAPA_TDNN", "channels", 512), ("ECAPA_TDNN", "aggregation_channels", 1536),
    ("ECAPA_TDNN", "global_context", True), ("ECAPA_TDNN", "ecapa_variant", "wespeaker"),
    ("ResNet34", "pooling", "TSTP"), ("ResNet221", "pooling", "TSTP"), ("ResNet293", "pooling", "TSTP"),
    ("ResNet152", "two_emb_layer", False), ("CAMPPlus", "variance_floor", 1e-7),
])
def test_declared_options_match_main_model(name, option, default):
    """OPTIONS maps name -> (type, default, help); MainModel reads the same keyword with the same default."""
    module = import_module(f"models.{name}")
    kind, declared, help_text = module.OPTIONS[option]
    assert kind in (int, float, str, bool) and isinstance(declared, kind) and declared == default
    assert help_text.startswith(name) or help_text.startswith("ResNet34/152/221/293")
    assert inspect.signature(module.MainModel).parameters[option].default == default


def test_resnet_pooling_help_is_shared():
    """The three ResNets declare one --pooling flag, so their declarations must agree."""
    options = {name: import_module(f"models.{name}").OPTIONS for name in ("ResNet34", "ResNet152", "ResNet221",
                                                                          "ResNet293")}
    assert options["ResNet34"] == options["ResNet152"] == options["ResNet221"] == options["ResNet293"]


@pytest.mark.integration
@pytest.mark.parametrize("key", model_ids())
def test_evaluation_on_cpu(key, tiny_corpus, tmp_path):
    """--eval's pipeline with the model: a finite score per trial, and the EER of exactly those scores."""
    import evaluation
    from settings.sections import EvaluationSettings
    from tuneThreshold import tuneThresholdfromScore

    name, options, n_out, _ = MODELS[key]
    torch.manual_seed(0)
    net = SpeakerNet(model=name, trainfunc="aamsoftmax", nPerSpeaker=1, nOut=n_out, nClasses=5, n_mels=80,
                     **options)
    score_file = tmp_path / "scores.txt"
    settings = EvaluationSettings.from_flags(dict(test_list=tiny_corpus["test_list"], score_file=str(score_file),
                                                  test_path=tiny_corpus["test_path"], eval_frames=100, num_eval=2,
                                                  nDataLoaderThread=0))
    result = evaluation.run_evaluation(net, settings)[tiny_corpus["test_list"]]
    scores = [float(line.split()[0]) for line in score_file.read_text().splitlines()]
    labels = [int(line.split()[0]) for line in open(tiny_corpus["test_list"])]
    assert len(scores) == result["trials"] == tiny_corpus["trials"] and all(map(math.isfinite, scores))
    assert result["eer"] == pytest.approx(tuneThresholdfromScore(scores, labels, [1, 0.1])[1])
