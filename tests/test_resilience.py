"""Exact resume after SIGKILL, SIGTERM checkpointing mid-epoch, and skipping of non-finite steps."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train_cli import PROJECT_ROOT, checkpoint_names, epoch_log, run_cli, small_run

from SpeakerNet import SpeakerNet, WrappedModel
from training.epoch_meter import NonFiniteLossError
from training.trainer import ModelTrainer


def resilient_run(corpus, save_path, *extra) -> list[str]:
    """Batches of 2 speakers, so an epoch has several steps to interrupt, each long enough (1 s crops) for the
    test to see a step's saved state and stop the run before the epoch ends."""
    return small_run(corpus, save_path, "--batch_size", "2", "--max_epoch", "3", "--test_interval", "3",
                     "--max_frames", "100", *extra)


def start(argv):
    return subprocess.Popen([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_for(condition, process, seconds=300):
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert condition(), "the run ended before the moment to interrupt it"


LOSS_FLAGS = {  # one loss without randomness per speaker pair, one classifier, one that draws random negatives
    "angleproto": [],
    "softmax": ["--trainfunc", "softmax", "--nPerSpeaker", "1", "--nClasses", "6"],
    "softmax_mixed": ["--trainfunc", "softmax", "--nPerSpeaker", "1", "--nClasses", "6", "--mix", "both",
                      "--mix_alpha", "0.4"],  # CutMix and MixUp draw from the restored random state
    "triplet": ["--trainfunc", "triplet", "--hard_prob", "0.5", "--hard_rank", "1", "--margin", "0.3",
                "--batch_size", "3"],  # 3 speakers a batch: 2 candidate negatives per anchor to draw from
}
_references: dict[str, dict] = {}


@pytest.fixture
def reference(tiny_corpus, tmp_path_factory):
    """The epoch log of an uninterrupted run with the given loss (made once per loss)."""
    def log(loss: str = "angleproto") -> dict:
        if loss not in _references:
            save_path = tmp_path_factory.mktemp(f"reference_{loss}")
            run_cli(resilient_run(tiny_corpus, save_path, *LOSS_FLAGS[loss]))
            _references[loss] = epoch_log(save_path)
        return _references[loss]
    return log


def saved_position(save_path) -> tuple[int, int]:
    """(epochs completed, batches of the next epoch) in model/resume.model; (-1, 0) before the first save."""
    try:
        content = torch.load(save_path / "model" / "resume.model", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return -1, 0
    return int(content["epoch"]), int(content.get("epoch_totals", {}).get("steps", 0))


def inside_epoch(epoch: int, position: tuple[int, int]) -> bool:
    """Whether a saved position lies after at least one batch of `epoch`."""
    return position[0] == epoch - 1 and position[1] >= 1


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (bit 15 of SigCgt in /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & 1 << (signal.SIGTERM - 1))


def loader_workers_started(pid: int, workers: int) -> bool:
    """Whether training has installed its stop handler and started its DataLoader workers (a signal then
    reaches workers that are still starting). Other children, e.g. a library's short-lived helper, come first
    or not at all, so both conditions are checked."""
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return False
    return catches_sigterm(pid) and len(children) >= workers


@pytest.mark.integration
@pytest.mark.parametrize("loss", sorted(LOSS_FLAGS))
def test_sigkill_inside_an_epoch_then_resume_gives_identical_losses(tiny_corpus, tmp_path, reference, loss):
    save_path = tmp_path / "killed"
    argv = resilient_run(tiny_corpus, save_path, *LOSS_FLAGS[loss])
    process = start([*argv, "--checkpoint_minutes", "0.0001"])  # a resume state after every step
    wait_for(lambda: inside_epoch(2, saved_position(save_path)), process)
    process.kill()
    process.wait()
    completed, steps = saved_position(save_path)
    log = (save_path / "result" / "scores.txt").read_text()
    assert completed == 1 and 1 <= steps and "Epoch 1," in log and "Epoch 2," not in log, "killed inside epoch 2"
    resumed = run_cli(argv).stdout
    assert f"continuing with epoch 2 after its first {steps} batches" in resumed
    assert epoch_log(save_path) == reference(loss)


@pytest.mark.integration
def test_sigterm_to_the_whole_job_with_loader_workers_saves_and_resumes(tiny_corpus, tmp_path, reference):
    """SLURM and torchrun signal every process of the job, the DataLoader workers included."""
    save_path = tmp_path / "preempted"
    argv = resilient_run(tiny_corpus, save_path, "--nDataLoaderThread", "2")
    process = subprocess.Popen([sys.executable, "trainSpeakerNet.py", *argv], cwd=PROJECT_ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    wait_for(lambda: loader_workers_started(process.pid, 2), process)  # epoch 1 has started
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and "Stopped by signal" in output, output[-3000:]
    assert "killed by signal" not in output and "Traceback" not in output
    completed, steps = saved_position(save_path)
    assert completed == 0 and steps >= 1, "the state was saved inside epoch 1"
    resumed = run_cli(argv).stdout
    assert f"continuing with epoch 1 after its first {steps} batches" in resumed
    assert epoch_log(save_path) == reference()
    assert "model000000003.model" in checkpoint_names(save_path)


@pytest.mark.integration
def test_run_from_initial_model_continues_from_its_own_state(tiny_corpus, tmp_path, reference):
    start_from = tmp_path / "start"
    run_cli(resilient_run(tiny_corpus, start_from, "--max_epoch", "1", "--test_interval", "1"))
    initial = ["--initial_model", str(start_from / "model" / "model000000001.model")]
    uninterrupted = tmp_path / "uninterrupted"
    run_cli(resilient_run(tiny_corpus, uninterrupted, *initial))
    save_path = tmp_path / "stopped"
    argv = resilient_run(tiny_corpus, save_path, *initial)
    process = start(argv)
    wait_for(lambda: list((save_path / "result").glob("run*.cmd")), process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and "Stopped by signal" in output
    completed, steps = saved_position(save_path)
    resumed = run_cli(argv).stdout
    assert (f"Resumed from {save_path / 'model' / 'resume.model'}; continuing with epoch {completed + 1}"
            in resumed) and "was where this run started" in resumed
    assert epoch_log(save_path) == epoch_log(uninterrupted) != reference()


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
