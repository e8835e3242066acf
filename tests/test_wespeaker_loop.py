"""The training loop against wespeaker's, formula by formula: the margin milestones and the learning rate (scaled by
--lr_reference_batch) of a whole simulated run, both computed here as wespeaker's schedulers do; the AAM fallback
and classifier initialisation options; and the large-margin stage loading a speed-perturbed classifier whole."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_cli import checkpoint_names, epoch_log, run_cli, small_run

import averageModels
from loss.LossHelpers import additive_angular_margin, check_classes
from runtime import checkpoint_files, distributed
from settings.plugins import PluginError, build_plugin, declared_options
from SpeakerNet import SpeakerNet, WrappedModel
from training.parameters import scale_learning_rates
from training.trainer import ModelTrainer

EPOCH_ITER = 4  # batches per epoch of the simulated run
RECIPE = dict(lr=0.1, final_lr=5e-5, warmup_epochs=6.0, max_epoch=150, steps_per_epoch=EPOCH_ITER, weight_decay=1e-4,
              momentum=0.9, batch_size=128, nPerSpeaker=1, lr_reference_batch=64, test_interval=5, lr_decay=0.95)
HEAD = dict(trainfunc="aamsoftmax_ramp", nClasses=4, margin=0.2, scale=32.0, margin_start=19.0, margin_end=39.0)


def wespeaker_margin(cur_iter: int, increase_start_epoch: int = 20, fix_start_epoch: int = 40,
                     final_margin: float = 0.2) -> float:
    """The margin of wespeaker's MarginScheduler (exp increase from 0) at global iteration `cur_iter`."""
    increase_start_iter = (increase_start_epoch - 1) * EPOCH_ITER
    fix_start_iter = (fix_start_epoch - 1) * EPOCH_ITER
    if cur_iter >= fix_start_iter:
        return final_margin
    if cur_iter < increase_start_iter:
        return 0.0
    ratio = 1.0 - math.exp((cur_iter - increase_start_iter) / (fix_start_iter - increase_start_iter)
                           * math.log(1e-3 / (1.0 + 1e-6)))
    return final_margin * ratio


def wespeaker_lr(cur_iter: int, world_size: int) -> float:
    """ExponentialDecrease with warm_from_zero and scale_ratio = world_size x batch_size / 64, as wespeaker steps it."""
    scale_ratio = world_size * 128 / 64
    warm_up_iter, max_iter = 6 * EPOCH_ITER, 150 * EPOCH_ITER
    coefficient = scale_ratio * cur_iter / warm_up_iter if cur_iter < warm_up_iter else scale_ratio
    return coefficient * 0.1 * math.exp(cur_iter / max_iter * math.log(5e-5 / 0.1))


def make_trainer(world_size: int = 1, **changes) -> ModelTrainer:
    """A trainer of the ResNet34 recipe's loss, optimiser and schedule on a linear embedder of 32-sample inputs."""
    flags = {**RECIPE, **HEAD, **changes}
    torch.manual_seed(0)
    net = SpeakerNet(model="ResNetSE34L", nOut=16, n_mels=40, log_input=True, encoder_type="SAP", **flags)
    net.__S__ = torch.nn.Linear(32, 16)
    return ModelTrainer(WrappedModel(net), optimizer="sgd_nesterov", scheduler="warmup_exp",
                        mixedprec=False, device=torch.device("cpu"),
                        context=distributed.Context(world_size=world_size), **flags)


def epoch_batches(epoch: int, classes: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """EPOCH_ITER batches of `classes` one-utterance speakers."""
    generator = torch.Generator().manual_seed(epoch)
    return [(torch.randn(classes, 1, 32, generator=generator), torch.arange(classes)) for _ in range(EPOCH_ITER)]


def record_steps(trainer: ModelTrainer) -> list[tuple[float, float]]:
    """(margin, learning rate) of every training step from now on, read when the loss runs."""
    seen = []
    head = trainer.__model__.module.__L__
    head.register_forward_pre_hook(lambda module, inputs: seen.append((module.m, trainer.current_lr())))
    return seen


# Epochs trained in the simulated run: the first, around the warm-up's end (step 24), around both margin
# milestones, mid-ramp, mid-run and the last. The others only advance the scheduler, as training them would.
TRAINED_EPOCHS = (1, 6, 7, 8, 19, 20, 21, 30, 39, 40, 76, 150)


@pytest.fixture(scope="module", params=[1, 2], ids=["1 process", "2 processes"])
def simulated_run(request) -> tuple[int, dict[int, tuple[float, float]]]:
    """(processes, {global step: (margin, LR)} of the trained epochs of a 150-epoch run of the ResNet34 recipe)."""
    trainer = make_trainer(world_size=request.param)
    seen, steps = record_steps(trainer), {}
    for epoch in range(1, 151):
        if epoch not in TRAINED_EPOCHS:
            for _ in range(EPOCH_ITER):
                trainer.__scheduler__.step()
            continue
        trainer.train_network(epoch_batches(epoch), verbose=False, epoch=epoch)
        steps.update({(epoch - 1) * EPOCH_ITER + batch: seen.pop(0) for batch in range(EPOCH_ITER)})
    return request.param, steps


# ---------------------------------------------------------------- margin milestones and learning rate


@pytest.mark.parametrize("epoch", [19, 20, 21, 30, 39, 40])
def test_margin_start_19_and_end_39_are_wespeakers_20_and_40(simulated_run, epoch):
    _, seen = simulated_run
    for batch in range(EPOCH_ITER):
        cur_iter = (epoch - 1) * EPOCH_ITER + batch  # wespeaker's executor
        assert seen[cur_iter][0] == pytest.approx(wespeaker_margin(cur_iter), abs=1e-12)


def test_the_margin_milestones_fall_on_epoch_starts(simulated_run):
    _, seen = simulated_run
    start, fix = 19 * EPOCH_ITER, 39 * EPOCH_ITER  # the first steps of epochs 20 and 40
    assert seen[start - 1][0] == seen[start][0] == 0.0 and seen[start + 1][0] > 0.0
    assert seen[fix - 1][0] == pytest.approx(0.2 * (1 - 1e-3 ** ((fix - 1 - start) / (fix - start))), rel=1e-6)
    assert seen[fix - 1][0] < 0.2 and seen[fix][0] == 0.2


@pytest.mark.parametrize("step", [0, 1, 6 * EPOCH_ITER - 1, 6 * EPOCH_ITER, 6 * EPOCH_ITER + 1, 75 * EPOCH_ITER,
                                  150 * EPOCH_ITER - 1])
def test_lr_is_wespeakers_scaled_schedule(simulated_run, step):
    processes, seen = simulated_run
    assert seen[step][1] == pytest.approx(wespeaker_lr(step, processes), rel=1e-9, abs=1e-15)


def test_every_step_trained_has_wespeakers_lr_and_margin(simulated_run):
    processes, seen = simulated_run
    steps = sorted(seen)
    assert [seen[step][1] for step in steps] == pytest.approx([wespeaker_lr(step, processes) for step in steps],
                                                              rel=1e-9, abs=1e-15)
    assert [seen[step][0] for step in steps] == pytest.approx([wespeaker_margin(step) for step in steps], abs=1e-12)


def test_checkpoints_keep_the_given_rates_and_a_resume_continues(tmp_path):
    trainer = make_trainer(world_size=2)
    for epoch in range(1, 8):  # past the warm-up
        trainer.train_network(epoch_batches(epoch), verbose=False, epoch=epoch)
    path = str(tmp_path / "model000000007.model")
    trainer.saveParameters(path, 7)
    content = checkpoint_files.read_checkpoint(path)
    assert (content["args"]["lr"], content["args"]["final_lr"], content["args"]["lr_reference_batch"]) == (0.1, 5e-5, 64)

    resumed = make_trainer(world_size=2)
    assert resumed.resume(path, content).first_epoch == 8
    expected, continued = record_steps(trainer), record_steps(resumed)
    trainer.train_network(epoch_batches(8), verbose=False, epoch=8)
    resumed.train_network(epoch_batches(8), verbose=False, epoch=8)
    assert [lr for _, lr in continued] == pytest.approx([lr for _, lr in expected], rel=1e-12)
    assert continued[0][1] == pytest.approx(wespeaker_lr(7 * EPOCH_ITER, 2), rel=1e-9)
    for name, value in resumed.__model__.module.state_dict().items():
        torch.testing.assert_close(value, trainer.__model__.module.state_dict()[name])


def test_scaling_names_every_rate_it_changes():
    flags = {**RECIPE, "batch_size": 100, "nPerSpeaker": 2}
    scaled, line = scale_learning_rates(flags, "warmup_cosine", processes=4)
    assert scaled["lr"] == pytest.approx(0.1 * 4 * 100 * 2 / 64) and scaled["final_lr"] == pytest.approx(5e-5 * 12.5)
    assert scaled["warmup_epochs"] == 6.0 and flags["lr"] == 0.1  # the given flags are left as they were
    assert line == ("Learning rates scaled by processes 4 x --batch_size 100 x --nPerSpeaker 2 / --lr_reference_batch "
                    "64 = 12.5: --lr 0.1 -> 1.25, --final_lr 5e-05 -> 0.000625")
    stepped, _ = scale_learning_rates(flags, "steplr", processes=1)  # a scheduler without other rates
    assert stepped["lr"] == pytest.approx(0.1 * 200 / 64) and stepped["final_lr"] == 5e-5
    off = {**flags, "lr_reference_batch": 0}
    assert scale_learning_rates(off, "warmup_exp", processes=4) == (off, "")


def test_an_option_left_out_is_scaled_at_its_default():
    flags = {key: value for key, value in RECIPE.items() if key != "final_lr"}
    assert scale_learning_rates(flags, "warmup_exp", processes=1)[0]["final_lr"] == pytest.approx(1e-4)


# ---------------------------------------------------------------- AAM fallback and classifier initialisation


def direct_target_logit(theta: float, margin: float, fallback: str) -> float:
    """cos(theta + m) up to theta = pi - m, then the named fallback, written out."""
    if theta <= math.pi - margin:
        return math.cos(theta + margin)
    if fallback == "original":
        return math.cos(theta) - margin * math.sin(margin)
    return math.cos(theta) - (1.0 - math.cos(margin))


@pytest.mark.parametrize("fallback", ["original", "continuous"])
def test_fallback_values_past_pi_minus_m(fallback):
    margin = 0.2
    thetas = [0.3, 1.5, math.pi - margin - 1e-3, math.pi - margin + 1e-3, 3.0, math.pi - 1e-4]
    cosines = torch.tensor([math.cos(theta) for theta in thetas], dtype=torch.float64)
    values = additive_angular_margin(cosines, margin, easy_margin=False, fallback=fallback)
    expected = [direct_target_logit(theta, margin, fallback) for theta in thetas]
    assert values.tolist() == pytest.approx(expected, abs=1e-6)


def test_only_the_continuous_fallback_is_continuous_at_pi_minus_m():
    margin, edge = 0.5, math.pi - 0.5
    cosines = torch.tensor([math.cos(edge - 1e-7), math.cos(edge + 1e-7)], dtype=torch.float64)
    before, after = additive_angular_margin(cosines, margin, False, "continuous").tolist()
    assert before == pytest.approx(-1.0, abs=1e-6) and after == pytest.approx(-1.0, abs=1e-6)
    before, after = additive_angular_margin(cosines, margin, False, "original").tolist()
    assert after - before == pytest.approx(1.0 - math.cos(margin) - margin * math.sin(margin), abs=1e-6)


@pytest.mark.parametrize("name, extra", [("aamsoftmax", {}), ("aamsoftmax_ramp", {"margin_start": 0.0,
                                                                                    "margin_end": 0.0}),
                                         ("subcenter_aamsoftmax", {"subcenters": 1, "margin_start": 0.0,
                                                                   "margin_end": 0.0})])
@pytest.mark.parametrize("fallback", ["original", "continuous"])
def test_each_aam_loss_uses_the_fallback(name, extra, fallback):
    """Unit embeddings in a plane at known angles to three class directions: cross-entropy computed directly."""
    loss = build_plugin("loss", name, {"nOut": 2, "nClasses": 3, "margin": 0.2, "scale": 32.0, "nPerSpeaker": 1,
                                       "aam_fallback": fallback, **extra})
    class_angles, embedding_angles = [0.0, 2.0, 4.0], [0.5, 3.0, 4.0 - math.pi + 0.05, 2.1]
    labels = [0, 0, 1, 1]  # the second and third embeddings lie past pi - m from their class
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[math.cos(a), math.sin(a)] for a in class_angles]))
    x = torch.tensor([[[math.cos(a), math.sin(a)]] for a in embedding_angles])
    value, _ = loss(x, torch.tensor(labels))
    logits = []
    for angle, label in zip(embedding_angles, labels):
        row = [math.cos(angle - class_angle) for class_angle in class_angles]
        theta = math.acos(row[label])
        row[label] = direct_target_logit(theta, 0.2, fallback)
        logits.append([32.0 * value for value in row])
    expected = F.cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name, rows", [("aamsoftmax", 2000), ("aamsoftmax_ramp", 2000),
                                        ("subcenter_aamsoftmax", 6000)])
def test_classifier_init_distributions(name, rows):
    flags = {"nOut": 256, "nClasses": 2000, "margin": 0.2, "scale": 32.0, "nPerSpeaker": 1, "subcenters": 3}
    torch.manual_seed(0)
    uniform = build_plugin("loss", name, {**flags, "classifier_init": "xavier_uniform"}).weight.detach()
    normal = build_plugin("loss", name, {**flags, "classifier_init": "xavier_normal"}).weight.detach()
    assert uniform.shape == normal.shape == (rows, 256)
    bound = math.sqrt(6.0 / (256 + rows))  # xavier_uniform: U(-bound, bound), fan_in nOut, fan_out the rows
    assert uniform.abs().max().item() <= bound and uniform.abs().max().item() > 0.999 * bound
    assert uniform.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert uniform.mean().item() == pytest.approx(0.0, abs=0.01 * bound)
    assert normal.std().item() == pytest.approx(math.sqrt(2.0 / (256 + rows)), rel=0.01)
    assert normal.abs().max().item() > 1.5 * bound  # normal tails reach past the uniform bound


def test_default_init_draws_what_it_drew_before():
    flags = {"nOut": 8, "nClasses": 6, "margin": 0.2, "scale": 32.0, "nPerSpeaker": 1}
    torch.manual_seed(3)
    expected = torch.nn.init.xavier_normal_(torch.empty(6, 8), gain=1)
    torch.manual_seed(3)
    assert torch.equal(build_plugin("loss", "aamsoftmax", flags).weight.detach(), expected)


@pytest.mark.parametrize("option, value", [("aam_fallback", "smooth"), ("classifier_init", "kaiming")])
@pytest.mark.parametrize("name", ["aamsoftmax", "aamsoftmax_ramp", "subcenter_aamsoftmax"])
def test_unknown_option_values_name_the_option(name, option, value):
    flags = {"nOut": 8, "nClasses": 6, "margin": 0.2, "scale": 32.0, "nPerSpeaker": 1, option: value}
    with pytest.raises(PluginError, match=f"loss/{name}.py: --{option} must be .* got '{value}'"):
        build_plugin("loss", name, flags)


def test_the_options_are_declared_once_for_the_three_losses():
    options = declared_options()
    for option, default in (("aam_fallback", "original"), ("classifier_init", "xavier_normal")):
        assert set(options[option]) == {"loss/aamsoftmax", "loss/aamsoftmax_ramp", "loss/subcenter_aamsoftmax"}
        assert {declaration[:2] for declaration in options[option].values()} == {(str, default)}


# ---------------------------------------------------------------- large-margin fine-tuning


def test_lm_stage_loads_the_whole_speed_perturbed_classifier_and_trains(tmp_path):
    speakers = 4
    perturbed = make_trainer(nClasses=3 * speakers, lr_reference_batch=0)  # 4 speakers at 3 speeds
    path = str(tmp_path / "model000000150.model")
    perturbed.saveParameters(path, 150)
    saved = checkpoint_files.model_weights(checkpoint_files.read_checkpoint(path))

    check_classes("aamsoftmax", type(perturbed.__model__.module.__L__), 3 * speakers, speakers, "train_list.txt")
    torch.manual_seed(1)  # another initial classifier than the file's
    lm = make_trainer(nClasses=3 * speakers, trainfunc="aamsoftmax", margin=0.5, lr=1e-4, final_lr=2.5e-5,
                      warmup_epochs=1.0, max_epoch=5, lr_reference_batch=0)
    report = lm.loadParameters(path)
    assert not report.truncated and not report.mismatched and not report.missing
    weight = lm.__model__.module.__L__.weight
    assert weight.shape == (12, 16) and torch.equal(weight.detach(), saved["__L__.weight"])
    loss, _ = lm.train_network(epoch_batches(1, classes=speakers), verbose=False, epoch=1)  # labels 0-3 of 12
    assert np.isfinite(loss) and not torch.equal(weight.detach(), saved["__L__.weight"])


# ---------------------------------------------------------------- a real run of the recipe's stages


@pytest.mark.integration
def test_speed_perturbed_run_saves_its_last_epochs_and_the_lm_stage_keeps_every_class(tiny_corpus, tmp_path):
    """Train with speed perturbation (6 speakers, 18 classes), save each of the last 3 epochs at scaled learning
    rates, average them, and fine-tune from the average with the whole classifier and no speed perturbation."""
    head = ["--trainfunc", "aamsoftmax", "--nPerSpeaker", "1", "--nClasses", "18", "--scale", "32", "--batch_size", "6"]
    save_path = tmp_path / "run"
    # batches of 6 utterances against a reference batch of 12: every learning rate halves
    trained = run_cli(small_run(tiny_corpus, save_path, *head, "--margin", "0.2", "--speed_perturb",
                                "--max_seg_per_spk", "2", "--max_epoch", "6", "--test_interval", "2",
                                "--save_last_epochs", "3", "--lr_reference_batch", "12"))
    assert ("Learning rates scaled by processes 1 x --batch_size 6 x --nPerSpeaker 1 / --lr_reference_batch 12 = 0.5: "
            "--lr 0.001 -> 0.0005") in trained.stdout
    assert checkpoint_names(save_path) == ["model000000002.eer", "model000000002.model", "model000000004.eer",
                                           "model000000004.model", "model000000005.model", "model000000006.eer",
                                           "model000000006.model", "resume.model"]
    assert [lr for _, lr in epoch_log(save_path).values()] == ["0.000500", "0.000500", "0.000250", "0.000250",
                                                               "0.000125", "0.000125"]  # StepLR halves every 2
    assert "lr: 0.001" in (save_path / "config.yaml").read_text()
    assert checkpoint_files.read_checkpoint(save_path / "model" / "model000000006.model")["args"]["lr"] == 0.001

    average_path = tmp_path / "average.model"
    assert averageModels.main(["--save_path", str(save_path), "--last", "3", "--output", str(average_path)]) == 0
    epochs = [checkpoint_files.model_weights(checkpoint_files.read_checkpoint(save_path / "model" / f"model{e:09d}.model"))
              for e in (4, 5, 6)]
    average = checkpoint_files.model_weights(checkpoint_files.read_checkpoint(average_path))
    floats = [name for name, value in average.items() if value.is_floating_point()]
    assert "__L__.weight" in floats and len(floats) > 20
    for name in floats:
        torch.testing.assert_close(average[name], (epochs[0][name] + epochs[1][name] + epochs[2][name]) / 3)

    lm = run_cli(small_run(tiny_corpus, tmp_path / "lm", *head, "--margin", "0.5", "--max_epoch", "1",
                           "--initial_model", str(average_path)))
    assert f"Starting from {average_path}: the embedding model (__S__) is loaded from it" in lm.stdout
    assert "the loss head (__L__) is loaded from it (1 tensors)" in lm.stdout and "classes kept" not in lm.stdout
    assert np.isfinite(float(epoch_log(tmp_path / "lm")[1][0]))
    final = checkpoint_files.model_weights(checkpoint_files.read_checkpoint(tmp_path / "lm" / "model" / "model000000001.model"))
    assert final["__L__.weight"].shape == (18, 32)
