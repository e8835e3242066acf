"""Distributed training: one process per GPU (or CPU worker) started here or by torchrun, and their agreement."""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, NoReturn, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime.errors import ConfigError, PeerStopped, UserError

T = TypeVar("T")


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


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun): known before the group forms."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def torchrun_world_size() -> int:
    """WORLD_SIZE of a torchrun launch (1 when not launched by torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def check_launch(distributed: bool) -> None:
    """Refuse torchrun with several processes but no --distributed: each would train alone on the same files."""
    if not distributed and torchrun_world_size() > 1:
        raise ConfigError(f"started by torchrun with {torchrun_world_size()} processes but without --distributed: "
                          "each process would train alone and overwrite the others' files. Add --distributed, "
                          "or start a single process without torchrun")


def process_count(run) -> int:
    """--nproc, else one process per visible GPU, else 2 CPU processes (`run`: the run settings)."""
    if run.nproc > 0:
        return run.nproc
    if run.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def planned_world_size(run) -> int:
    """How many processes the run will have: torchrun's WORLD_SIZE, the processes start() spawns, or 1."""
    if not run.distributed:
        return 1
    return torchrun_world_size() if launched_by_torchrun() else process_count(run)


def start(worker, payload, run) -> None:
    """Run `worker(context, payload)` once, under torchrun, or once per process started here, as the run
    settings `run` say (distributed, nproc, device, debug)."""
    if not run.distributed:
        worker(Context(), payload)
    elif launched_by_torchrun():
        worker(Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                       int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), True), payload)
        end_rank_process(0)
    else:
        count = process_count(run)
        user_errors = mp.get_context("spawn").SimpleQueue()
        processes = mp.start_processes(_spawned, args=(count, worker, payload, run.debug, user_errors), nprocs=count,
                                       join=False, start_method="spawn")

        def forward_signal(signum, frame):
            for process in processes.processes:
                if process.is_alive():
                    os.kill(process.pid, signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, forward_signal)
        try:
            while not processes.join():
                pass
        except mp.ProcessExitedException:
            if user_errors.empty():
                raise
            report_rank_errors(user_errors, count)
            raise PeerStopped("a process stopped on an error") from None


def report_rank_errors(user_errors, count: int) -> None:
    """Print each distinct user error of the ranks once, naming the ranks that had it."""
    ranks_of: dict[str, list[int]] = {}
    while not user_errors.empty():
        rank, message = user_errors.get()
        if message is not None:
            ranks_of.setdefault(message, []).append(rank)
    for message, ranks in ranks_of.items():
        label = "rank" if len(ranks) == 1 else "ranks"
        print(f"Error ({label} {', '.join(map(str, sorted(ranks)))} of {count}): {message}", file=sys.stderr,
              flush=True)


def _spawned(index: int, count: int, worker, payload, debug: bool, user_errors) -> None:
    """Entry of a process started by start(): a user error goes to the parent (which prints it once and stops the
    other ranks) and the process exits with status 1."""
    try:
        worker(Context(index, count, index, count, True), payload)
    except UserError as error:
        if debug:
            raise
        user_errors.put((index, None if isinstance(error, PeerStopped) else str(error)))
        end_rank_process(1)
    end_rank_process(0)


def end_rank_process(status: int) -> NoReturn:
    """End a rank's process once it has left the group, skipping the interpreter's shutdown (output is flushed
    first; every file has been closed). gloo's worker threads release a collective's tensors after the caller has
    moved on, and one that still needs the interpreter while it shuts down aborts the process ("terminate called
    without an active exception"), turning a finished run into a failed one."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def init_process_group(context: Context, device: torch.device, port: str) -> None:
    """Join the job: NCCL between GPUs, gloo between CPU processes."""
    if not launched_by_torchrun():
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ["MASTER_PORT"] = str(port)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.local_world_size))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=context.rank,
                            world_size=context.world_size)


def leave_process_group(finished: bool = True) -> None:
    """Leave the job. A rank that `finished` first waits for the others (a barrier), so no rank tears its
    connections down while a peer still works; a rank stopping on an error leaves at once, as the others may never
    reach the barrier."""
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def group_position() -> tuple[int, int] | None:
    """(rank, world size) in the joined process group, or None when this process has joined none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag, whether it is set on any rank (the flags themselves when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flags
    tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def gather_dicts(local: dict) -> dict:
    """Merge every rank's dict (all ranks receive the union)."""
    merged = {}
    for part in gather_list(local):
        merged.update(part)
    return merged


def gather_list(local: T) -> list[T]:
    """Every rank's `local` value, in rank order (a one-item list when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [local]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


def from_main(load: Callable[[], T]) -> T:
    """`load()` run on rank 0 only and its result sent to every rank, so node-local files cannot make ranks
    differ. A user error on rank 0 stops the other ranks quietly (rank 0 reports it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return load()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("value", load())
        except UserError as error:
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value if dist.get_rank() == 0 else PeerStopped(str(value))
    return value
