"""ReDimNet2 B0-B6: sizes against the authors' constructor and README, shapes, time pooling, a training step, and the
importer's refusals (its output equality is in test_import_peers.py)."""
from importlib import import_module

import pytest
import torch
from test_redimnet import release

import arguments
from importers.redimnet2 import read
from importers.release_files import ReleaseError
from models.FrontEnd import MeanNormalisedFbank
from models.ReDimNet2Family import SIZES
from SpeakerNet import SpeakerNet

# Parameters of PalabraAI/redimnet2's ReDimNet2Wrap built with wespeaker's stage table of each size (its ReDimNet2B0..
# B6; 72 mels, global context in the pooling, 192-d embedding), counted with the authors' code; their README's
# (rounded, millions) beside them.
AUTHORS_COUNTS = {"B0": 703_060, "B1": 1_254_992, "B2": 2_530_208, "B3": 2_364_712, "B4": 6_659_744,
                  "B5": 7_900_456, "B6": 12_394_784}
AUTHORS_B6_DUAL_GNORM = 12_611_360  # the VoxBlink2 B6 (dual_agg and agg_gnorm)
README_MILLIONS = {"B0": 1.1, "B1": 2.1, "B2": 3.6, "B3": 4.1, "B4": 6.6, "B5": 8.9, "B6": 12.3}


def build(size: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return import_module(f"models.ReDimNet2{size}").MainModel(**options)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", list(SIZES))
def test_parameter_count_matches_the_authors_constructor(size):
    total = count(build(size))
    assert total == AUTHORS_COUNTS[size]
    if size in ("B4", "B6"):  # the other tables give fewer than the README says (docs/models-and-losses.md)
        assert abs(total / 1e6 - README_MILLIONS[size]) <= 0.1


def test_dual_aggregation_and_group_norm_follow_the_authors_layout():
    model = build("B6", dual_agg=True, agg_gnorm=True)
    assert count(model) == AUTHORS_B6_DUAL_GNORM
    keys = set(model.state_dict())
    assert {"backbone.stem_gnorm.weight", "backbone.stage0_pre.0.w", "backbone.stage0_1d.exp_dim_conv.weight",
            "backbone.stage5_up_2d.1.weight", "backbone.stage5_up_1d.1.weight"} <= keys
    assert model.backbone.fin_wght1d.w.shape == (1, 13, 64 * 72, 1)  # stem + 2 outputs per stage


@pytest.mark.parametrize("size, pooled", [("B0", 64), ("B6", 224 * 9)])
def test_pooled_width_is_the_head_width(size, pooled):
    """Shapes and determinism of the forward: tests/test_redimnet.py."""
    assert build(size, nOut=64).pool.out_dim == 2 * pooled


def test_frames_beyond_the_time_stride_are_dropped():
    model = build("B0", nOut=16).eval()
    features = torch.randn(1, 1, 72, 40)
    with torch.no_grad():
        cut, longer = model.backbone(features), model.backbone(torch.cat([features, torch.randn(1, 1, 72, 3)], -1))
    assert model.backbone.time_stride == 4 and cut.shape == (1, 64, 40)
    torch.testing.assert_close(cut, longer)


def test_mel_count_must_fit_the_frequency_folding_and_the_attention_heads():
    with pytest.raises(ValueError, match=r"ReDimNet2B2: --n_mels must be a multiple of 12 .*authors use 72.*got 40"):
        build("B2", n_mels=40)
    with pytest.raises(ValueError, match=r"ReDimNet2B0: .*12 x n_mels channels divide by 4 x each time-context "
                                         r"reduction.*got 80"):
        build("B0", n_mels=80)  # folds by 8, but 960 channels do not split into 4 heads of 960 / 36
    model = build("B0", n_mels=96, nOut=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 16000)).shape == (1, 8)


def test_too_short_input_names_the_minimum():
    with pytest.raises(ValueError, match="ReDimNet2B0 needs at least"):
        build("B0")(torch.randn(1, 100))


# ---------------------------------------------------------------- importer refusals

B0_CONFIG = {"F": 72, "C": 12, "causal": "none", "out_channels": 64, "return_2d_output": False,
             "block_1d_type": "conv+att", "block_2d_type": "basic_resnet", "group_divisor": 1,
             "stages_setup": [[[freq, time], blocks, expansion, [[3, 3]], reduction]
                              for freq, time, blocks, expansion, reduction in SIZES["B0"][3]],
             "embed_dim": 192, "feat_type": "pt"}


def test_release_settings_follow_its_config(tmp_path):
    imported = read(release(tmp_path, {**B0_CONFIG, "dual_agg": True}))
    assert imported.settings["model"] == "ReDimNet2B0" and imported.settings["n_mels"] == 72
    assert imported.settings["global_context"] is True and imported.settings["dual_agg"] is True
    assert imported.settings["agg_gnorm"] is False and imported.settings["mel_fmax"] == 7600.0
    assert imported.network == "ReDimNet2-B0 (192-d)"


@pytest.mark.parametrize("change, message", [
    ({"block_2d_type": "convnext_like"}, "block_2d_type is 'convnext_like'; this framework's ReDimNet2 has "
                                         "'basic_resnet'"),
    ({"causal": "full"}, "causal is 'full'"),
    ({"out_channels": None}, "none of the sizes B0-B6"),
    ({"stages_setup": [[1, 2]]}, "stages_setup is not a list of"),
    ({"spec_params": {"norm_signal": True}}, r"spec_params: norm_signal is True"),
    ({"C": "12"}, "'C' is '12', expected a int"),
])
def test_release_refusals_name_the_key(tmp_path, change, message):
    with pytest.raises(ReleaseError, match=message):
        read(release(tmp_path, {**B0_CONFIG, **change}))


# ---------------------------------------------------------------- recipes

@pytest.mark.parametrize("name, dual", [("ReDimNet2_B6", False), ("ReDimNet2_B6_LM", False),
                                        ("ReDimNet2_B6_VB2_pretrain", True), ("ReDimNet2_B6_VB2_finetune", True)])
def test_recipes_build_the_authors_front_end_and_loss(name, dual):
    flags = arguments.parse_settings(["--config", f"configs/{name}.yaml"]).flags
    assert (flags["model"], flags["trainfunc"], flags["optimizer"], flags["scheduler"]) == (
        "ReDimNet2B6", "sphereface2", "sgd_nesterov", "warmup_exp")
    assert (flags["dual_agg"], flags["agg_gnorm"], flags["sphereface2_lambda"], flags["sphereface2_t"]) == (
        dual, dual, 0.7, 3.0)
    net = SpeakerNet(**{**flags, "nClasses": 12})  # a small classifier: the network and front end are checked
    front_end = net.__S__.fbank
    assert isinstance(front_end, MeanNormalisedFbank) and front_end.feature_dim == 72
    assert (flags["preemphasis"], flags["mel_fmin"], flags["mel_fmax"]) == (0.97, 20.0, 7600.0)
