"""The same short training from shards (generated audio, ResNetSE34L) with 1 and with 2 gloo processes, and the
all-reduce time of a gradient-sized tensor.

Each run is the real CLI (`trainSpeakerNet.py --train_shards ...`, 1 epoch, no evaluation); its data-wait share
and samples/s come from result/timing.jsonl (rank 0; the job's samples/s is that times the processes, as every
rank does the same number of steps). `--batch_size` is per process, as in training; the 1-process run has
`--threads` torch threads, each of the 2 processes cores / 2. The all-reduce is timed apart, with
torch.distributed on a float32 tensor of the model's parameter count (what DDP reduces per step, without the
overlap with the backward pass DDP gets). Writes benchmarks/results/scaling.json.
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BENCHMARKS = Path(__file__).resolve().parent
PROJECT = BENCHMARKS.parent
sys.path.insert(0, str(PROJECT))  # before benchmarks/, whose evaluation.py would shadow ours
from results_file import save_json  # noqa: E402
from shard_loading import generate_corpus  # noqa: E402

from preparation.shards import make_shards  # noqa: E402
from runtime import distributed  # noqa: E402
from SpeakerNet import SpeakerNet  # noqa: E402

RESULTS = BENCHMARKS / "results" / "scaling.json"
NOUT = 512


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def write_trials(root: Path, speakers: int) -> Path:
    """A small trial list (target and non-target pairs) that the start-up checks accept."""
    files = [f"id{speaker:05d}/video{number % 3}/{number:05d}.wav" for speaker in range(speakers) for number in (0, 1)]
    lines = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n" for i, a in enumerate(files) for b in files[i + 1:]]
    (root / "trials.txt").write_text("".join(lines))
    return root / "trials.txt"


def train(root: Path, processes: int, options: argparse.Namespace) -> dict:
    """One epoch from the shards with `processes` gloo processes; rank 0's timing record."""
    save_path = root / f"exp{processes}"
    command = [sys.executable, "trainSpeakerNet.py", "--model", "ResNetSE34L", "--log_input", "true",
               "--trainfunc", "angleproto", "--nPerSpeaker", "2", "--batch_size", str(options.batch_size),
               "--max_frames", str(options.max_frames), "--nDataLoaderThread", str(options.workers),
               "--nOut", str(NOUT), "--max_epoch", "1", "--test_interval", "100", "--device", "cpu",
               "--train_shards", str(root / "shards" / "shards.list"), "--test_list", str(root / "trials.txt"),
               "--test_path", str(root / "wav"), "--save_path", str(save_path)]
    if processes > 1:
        command += ["--distributed", "--nproc", str(processes), "--port", free_port()]
    started = time.perf_counter()
    environment = dict(os.environ, OMP_NUM_THREADS=str(options.threads))
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise SystemExit(f"training with {processes} process(es) failed:\n{result.stderr[-3000:]}")
    timing = json.loads((save_path / "result" / "timing.jsonl").read_text().splitlines()[-1])
    steps = round(timing["samples_per_second"] * timing["seconds"] / (options.batch_size * 2))
    return {"processes": processes, "wall_seconds": time.perf_counter() - started, "steps": steps,
            "epoch_seconds": timing["seconds"], "data_wait_share": timing["data_wait_share"],
            "samples_per_second": timing["samples_per_second"] * processes,
            "seconds_per_step": timing["seconds"] / steps}


def all_reduce_worker(rank: int, port: str, numel: int, repeats: int, folder: str) -> None:
    """Time `repeats` all-reduces of a float32 tensor of `numel` values after two warm-ups (rank 0 saves them)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    tensor = torch.randn(numel)
    times = []
    for repeat in range(repeats + 2):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(tensor)
        if repeat >= 2:
            times.append(time.perf_counter() - started)
    if rank == 0:
        Path(folder, "all_reduce.json").write_text(json.dumps(times))
    distributed.leave_process_group()
    distributed.end_rank_process(0)


def all_reduce_seconds(numel: int, repeats: int = 20) -> float:
    """Median seconds of one all-reduce between 2 gloo processes on this machine."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(all_reduce_worker, args=(free_port(), numel, repeats, folder), nprocs=2)
        times = sorted(json.loads(Path(folder, "all_reduce.json").read_text()))
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--per_speaker", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=10, help="speakers per batch and process (2 utterances each)")
    parser.add_argument("--max_frames", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per process (0: in the training "
                        "process; on 2 cores a worker per process oversubscribes them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the 1-process run (a --distributed "
                        "run gives each process cores / processes)")
    options = parser.parse_args()
    parameters = sum(p.numel() for p in SpeakerNet(model="ResNetSE34L", trainfunc="angleproto", nOut=NOUT, n_mels=40,
                                                   log_input=True, encoder_type="SAP").parameters())
    report = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "options": vars(options),
              "parameters": parameters}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_corpus(root, options.speakers, options.per_speaker)
        write_trials(root, 4)
        make_shards(root / "train_list.txt", root / "wav", root / "shards", 1.0, 0, quiet=True)
        report["runs"] = [train(root, processes, options) for processes in (1, 2)]
    report["all_reduce_seconds"] = all_reduce_seconds(parameters)
    print(f"ResNetSE34L ({parameters:,} parameters), {options.speakers * options.per_speaker} utterances, "
          f"batch {options.batch_size} x 2 per process, {options.max_frames} frames")
    print("processes  steps  s/step  samples/s  data wait")
    for run in report["runs"]:
        print(f"{run['processes']:9d}  {run['steps']:5d}  {run['seconds_per_step']:6.2f}  "
              f"{run['samples_per_second']:9.1f}  {100 * run['data_wait_share']:8.1f}%")
    step = report["runs"][1]["seconds_per_step"]
    print(f"all-reduce of {parameters:,} float32 values (2 gloo processes): "
          f"{1000 * report['all_reduce_seconds']:.1f} ms, {100 * report['all_reduce_seconds'] / step:.1f}% of a "
          "2-process step")
    save_json(RESULTS, report)


if __name__ == "__main__":
    main()
