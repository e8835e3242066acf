"""ReDimNet B0-B6: sizes against the authors' constructor and the paper, shapes, a training step, the logmel front
end's MelBanks options, and the importer's refusals (its output equality is in test_import_peers.py)."""
from importlib import import_module

import pytest
import torch
import torchaudio

import importModel
from importers.redimnet import read
from importers.release_files import ReleaseError
from models.FrontEnd import MeanNormalisedFbank
from models.ReDimNetFamily import SIZES
from SpeakerNet import SpeakerNet

# Parameters of IDRnD/ReDimNet's ReDimNetWrap built with each size's stage table (global context in the pooling,
# 192-d embedding), counted with its own code; the paper's (rounded, millions) beside them.
AUTHORS_COUNTS = {"B0": 1_004_251, "B1": 2_126_937, "B2": 4_892_849, "B3": 3_225_021, "B4": 6_441_521,
                  "B5": 7_659_761, "B6": 15_015_473}
PAPER_MILLIONS = {"B0": 1.0, "B1": 2.2, "B2": 4.7, "B3": 3.0, "B4": 6.3, "B5": 9.2, "B6": 15.0}


def build(size: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return import_module(f"models.ReDimNet{size}").MainModel(**options)


@pytest.mark.parametrize("size", list(SIZES))
def test_parameter_count_matches_the_authors_constructor(size):
    count = sum(p.numel() for p in build(size).parameters())
    assert count == AUTHORS_COUNTS[size]
    if size != "B5":  # the stage table released for B5 is 7.7 M, not the paper's 9.2 M (docs/models-and-losses.md)
        assert abs(count / 1e6 - PAPER_MILLIONS[size]) <= 0.25


def test_global_context_and_embedding_norm_change_the_head_only():
    plain, full = build("B0", global_context=False), build("B0", emb_bn=True)
    width = 10 * 60
    assert plain.pool.linear1.in_channels == width and build("B0").pool.linear1.in_channels == 3 * width
    assert isinstance(full.bn2, torch.nn.BatchNorm1d) and full.bn2.num_features == 192


@pytest.mark.parametrize("name", ["ReDimNetB0", "ReDimNetB1", "ReDimNet2B0", "ReDimNet2B6"])
def test_forward_shapes_and_determinism(name):
    torch.manual_seed(0)
    model = import_module(f"models.{name}").MainModel(nOut=64).eval()
    batch = torch.randn(3, 12_345, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, second = model(batch), model(batch)
        single = model(batch[1:2])
    assert first.shape == (3, 64) and torch.isfinite(first).all()
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(single[0], first[1], rtol=1e-4, atol=1e-5)  # no batch-dependence in eval


def test_mel_count_must_fit_the_frequency_folding():
    with pytest.raises(ValueError, match=r"ReDimNetB6: --n_mels must be a multiple of 12 .*authors use 72, got 40"):
        build("B6", n_mels=40)
    with pytest.raises(ValueError, match=r"ReDimNetB0: .*10 x n_mels channels divide by 4 x each time-context"):
        build("B0", n_mels=40)  # 400 channels / 30 is no whole number of heads
    assert build("B2", n_mels=48, nOut=8).fbank.feature_dim == 48  # B2 folds by 8; 16 x 48 channels split


def test_too_short_input_names_the_minimum():
    with pytest.raises(ValueError, match="ReDimNetB0 needs at least"):
        build("B0")(torch.randn(1, 100))


@pytest.mark.parametrize("name, n_mels, options, fixed_weight", [
    ("ReDimNetB0", 60, {}, "backbone.stage0.0.w"),
    ("ReDimNet2B0", 72, {}, "backbone.stage0.0.w"),
    ("ReDimNet2B0", 72, {"dual_agg": True, "agg_gnorm": True}, "backbone.stage0_pre.0.w"),
])
def test_training_step_reaches_every_parameter(name, n_mels, options, fixed_weight):
    torch.manual_seed(0)
    net = SpeakerNet(model=name, trainfunc="aamsoftmax", nPerSpeaker=1, nOut=32, nClasses=5, n_mels=n_mels,
                     margin=0.2, scale=30, encoder_type="SAP", log_input=False, **options)
    loss, prec1 = net(torch.randn(2, 1, 8000), torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss) and 0 <= float(prec1) <= 100
    silent = [name for name, p in net.__S__.named_parameters() if p.requires_grad and (p.grad is None
                                                                                        or p.grad.abs().max() == 0)]
    assert not silent
    frozen = [name for name, p in net.__S__.named_parameters() if not p.requires_grad]
    assert frozen == [fixed_weight]  # the first stage has one input: its weight is fixed


def test_logmel_with_melbanks_options_is_the_authors_front_end():
    """Pre-emphasis (left edge reflected), MelSpectrogram 20-7600 Hz, log(x + 1e-6), minus the mean over time."""
    wave = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(3))
    emphasised = wave.clone()
    emphasised[:, 1:] = wave[:, 1:] - 0.97 * wave[:, :-1]
    emphasised[:, 0] = wave[:, 0] - 0.97 * wave[:, 1]  # reflect padding: x[-1] = x[1]
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
                                               f_min=20, f_max=7600, n_mels=72, window_fn=torch.hamming_window)
    expected = (mel(emphasised) + 1e-6).log()
    expected = expected - expected.mean(dim=-1, keepdim=True)
    ours = MeanNormalisedFbank(72, preemphasis=0.97, mel_fmin=20.0, mel_fmax=7600.0)
    torch.testing.assert_close(ours(wave), expected, rtol=1e-4, atol=1e-4)


def test_default_logmel_keeps_its_state_dict_keys():
    assert set(MeanNormalisedFbank(40).state_dict()) == {"mel.spectrogram.window", "mel.mel_scale.fb"}


@pytest.mark.parametrize("options, message", [
    ({"preemphasis": 0.97, "mel_fmin": 7000.0, "mel_fmax": 100.0}, "--mel_fmin and --mel_fmax"),
    ({"mel_fmax": 9000.0}, "--mel_fmin and --mel_fmax"),
])
def test_bad_mel_band_names_the_flags(options, message):
    with pytest.raises(ValueError, match=message):
        build("B0", nOut=8, frontend="logmel", **options)


# ---------------------------------------------------------------- importer refusals

def release(tmp_path, config: dict | None, state: dict | None = None) -> str:
    """An authors' torch.hub release file with this model_config (none: a plain state dict)."""
    path = tmp_path / "b0-vox2-ptn.pt"
    content = {"state_dict": state or {"linear.weight": torch.zeros(2, 2)}}
    if config is not None:
        content["model_config"] = config
    torch.save(content, path)
    return str(path)


B0_CONFIG = {"F": 60, "C": 10, "block_1d_type": "conv+att", "block_2d_type": "basic_resnet", "group_divisor": 1,
             "stages_setup": [[stride, blocks, expansion, [[3, 3]], reduction]
                              for stride, blocks, expansion, reduction in SIZES["B0"][4]],
             "out_channels": None, "embed_dim": 192, "global_context_att": True}


def test_release_settings_follow_its_config(tmp_path):
    imported = read(release(tmp_path, B0_CONFIG))
    assert imported.settings["model"] == "ReDimNetB0" and imported.settings["n_mels"] == 60
    assert imported.settings["global_context"] is True and imported.settings["preemphasis"] == 0.97
    assert imported.network == "ReDimNet-B0 (192-d)"


@pytest.mark.parametrize("change, message", [
    ({"block_2d_type": "mystery"}, "block_2d_type 'mystery' is not a ReDimNet block"),
    ({"group_divisor": 2}, "none of the sizes B0-B6"),
    ({"feat_type": "tf"}, "feat_type is 'tf'; this framework's ReDimNet has 'pt'"),
    ({"stages_setup": [[1, 2]]}, "stages_setup is not a list of"),
    ({"spec_params": {"norm_signal": True}}, r"spec_params: norm_signal is True"),
])
def test_release_refusals_name_the_key(tmp_path, change, message):
    with pytest.raises(ReleaseError, match=message):
        read(release(tmp_path, {**B0_CONFIG, **change}))


@pytest.mark.parametrize("toolkit, network", [("redimnet", "ReDimNet"), ("redimnet2", "ReDimNet2")])
def test_a_plain_state_dict_is_not_a_hub_release(tmp_path, capsys, toolkit, network):
    assert importModel.main(["--from", toolkit, "--checkpoint", release(tmp_path, None),
                             "--output", str(tmp_path / "out.pkg")]) != 0
    assert f"is not a {network} release: it has no model_config" in capsys.readouterr().err
    assert not (tmp_path / "out.pkg").exists()
