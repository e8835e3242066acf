"""Embedding extraction for evaluation: ours (trainer's placement, batching and loader) vs the original's loop."""
import argparse
import copy
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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "evaluation.json"

import DatasetLoader  # noqa: E402
import evaluation  # noqa: E402
from runtime.device import autocast_dtype, place_on  # noqa: E402
from SpeakerNet import SpeakerNet  # noqa: E402


def generate(root: Path, count: int) -> list[str]:
    """`count` 6-10 s noise-like utterances (VoxCeleb1 test files average about 8 s)."""
    rng = np.random.default_rng(0)
    files = []
    for number in range(count):
        relative = f"id{number % 40:05d}/video/{number:05d}.wav"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / relative, 0.1 * rng.standard_normal(int(rng.uniform(6, 10) * 16000)), 16000,
                        subtype="PCM_16")
        files.append(relative)
    return files


def original_path(model, files, root, eval_frames, num_eval, workers, device) -> dict:
    """The original's evaluateFromList loop: DataLoader batch size 1, one forward pass per file."""
    dataset = DatasetLoader.test_dataset_loader(files, root, eval_frames=eval_frames, num_eval=num_eval)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers)
    embeddings = {}
    with torch.no_grad():
        for data, name in loader:
            embeddings[name[0]] = model(data[0].float().to(device)).float().cpu()
    return embeddings


def timed(function, *args, **kwargs):
    """(result, seconds), synchronising CUDA."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--eval_frames", type=int, default=400)
    parser.add_argument("--num_eval", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--files_per_batch", type=int, default=0, help="ours; 0: the evaluation's default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixedprec", action="store_true",
                        help="ours with the trainer's --mixedprec precision (float16 on CUDA, bfloat16 on CPUs with "
                             "AMX or AVX512-BF16)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of both paths (median kept)")
    args = parser.parse_args()
    device = torch.device(args.device)
    files_per_batch = args.files_per_batch or evaluation.default_files_per_batch(device, args.eval_frames,
                                                                                 args.num_eval)
    torch.manual_seed(0)
    net = SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=1, nOut=512,
                     log_input=True, encoder_type="SAP", n_mels=40).eval()
    our_net = place_on(copy.deepcopy(net), device)  # as trainSpeakerNet.py and embedSpeaker.py place it
    net = net.to(device)
    with tempfile.TemporaryDirectory() as folder:
        files = generate(Path(folder), args.files)
        warm = files[:2]
        dtype = autocast_dtype(device, args.mixedprec)
        original_path(net, warm, folder, args.eval_frames, args.num_eval, 0, device)
        evaluation.extract_embeddings(our_net, warm, folder, args.eval_frames, args.num_eval, 0, device, dtype)
        original_times, our_times = [], []
        for _ in range(args.repeats):  # alternate, so that a change in machine load hits both paths
            reference, seconds = timed(original_path, net, files, folder, args.eval_frames, args.num_eval,
                                       args.workers, device)
            original_times.append(seconds)
            ours, seconds = timed(evaluation.extract_embeddings, our_net, files, folder, args.eval_frames,
                                  args.num_eval, args.workers, device, dtype, files_per_batch)
            our_times.append(seconds)
    original_seconds, our_seconds = float(np.median(original_times)), float(np.median(our_times))
    difference = max(float((ours[name] - reference[name]).abs().max()) for name in files)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}",
        "device": str(device), "torch_threads": torch.get_num_threads(), "files": args.files,
        "crops": f"{args.num_eval} x {args.eval_frames} frames", "files_per_batch": files_per_batch,
        "workers": args.workers, "precision": str(dtype or torch.float32),
        "original_files_per_s": args.files / original_seconds, "ours_files_per_s": args.files / our_seconds,
        "speedup": original_seconds / our_seconds, "original_seconds": original_times, "our_seconds": our_times,
        "max_abs_embedding_difference": difference,
    }
    print(json.dumps(result, indent=2))
    save_json(RESULTS, result)


if __name__ == "__main__":
    main()
