"""Mix-based fine-tuning (--mix): what MixUp and CutMix do to a batch, the two-label loss, and the refusals."""
import pytest
import torch
from cli_checks import stop_line
from test_train_cli import small_run

import trainSpeakerNet
from runtime.errors import ConfigError
from SpeakerNet import SpeakerNet, WrappedModel
from training.mixing import Mixing
from training.trainer import ModelTrainer


def crops(utterances: int = 6, samples: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(utterances, 1, samples, generator=torch.Generator().manual_seed(0)), torch.arange(utterances)


def test_mixup_is_the_share_weighted_sum_with_the_partner():
    torch.manual_seed(1)
    data, label = crops()
    mixed, partners, share = Mixing("mixup", alpha=0.4).mix(data, label)
    assert 0 < share < 1 and sorted(partners.tolist()) == label.tolist()
    torch.testing.assert_close(mixed, share * data + (1 - share) * data[partners])


def test_cutmix_replaces_one_span_with_the_partners():
    torch.manual_seed(2)
    data, label = crops()
    mixed, partners, share = Mixing("cutmix", alpha=0.4).mix(data, label)
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
        mixed, partners, share = Mixing("both", alpha=0.4).mix(data, label)
        in_place = (mixed == data).float().mean().item()
        kinds.add("cutmix" if in_place > 0.2 else "mixup")  # CutMix keeps most samples; MixUp changes all
    assert kinds == {"mixup", "cutmix"}
    skipped = sum(Mixing("mixup", prob=0.25).mix(data, label) is None for _ in range(400))
    assert 250 < skipped < 350
    assert Mixing("none").mix(data, label) is None and not Mixing("mixup", prob=0).enabled


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


@pytest.mark.parametrize("options, message", [
    ({"mode": "mixcut"}, r"--mix must be one of none, mixup, cutmix, both, got 'mixcut'"),
    ({"mode": "mixup", "alpha": 0}, r"--mix_alpha above 0"),
    ({"mode": "mixup", "prob": 1.5}, r"--mix_prob from 0 to 1"),
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
