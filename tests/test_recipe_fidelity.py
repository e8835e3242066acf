"""The wespeaker-named recipes are wespeaker's VoxCeleb v2 run: what each setting makes the framework do (the front
end built, the speed and augmentation modes, the schedules' milestones), checked through the settings and objects
the recipes produce rather than by reading numbers back from the YAML."""
import pytest
import torch

import arguments
from DatasetLoader import train_dataset_loader
from models.Fbanks import KaldiFbank
from SpeakerNet import SpeakerNet

RECIPES = ["ResNet34", "ResNet221", "ResNet293", "ECAPA_TDNN_c512", "ECAPA_TDNN_c1024", "CAMPPlus"]


def settings(name: str):
    return arguments.parse_settings(["--config", f"configs/{name}.yaml"])


@pytest.mark.parametrize("name", RECIPES)
def test_training_recipe_is_wespeakers_run(name):
    recipe = settings(name)
    data, model, optimisation, flags = recipe.data, recipe.model, recipe.optimisation, recipe.flags
    assert (data.speed_perturb, data.speed_perturb_mode, data.augment, data.augment_mix, data.augment_prob) == (
        True, "per_epoch", True, "wespeaker", 0.6)
    assert data.sampler == "shuffled" and data.batch_size == 128 and data.max_frames == 200
    assert model.nClasses == 3 * 5994 and model.trainfunc == "aamsoftmax_ramp" and model.margin == 0.2
    assert (flags["margin_start"], flags["margin_end"]) == (19, 39)  # wespeaker's epochs 20 and 40, counted from 1
    assert (flags["aam_fallback"], flags["classifier_init"]) == ("continuous", "xavier_uniform")
    assert (optimisation.optimizer, optimisation.scheduler, optimisation.lr, flags["final_lr"]) == (
        "sgd_nesterov", "warmup_exp", 0.1, 5e-5)
    assert flags["lr_reference_batch"] == 64 and optimisation.max_epoch == 150 and flags["save_last_epochs"] == 10
    assert model.nOut == (512 if name == "CAMPPlus" else 192 if name.startswith("ECAPA") else 256)


@pytest.mark.parametrize("name", ["ResNet34", "CAMPPlus"])
def test_recipe_builds_kaldi_features_with_dither_in_training_only(name):
    recipe = settings(name)
    net = SpeakerNet(**{**recipe.flags, "nClasses": 12})  # a small classifier: only the front end is checked
    front_end = net.__S__.fbank
    assert isinstance(front_end, KaldiFbank)
    assert front_end.waveform_scale == 32768 and front_end.mean_norm
    assert front_end.spectrum.dither == 1.0 and front_end.spectrum.preemphasis == 0.97
    audio = torch.randn(1, 16000) * 0.1
    net.eval()
    with torch.no_grad():
        assert torch.equal(front_end(audio), front_end(audio))  # no dither at evaluation
        net.train()
        assert not torch.equal(front_end(audio), front_end(audio))  # dither in training


@pytest.mark.parametrize("name", RECIPES)
def test_lm_recipe_keeps_the_whole_classifier(name):
    lm = settings(f"{name}_LM")
    assert lm.model.nClasses == 3 * 5994 and not lm.data.speed_perturb and lm.data.augment_mix == "wespeaker"
    assert lm.model.trainfunc == "aamsoftmax" and lm.model.margin == 0.5 and lm.data.max_frames == 600
    assert lm.run.initial_model == f"exps/{name}/average.model" and lm.optimisation.max_epoch == 5


def test_per_epoch_speed_keeps_the_epoch(tiny_corpus):
    """With the recipes' per-epoch mode every utterance is listed once (an epoch keeps its size)."""
    common = dict(train_list=tiny_corpus["train_list"], train_path=tiny_corpus["train_path"], augment=False,
                  musan_path="", rir_path="", max_frames=50, speed_perturb=True)
    per_epoch = train_dataset_loader(**common, speed_perturb_mode="per_epoch")
    expanded = train_dataset_loader(**common, speed_perturb_mode="expand")
    assert len(per_epoch) == 24 and len(expanded) == 3 * 24
