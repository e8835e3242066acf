"""--eval as a user runs it, whole commands: whole utterances batched by length (--length_tolerance 0.05, the
default), whole utterances one length at a time (--length_tolerance 0) and the original's 10 crops of 4 s per file
(--eval_frames 400 --num_eval 10), alternating; prints each one's wall time and EER and the speed-ups.

The model is a package (exportModel.py --format package), so that no --config overrides the flags compared here:
    python exportModel.py --initial_model exps/demo/model/model000000014.model --format package \
        --output exps/demo/demo.pkg --config exps/demo/config.yaml
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "eval_whole.json"
VARIANTS = {
    "whole, batched by length": ["--eval_frames", "0", "--length_tolerance", "0.05"],
    "whole, one length at a time": ["--eval_frames", "0", "--length_tolerance", "0"],
    "original: 10 crops x 400 frames": ["--eval_frames", "400", "--num_eval", "10"],
}


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, EER) of one --eval command."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, float(re.findall(r"EER (\d+\.\d+)", result.stdout)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--initial_model", default="exps/demo/demo.pkg", help="an inference package")
    parser.add_argument("--test_list", default="data/demo/veri_test.txt")
    parser.add_argument("--test_path", default="data/demo/wav")
    parser.add_argument("--workers", type=int, default=1, help="--nDataLoaderThread")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of every variant (medians kept)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags added to every command")
    args = parser.parse_args()
    base = [sys.executable, "trainSpeakerNet.py", "--eval", "--initial_model", args.initial_model, "--test_list",
            args.test_list, "--test_path", args.test_path, "--nDataLoaderThread", str(args.workers), "--device", "cpu",
            "--scoring", "cosine", *args.extra]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    eers: dict[str, float] = {}
    for _ in range(args.repeats):  # alternate, so that a change in machine load hits every variant
        for name, flags in VARIANTS.items():
            seconds, eers[name] = run(base + flags)
            times[name].append(seconds)
    medians = {name: float(np.median(values)) for name, values in times.items()}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "load_average": os.getloadavg(), "command": " ".join(base), "seconds": times, "median_seconds": medians,
              "eer": eers,
              "speedup_over_original": medians["original: 10 crops x 400 frames"] / medians["whole, batched by length"],
              "speedup_over_one_length": medians["whole, one length at a time"] / medians["whole, batched by length"]}
    for name in VARIANTS:
        print(f"{name:34} {medians[name]:7.1f} s  EER {eers[name]:.2f}%")
    print(f"batched by length: {result['speedup_over_original']:.2f}x the original's 10-crop --eval, "
          f"{result['speedup_over_one_length']:.2f}x one length at a time")
    print(json.dumps({"load_average": result["load_average"]}))
    save_json(RESULTS, result)


if __name__ == "__main__":
    main()
