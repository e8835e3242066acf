"""Parameters and CPU forward / forward+backward time of every model on a batch of 2-second crops.

Wall time is what a user waits; process CPU time is steadier on a shared machine (use --threads 1 there).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from importlib import import_module
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "models.json"

# (label, module, constructor kwargs); nOut 512 as the trainer's default
CONFIGS = [
    ("ResNetSE34L SAP 40 mels", "ResNetSE34L", {"encoder_type": "SAP", "n_mels": 40}),
    ("ResNetSE34L ASP 40 mels", "ResNetSE34L", {"encoder_type": "ASP", "n_mels": 40}),
    ("ResNetSE34V2 SAP 40 mels", "ResNetSE34V2", {"encoder_type": "SAP", "n_mels": 40}),
    ("ResNetSE34V2 ASP 64 mels", "ResNetSE34V2", {"encoder_type": "ASP", "n_mels": 64}),
    ("Res2NetSE34 ASP 64 mels, scale 4", "Res2NetSE34", {"encoder_type": "ASP", "n_mels": 64}),
    ("Res2NetSE34 ASP 64 mels, scale 8", "Res2NetSE34", {"encoder_type": "ASP", "n_mels": 64, "res2net_scale": 8}),
    ("VGGVox40 SAP", "VGGVox", {"encoder_type": "SAP"}),
    ("VGGVox40 TAP", "VGGVox", {"encoder_type": "TAP"}),
    ("VGGVox40 MAX", "VGGVox", {"encoder_type": "MAX"}),
    ("ResNetSE34 (Thin) SAP", "ResNetSE34", {"encoder_type": "SAP"}),
    ("RawNet3 ECA (raw waveform)", "RawNet3", {"encoder_type": "ECA"}),
    ("fbank: ECAPA_TDNN c512, 80 mels", "ECAPA_TDNN", {"channels": 512, "n_mels": 80}),
    ("fbank: ResNet34 TSTP, 80 mels", "ResNet34", {"n_mels": 80}),
    ("fbank: CAMPPlus, 80 mels", "CAMPPlus", {"n_mels": 80}),
    ("fbank: SimAM_ResNet34 ASP, 80 mels", "SimAM_ResNet34", {"n_mels": 80}),
    ("fbank: SimAM_ResNet100 ASP, 80 mels", "SimAM_ResNet100", {"n_mels": 80}),
    ("fbank: ERes2NetV2, 80 mels", "ERes2NetV2", {"n_mels": 80}),
    *[(f"fbank: ReDimNet-B{size}, {60 if size == 0 else 72} mels", f"ReDimNetB{size}",
       {"n_mels": 60 if size == 0 else 72}) for size in range(7)],
    *[(f"fbank: ReDimNet2-B{size}, 72 mels", f"ReDimNet2B{size}", {"n_mels": 72}) for size in range(7)],
]


def median_seconds(step, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of `step()` over `repeats` runs after one warm-up run."""
    step()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(module: str, kwargs: dict, batch: torch.Tensor, repeats: int) -> dict:
    """Parameter count and timings of one model configuration."""
    model = import_module(f"models.{module}").MainModel(nOut=512, log_input=True, **kwargs)

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(batch)

    def forward_backward() -> None:
        model.train()
        model.zero_grad()
        model(batch).square().mean().backward()

    forward_s, forward_cpu_s = median_seconds(forward, repeats)
    backward_s, backward_cpu_s = median_seconds(forward_backward, repeats)
    return {"params": sum(p.numel() for p in model.parameters()),
            "forward_s": forward_s, "forward_cpu_s": forward_cpu_s,
            "forward_backward_s": backward_s, "forward_backward_cpu_s": backward_cpu_s}


def main() -> None:
    """Run every configuration, print a Markdown table and write benchmarks/results/models.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch_size", type=int, default=8, help="crops per batch (default 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length in seconds (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median; default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", default="", help="run only configurations whose label contains this text")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = torch.randn(args.batch_size, int(args.seconds * 16000) + 240)

    results = []
    print(f"batch {args.batch_size} x {args.seconds:g} s crops, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| model | parameters | forward wall (s) | forward CPU (s) | forward+backward wall (s) "
          "| forward+backward CPU (s) | embedded crops/s | training crops/s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, module, kwargs in CONFIGS:
        if args.only not in label:
            continue
        row = {"model": label, "module": module, "kwargs": kwargs, **measure(module, kwargs, batch, args.repeats)}
        results.append(row)
        print(f"| {label} | {row['params']:,} | {row['forward_s']:.3f} | {row['forward_cpu_s']:.3f} "
              f"| {row['forward_backward_s']:.3f} | {row['forward_backward_cpu_s']:.3f} "
              f"| {args.batch_size / row['forward_s']:.1f} | {args.batch_size / row['forward_backward_s']:.1f} |",
              flush=True)

    report = {"batch_size": args.batch_size, "seconds": args.seconds, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "results": results}
    save_json(RESULTS, report)


if __name__ == "__main__":
    main()
