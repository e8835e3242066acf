"""ERes2NetV2: sizes against 3D-Speaker's constructor and the published size, shapes, lengths, training, front ends,
option errors, the import of 3D-Speaker's release against its own pipeline, and the recipes."""
import inspect

import pytest
import torch
from peer_releases import AUDIO_FILES, load_case, peer_embedding
from test_import_peers import TOLERANCE, imported_embeddings, relative_error

import arguments
import models.ERes2NetV2 as eres2netv2
from importers.threedspeaker import ERES2NETV2_RULES, eres2netv2_settings
from importers.transfer import renamed
from SpeakerNet import SpeakerNet

CLI_NOISE = {"model": "ERes2NetV2", "trainfunc": "softmax", "nClasses": 7, "margin": 0.1, "encoder_type": "SAP",
             "log_input": False, "n_mels": 80}
NARROW = {"m_channels": 16}  # a quarter of the published width, for the CPU tests of behaviour


def build(seed: int = 0, **overrides) -> torch.nn.Module:
    """ERes2NetV2 built the way the trainer does (all flags as keyword arguments)."""
    torch.manual_seed(seed)
    return eres2netv2.MainModel(**{**CLI_NOISE, **overrides})


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def waves(samples: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


# The releases of speakerlab/bin/infer_sv.py: our count equals sum(p.numel()) of 3D-Speaker's own constructor
# ERes2NetV2(feat_dim=80, embedding_size=192, ...) at revision 09e7806; 3D-Speaker publishes 17.8M for the first
# (egs/voxceleb/sv-eres2netv2/README.md) and no size for the second.
@pytest.mark.parametrize("options, peer_count, published", [
    (dict(base_width=26, res2net_scale=2, expansion=2), 17_859_632, 17.8e6),  # speech_eres2netv2_sv_zh-cn_16k-common
    (dict(base_width=24, res2net_scale=4, expansion=4), 53_513_632, None),  # speech_eres2netv2w24s4ep4_sv_zh-cn_16k-...
])
def test_parameter_count_equals_3dspeakers(options, peer_count, published):
    count = count_parameters(build(nOut=192, **options))
    assert count == peer_count
    assert published is None or abs(count - published) < 0.1e6


def test_forward_shape_determinism_and_batch_independence():
    model = build(nOut=192, **NARROW).eval()
    batch = waves(16_000)
    with torch.no_grad():
        out = model(batch)
        assert out.shape == (2, 192) and torch.isfinite(out).all()
        torch.testing.assert_close(model(batch), out)
        torch.testing.assert_close(model(batch[1:]), out[1:], rtol=1e-4, atol=1e-5)
        assert model(waves(12_345)).shape == (2, 192)


@pytest.mark.parametrize("frontend, minimum", [({}, 1280), ({"frontend": "kaldi", "frontend_window": "povey"}, 1680),
                                               ({"frontend": "speechbrain"}, 1280)])
def test_front_ends_and_shortest_input(frontend, minimum):
    """Every fbank front end feeds it; the shortest input leaves two frames after the three time strides."""
    model = build(nOut=32, **NARROW, **frontend).eval()
    assert model.min_samples == minimum
    with torch.no_grad():
        assert torch.isfinite(model(waves(minimum, batch=1))).all()
        with pytest.raises(ValueError, match=f"at least {minimum} samples"):
            model(waves(minimum - 1, batch=1))


def test_other_mel_counts():
    """n_mels need not be a multiple of 8: the pooled width counts the frequency bins left (50 -> 7)."""
    model = build(nOut=32, n_mels=50, **NARROW).eval()
    assert model.pool.out_dim == 2 * 8 * 16 * 2 * 7
    with torch.no_grad():
        assert model(waves(8000)).shape == (2, 32)


def test_a_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    net = SpeakerNet(**{**CLI_NOISE, "trainfunc": "aamsoftmax", "nPerSpeaker": 1, "nOut": 32, "nClasses": 5,
                        "margin": 0.2, "scale": 30, **NARROW})
    loss, _ = net(waves(8000).unsqueeze(1), torch.tensor([0, 3]))
    loss.backward()
    silent = [name for name, p in net.__S__.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert torch.isfinite(loss) and not silent


@pytest.mark.parametrize("flag, value, message", [
    ("m_channels", 0, "--m_channels must be at least 1"), ("res2net_scale", 0, "--res2net_scale must be at least 1"),
    ("expansion", 0, "--expansion must be at least 1"), ("base_width", 3, "--base_width 3 with --m_channels 16"),
])
def test_bad_options_name_the_flag(flag, value, message):
    with pytest.raises(ValueError, match=message):
        build(**{**NARROW, flag: value})


def test_declared_options_match_main_model():
    parameters = inspect.signature(eres2netv2.MainModel).parameters
    for option, (kind, default, _) in eres2netv2.OPTIONS.items():
        assert isinstance(default, kind) and parameters[option].default == default


def test_importer_reads_the_sizes_off_the_tensors():
    """3D-Speaker's key names (our rules run backwards) of a w24s4ep4-shaped network give back its settings."""
    options = dict(nOut=256, m_channels=32, base_width=24, res2net_scale=4, expansion=4)
    ours = {key: value for key, value in build(**options).state_dict().items() if not key.startswith("fbank.")}
    backwards = [(r"\.downsample\.", ".shortcut."), (r"\.fuses\.", ".fuse_models."), (r"\.attention\.", ".local_att."),
                 (r"^layer3_downsample\.", "layer3_ds."), (r"^fuse\.", "fuse34."), (r"^embedding\.", "seg_1.")]
    peer = {renamed(key, backwards): value for key, value in ours.items()}
    assert "layer4.0.fuse_models.2.local_att.0.weight" in peer and "fuse34.local_att.4.running_var" in peer
    assert eres2netv2_settings(peer) == {"model": "ERes2NetV2", "n_mels": 80, **options}
    assert [renamed(key, ERES2NETV2_RULES) for key in peer] == list(ours)


def test_imported_release_matches_3dspeakers_pipeline(tmp_path):
    """iic/speech_eres2netv2_sv_zh-cn_16k-common (fixture weights) through importModel.py --from 3dspeaker gives the
    embeddings of 3D-Speaker's infer_sv.py steps on real speech."""
    case = load_case("3dspeaker_eres2netv2_cn_common")
    embeddings = imported_embeddings(case, tmp_path)
    for audio in AUDIO_FILES:
        reference = peer_embedding(case, audio)
        assert embeddings[audio].shape == reference.shape == (192,)
        assert relative_error(embeddings[audio], reference) < TOLERANCE, audio


def test_recipes_are_3dspeakers():
    recipe = arguments.parse_settings(["--config", "configs/ERes2NetV2.yaml"])
    model, optimisation, flags = recipe.model, recipe.optimisation, recipe.flags
    assert (model.nOut, model.n_mels, model.frontend, model.frontend_window) == (192, 80, "kaldi", "povey")
    assert model.trainfunc == "aamsoftmax_ramp" and model.margin == 0.3 and model.nClasses == 3 * 5994
    assert (flags["margin_start"], flags["margin_end"]) == (20, 50)
    assert (optimisation.scheduler, optimisation.lr, flags["final_lr"], flags["warmup_epochs"]) == (
        "warmup_cosine", 0.2, 5e-5, 5)
    assert optimisation.max_epoch == 70 and recipe.data.max_frames == 300 and recipe.data.speed_perturb
    lm = arguments.parse_settings(["--config", "configs/ERes2NetV2_LM.yaml"])
    assert lm.model.trainfunc == "aamsoftmax" and lm.model.margin == 0.5 and lm.model.nClasses == 3 * 5994
    assert not lm.data.speed_perturb and lm.data.max_frames == 600 and lm.optimisation.max_epoch == 7
    assert lm.run.initial_model == "exps/ERes2NetV2/model/model000000070.model"
