"""The sgd_nesterov and adamw optimizer plug-ins: types, hyper-parameters from the flags, the momentum option."""
import pytest
import torch

from settings.plugins import PluginError, build_plugin, declared_options, load_plugin

FLAGS = {"lr": 0.1, "weight_decay": 1e-4, "lr_decay": 0.95, "max_epoch": 150, "margin": 0.2, "nOut": 8}


def parameters() -> list[torch.nn.Parameter]:
    """Parameters of a small linear layer."""
    return list(torch.nn.Linear(4, 3).parameters())


def test_sgd_nesterov_takes_lr_and_weight_decay_from_the_flags():
    optimizer = load_plugin("optimizer", "sgd_nesterov")(parameters(), **FLAGS)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["nesterov"] is True
    assert (group["lr"], group["momentum"], group["weight_decay"]) == pytest.approx((0.1, 0.9, 1e-4))
    assert group["dampening"] == 0  # Nesterov needs it


def test_sgd_nesterov_momentum_option():
    optimizer = load_plugin("optimizer", "sgd_nesterov")(parameters(), **FLAGS, momentum=0.8)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8)
    assert declared_options()["momentum"]["optimizer/sgd_nesterov"][:2] == (float, 0.9)


def test_adamw_takes_lr_and_weight_decay_from_the_flags():
    optimizer = load_plugin("optimizer", "adamw")(parameters(), **{**FLAGS, "lr": 0.001, "weight_decay": 0.05})
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == pytest.approx((0.001, 0.05))
    assert group["betas"] == pytest.approx((0.9, 0.999))


def test_adamw_decays_the_weights_apart_from_the_gradient():
    weight = torch.nn.Parameter(torch.full((3,), 2.0))
    optimizer = load_plugin("optimizer", "adamw")([weight], **{**FLAGS, "lr": 0.1, "weight_decay": 0.5})
    weight.grad = torch.zeros(3)  # no gradient: only the decoupled decay moves the weight (plain Adam would not)
    optimizer.step()
    assert weight.detach().numpy() == pytest.approx([2.0 * (1 - 0.1 * 0.5)] * 3, rel=1e-6)


def test_an_unknown_name_lists_them():
    with pytest.raises(PluginError, match="sgd_nesterov") as error:
        load_plugin("optimizer", "nesterov")
    assert "adamw" in str(error.value)


def test_a_setting_the_optimizer_rejects_is_a_plugin_error():
    with pytest.raises(PluginError, match="optimizer/sgd_nesterov.py: .*momentum"):
        build_plugin("optimizer", "sgd_nesterov", {**FLAGS, "momentum": 0.0}, parameters())
