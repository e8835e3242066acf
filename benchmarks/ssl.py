"""Training with a self-supervised front end: samples/s, peak memory and the encoder's share of a step.

    python benchmarks/ssl.py                      # frozen, LoRA, full fine-tuning (with and without gradient
                                                  # checkpointing); bf16 too where it is fast
    python benchmarks/ssl.py --batch 8 --seconds 3 --steps 5 --device cuda

A random encoder of WavLM-Base+'s size (transformers' WavLMConfig defaults: 12 layers, 768 wide, 94.4 M
parameters; no download) under ECAPA_TDNN c512 with a weighted sum of its layers and AAM-softmax over 1,000
speakers, as wespeaker's WavLM recipe, trained by ModelTrainer.train_step on batches already in memory. Each
set-up runs in its own process so that its peak memory is its own: on a CPU the peak resident set size and its
growth over the built model; on CUDA torch's peak allocation. The encoder's share is 1 - (the same step with the
encoder's hidden states computed once beforehand) / (the whole step): its forward, backward and optimiser update.
Writes benchmarks/results/ssl.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file has the standard library's name ssl: its folder goes after the standard library on the path, the
# project first (benchmarks/evaluation.py would shadow ours).
BENCHMARKS = Path(__file__).resolve().parent
sys.path[:] = [str(BENCHMARKS.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != BENCHMARKS]
sys.path.append(str(BENCHMARKS))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from frontends import cpu_description  # noqa: E402
from results_file import save_json  # noqa: E402

from runtime.device import cpu_has_fast_bfloat16  # noqa: E402
from SpeakerNet import SpeakerNet, WrappedModel  # noqa: E402
from training.trainer import ModelTrainer  # noqa: E402

RESULTS = BENCHMARKS / "results" / "ssl.json"
MODES = {"frozen": {"ssl_frozen": True},
         "LoRA r64": {"lora_rank": 64, "lora_alpha": 128.0},
         "full fine-tuning": {},
         "full, gradient checkpointing": {"gradient_checkpointing": True}}
SPEAKERS = 1000


def resident_mib() -> float:
    """This process's resident set size now, in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed_steps(trainer: ModelTrainer, data: torch.Tensor, label: torch.Tensor, steps: int) -> float:
    """Seconds per training step over `steps` steps after one warm-up step."""
    trainer.train_mode()
    trainer.train_step(data, label)
    if data.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(data, label)
    if data.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(mode: str, precision: str, options: argparse.Namespace) -> dict:
    """One set-up, measured in this process."""
    from transformers import WavLMConfig

    device = torch.device(options.device)
    with tempfile.TemporaryDirectory() as folder:
        WavLMConfig().save_pretrained(folder)
        torch.manual_seed(0)
        net = SpeakerNet(model="ECAPA_TDNN", channels=512, nOut=192, trainfunc="aamsoftmax", nClasses=SPEAKERS,
                         margin=0.2, scale=32.0, frontend="ssl", ssl_source=folder, ssl_init="random",
                         **MODES[mode]).to(device)
    trainer = ModelTrainer(WrappedModel(net), "adam", "steplr", False, device, lr=1e-4, weight_decay=1e-4,
                           test_interval=10, lr_decay=0.9)
    trainer.autocast_dtype = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    trainer.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator().manual_seed(1)
    data = (0.1 * torch.randn(options.batch, 1, int(16000 * options.seconds), generator=generator)).to(device)
    label = torch.randint(0, SPEAKERS, (options.batch,), generator=generator).to(device)
    built = resident_mib()
    step = timed_steps(trainer, data, label, options.steps)
    if device.type == "cuda":
        memory = {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory = {"peak_rss_mib": peak, "growth_over_model_mib": peak - built}
    front_end = net.__S__.fbank
    with torch.no_grad(), trainer.autocast():
        cached = front_end.hidden_states(data.reshape(options.batch, -1))
    front_end.hidden_states = lambda _: cached  # the back end alone, on the encoder's states computed above
    back_end = timed_steps(trainer, data, label, options.steps)
    encoder = front_end.encoder
    return {"mode": mode, "precision": precision, "samples_per_s": options.batch / step, "step_s": step,
            "encoder_share": 1 - back_end / step, **memory,
            "encoder_parameters_m": sum(parameter.numel() for parameter in encoder.parameters()) / 1e6,
            "trainable_parameters_m": sum(parameter.numel() for parameter in net.parameters()
                                          if parameter.requires_grad) / 1e6}


def run_child(mode: str, precision: str, options: argparse.Namespace) -> dict:
    """Measure one set-up in a fresh process."""
    command = [sys.executable, __file__, "--child", mode, precision, "--batch", str(options.batch), "--seconds",
               str(options.seconds), "--steps", str(options.steps), "--device", options.device,
               "--threads", str(options.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} {precision} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    memory = "peak_allocated_mib" if "peak_allocated_mib" in rows[0] else "peak_rss_mib"
    lines = ["| set-up | precision | trainable (M) | samples/s | step (s) | encoder share | peak memory (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['mode']} | {row['precision']} | {row['trainable_parameters_m']:.2f} | "
              f"{row['samples_per_s']:.2f} | {row['step_s']:.2f} | {row['encoder_share']:.0%} | "
              f"{row[memory]:,.0f}" + (f" (+{row['growth_over_model_mib']:,.0f} over the model)"
                                        if "growth_over_model_mib" in row else "") + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="utterances per step")
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PRECISION"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if options.child:
        print(json.dumps(measure(*options.child, options)))
        return
    if options.device == "cuda":
        precisions = ["float32", "fp16"]
    else:
        precisions = ["float32", "bf16"] if cpu_has_fast_bfloat16() else ["float32"]
    machine = (torch.cuda.get_device_name() if options.device == "cuda" else cpu_description())
    print(f"{machine}; PyTorch {torch.__version__}; batch {options.batch} x {options.seconds:g} s, "
          f"{options.steps} timed steps")
    rows = [run_child(mode, precision, options) for precision in precisions for mode in MODES]
    print(table(rows))
    save_json(RESULTS, {"machine": machine, "torch": torch.__version__, "options": vars(options), "rows": rows})


if __name__ == "__main__":
    main()
