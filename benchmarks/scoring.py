"""Scoring, AS-norm and metrics of 580,000 generated trials over 5,000 embeddings (VoxCeleb1-E scale)."""
import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "scoring.json"

import evaluation  # noqa: E402
import tuneThreshold  # noqa: E402
from evaluation import score_norm as scoreNormalization  # noqa: E402


def generate(files: int, trials: int, crops: int, dim: int, speakers: int, seed: int = 0):
    """Embeddings around per-speaker centres and a half-target trial list."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(speakers, dim, generator=generator)
    owner = torch.arange(files) % speakers
    names = [f"id{int(owner[i]):05d}/v/{i:05d}.wav" for i in range(files)]
    embeddings = {name: centres[owner[i]] + 1.5 * torch.randn(crops, dim, generator=generator)
                  for i, name in enumerate(names)}
    rng = np.random.default_rng(seed)
    enrol = rng.integers(0, files, trials)
    same = rng.random(trials) < 0.5
    partner = (enrol + speakers * rng.integers(1, files // speakers, trials)) % files  # same speaker
    test = np.where(same, partner, rng.integers(0, files, trials))
    labels = (owner.numpy()[enrol] == owner.numpy()[test]).astype(np.int64)
    trial_set = evaluation.Trials(labels, [names[i] for i in enrol], [names[i] for i in test], sorted(names), "gen")
    cohort = torch.nn.functional.normalize(torch.randn(5994, dim, generator=generator), dim=1)
    return trial_set, embeddings, cohort


def run(mode: str, crops: int, args) -> dict:
    """Wall seconds for each stage of one configuration, and the CPU seconds of all of them."""
    trials, embeddings, cohort = generate(args.files, args.trials, crops, args.dim, args.speakers)
    timings = {}
    cpu_start = time.process_time()
    start = time.perf_counter()
    scores = evaluation.score_trials(trials, embeddings, True, mode)
    timings["score"] = time.perf_counter() - start
    start = time.perf_counter()
    rows = {name: row for row, name in enumerate(trials.files)}
    mean, std = scoreNormalization.cohort_statistics([embeddings[name] for name in trials.files], cohort, mode,
                                                     True, "asnorm", 300)
    normed = scoreNormalization.normalize_scores(scores, np.array([rows[n] for n in trials.enrol]),
                                                 np.array([rows[n] for n in trials.test]), mean, std)
    timings["asnorm"] = time.perf_counter() - start
    start = time.perf_counter()
    eer = tuneThreshold.tuneThresholdfromScore(normed, trials.labels, [1, 0.1])[1]
    fnrs, fprs, thresholds = tuneThreshold.ComputeErrorRates(normed, trials.labels)
    min_dcf = [tuneThreshold.ComputeMinDcf(fnrs, fprs, thresholds, p, 1, 1)[0] for p in (0.05, 0.01)]
    timings["metrics"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    return {"mode": mode, "crops_per_file": crops, "seconds": timings,
            "cpu_seconds": time.process_time() - cpu_start, "load_average": os.getloadavg()[0],
            "eer": eer, "min_dcf": min_dcf,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=580000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--speakers", type=int, default=500)
    parser.add_argument("--configs", default="cosine:1,original:1,original:10",
                        help="mode:crops_per_file, comma-separated")
    args = parser.parse_args()
    results = []
    for config in args.configs.split(","):
        mode, crops = config.split(":")
        results.append(run(mode, int(crops), args))
        print(json.dumps(results[-1]), flush=True)
    summary = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU",
               "torch_threads": torch.get_num_threads(), "files": args.files, "trials": args.trials,
               "dim": args.dim, "cohort_speakers": 5994, "top_k": 300, "results": results}
    save_json(RESULTS, summary)


if __name__ == "__main__":
    main()
