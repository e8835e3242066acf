"""subcenter_aamsoftmax: one centre and no penalty is AAM-softmax, a class's cosine is its best centre's, the
inter-top-k penalty on the hardest negatives (worked by hand in numpy), the shared schedule, and its options."""
from importlib import import_module

import numpy as np
import pytest
import torch

from settings.plugins import PluginError, build_plugin, declared_options

FLAGS = {"nOut": 8, "nClasses": 6, "margin": 0.2, "scale": 32.0, "easy_margin": False, "nPerSpeaker": 1,
         "margin_start": 20.0, "margin_end": 40.0, "subcenters": 3, "topk_negatives": 0, "topk_penalty": 0.06}
TRAINED = 50.0  # epochs past --margin_end: the full margin and penalty


def make_loss(name: str, **changes) -> torch.nn.Module:
    """loss.<name>.LossFunction built from every flag (overridable), seeded."""
    torch.manual_seed(0)
    return import_module(f"loss.{name}").LossFunction(**{**FLAGS, **changes})


def batch(seed: int, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings [size, 1, 8] and labels over the 6 classes."""
    return torch.randn(size, 1, 8, generator=torch.Generator().manual_seed(seed)), torch.arange(size) % 6


def np_cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean softmax cross-entropy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(target)), target]))


def np_class_cosines(x: np.ndarray, weight: np.ndarray, centres: int) -> np.ndarray:
    """Per class the largest cosine over its centres, by explicit loops."""
    classes = weight.shape[0] // centres
    return np.array([[max(row @ weight[c * centres + k] / np.linalg.norm(row) / np.linalg.norm(weight[c * centres + k])
                          for k in range(centres)) for c in range(classes)] for row in x])


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("epochs", [0.0, 25.0, TRAINED])
def test_one_centre_without_penalty_is_aamsoftmax(epochs, easy_margin):
    head = make_loss("subcenter_aamsoftmax", subcenters=1, easy_margin=easy_margin)
    head.set_epoch_progress(epochs)
    ramp = make_loss("aamsoftmax_ramp", easy_margin=easy_margin)
    ramp.set_epoch_progress(epochs)
    ramp.load_state_dict(head.state_dict())
    x, label = batch(1)
    (value, prec), (expected, expected_prec) = head(x, label), ramp(x, label)
    assert head.m == pytest.approx(ramp.m)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert prec.item() == pytest.approx(expected_prec.item())


def test_a_class_cosine_is_the_largest_over_its_centres():
    head = make_loss("subcenter_aamsoftmax")
    x, _ = batch(2)
    expected = np_class_cosines(x[:, 0].numpy(), head.weight.detach().numpy(), 3)
    assert head.weight.shape == (18, 8)
    np.testing.assert_allclose(head.class_cosines(x[:, 0]).detach().numpy(), expected, atol=1e-6)


def centre_cosines(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Cosines [N, classes, centres] of embeddings [N, 8] with every centre."""
    weight = torch.nn.functional.normalize(head.weight.detach(), dim=1).reshape(6, 3, 8)
    return torch.einsum("ckd,nd->nck", weight, torch.nn.functional.normalize(x, dim=1))


def test_the_loss_is_aamsoftmax_over_each_utterance_s_best_centres():
    head = make_loss("subcenter_aamsoftmax")
    head.set_epoch_progress(TRAINED)
    x, label = batch(3, size=6)
    value, _ = head(x, label)
    aam = make_loss("aamsoftmax", margin=0.2)
    centres = head.weight.detach().reshape(6, 3, 8)
    losses = []
    for row, target, cosines in zip(x, label, centre_cosines(head, x[:, 0])):
        with torch.no_grad():
            aam.weight.copy_(centres[torch.arange(6), cosines.argmax(dim=1)])
        losses.append(aam(row[None], target[None])[0].item())
    assert value.item() == pytest.approx(np.mean(losses), rel=1e-5)


def test_only_the_winning_centres_learn_and_the_others_do_not_matter():
    head = make_loss("subcenter_aamsoftmax")
    head.set_epoch_progress(TRAINED)
    x, label = batch(4, size=1)
    value, _ = head(x, label)
    value.backward()
    winners = centre_cosines(head, x[:, 0])[0].argmax(dim=1) + 3 * torch.arange(6)
    learning = head.weight.grad.abs().sum(dim=1) > 0
    assert learning.nonzero().flatten().tolist() == winners.tolist()
    losers = torch.ones(18, dtype=torch.bool)
    losers[winners] = False
    with torch.no_grad():  # turn every losing centre exactly away from the utterance: nothing changes
        head.weight[losers] = -x[0, 0]
    assert head(x, label)[0].item() == pytest.approx(value.item(), rel=1e-6)
    with torch.no_grad():  # another centre of class 0 moved onto the utterance wins, and the loss changes
        head.weight[(int(winners[0]) + 1) % 3] = x[0, 0]
    assert head(x, label)[0].item() != pytest.approx(value.item(), rel=1e-3)


def np_penalized_logits(cosine: np.ndarray, label: np.ndarray, margin: float, scale: float, count: int,
                        penalty: float) -> np.ndarray:
    """Logits by angles: cos(theta + m) at the target, cos(theta - p) at the `count` largest other cosines."""
    theta = np.arccos(np.clip(cosine, -1, 1))
    logits = cosine.copy()
    for i, target in enumerate(label):
        others = [c for c in np.argsort(-cosine[i]) if c != target][:count]
        logits[i, others] = np.cos(theta[i, others] - penalty)
        logits[i, target] = np.cos(theta[i, target] + margin)  # theta + m < pi for these random embeddings
    return scale * logits


@pytest.mark.parametrize("count", [1, 2, 5])
def test_penalty_on_the_hardest_negatives_by_hand(count):
    head = make_loss("subcenter_aamsoftmax", topk_negatives=count)
    head.set_epoch_progress(TRAINED)
    x, label = batch(5)
    value, _ = head(x, label)
    cosine = np_class_cosines(x[:, 0].numpy(), head.weight.detach().numpy(), 3)
    expected = np_cross_entropy(np_penalized_logits(cosine, label.numpy(), 0.2, 32.0, count, 0.06), label.numpy())
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_the_penalty_raises_the_loss_on_hard_negatives():
    x, label = batch(6)
    values = {}
    for count in (0, 1, 3):
        head = make_loss("subcenter_aamsoftmax", topk_negatives=count)
        head.set_epoch_progress(TRAINED)
        values[count] = head(x, label)[0].item()
    assert values[0] < values[1] < values[3]


def test_the_penalty_follows_the_margin_schedule():
    x, label = batch(7)
    plain, penalized = make_loss("subcenter_aamsoftmax"), make_loss("subcenter_aamsoftmax", topk_negatives=2)
    for epochs, share in ((0.0, 0.0), (20.0, 0.0), (30.0, 1 - 10 ** -1.5), (40.0, 1.0)):
        penalized.set_epoch_progress(epochs)
        assert penalized.m == pytest.approx(0.2 * share) and penalized.penalty == pytest.approx(0.06 * share)
    penalized.set_epoch_progress(10.0)
    plain.set_epoch_progress(10.0)
    assert penalized(x, label)[0].item() == pytest.approx(plain(x, label)[0].item(), rel=1e-6)


@pytest.mark.parametrize("epochs", [0.0, 30.0, TRAINED])
def test_gradients_are_finite(epochs):
    head = make_loss("subcenter_aamsoftmax", topk_negatives=3)
    head.set_epoch_progress(epochs)
    rows = head.weight.detach()
    x = torch.cat([batch(8, size=4)[0][:, 0], rows[:1], -rows[4:5]]).unsqueeze(1).requires_grad_(True)
    value, _ = head(x, torch.tensor([0, 1, 2, 3, 0, 5]))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("changes, words", [({"subcenters": 0}, "subcenters"),
                                            ({"topk_negatives": 6}, "topk_negatives"),
                                            ({"topk_negatives": -1}, "topk_negatives"),
                                            ({"margin_start": 5.0, "margin_end": 1.0}, "margin_start")])
def test_settings_it_cannot_use_are_refused(changes, words):
    with pytest.raises(PluginError, match=words):
        build_plugin("loss", "subcenter_aamsoftmax", {**FLAGS, **changes})


def test_options_are_declared_and_shared_with_the_ramp():
    options = declared_options()
    assert options["subcenters"]["loss/subcenter_aamsoftmax"][:2] == (int, 3)
    assert options["topk_negatives"]["loss/subcenter_aamsoftmax"][:2] == (int, 0)
    assert options["topk_penalty"]["loss/subcenter_aamsoftmax"][:2] == (float, 0.06)
    assert set(options["margin_start"]) == {"loss/aamsoftmax_ramp", "loss/subcenter_aamsoftmax", "loss/sphereface2"}
    assert len(set(options["margin_end"].values())) == 1
