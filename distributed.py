"""Distributed training: one process per GPU (or CPU worker) started here or by torchrun, and their agreement."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates the scores and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or another launcher that sets the same variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def process_count(args) -> int:
    """--nproc, else one process per visible GPU, else 2 CPU processes."""
    if args.nproc > 0:
        return args.nproc
    if args.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def start(worker, args) -> None:
    """Run `worker(context, args)` once, under torchrun, or once per process started here."""
    if not args.distributed:
        worker(Context(), args)
    elif launched_by_torchrun():
        worker(Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                       int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), True), args)
    else:
        count = process_count(args)
        processes = mp.start_processes(_spawned, args=(count, worker, args), nprocs=count, join=False,
                                       start_method="spawn")

        def forward_signal(signum, frame):
            for process in processes.processes:
                if process.is_alive():
                    os.kill(process.pid, signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, forward_signal)
        while not processes.join():
            pass


def _spawned(index: int, count: int, worker, args) -> None:
    """Entry of a process started by start()."""
    worker(Context(index, count, index, count, True), args)


def init_process_group(context: Context, device: torch.device, port: str) -> None:
    """Join the job: NCCL between GPUs, gloo between CPU processes."""
    if not launched_by_torchrun():
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ["MASTER_PORT"] = str(port)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.local_world_size))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=context.rank,
                            world_size=context.world_size)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag, whether it is set on any rank (the flags themselves when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flags
    tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def gather_dicts(local: dict) -> dict:
    """Merge every rank's dict (all ranks receive the union)."""
    if not (dist.is_available() and dist.is_initialized()):
        return local
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged = {}
    for part in parts:
        merged.update(part)
    return merged
