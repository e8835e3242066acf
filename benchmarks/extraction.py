"""Whole-utterance extraction (embedSpeaker.py embed, --eval_frames 0): batched by length vs one file at a time."""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "extraction.json"

import evaluation  # noqa: E402
from runtime.device import place_on  # noqa: E402
from SpeakerNet import SpeakerNet  # noqa: E402


def generate(root: Path, count: int, shortest: float, longest: float) -> list[str]:
    """`count` noise-like utterances of uniformly drawn lengths (seconds)."""
    rng = np.random.default_rng(0)
    files = []
    for number in range(count):
        relative = f"id{number % 10:05d}/{number:05d}.wav"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        seconds = rng.uniform(shortest, longest)
        soundfile.write(root / relative, 0.1 * rng.standard_normal(int(seconds * 16000)), 16000, subtype="PCM_16")
        files.append(relative)
    return files


def timed(function, *args, **kwargs):
    """(result, seconds)."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--shortest", type=float, default=2.0, help="seconds")
    parser.add_argument("--longest", type=float, default=4.0, help="seconds")
    parser.add_argument("--length_tolerance", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the batched path")
    parser.add_argument("--files_per_batch", type=int, default=0, help="batched path; 0: the default")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of both paths (medians kept)")
    args = parser.parse_args()
    device = torch.device("cpu")
    torch.manual_seed(0)
    net = place_on(SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=1,
                              nOut=512, log_input=True, encoder_type="SAP", n_mels=40), device).eval()
    with tempfile.TemporaryDirectory() as folder:
        files = generate(Path(folder), args.files, args.shortest, args.longest)
        evaluation.extract_embeddings(net, files[:2], folder, 0, 1, 0, device, files_per_batch=1)  # warm-up
        single_times, batched_times = [], []
        for _ in range(args.repeats):  # alternate, so that a change in machine load hits both paths
            single, seconds = timed(evaluation.extract_embeddings, net, files, folder, 0, 1, 0, device,
                                    files_per_batch=1)
            single_times.append(seconds)
            batched, seconds = timed(evaluation.extract_embeddings, net, files, folder, 0, 1, args.workers, device,
                                     files_per_batch=args.files_per_batch, length_tolerance=args.length_tolerance)
            batched_times.append(seconds)
    single_seconds, batched_seconds = float(np.median(single_times)), float(np.median(batched_times))
    cosine = min(float(F.cosine_similarity(single[name], batched[name]).min()) for name in files)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(), "files": args.files,
        "seconds_per_file": [args.shortest, args.longest], "length_tolerance": args.length_tolerance,
        "workers": args.workers, "one_at_a_time_files_per_s": args.files / single_seconds,
        "batched_files_per_s": args.files / batched_seconds, "ratio": single_seconds / batched_seconds,
        "one_at_a_time_seconds": single_times, "batched_seconds": batched_times,
        "min_cosine_batched_vs_one_at_a_time": cosine,
    }
    print(json.dumps(result, indent=2))
    print(f"batched {result['batched_files_per_s']:.2f} files/s, one at a time "
          f"{result['one_at_a_time_files_per_s']:.2f} files/s: ratio {result['ratio']:.2f}x "
          f"(min cosine {cosine:.5f})")
    save_json(RESULTS, result)


if __name__ == "__main__":
    main()
