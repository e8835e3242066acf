"""Exact resume after SIGKILL, SIGTERM checkpointing mid-epoch, and skipping of non-finite steps."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from SpeakerNet import ModelTrainer, NonFiniteLossError, SpeakerNet, WrappedModel
from test_train_cli import PROJECT_ROOT, checkpoint_names, epoch_log, run_cli, small_run


def resilient_run(corpus, save_path, *extra) -> list[str]:
    """Batches of 2 speakers, so an epoch has several steps to interrupt."""
    return small_run(corpus, save_path, "--batch_size", "2", "--max_epoch", "3", "--test_interval", "3", *extra)


def start(argv):
    return subprocess.Popen([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_for(condition, process, seconds=300):
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert condition(), "the run ended before the moment to interrupt it"


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    save_path = tmp_path_factory.mktemp("reference")
    run_cli(resilient_run(tiny_corpus, save_path))
    return epoch_log(save_path)


def test_sigkill_then_resume_gives_identical_losses(tiny_corpus, tmp_path, reference):
    save_path = tmp_path / "killed"
    argv = resilient_run(tiny_corpus, save_path, "--checkpoint_minutes", "0.0001")  # a state after every step
    process = start(argv)
    log = save_path / "result" / "scores.txt"
    wait_for(lambda: log.exists() and "Epoch 1," in log.read_text(), process)
    time.sleep(0.3)  # somewhere inside epoch 2 (or writing its state)
    process.kill()
    process.wait()
    assert "Resumed from" in run_cli(argv).stdout
    assert epoch_log(save_path) == reference


def test_sigterm_saves_mid_epoch_and_resume_continues_there(tiny_corpus, tmp_path, reference):
    save_path = tmp_path / "preempted"
    argv = resilient_run(tiny_corpus, save_path)
    process = start(argv)
    wait_for(lambda: list((save_path / "result").glob("run*.cmd")), process)  # the handler is installed
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and "Stopped by signal" in output
    content = torch.load(save_path / "model" / "resume.model", weights_only=True)
    assert content["epoch"] == 0 and content["epoch_totals"]["steps"] >= 1
    resumed = run_cli(argv).stdout
    assert f"continuing with epoch 1 after its first {content['epoch_totals']['steps']} batches" in resumed
    assert epoch_log(save_path) == reference
    assert "model000000003.model" in checkpoint_names(save_path)


class PoisonedLoss(torch.nn.Module):
    """Wraps a loss and returns NaN on chosen calls (fault injection)."""

    def __init__(self, loss, poisoned_calls):
        super().__init__()
        self.loss, self.poisoned, self.calls = loss, set(poisoned_calls), 0
        self.test_normalize = loss.test_normalize

    def forward(self, x, label):
        self.calls += 1
        value, prec = self.loss(x, label)
        return (value * float("nan") if self.calls in self.poisoned else value), prec


def poisoned_trainer(poisoned_calls, limit=20):
    torch.manual_seed(0)
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=16,
                     n_mels=40, log_input=True, encoder_type="SAP")
    net.__L__ = PoisonedLoss(net.__L__, poisoned_calls)
    trainer = ModelTrainer(WrappedModel(net), optimizer="adam", scheduler="steplr", mixedprec=False,
                           device=torch.device("cpu"), nonfinite_limit=limit, lr=0.01, weight_decay=0,
                           test_interval=1, lr_decay=1.0)
    batches = [(torch.randn(3, 2, 8240), torch.arange(3)) for _ in range(4)]
    return trainer, net, batches


def test_nonfinite_step_is_skipped_and_counted():
    trainer, net, batches = poisoned_trainer({2})
    before = [p.detach().clone() for p in net.__S__.parameters()]
    weights_after_step = {}
    original_step = trainer.train_step

    def recording_step(data, label):
        result = original_step(data, label)
        weights_after_step[net.__L__.calls] = net.__S__.fc.weight.detach().clone()
        return result

    trainer.train_step = recording_step
    loss, prec = trainer.train_network(batches, verbose=False)
    assert trainer.last_epoch["nonfinite_steps"] == 1
    assert torch.equal(weights_after_step[1], weights_after_step[2])  # the poisoned step changed nothing
    assert not torch.equal(weights_after_step[2], weights_after_step[3])
    assert loss == loss and all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.__S__.parameters()))


def test_too_many_nonfinite_steps_stop_the_run():
    trainer, _, batches = poisoned_trainer({2, 3, 4}, limit=3)
    with pytest.raises(NonFiniteLossError, match="3 training steps in a row"):
        trainer.train_network(batches, verbose=False)
