"""Fine-tuning: a package's architecture for training, a frozen embedding model, its own learning rate, the
flags' mistakes, and real runs (resumed, two gloo processes); the shuffled sampler is in test_shuffled_sampler.py."""
import functools

import pytest
import torch
import yaml
from peer_releases import load_case, write_release
from test_distributed import free_port
from test_train_cli import epoch_log, run_cli
from test_user_errors import stop_line

import arguments
import importModel
from runtime import checkpoint_files, packages
from scheduler.warmup_exp import exponential_factor
from settings.plugins import available_plugins
from SpeakerNet import SpeakerNet, WrappedModel
from training.parameters import batchnorm_layers
from training.trainer import ModelTrainer

NET = dict(model="ResNetSE34L", nOut=16, n_mels=40, log_input=True, encoder_type="SAP")
TRAINER = dict(optimizer="adam", scheduler="steplr", mixedprec=False, device=torch.device("cpu"), lr=0.01,
               weight_decay=0, test_interval=1, lr_decay=0.5)


def make_trainer(seed: int = 0, **changes) -> ModelTrainer:
    """A trainer of a small ResNetSE34L with a 4-class softmax head."""
    torch.manual_seed(seed)
    net = SpeakerNet(**NET, trainfunc="softmax", nClasses=4)
    return ModelTrainer(WrappedModel(net), **{**TRAINER, **changes})


def part(trainer: ModelTrainer, prefix: str) -> dict[str, torch.Tensor]:
    """A copy of the model's tensors (parameters and buffers) whose names start with `prefix`."""
    return {name: tensor.detach().clone() for name, tensor in trainer.__model__.module.state_dict().items()
            if name.startswith(prefix)}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ."""
    return [name for name in before if not torch.equal(before[name], after[name])]


def one_batch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch of one batch: 4 speakers x 1 crop of 0.2 s."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 3440, generator=generator), torch.arange(4))]


def write_package(path, settings: dict, seed: int = 3) -> dict[str, torch.Tensor]:
    """Write a package of a fresh network built with `settings`; returns its weights."""
    torch.manual_seed(seed)
    weights = SpeakerNet(**settings).state_dict()
    checkpoint_files.write_atomically(packages.package_content(weights, settings), path)
    return {name: tensor for name, tensor in weights.items() if name.startswith("__S__.")}


# ---------------------------------------------------------------- the package fills the architecture


PACKAGE_SETTINGS = dict(model="ECAPA_TDNN", channels=1024, nOut=192, n_mels=80, log_input=True,
                        encoder_type="ASP", trainfunc="aamsoftmax", nClasses=5994, nPerSpeaker=1, margin=0.2,
                        scale=32.0, eval_frames=400, num_eval=3, scoring="cosine", pooling="ASTP",
                        momentum=0.5, warmup_epochs=2.0, subcenters=5)


def test_package_fills_the_architecture_for_training_not_the_loss(tmp_path):
    path = tmp_path / "released.pkg"
    checkpoint_files.write_atomically(packages.package_content({"__S__.w": torch.zeros(1)}, PACKAGE_SETTINGS), path)
    args = arguments.parse_arguments(["--initial_model", str(path), "--trainfunc", "softmax", "--nClasses", "6",
                                      "--nOut", "256"])
    assert (args.model, args.channels, args.n_mels, args.log_input, args.encoder_type) == (
        "ECAPA_TDNN", 1024, 80, True, "ASP")
    assert args.nOut == 256  # the command line wins
    assert (args.trainfunc, args.nClasses, args.margin, args.scale) == ("softmax", 6, 0.1, 30)
    assert (args.eval_frames, args.num_eval, args.scoring) == (300, 10, "original")
    # not the package's ASTP: an option of other models (ResNets: TSTP, SimAM-ResNets: ASP) stays unset
    assert args.pooling is None
    assert (args.momentum, args.warmup_epochs, args.subcenters) == (0.9, 6.0, 3)  # so do other plug-ins' options
    evaluation = arguments.parse_arguments(["--eval", "--initial_model", str(path)])
    assert (evaluation.trainfunc, evaluation.margin, evaluation.eval_frames, evaluation.channels) == (
        "aamsoftmax", 0.2, 400, 1024)


def test_yaml_wins_over_the_package(tmp_path):
    path = tmp_path / "released.pkg"
    checkpoint_files.write_atomically(packages.package_content({"__S__.w": torch.zeros(1)}, PACKAGE_SETTINGS), path)
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump({"trainfunc": "aamsoftmax", "n_mels": 64}))
    args = arguments.parse_arguments(["--initial_model", str(path), "--config", str(config)])
    assert (args.model, args.n_mels, args.trainfunc, args.nClasses) == ("ECAPA_TDNN", 64, "aamsoftmax", 5994)


def test_fine_tuning_loads_the_whole_embedding_model_and_a_fresh_head(tiny_corpus, tmp_path, capsys):
    package = tmp_path / "released.pkg"
    saved = write_package(package, {**NET, "trainfunc": "aamsoftmax", "nClasses": 40})
    settings = arguments.parse_settings(["--initial_model", str(package), "--trainfunc", "aamsoftmax",
                                         "--nClasses", "6", "--save_path", str(tmp_path / "exp")])
    assert settings.model.nOut == 16 and settings.model.model == "ResNetSE34L"
    torch.manual_seed(0)
    net = SpeakerNet(**settings.flags)
    fresh_head = {name: tensor.clone() for name, tensor in net.__L__.state_dict().items()}
    trainer = ModelTrainer(WrappedModel(net), **{**settings.flags, "device": torch.device("cpu")})
    point = trainer.start_point(settings.run)
    assert point.first_epoch == 1
    loaded = part(trainer, "__S__.")
    assert set(loaded) == set(saved) and not changed(saved, loaded)
    assert net.__L__.weight.shape == (6, 16) and torch.equal(net.__L__.weight, fresh_head["weight"])
    output = capsys.readouterr().out
    assert (f"Starting from {package}: the embedding model (__S__) is loaded from it ({len(saved)} tensors); "
            "the loss head (__L__) starts fresh") in output


def test_an_imported_release_fine_tunes_with_its_front_end(tmp_path, capsys):
    release = write_release(load_case("wespeaker_resnet34"), tmp_path / "release")
    package = tmp_path / "imported.pkg"
    assert importModel.main(["--from", "wespeaker", "--checkpoint", str(release), "--output", str(package)]) == 0
    saved = packages.package_settings(str(package))
    settings = arguments.parse_settings(["--initial_model", str(package), "--trainfunc", "softmax",
                                         "--nClasses", "6", "--save_path", str(tmp_path / "exp")])
    front_end = ("frontend", "frontend_window", "waveform_scale", "dither", "mean_norm")
    assert {name: settings.flags[name] for name in front_end} == {name: saved[name] for name in front_end}
    assert settings.flags["frontend"] == "kaldi" and settings.model.model == "ResNet34"
    assert (settings.model.nClasses, settings.evaluation.eval_frames, settings.evaluation.scoring) == (
        6, 300, "original")
    trainer = ModelTrainer(WrappedModel(SpeakerNet(**settings.flags)), **{**settings.flags,
                                                                          "device": torch.device("cpu")})
    trainer.start_point(settings.run)
    assert "the embedding model (__S__) is loaded from it (218 tensors)" in capsys.readouterr().out


# ---------------------------------------------------------------- freezing the embedding model


class TinyEmbedder(torch.nn.Module):
    """A small waveform embedder with a BatchNorm layer (fast in float16 on a CPU too)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(1, 8, kernel_size=64, stride=32)
        self.norm = torch.nn.BatchNorm1d(8)
        self.fc = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv1(x.unsqueeze(1)))).mean(dim=2))


@pytest.mark.parametrize("precision", [None, torch.float16])  # float16: --mixedprec on CUDA, with a grad scaler
def test_frozen_embedding_model_keeps_every_tensor_while_the_head_trains(precision):
    torch.manual_seed(0)
    net = SpeakerNet(**NET, trainfunc="softmax", nClasses=4)
    net.__S__ = TinyEmbedder()
    trainer = ModelTrainer(WrappedModel(net), **{**TRAINER, "precision": precision, "backbone_lr_factor": 0.5})
    if precision is not None:  # a scale that does not overflow in the first steps
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    backbone, head = part(trainer, "__S__."), part(trainer, "__L__.")
    trainer.freeze_backbone(True)
    for epoch in (1, 2):
        trainer.train_network(one_batch(epoch), verbose=False, epoch=epoch)
    assert not changed(backbone, part(trainer, "__S__."))
    assert changed(head, part(trainer, "__L__.")) == list(head)
    head = part(trainer, "__L__.")
    trainer.freeze_backbone(False)
    trainer.train_network(one_batch(3), verbose=False, epoch=3)
    after = part(trainer, "__S__.")
    assert changed(backbone, after) == list(backbone)
    assert changed(head, part(trainer, "__L__."))


def test_the_frozen_state_follows_from_the_epoch(capsys):
    trainer = make_trainer()
    for epoch, frozen in ((2, True), (3, False), (4, False)):  # e.g. resumed inside the frozen epochs
        trainer.freeze_for_epoch(epoch, 2, verbose=True)
        assert trainer.backbone_frozen == frozen
        assert all(p.requires_grad != frozen for p in trainer.__model__.module.__S__.parameters())
        assert all(p.requires_grad for p in trainer.__model__.module.__L__.parameters())
        trainer.train_mode()
        assert all(layer.training != frozen for layer in batchnorm_layers(trainer.__model__.module.__S__))
        assert trainer.__model__.module.__S__.training and trainer.__model__.module.__L__.training
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert lines == ["Epoch 2: the embedding model is frozen until the end of epoch 2; only the loss head trains",
                     "Epoch 3: the embedding model trains too"]


# ---------------------------------------------------------------- the embedding model's learning rate


def group_lrs(trainer: ModelTrainer) -> tuple[float, float]:
    """(embedding model's, loss head's) learning rate."""
    backbone, head = trainer.__optimizer__.param_groups
    return backbone["lr"], head["lr"]


def advance(trainer: ModelTrainer, steps: int) -> None:
    for _ in range(steps):
        trainer.__optimizer__.step()
        trainer.__scheduler__.step()


WARMUP = dict(scheduler="warmup_exp", warmup_epochs=1.0, final_lr=1e-4, max_epoch=4, steps_per_epoch=5)


@pytest.mark.parametrize("scheduler", available_plugins("scheduler"))
def test_every_scheduler_keeps_the_ratio_of_the_groups(scheduler):
    trainer = make_trainer(**{**WARMUP, "scheduler": scheduler}, backbone_lr_factor=0.1)
    for _ in range(4):
        advance(trainer, 3)
        backbone, head = group_lrs(trainer)
        assert backbone == pytest.approx(0.1 * head, rel=1e-9) and trainer.current_lr() == head


def test_steplr_and_warmup_exp_values_of_both_groups():
    steplr = make_trainer(backbone_lr_factor=0.1)
    assert steplr.learning_rates() == ("learning rate 0.01 for the loss head, 0.001 for the embedding model "
                                       "(--backbone_lr_factor 0.1)")
    warmup = make_trainer(**WARMUP, backbone_lr_factor=0.25)
    exponential = functools.partial(exponential_factor, warmup_steps=5, total_steps=20, final_ratio=1e-4 / 0.01)
    for step in (1, 3, 7, 19):
        advance(steplr, 1)
        advance(warmup, step - warmup.__scheduler__.last_epoch)
        expected = 0.01 * 0.5 ** steplr.__scheduler__.last_epoch
        assert group_lrs(steplr) == pytest.approx((0.1 * expected, expected), rel=1e-9)
        expected = 0.01 * exponential(step)
        assert group_lrs(warmup) == pytest.approx((0.25 * expected, expected), rel=1e-9)


def test_without_a_factor_there_is_one_group():
    trainer = make_trainer()
    assert len(trainer.__optimizer__.param_groups) == 1 and trainer.learning_rates() == "learning rate 0.01"


@pytest.mark.parametrize("scheduler", ["steplr", "warmup_exp"])
def test_a_resume_restores_both_groups(scheduler, tmp_path):
    flags = {**WARMUP, "scheduler": scheduler, "backbone_lr_factor": 0.2}
    uninterrupted = make_trainer(**flags)
    advance(uninterrupted, 6)
    uninterrupted.saveParameters(str(tmp_path / "state.model"), epoch=6)
    resumed = make_trainer(**flags, seed=1)
    resumed.resume(str(tmp_path / "state.model"), checkpoint_files.read_checkpoint(tmp_path / "state.model"))
    for _ in range(3):
        assert group_lrs(resumed) == pytest.approx(group_lrs(uninterrupted), rel=1e-12)
        assert group_lrs(resumed)[0] == pytest.approx(0.2 * group_lrs(resumed)[1], rel=1e-9)
        advance(uninterrupted, 1)
        advance(resumed, 1)
    other = make_trainer(**{**flags, "backbone_lr_factor": 0.5})
    with pytest.raises(checkpoint_files.CheckpointError, match="was trained with --backbone_lr_factor 0.2; continue"):
        other.resume(str(tmp_path / "state.model"), checkpoint_files.read_checkpoint(tmp_path / "state.model"))


@pytest.mark.parametrize("optimizer", available_plugins("optimizer"))
def test_every_optimizer_takes_the_groups(optimizer):
    trainer = make_trainer(optimizer=optimizer, backbone_lr_factor=0.1)
    backbone, head = trainer.__optimizer__.param_groups
    net = trainer.__model__.module
    assert backbone["params"] == list(net.__S__.parameters()) and head["params"] == list(net.__L__.parameters())
    assert (backbone["lr"], head["lr"]) == pytest.approx((0.001, 0.01), rel=1e-12)


# ---------------------------------------------------------------- the flags from YAML, and their mistakes


def test_fine_tuning_keys_from_yaml(tmp_path):
    config = tmp_path / "shuffled.yaml"
    config.write_text("sampler: shuffled\nfreeze_backbone_epochs: 2\nbackbone_lr_factor: 0.1\n")
    settings = arguments.parse_settings(["--config", str(config)])
    assert settings.data.sampler == "shuffled"
    assert (settings.optimisation.freeze_backbone_epochs, settings.optimisation.backbone_lr_factor) == (2, 0.1)


@pytest.mark.parametrize("argv, message", [
    (["--trainfunc", "angleproto", "--nPerSpeaker", "2", "--sampler", "shuffled"],
     "'angleproto' compares the speakers"),
    (["--trainfunc", "angleproto", "--nPerSpeaker", "2", "--batch_size", "7"], "--batch_size 7 needs that many"),
    (["--trainfunc", "softmax", "--freeze_backbone_epochs", "-1"], "--freeze_backbone_epochs must be at least 0"),
    (["--trainfunc", "softmax", "--backbone_lr_factor", "-0.5"], "--backbone_lr_factor must be at least 0"),
])
def test_cli_refuses(tiny_corpus, tmp_path, capsys, argv, message):
    flags = ["--model", "ResNetSE34L", "--nClasses", "6", "--device", "cpu", "--save_path", str(tmp_path / "exp"),
             "--train_list", tiny_corpus["train_list"], "--train_path", tiny_corpus["train_path"],
             "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"]]
    assert message in stop_line(capsys, flags + argv)


# ---------------------------------------------------------------- real fine-tuning runs


def fine_tuning_run(corpus: dict, save_path, package, *extra: str) -> list[str]:
    """Flags of a tiny fine-tuning run from `package`: no model flags, a new 6-speaker classifier, 8 per batch."""
    return ["--initial_model", str(package), "--trainfunc", "aamsoftmax", "--nClasses", "6", "--batch_size", "8",
            "--max_frames", "40", "--eval_frames", "60", "--num_eval", "2", "--nDataLoaderThread", "0",
            "--test_interval", "1", "--freeze_backbone_epochs", "2", "--backbone_lr_factor", "0.5",
            "--lr_decay", "0.5", "--device", "cpu", "--train_list", corpus["train_list"],
            "--train_path", corpus["train_path"], "--test_list", corpus["test_list"],
            "--test_path", corpus["test_path"], "--save_path", str(save_path), *extra]


def saved_part(save_path, epoch: int, prefix: str) -> dict[str, torch.Tensor]:
    content = checkpoint_files.read_checkpoint(save_path / "model" / f"model{epoch:09d}.model")
    return {name: tensor for name, tensor in content["model_state_dict"].items() if name.startswith(prefix)}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple:
    """A package standing in for a released model (ResNetSE34L, nOut 16, trained with 40 classes)."""
    path = tmp_path_factory.mktemp("released") / "released.pkg"
    return path, write_package(path, {**NET, "trainfunc": "aamsoftmax", "nClasses": 40})


@pytest.fixture(scope="module")
def fine_tuned(tiny_corpus, released, tmp_path_factory):
    """An uninterrupted 3-epoch fine-tuning run with the embedding model frozen in epochs 1 and 2."""
    save_path = tmp_path_factory.mktemp("fine_tuned")
    output = run_cli(fine_tuning_run(tiny_corpus, save_path, released[0], "--max_epoch", "3")).stdout
    return save_path, output


@pytest.mark.integration
def test_fine_tuning_cli_freezes_then_trains_everything(fine_tuned, released):
    save_path, output = fine_tuned
    assert "loss 'aamsoftmax' classifies speakers, so batches come from --sampler shuffled" in output
    assert "the embedding model (__S__) is loaded from it" in output and "the loss head (__L__) starts fresh" in output
    assert ("Training from epoch 1 with learning rate 0.001 for the loss head, 0.0005 for the embedding model "
            "(--backbone_lr_factor 0.5)") in output
    package_weights = released[1]
    for epoch in (1, 2):
        assert not changed(package_weights, saved_part(save_path, epoch, "__S__."))
    assert changed(package_weights, saved_part(save_path, 3, "__S__."))
    heads = [saved_part(save_path, epoch, "__L__.")["__L__.weight"] for epoch in (1, 2, 3)]
    assert heads[0].shape == (6, 16) and not torch.equal(heads[0], heads[1])
    assert [lr for _, lr in epoch_log(save_path).values()] == ["0.001000", "0.000500", "0.000250"]
    assert yaml.safe_load((save_path / "config.yaml").read_text())["sampler"] == "shuffled"


@pytest.mark.integration
def test_fine_tuning_resumed_in_the_frozen_epochs_matches(tiny_corpus, released, fine_tuned, tmp_path):
    save_path = tmp_path / "resumed"
    run_cli(fine_tuning_run(tiny_corpus, save_path, released[0], "--max_epoch", "1"))
    output = run_cli(fine_tuning_run(tiny_corpus, save_path, released[0], "--max_epoch", "3")).stdout
    assert "continuing with epoch 2" in output and "Epoch 3: the embedding model trains too" in output
    for prefix in ("__S__.", "__L__."):
        resumed, uninterrupted = saved_part(save_path, 3, prefix), saved_part(fine_tuned[0], 3, prefix)
        for name, tensor in uninterrupted.items():
            assert torch.allclose(resumed[name].float(), tensor.float(), rtol=1e-5, atol=1e-6), name


@pytest.mark.integration
def test_distributed_fine_tuning_while_frozen_and_after(tiny_corpus, released, tmp_path):
    save_path = tmp_path / "ddp"
    output = run_cli(fine_tuning_run(tiny_corpus, save_path, released[0], "--trainfunc", "softmax",
                                     "--freeze_backbone_epochs", "1", "--max_epoch", "2",
                                     "--distributed", "--nproc", "2", "--port", free_port())).stdout
    assert "loss 'softmax' classifies speakers, so batches come from --sampler shuffled" in output
    assert not changed(released[1], saved_part(save_path, 1, "__S__."))
    assert changed(released[1], saved_part(save_path, 2, "__S__."))
