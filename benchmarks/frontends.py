"""Seconds per minute of 16 kHz audio of the fbank models' front ends (--frontend logmel, kaldi, speechbrain).

Two workloads: a training-like batch of short crops and a batch of whole utterances. Every repeat runs each front
end once, in turn, so that all of them see the same load on a shared machine; read the ratios of one run.
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

from models.Fbanks import build_frontend  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "frontends.json"
SAMPLE_RATE = 16000
# (label, build_frontend options, training mode)
FRONT_ENDS = [
    ("logmel", {"frontend": "logmel"}, False),
    ("kaldi", {"frontend": "kaldi"}, False),
    ("kaldi, wespeaker settings, training (dither 1)",
     {"frontend": "kaldi", "frontend_window": "hamming", "waveform_scale": 32768.0, "dither": 1.0}, True),
    ("speechbrain", {"frontend": "speechbrain"}, False),
]


def cpu_description() -> str:
    """The CPU's model name and whether it has AVX-512 BF16 and AMX (from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return (f"{name} ({os.cpu_count()} CPUs; avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
            f"AMX {'yes' if 'amx_tile' in flags else 'no'})")


def timings(front_ends: dict, batch: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each front end on `batch`, `repeats` times, the front ends taking turns (one warm-up)."""
    seconds = {label: [] for label in front_ends}
    for repeat in range(repeats + 1):
        for label, front_end in front_ends.items():
            start = time.perf_counter()
            front_end(batch)
            if repeat:
                seconds[label].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    """Measure both workloads, print a Markdown table with the ratios to logmel, write benchmarks/results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per front end and workload (default 20)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--n_mels", type=int, default=80, help="mel bands (default 80)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workloads = {"32 crops of 2 s": torch.randn(32, 2 * SAMPLE_RATE + 240) * 0.1,
                 "8 utterances of 8 s": torch.randn(8, 8 * SAMPLE_RATE) * 0.1}
    front_ends = {}
    for label, options, training in FRONT_ENDS:
        front_end = build_frontend(args.n_mels, **options)
        front_ends[label] = front_end.train(training)

    load_before = os.getloadavg()
    print(f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n_mels} mels, "
          f"{args.repeats} repeats; load average {load_before[0]:.2f}")
    print("| workload | front end | min s / min of audio | median s / min of audio | median / logmel |\n"
          "|---|---|---:|---:|---:|")
    results = []
    for workload, batch in workloads.items():
        minutes = batch.numel() / SAMPLE_RATE / 60
        seconds = timings(front_ends, batch, args.repeats)
        base = statistics.median(seconds["logmel"])
        for label, values in seconds.items():
            row = {"workload": workload, "front_end": label, "min_s_per_minute": min(values) / minutes,
                   "median_s_per_minute": statistics.median(values) / minutes,
                   "median_ratio_to_logmel": statistics.median(values) / base,
                   "min_ratio_to_logmel": min(values) / min(seconds["logmel"])}
            results.append(row)
            print(f"| {workload} | {label} | {row['min_s_per_minute']:.4f} | {row['median_s_per_minute']:.4f} | "
                  f"{row['median_ratio_to_logmel']:.2f} (min {row['min_ratio_to_logmel']:.2f}) |", flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f}")
    save_json(RESULTS, {"cpu": cpu_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "n_mels": args.n_mels, "repeats": args.repeats, "load_average": [load_before[0], load_after[0]],
                        "results": results})


if __name__ == "__main__":
    main()
