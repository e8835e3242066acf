"""Two real gloo processes: gradient synchronisation, a distributed CLI run, distributed evaluation."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_train_cli import PROJECT_ROOT, run_cli, small_run

import arguments
from runtime import distributed
from runtime.errors import MissingFileError, PeerStopped
from SpeakerNet import SpeakerNet, WrappedModel
from training.trainer import ModelTrainer

NET = dict(model="ResNetSE34L", optimizer="sgd", trainfunc="angleproto", nPerSpeaker=2, nOut=16, n_mels=40,
           log_input=True, encoder_type="SAP")
TRAINER = dict(optimizer="sgd", scheduler="steplr", mixedprec=False, device=torch.device("cpu"), lr=0.01,
               weight_decay=0, test_interval=1, lr_decay=1.0)


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def batches():
    generator = torch.Generator().manual_seed(5)
    return [(torch.randn(3, 2, 8240, generator=generator), torch.arange(3)) for _ in range(2)]


def fresh_net() -> SpeakerNet:
    torch.manual_seed(0)
    return SpeakerNet(**NET)


def ddp_worker(rank: int, port: str, folder: str) -> None:
    distributed.init_process_group(distributed.Context(rank, 2, rank, 2, True), torch.device("cpu"), port)
    model = torch.nn.parallel.DistributedDataParallel(fresh_net(), find_unused_parameters=True)
    trainer = ModelTrainer(model, **TRAINER)
    data, label = batches()[rank]
    trainer.train_step(data.transpose(1, 0), label)
    torch.save({name: p.grad for name, p in model.module.named_parameters() if p.grad is not None},
               f"{folder}/grads{rank}.pt")
    distributed.leave_process_group()
    distributed.end_rank_process(0)


@pytest.mark.integration
def test_ddp_gradients_are_the_average_of_the_ranks(tmp_path):
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    synced = [torch.load(tmp_path / f"grads{rank}.pt") for rank in (0, 1)]
    single = []
    for data, label in batches():
        net = fresh_net()
        trainer = ModelTrainer(WrappedModel(net), **TRAINER)
        trainer.train_step(data.transpose(1, 0), label)
        single.append({name: p.grad for name, p in net.named_parameters() if p.grad is not None})
    assert set(synced[0]) == set(single[0]) and len(synced[0]) > 50
    for name, gradient in synced[0].items():
        expected = (single[0][name] + single[1][name]) / 2
        assert torch.allclose(gradient, synced[1][name], atol=1e-7), name
        assert torch.allclose(gradient, expected, rtol=1e-4, atol=1e-6), name


@pytest.mark.integration
def test_distributed_cli_training_and_evaluation(tiny_corpus, tmp_path):
    save_path = tmp_path / "ddp"
    extra = ("--distributed", "--nproc", "2", "--port", free_port())
    output = run_cli(small_run(tiny_corpus, save_path, "--max_epoch", "1", "--batch_size", "2", *extra)).stdout
    assert output.count("Epoch 1, TEER/TAcc") == 1  # only rank 0 logs
    checkpoint = save_path / "model" / "model000000001.model"
    assert checkpoint.is_file()
    score_file = tmp_path / "distributed.txt"
    run_cli(small_run(tiny_corpus, tmp_path / "eval", "--eval", "--initial_model", str(checkpoint),
                      "--score_file", str(score_file), "--distributed", "--nproc", "2", "--port", free_port()))
    distributed_scores = [float(line.split()[0]) for line in score_file.read_text().splitlines()]
    args = arguments.parse_arguments(small_run(tiny_corpus, tmp_path / "eval", "--eval"))
    trainer = ModelTrainer(WrappedModel(SpeakerNet(**vars(args))), **dict(vars(args), device=torch.device("cpu")))
    trainer.loadParameters(str(checkpoint), strict_model=True)
    single_scores = trainer.evaluateFromList(**vars(args))[0]
    assert len(single_scores) == tiny_corpus["trials"]
    np.testing.assert_allclose(distributed_scores, single_scores, rtol=1e-5, atol=2e-6)


def from_main_worker(rank: int, port: str, folder: str) -> None:
    """Rank 1 would read another file (a node-local disk) than rank 0; both must get rank 0's content."""
    distributed.init_process_group(distributed.Context(rank, 2, rank, 2, True), torch.device("cpu"), port)
    own_file = f"{folder}/state{rank}.txt"
    shared = distributed.from_main(lambda: open(own_file).read())
    try:
        distributed.from_main(lambda: (_ for _ in ()).throw(MissingFileError(f"{own_file} is gone")))
        outcome = "no error"
    except PeerStopped:
        outcome = "stopped quietly"
    except MissingFileError as error:
        outcome = f"error: {error}"
    with open(f"{folder}/result{rank}.txt", "w") as handle:
        handle.write(f"{shared}|{outcome}|{distributed.gather_list(rank * 10)}")
    distributed.leave_process_group()
    distributed.end_rank_process(0)


@pytest.mark.integration
def test_rank_zero_reads_and_every_rank_gets_its_content(tmp_path):
    (tmp_path / "state0.txt").write_text("rank zero's state")
    (tmp_path / "state1.txt").write_text("a stale copy on another node")
    mp.spawn(from_main_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    results = [(tmp_path / f"result{rank}.txt").read_text().split("|") for rank in (0, 1)]
    assert [shared for shared, _, _ in results] == ["rank zero's state"] * 2
    assert results[0][1] == f"error: {tmp_path}/state0.txt is gone" and results[1][1] == "stopped quietly"
    assert [gathered for _, _, gathered in results] == ["[0, 10]"] * 2


def leaving_worker(rank: int, port: str, folder: str, finished: bool) -> None:
    """Rank 0 is still busy for a second after the last gather; rank 1 leaves at once and notes how long it took."""
    distributed.init_process_group(distributed.Context(rank, 2, rank, 2, True), torch.device("cpu"), port)
    distributed.gather_list(rank)
    if rank == 0:
        time.sleep(1.0)
    started = time.perf_counter()
    distributed.leave_process_group(finished)
    with open(f"{folder}/left{rank}.txt", "w") as handle:
        handle.write(str(time.perf_counter() - started))
    distributed.end_rank_process(0)


@pytest.mark.integration
@pytest.mark.parametrize("finished", [True, False])
def test_a_finished_rank_leaves_with_the_others(tmp_path, finished):
    """A finished rank must not tear down while a peer is still working (its connections would close under a working peer); a rank
    stopping on an error must not wait for peers that may never come."""
    mp.spawn(leaving_worker, args=(free_port(), str(tmp_path), finished), nprocs=2)
    waited = float((tmp_path / "left1.txt").read_text())
    assert (waited > 0.8) if finished else (waited < 0.5)


def test_a_rank_process_ends_with_its_status_and_its_output():
    code = "from runtime import distributed; print('buffered line'); distributed.end_rank_process(3)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 3 and result.stdout == "buffered line\n"


def torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               "trainSpeakerNet.py", *argv]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.integration
def test_torchrun_training_keeps_each_ranks_random_state(tiny_corpus, tmp_path):
    save_path = tmp_path / "torchrun"
    result = torchrun(small_run(tiny_corpus, save_path, "--max_epoch", "1", "--batch_size", "2", "--distributed"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Epoch 1, TEER/TAcc") == 1  # rank 0 logs
    content = torch.load(save_path / "model" / "model000000001.model", weights_only=True)
    per_rank = content["rank_rng_states"]
    assert len(per_rank) == 2 and torch.equal(per_rank[0]["torch"], content["rng_state"]["torch"])


@pytest.mark.integration
def test_torchrun_without_distributed_is_refused(tiny_corpus, tmp_path):
    result = torchrun(small_run(tiny_corpus, tmp_path / "alone", "--max_epoch", "1"))
    assert result.returncode != 0
    assert "Error (rank 0 of 2): started by torchrun with 2 processes but without --distributed" in result.stderr
    assert not (tmp_path / "alone" / "model").exists()
