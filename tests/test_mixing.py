"""Mix-based fine-tuning (--mix, --mix_domain): what MixUp and CutMix do to a batch's waveforms or features, the
two-label loss, and the refusals."""
import pytest
import torch
from cli_checks import stop_line
from ssl_encoders import write_tiny_encoder
from test_train_cli import small_run

import trainSpeakerNet
from models.Fbanks import build_frontend
from runtime import checkpoint_files
from runtime.errors import ConfigError
from SpeakerNet import SpeakerNet, WrappedModel
from training.mixing import Mixing
from training.trainer import ModelTrainer

TRAINER = dict(optimizer="adam", scheduler="steplr", mixedprec=False, device=torch.device("cpu"), lr=0.01,
               test_interval=1, lr_decay=0.9, weight_decay=0)
SMALL_ECAPA = dict(model="ECAPA_TDNN", nOut=16, channels=16, aggregation_channels=48, n_mels=40)


def crops(utterances: int = 6, samples: int = 1000, per_speaker: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(utterances, per_speaker, samples, generator=torch.Generator().manual_seed(0)),
            torch.arange(utterances))


def wave_mix(mixing: Mixing, data: torch.Tensor, label: torch.Tensor):
    """(mixed waveforms, partners' labels, own share), or None for an unmixed batch."""
    with mixing.mixed(data, label) as (mixed, mix):
        return None if mix is None else (mixed, *mix)


def feature_mix(mixing: Mixing, data: torch.Tensor, label: torch.Tensor):
    """(the front end's features [speakers, per_speaker, bins, frames] unmixed and mixed, partners' labels, own
    share) of a batch mixed in the feature domain."""
    fbank = build_frontend(n_mels=8)
    feats = fbank(data.flatten(0, 1))
    with mixing.mixed(data, label, fbank) as (model_input, (partners, share)):
        assert model_input is data
        mixed = fbank(data.flatten(0, 1))
    assert not fbank._forward_hooks  # the hook lives for the block only
    return feats.unflatten(0, data.shape[:2]), mixed.unflatten(0, data.shape[:2]), partners, share


def test_mixup_is_the_share_weighted_sum_with_the_partner():
    torch.manual_seed(1)
    data, label = crops()
    mixed, partners, share = wave_mix(Mixing("mixup", alpha=0.4), data, label)
    assert 0 < share < 1 and sorted(partners.tolist()) == label.tolist()
    torch.testing.assert_close(mixed, share * data + (1 - share) * data[partners])


def test_cutmix_replaces_one_span_with_the_partners():
    torch.manual_seed(2)
    data, label = crops()
    mixed, partners, share = wave_mix(Mixing("cutmix", alpha=0.4), data, label)
    from_partner = (mixed == data[partners]) & (mixed != data)
    columns = from_partner.any(dim=0).any(dim=0).nonzero().flatten()
    span = columns.max().item() - columns.min().item() + 1 if len(columns) else 0
    assert span == len(columns) and share == pytest.approx(1 - span / data.shape[-1])
    outside = torch.ones(data.shape[-1], dtype=torch.bool)
    outside[columns] = False
    assert torch.equal(mixed[..., outside], data[..., outside])
    moved = partners != label
    assert torch.equal(mixed[moved][..., columns], data[partners][moved][..., columns])


def test_both_uses_each_mix_and_prob_skips_batches():
    torch.manual_seed(3)
    data, label = crops()
    kinds = set()
    for _ in range(20):
        mixed, partners, share = wave_mix(Mixing("both", alpha=0.4), data, label)
        in_place = (mixed == data).float().mean().item()
        kinds.add("cutmix" if in_place > 0.2 else "mixup")  # CutMix keeps most samples; MixUp changes all
    assert kinds == {"mixup", "cutmix"}
    skipped = sum(wave_mix(Mixing("mixup", prob=0.25), data, label) is None for _ in range(400))
    assert 250 < skipped < 350
    assert wave_mix(Mixing("none"), data, label) is None and not Mixing("mixup", prob=0).enabled


def test_the_default_domain_mixes_waveforms_with_the_same_draws():
    data, label = crops()
    torch.manual_seed(6)
    mixed, partners, share = wave_mix(Mixing("cutmix", alpha=0.4), data, label)
    torch.manual_seed(6)
    torch.rand(())  # --mix_prob's draw
    partner, drawn = torch.randperm(6), float(torch.distributions.Beta(0.4, 0.4).sample())
    span = round((1 - drawn) * 1000)
    start = int(torch.randint(1000 - span + 1, ()).item())
    expected = data.clone()
    expected[..., start:start + span] = data[partner][..., start:start + span]
    assert Mixing().domain == "wave" and torch.equal(mixed, expected)
    assert torch.equal(partners, label[partner]) and share == 1 - span / 1000


def test_feature_mixup_is_the_share_weighted_sum_of_the_features():
    torch.manual_seed(7)
    data, label = crops(4, 4000, per_speaker=2)
    feats, mixed, partners, share = feature_mix(Mixing("mixup", alpha=0.4, domain="feature"), data, label + 10)
    partner = partners - 10  # the labels name the speakers whose features came in
    assert 0 < share < 1 and sorted(partner.tolist()) == label.tolist() and not torch.equal(partner, label)
    torch.testing.assert_close(mixed, share * feats + (1 - share) * feats[partner])


def test_feature_cutmix_replaces_one_span_of_frames_with_the_partners():
    torch.manual_seed(10)
    data, label = crops(4, 4000, per_speaker=2)
    feats, mixed, partners, share = feature_mix(Mixing("cutmix", alpha=0.4, domain="feature"), data, label + 10)
    partner, frames = partners - 10, feats.shape[-1]
    columns = (mixed != feats).any(dim=0).any(dim=0).any(dim=0).nonzero().flatten()
    start, stop = columns.min().item(), columns.max().item() + 1
    assert 0 < stop - start == len(columns) < frames and share == 1 - (stop - start) / frames
    assert torch.equal(mixed[..., start:stop], feats[partner][..., start:stop])  # utterance k of each speaker
    assert torch.equal(mixed[..., :start], feats[..., :start]) and torch.equal(mixed[..., stop:], feats[..., stop:])


def test_the_loss_of_a_mixed_batch_weighs_both_labels():
    torch.manual_seed(4)
    net = SpeakerNet(model="ResNetSE34L", trainfunc="aamsoftmax", nOut=16, nClasses=6, margin=0.2, scale=30,
                     log_input=True).eval()
    data, label = crops(6, 8000)
    partners = torch.tensor([1, 0, 3, 2, 5, 4])
    loss, prec1 = net(data, label, mix=(partners, 0.7))
    own, other = net(data, label), net(data, partners)
    torch.testing.assert_close(loss, 0.7 * own[0] + 0.3 * other[0])
    torch.testing.assert_close(prec1, 0.7 * own[1] + 0.3 * other[1])


def test_a_mixed_training_step_learns():
    torch.manual_seed(5)
    net = SpeakerNet(model="ResNetSE34L", trainfunc="softmax", nOut=16, nClasses=6, log_input=True)
    trainer = ModelTrainer(WrappedModel(net), "adam", "steplr", False, torch.device("cpu"), lr=0.01, mix="both",
                           mix_alpha=0.4, test_interval=1, lr_decay=0.9, weight_decay=0)
    before = net.__L__.fc.weight.detach().clone()
    data, label = crops(6, 8000)
    trainer.train_mode()
    assert trainer.train_step(data, label)[2] and not torch.equal(before, net.__L__.fc.weight)


def feature_trainer(seed: int) -> tuple[ModelTrainer, SpeakerNet]:
    torch.manual_seed(seed)
    net = SpeakerNet(**SMALL_ECAPA, trainfunc="softmaxproto", nClasses=4, nPerSpeaker=2)
    return ModelTrainer(WrappedModel(net), **TRAINER, mix="both", mix_alpha=0.4, mix_domain="feature"), net


def test_a_training_step_on_mixed_features_learns():
    trainer, net = feature_trainer(9)
    seen = []
    net.__S__.layer1.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    data, label = crops(4, 4000, per_speaker=2)
    before = [parameter.detach().clone() for parameter in net.parameters()]
    trainer.train_mode()
    loss, _, finite = trainer.train_step(data, label)
    assert finite and torch.isfinite(loss)
    assert not any(torch.equal(old, new) for old, new in zip(before, net.parameters()) if new.requires_grad)
    assert not torch.equal(seen[0], net.__S__.fbank(data.flatten(0, 1)))  # the network saw mixed features


def test_a_resumed_run_mixes_the_features_as_the_uninterrupted_one(tmp_path):
    batches = [crops(4, 4000, per_speaker=2)] * 3
    trainer, _ = feature_trainer(10)
    trainer.train_mode()
    trainer.train_step(*batches[0])
    path = str(tmp_path / "resume.model")
    trainer.saveParameters(path, epoch=1)
    expected = [trainer.train_step(*batch)[0] for batch in batches[1:]]
    resumed, _ = feature_trainer(11)
    resumed.resume(path, checkpoint_files.read_checkpoint(path))
    resumed.train_mode()
    assert [resumed.train_step(*batch)[0] for batch in batches[1:]] == expected


@pytest.fixture(scope="module")
def ssl_encoder(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    return write_tiny_encoder("wavlm", tmp_path_factory.mktemp("wavlm"))


@pytest.mark.parametrize("front_end, model, why", [
    ({}, "ResNetSE34L", "it computes its features inside the network or works on waveforms"),
    ({"frontend": "ssl"}, "ECAPA_TDNN", "its --frontend ssl gives a self-supervised encoder's hidden states"),
])
def test_feature_mixing_needs_a_filterbank_front_end(front_end, model, why, request):
    if front_end:
        front_end["ssl_source"] = request.getfixturevalue("ssl_encoder")
    net = SpeakerNet(model=model, trainfunc="softmax", nOut=16, nClasses=6, channels=16, **front_end)
    with pytest.raises(ConfigError, match=rf"--mix_domain feature mixes the features of a filterbank front end "
                                          rf".*, and {model} has none: {why}\. Use --mix_domain wave"):
        ModelTrainer(WrappedModel(net), **TRAINER, mix="mixup", mix_domain="feature")
    assert ModelTrainer(WrappedModel(net), **TRAINER, mix="mixup").mixed_front_end is None


@pytest.mark.parametrize("options, message", [
    ({"mode": "mixcut"}, r"--mix must be one of none, mixup, cutmix, both, got 'mixcut'"),
    ({"mode": "mixup", "alpha": 0}, r"--mix_alpha above 0"),
    ({"mode": "mixup", "prob": 1.5}, r"--mix_prob from 0 to 1"),
    ({"mode": "mixup", "domain": "spectrum"}, r"--mix_domain must be one of wave, feature, got 'spectrum'"),
])
def test_bad_mix_options(options, message):
    with pytest.raises(ConfigError, match=message):
        Mixing(**options)


def test_metric_learning_losses_refuse_mixing():
    net = SpeakerNet(model="ResNetSE34L", trainfunc="angleproto", nOut=16, nPerSpeaker=2, log_input=True)
    with pytest.raises(ConfigError, match=r"--mix cutmix needs a loss that classifies speakers .* 'angleproto' "
                                          r"compares embeddings"):
        ModelTrainer(WrappedModel(net), "adam", "steplr", False, torch.device("cpu"), lr=0.01, mix="cutmix",
                     test_interval=1, lr_decay=0.9, weight_decay=0)


def test_the_cli_refuses_mixing_with_a_metric_learning_loss(tiny_corpus, tmp_path, capsys):
    line = stop_line(trainSpeakerNet.main, small_run(tiny_corpus, tmp_path / "run", "--mix", "mixup"), capsys)
    assert "--mix mixup needs a loss that classifies speakers" in line and "'angleproto'" in line


def test_the_cli_refuses_feature_mixing_without_a_filterbank_front_end(tiny_corpus, tmp_path, capsys):
    argv = small_run(tiny_corpus, tmp_path / "run", "--trainfunc", "softmax", "--nPerSpeaker", "1", "--nClasses", "6",
                     "--mix", "cutmix", "--mix_domain", "feature")
    line = stop_line(trainSpeakerNet.main, argv, capsys)
    assert "--mix_domain feature mixes the features" in line and "ResNetSE34L has none" in line
