"""aamsoftmax_ramp: the margin schedule (values by hand from wespeaker's formula), its loss against aamsoftmax at
the same margin, finite gradients, and its options."""
import math
from importlib import import_module

import pytest
import torch

from settings.plugins import PluginError, build_plugin, declared_options

FLAGS = {"nOut": 8, "nClasses": 6, "margin": 0.2, "scale": 32.0, "easy_margin": False, "nPerSpeaker": 1,
         "margin_start": 20.0, "margin_end": 40.0, "model": "ResNetSE34L", "lr": 0.1}


def make_loss(name: str, **changes) -> torch.nn.Module:
    """loss.<name>.LossFunction built from every flag (overridable), as the trainer builds it."""
    torch.manual_seed(0)
    return import_module(f"loss.{name}").LossFunction(**{**FLAGS, **changes})


def wespeaker_margin(epochs: float, final: float, start: float, end: float) -> float:
    """The margin written as wespeaker's MarginScheduler computes it: 1 - exp(t * ln(1e-3 / (1 + 1e-6))) of the
    final margin."""
    if epochs >= end:
        return final
    if epochs < start:
        return 0.0
    return final * (1.0 - math.exp((epochs - start) / (end - start) * math.log(1e-3 / (1.0 + 1e-6))))


@pytest.mark.parametrize("epochs, expected", [
    (0.0, 0.0), (19.99, 0.0), (20.0, 0.0),
    (22.0, 0.2 * (1 - 10 ** -0.3)),  # a tenth of the ramp: about half the margin
    (30.0, 0.2 * (1 - 10 ** -1.5)),  # midway: 97 % of it
    (39.999, 0.2 * (1 - 10 ** (-3 * 19.999 / 20))),
    (40.0, 0.2), (41.5, 0.2), (150.0, 0.2)])
def test_margin_follows_the_schedule(epochs, expected):
    loss = make_loss("aamsoftmax_ramp")
    loss.set_epoch_progress(epochs)
    assert loss.m == pytest.approx(expected, abs=1e-7)  # the 1e-6 in wespeaker's floor moves it by less
    assert loss.m == pytest.approx(wespeaker_margin(epochs, 0.2, 20.0, 40.0), abs=1e-12)


def test_margin_starts_at_zero_and_never_falls():
    loss = make_loss("aamsoftmax_ramp", margin_start=2.0, margin_end=5.0)
    assert loss.m == 0.0  # before the first set_epoch_progress call
    margins = []
    for step in range(0, 80):
        loss.set_epoch_progress(step / 10)
        margins.append(loss.m)
    assert all(later >= earlier for earlier, later in zip(margins, margins[1:]))
    assert margins[19] == 0.0 and 0 < margins[21] < margins[49] < margins[50] == pytest.approx(0.2)


def test_equal_start_and_end_switch_the_margin_on_at_once():
    loss = make_loss("aamsoftmax_ramp", margin=0.5, margin_start=0.0, margin_end=0.0)
    assert loss.m == pytest.approx(0.5)  # large-margin fine-tuning: the final margin from the first step


def test_an_end_before_the_start_is_refused():
    with pytest.raises(PluginError, match="margin_start"):
        build_plugin("loss", "aamsoftmax_ramp", {**FLAGS, "margin_start": 10.0, "margin_end": 5.0})


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("epochs", [0.0, 21.0, 30.0, 45.0])
def test_loss_equals_aamsoftmax_at_the_same_margin(epochs, easy_margin):
    ramp = make_loss("aamsoftmax_ramp", easy_margin=easy_margin)
    ramp.set_epoch_progress(epochs)
    fixed = make_loss("aamsoftmax", margin=wespeaker_margin(epochs, 0.2, 20.0, 40.0), easy_margin=easy_margin)
    fixed.load_state_dict(ramp.state_dict())
    x = torch.randn(10, 1, 8, generator=torch.Generator().manual_seed(1))
    label = torch.arange(10) % 6
    (ramp_loss, ramp_prec), (fixed_loss, fixed_prec) = ramp(x, label), fixed(x, label)
    assert ramp_loss.item() == pytest.approx(fixed_loss.item(), rel=1e-6)
    assert ramp_prec.item() == pytest.approx(fixed_prec.item())


def test_the_growing_margin_raises_the_loss():
    loss = make_loss("aamsoftmax_ramp")
    x = torch.randn(10, 1, 8, generator=torch.Generator().manual_seed(2))
    label = torch.arange(10) % 6
    values = []
    for epochs in (0.0, 22.0, 30.0, 40.0):
        loss.set_epoch_progress(epochs)
        values.append(loss(x, label)[0].item())
    assert values == sorted(values) and values[-1] > values[0] + 0.5


@pytest.mark.parametrize("epochs", [0.0, 25.0, 40.0])
def test_gradients_are_finite(epochs):
    loss = make_loss("aamsoftmax_ramp")
    loss.set_epoch_progress(epochs)
    rows = loss.weight.detach()
    # random embeddings plus the hard cases: exactly on a class centre (cos 1) and exactly opposite (cos -1)
    x = torch.cat([torch.randn(4, 8, generator=torch.Generator().manual_seed(3)), rows[:1], -rows[1:2]])
    x = x.unsqueeze(1).requires_grad_(True)
    value, _ = loss(x, torch.tensor([0, 1, 2, 3, 0, 1]))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(loss.weight.grad).all() and loss.weight.grad.abs().sum() > 0


def test_the_schedule_options_are_declared():
    options = declared_options()
    assert options["margin_start"]["loss/aamsoftmax_ramp"][:2] == (float, 20.0)
    assert options["margin_end"]["loss/aamsoftmax_ramp"][:2] == (float, 40.0)


def test_it_classifies_one_utterance_per_speaker():
    loss = make_loss("aamsoftmax_ramp")
    assert loss.test_normalize and type(loss).classifies_speakers
    assert (type(loss).min_per_speaker, type(loss).max_per_speaker) == (1, 1)
    with pytest.raises(ValueError, match="nPerSpeaker 1"):
        loss(torch.randn(3, 2, 8), torch.tensor([0, 1, 2]))
