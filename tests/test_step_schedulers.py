"""Per-step LR schedules warmup_exp and warmup_cosine: the LR at hand-computed points, the step counting, exact
continuation from a saved state_dict, and settings they refuse."""
import io
import math

import pytest
import torch

from settings.plugins import PluginError, build_plugin, declared_options

# 150 epochs of 10 steps, 6 warm-up epochs: 1,500 steps, 60 of warm-up
FLAGS = {"lr": 0.1, "final_lr": 5e-5, "warmup_epochs": 6.0, "max_epoch": 150, "steps_per_epoch": 10,
         "lr_decay": 0.95, "test_interval": 10, "weight_decay": 0.0, "margin": 0.2}
STEPS, WARMUP = 1500, 60


def build(name: str, flags: dict) -> tuple[torch.optim.Optimizer, object]:
    """A fresh SGD optimizer over one weight and the named scheduler built from `flags`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=flags["lr"], momentum=0.9)
    scheduler, lr_step = build_plugin("scheduler", name, flags, optimizer)
    assert lr_step == "iteration"
    return optimizer, scheduler


def make(name: str, **changes) -> tuple[torch.optim.Optimizer, object]:
    """build() from every flag, with `changes`."""
    return build(name, {**FLAGS, **changes})


def lrs(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The LR of each of the next `steps` training steps (the trainer steps the scheduler after each)."""
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def lr_at(name: str, step: int, **changes) -> float:
    """The LR used for training step `step` (from 0)."""
    optimizer, scheduler = make(name, **changes)
    lrs(optimizer, scheduler, step)
    return optimizer.param_groups[0]["lr"]


def wespeaker_exponential(step: int) -> float:
    """ExponentialDecrease with warm_from_zero, written as wespeaker computes it."""
    coefficient = step / WARMUP if step < WARMUP else 1.0
    return coefficient * 0.1 * math.exp(min(step, STEPS) / STEPS * math.log(5e-5 / 0.1))


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),
    (30, 0.5 * 0.1 * (5e-4) ** (30 / 1500)),     # half-way through the warm-up
    (WARMUP, 0.1 * (5e-4) ** (60 / 1500)),       # end of the warm-up: about 0.0738, the decay already running
    (750, 0.1 * (5e-4) ** 0.5),                  # midway: the geometric mean of 0.1 and 5e-5
    (STEPS - 1, 0.1 * (5e-4) ** (1499 / 1500)),  # the last step of the run
    (STEPS, 5e-5), (STEPS + 40, 5e-5)])          # a few steps more (later epochs can be longer): final_lr
def test_warmup_exp_values(step, expected):
    value = lr_at("warmup_exp", step)
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert value == pytest.approx(wespeaker_exponential(step), rel=1e-9, abs=1e-15)


def test_warmup_exp_end_of_warmup_for_the_recipe():
    assert lr_at("warmup_exp", WARMUP) == pytest.approx(0.0738, abs=5e-5)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),
    (30, 0.05),
    (WARMUP, 0.1),                                # end of the warm-up: the full --lr
    (WARMUP + 720, 5e-5 + (0.1 - 5e-5) / 2),      # half of the cosine
    (WARMUP + 360, 5e-5 + (0.1 - 5e-5) * (1 + math.cos(math.pi / 4)) / 2),
    (STEPS - 1, 5e-5 + (0.1 - 5e-5) * (1 + math.cos(math.pi * 1439 / 1440)) / 2),
    (STEPS, 5e-5), (STEPS + 40, 5e-5)])
def test_warmup_cosine_values(step, expected):
    assert lr_at("warmup_cosine", step) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", ["warmup_exp", "warmup_cosine"])
def test_lr_rises_then_falls(name):
    optimizer, scheduler = make(name)
    seen = lrs(optimizer, scheduler, STEPS)
    peak = seen.index(max(seen))
    assert peak == WARMUP
    assert all(a < b for a, b in zip(seen[:peak], seen[1:peak + 1]))
    assert all(a > b for a, b in zip(seen[peak:], seen[peak + 1:]))


@pytest.mark.parametrize("name, third_step", [("warmup_exp", 0.1 * 3 / 6 * 5e-4 ** (3 / 150)),
                                              ("warmup_cosine", 0.1 * 3 / 6)])
@pytest.mark.parametrize("steps_per_epoch", [0, "not given"])  # --eval builds the scheduler without it
def test_at_least_one_step_per_epoch_is_counted(name, third_step, steps_per_epoch):
    flags = {**FLAGS, "steps_per_epoch": steps_per_epoch}
    if steps_per_epoch == "not given":
        del flags["steps_per_epoch"]
    seen = lrs(*build(name, flags), 8)
    assert seen.index(max(seen)) == 6  # 6 warm-up epochs of one step each
    assert seen[3] == pytest.approx(third_step, rel=1e-9)


@pytest.mark.parametrize("name", ["warmup_exp", "warmup_cosine"])
def test_without_warmup_the_first_step_has_the_full_lr(name):
    assert lr_at(name, 0, warmup_epochs=0.0) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["warmup_exp", "warmup_cosine"])
@pytest.mark.parametrize("saved_at", [25, 700])
def test_a_saved_state_continues_with_the_same_lrs(name, saved_at):
    optimizer, scheduler = make(name)
    lrs(optimizer, scheduler, saved_at)
    buffer = io.BytesIO()  # through torch.save and a weights-only load, as checkpoints travel
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    expected = lrs(optimizer, scheduler, 100)

    fresh_optimizer, fresh_scheduler = make(name)
    fresh_optimizer.load_state_dict(saved["optimizer"])
    fresh_scheduler.load_state_dict(saved["scheduler"])
    resumed = lrs(fresh_optimizer, fresh_scheduler, 100)
    assert resumed == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert resumed[0] == pytest.approx(lr_at(name, saved_at), rel=1e-12)
    assert resumed[0] != pytest.approx(lrs(*make(name), 1)[0])  # not restarted from step 0


@pytest.mark.parametrize("name", ["warmup_exp", "warmup_cosine"])
@pytest.mark.parametrize("changes, words", [({"warmup_epochs": 200.0}, "warmup_epochs"),
                                            ({"warmup_epochs": -1.0}, "warmup_epochs"),
                                            ({"lr": 0.0}, "--lr"),
                                            ({"final_lr": -1e-5}, "final_lr")])
def test_settings_they_cannot_follow_are_plugin_errors(name, changes, words):
    with pytest.raises(PluginError, match=f"scheduler/{name}.py: .*{words}"):
        make(name, **changes)


def test_exponential_decay_needs_a_positive_final_lr():
    with pytest.raises(PluginError, match="final_lr 0"):
        make("warmup_exp", final_lr=0.0)
    assert lr_at("warmup_cosine", STEPS, final_lr=0.0) == pytest.approx(0.0, abs=1e-15)


def test_options_are_declared_once_for_both():
    options = declared_options()
    for option, default in (("warmup_epochs", 6.0), ("final_lr", 5e-5)):
        declarations = options[option]
        assert set(declarations) == {"scheduler/warmup_exp", "scheduler/warmup_cosine"}
        assert {declaration[:2] for declaration in declarations.values()} == {(float, default)}
