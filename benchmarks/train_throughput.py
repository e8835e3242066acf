"""Training throughput (issue 8): our trainer and loader vs. the compute-only limit and the original's way.

Generates 4-10 s utterances with MUSAN/RIR folders in the real layout, then measures steady-state samples/s and
data-wait share after a warm-up step for: our real path (ModelTrainer.train_network over trainSpeakerNet's epoch
DataLoader with 2 workers, the trainer's precision), the same train step on batches already in memory, and the
original's way (whole-file reads, scipy full RIR convolution, one worker, float32, loss.item() every step).
On a GPU (`--device cuda`, the default when PyTorch sees one) our path is also measured with --mixedprec.
Writes benchmarks/results/train_throughput.json.
"""
import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))  # before benchmarks/, whose evaluation.py would shadow ours
from results_file import save_json  # noqa: E402

RESULTS = BENCHMARKS / "results" / "train_throughput.json"

from dataloader import NaiveDataset, generate  # noqa: E402

import arguments  # noqa: E402
import DatasetLoader  # noqa: E402
import SpeakerNet  # noqa: E402
import trainSpeakerNet  # noqa: E402
from runtime import device as placement  # noqa: E402
from training.trainer import ModelTrainer  # noqa: E402

# Per model: its published set-up, the speakers per batch and the timed steps (V2 is ~7x slower per utterance).
MODELS = {"ResNetSE34L": {"encoder_type": "SAP", "n_mels": 40, "batch_size": 30, "steps": 24},
          "ResNetSE34V2": {"encoder_type": "ASP", "n_mels": 64, "batch_size": 10, "steps": 10}}
N_PER_SPEAKER, MAX_FRAMES, WORKERS, WARMUP = 2, 200, 2, 1
PRECISION_BATCH, PRECISION_STEPS = 4, 2  # bfloat16 is slow on CPUs without bf16 units: a small float32/bf16 probe
TARGET_MODEL = "ResNetSE34L"


class Batches:
    """The next `count` batches of a running iterator, with the length train_network reads."""

    def __init__(self, iterator, count: int):
        self.iterator, self.count = iterator, count

    def __iter__(self):
        return itertools.islice(self.iterator, self.count)

    def __len__(self) -> int:
        return self.count


def training_args(root: Path, model: str, augment: bool, batch_size: int, workers: int,
                  device: str) -> argparse.Namespace:
    """The trainer's namespace, parsed by trainSpeakerNet's own parser (so every default is the real one)."""
    setup = MODELS[model]
    return arguments.parse_arguments([
        "--model", model, "--encoder_type", setup["encoder_type"], "--n_mels", str(setup["n_mels"]),
        "--log_input", "True", "--trainfunc", "angleproto", "--nPerSpeaker", str(N_PER_SPEAKER),
        "--batch_size", str(batch_size), "--max_frames", str(MAX_FRAMES), "--nDataLoaderThread", str(workers),
        "--augment", str(augment), "--train_list", str(root / "train_list.txt"), "--train_path", str(root / "wav"),
        "--musan_path", str(root / "musan_split"), "--rir_path", str(root / "rirs"),
        "--save_path", str(root / "exp"), "--device", device])


def build_trainer(args: argparse.Namespace, mixedprec: bool) -> ModelTrainer:
    """A ModelTrainer as trainSpeakerNet builds it; mixedprec: float16 on CUDA, bfloat16 forced on a CPU."""
    device = torch.device(args.device)
    trainSpeakerNet.seed_everything(args.seed)
    model = SpeakerNet.WrappedModel(placement.place_on(SpeakerNet.SpeakerNet(**vars(args)), device))
    with mock.patch.object(placement, "cpu_has_fast_bfloat16", return_value=mixedprec):
        trainer = ModelTrainer(model, **dict(vars(args), mixedprec=mixedprec, device=device))
        assert trainer.autocast_dtype == placement.autocast_dtype(device, mixedprec)
    return trainer


def precision_name(trainer: ModelTrainer) -> str:
    """float32, float16 or bfloat16: the precision a trainer computes in."""
    return str(trainer.autocast_dtype or torch.float32).replace("torch.", "")


def quiet(function, *args, **kwargs):
    """Call `function` with stdout silenced (plug-ins print a line when built)."""
    with open(os.devnull, "w") as sink, mock.patch("sys.stdout", sink):
        return function(*args, **kwargs)


def with_cpu_time(run) -> dict:
    """The timing dict `run()` returns, plus this process's CPU milliseconds per sample during it."""
    cpu = time.process_time()
    timing = run()
    samples = timing["samples_per_second"] * timing["seconds"]
    return {**timing, "main_process_cpu_ms_per_sample": 1000 * (time.process_time() - cpu) / samples}


def trained_epoch(trainer: ModelTrainer, batches) -> dict:
    """train_network over `batches`; its timing of them."""
    trainer.train_network(batches, verbose=False)
    return dict(trainer.last_epoch)


def ours(trainer: ModelTrainer, dataset, sampler, args: argparse.Namespace, steps: int) -> dict:
    """Our real path: train_network over trainSpeakerNet's epoch DataLoader, timed after the warm-up steps."""
    iterator = iter(DatasetLoader.epoch_loader(dataset, sampler, args))
    trained_epoch(trainer, Batches(iterator, WARMUP))
    timing = with_cpu_time(lambda: trained_epoch(trainer, Batches(iterator, steps)))
    return timing


def compute_only(trainer: ModelTrainer, batches: list, steps: int) -> dict:
    """The same train_network step on batches already in memory."""
    trained_epoch(trainer, batches[:WARMUP])
    return with_cpu_time(lambda: trained_epoch(trainer, [batches[step % len(batches)] for step in range(steps)]))


def original_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader, device: torch.device) -> dict:
    """The original's train_network loop: float32, a host synchronisation (.item()) every step."""
    model.train()
    loss, top1, samples, data_wait = 0.0, 0.0, 0, 0.0
    started = waiting_since = time.perf_counter()
    for data, data_label in loader:
        data_wait += time.perf_counter() - waiting_since
        data = data.to(device)  # our SpeakerNet takes [speakers, per_speaker, samples]
        model.zero_grad()
        label = torch.LongTensor(data_label).to(device)
        nloss, prec1 = model(data, label)
        nloss.backward()
        optimizer.step()
        loss += nloss.detach().cpu().item()
        top1 += prec1.detach().cpu().item()
        samples += data.shape[0] * data.shape[1]
        waiting_since = time.perf_counter()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "data_wait_seconds": data_wait, "data_wait_share": data_wait / elapsed,
            "samples_per_second": samples / elapsed}


def originals_way(trainer: ModelTrainer, dataset, sampler, args: argparse.Namespace, steps: int) -> dict:
    """The original's data path (whole files, scipy convolve, numpy crop) with one worker and its loop."""
    naive = NaiveDataset(dataset, args.musan_path, args.rir_path, args.augment)
    loader = torch.utils.data.DataLoader(naive, batch_size=args.batch_size, sampler=sampler, num_workers=1,
                                         pin_memory=False, drop_last=True,
                                         worker_init_fn=DatasetLoader.worker_init_fn)
    model = trainer.__model__
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    iterator = iter(loader)
    original_steps(model, optimizer, Batches(iterator, WARMUP), trainer.device)
    timing = with_cpu_time(lambda: original_steps(model, optimizer, Batches(iterator, steps), trainer.device))
    return timing


def prepare_corpus(root: Path, speakers: int, per_speaker: int) -> None:
    """Generate the corpus once into `root` (kept when it is already there)."""
    if not (root / "train_list.txt").exists():
        started = time.perf_counter()
        generate(root, speakers, per_speaker, np.random.default_rng(0))
        print(f"generated {speakers * per_speaker} utterances of 4-10 s, MUSAN and RIRs in {root} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)


def training_data(args: argparse.Namespace, batches: int):
    """Our dataset and sampler for epoch 1; an error when the epoch has fewer than `batches` batches."""
    dataset = DatasetLoader.train_dataset_loader(**vars(args))
    sampler = DatasetLoader.train_dataset_sampler(dataset, **vars(args))
    sampler.set_epoch(1)
    dataset.set_epoch(1)
    if len(sampler) < batches * args.batch_size:
        raise SystemExit(f"{len(sampler) // args.batch_size} batches per epoch is fewer than {batches}: "
                         "raise --speakers or --per_speaker (and use a fresh --data folder)")
    return dataset, sampler


def in_memory_batches(dataset, sampler, batch_size: int, count: int = 4) -> list:
    """The first `count` batches of the epoch, collated in this process."""
    items = list(sampler)[:count * batch_size]
    return [torch.utils.data.default_collate([dataset[item] for item in items[start:start + batch_size]])
            for start in range(0, len(items), batch_size)]


def row(model: str, path: str, augment: bool | None, precision: str, batch_size: int, steps: int,
        timing: dict) -> dict:
    """One measurement, printed as a table line."""
    result = {"model": model, "path": path, "augment": augment, "precision": precision, "batch_size": batch_size,
              "n_per_speaker": N_PER_SPEAKER, "steps": steps, "load_average_1min": os.getloadavg()[0], **timing}
    print(table_line(result), flush=True)
    return result


def measure_model(root: Path, model: str, steps: int, rows: list, repeats: int, device: str) -> None:
    """Our path, compute-only and the original's way for one model, with and without augmentation.

    The target configuration's rows are measured `repeats` times in turn, so that a change in machine load
    hits every path. On a GPU our path is also measured with --mixedprec (float16)."""
    batch_size = MODELS[model]["batch_size"]
    trainer = quiet(build_trainer, training_args(root, model, False, batch_size, WORKERS, device), False)
    mixed = (quiet(build_trainer, training_args(root, model, False, batch_size, WORKERS, device), True)
             if device == "cuda" else None)
    for augment in (True, False):
        args = training_args(root, model, augment, batch_size, WORKERS, device)
        dataset, sampler = training_data(args, WARMUP + steps)
        target = augment and model == TARGET_MODEL
        for _ in range(repeats if target else 1):
            if augment:
                rows.append(row(model, "compute-only", None, "float32", batch_size, steps,
                                compute_only(trainer, in_memory_batches(dataset, sampler, batch_size), steps)))
            rows.append(row(model, "ours", augment, "float32", batch_size, steps,
                            ours(trainer, dataset, sampler, args, steps)))
            if mixed:
                rows.append(row(model, "ours", augment, precision_name(mixed), batch_size, steps,
                                ours(mixed, dataset, sampler, args, steps)))
            if target:
                one_worker = argparse.Namespace(**dict(vars(args), nDataLoaderThread=1))
                rows.append(row(model, "ours, 1 worker", augment, "float32", batch_size, steps,
                                ours(trainer, dataset, sampler, one_worker, steps)))
            rows.append(row(model, "original's way", augment, "float32", batch_size, steps,
                            originals_way(trainer, dataset, sampler, args, steps)))


def measure_precisions(root: Path, model: str, rows: list, device: str) -> None:
    """float32 vs --mixedprec autocast of the in-memory train step (small batch: bf16 is slow without bf16 units)."""
    args = training_args(root, model, False, PRECISION_BATCH, WORKERS, device)
    dataset, sampler = training_data(args, 2)
    batches = in_memory_batches(dataset, sampler, PRECISION_BATCH, 2)
    for mixedprec in (False, True):
        trainer = quiet(build_trainer, args, mixedprec)
        rows.append(row(model, "compute-only (precision probe)", None, precision_name(trainer),
                        PRECISION_BATCH, PRECISION_STEPS, compute_only(trainer, batches, PRECISION_STEPS)))


def table_line(result: dict) -> str:
    """One Markdown table row."""
    augment = {None: "-", True: "on", False: "off"}[result["augment"]]
    return (f"| {result['model']} | {result['path']} | {augment} | {result['precision']} | "
            f"{result['batch_size']}x{N_PER_SPEAKER} | {result['samples_per_second']:.1f} | "
            f"{100 * result['data_wait_share']:.1f}% | {result['main_process_cpu_ms_per_sample']:.0f} | "
            f"{result['load_average_1min']:.1f} |")


def samples_per_second(rows: list, path: str, augment: bool | None, precision: str = "float32") -> float:
    """The target model's samples/s on one path: the median over its repeats."""
    return float(np.median([result["samples_per_second"] for result in rows
                            if (result["model"], result["path"], result["augment"], result["precision"])
                            == (TARGET_MODEL, path, augment, precision)]))


def data_wait_share(rows: list, path: str) -> float:
    """The largest data-wait share of the target model's augmented rows on one path."""
    return max(result["data_wait_share"] for result in rows
               if (result["model"], result["path"], result["augment"]) == (TARGET_MODEL, path, True))


def targets(rows: list) -> dict:
    """Issue 8's three ratios for the target configuration (float32, the trainer's precision here), from medians."""
    original = samples_per_second(rows, "original's way", True)
    limit = samples_per_second(rows, "compute-only", None)
    report = {}
    for path in ("ours", "ours, 1 worker"):
        mine, wait = samples_per_second(rows, path, True), data_wait_share(rows, path)
        report[path] = {
            "data_wait_share": wait, "data_wait_ok": wait < 0.10,
            "ours_over_compute_only": mine / limit, "ours_over_compute_only_ok": mine / limit >= 0.9,
            "ours_over_originals_way": mine / original, "ours_over_originals_way_ok": mine / original >= 2}
    reduced = next(result["precision"] for result in rows
                   if result["path"] == "compute-only (precision probe)" and result["precision"] != "float32")
    probe = {precision: samples_per_second(rows, "compute-only (precision probe)", None, precision)
             for precision in ("float32", reduced)}
    report["reduced_precision"] = reduced
    report["reduced_over_float32"] = probe[reduced] / probe["float32"]
    if any(result["path"] == "ours" and result["precision"] == reduced for result in rows):  # on a GPU
        report["ours_mixedprec_over_originals_way"] = samples_per_second(rows, "ours", True, reduced) / original
    return report


def machine() -> dict:
    """CPU model, core count and whether the CPU has the bf16 units the trainer looks for."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return {"cpu": names[0] if names else platform.processor(), "cpu_count": os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in cpuinfo, "amx_bf16": "amx_bf16" in cpuinfo,
            "trainer_enables_bf16": placement.cpu_has_fast_bfloat16(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_targets(report: dict) -> None:
    """The three target ratios of the issue, with a verdict each."""
    verdict = {True: "holds", False: "MISSES"}
    for path in ("ours", "ours, 1 worker"):
        values = report[path]
        print(f"{TARGET_MODEL} 30x2 augment on, float32, {path}: "
              f"data wait {100 * values['data_wait_share']:.1f}% (< 10%: {verdict[values['data_wait_ok']]}); "
              f"ours/compute-only {values['ours_over_compute_only']:.2f} "
              f"(>= 0.9: {verdict[values['ours_over_compute_only_ok']]}); "
              f"ours/original's way {values['ours_over_originals_way']:.2f} "
              f"(>= 2: {verdict[values['ours_over_originals_way_ok']]})")
    print(f"{report['reduced_precision']} autocast / float32 train step: {report['reduced_over_float32']:.2f}x "
          "the samples/s")
    if "ours_mixedprec_over_originals_way" in report:
        print(f"ours with --mixedprec / original's way: {report['ours_mixedprec_over_originals_way']:.2f}")


def main() -> None:
    """Generate the corpus, measure every path, print the table and the targets, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to measure (default: both; the targets need ResNetSE34L)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 timed steps, small corpus")
    parser.add_argument("--steps_scale", type=float, default=1.0,
                        help="scales the timed steps per measurement (24 for ResNetSE34L, 10 for ResNetSE34V2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure the target configuration's paths this many times in turn (medians kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                        help="where to train (default: cuda when PyTorch sees a GPU)")
    parser.add_argument("--data", default="", help="folder for the generated corpus, reused when present "
                                                   "(default: a temporary folder)")
    parser.add_argument("--speakers", type=int, default=120, help="generated speakers (default 120)")
    parser.add_argument("--per_speaker", type=int, default=16, help="utterances per speaker (default 16)")
    options = parser.parse_args()
    speakers, per_speaker = (40, 8) if options.quick else (options.speakers, options.per_speaker)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(options.data or temporary)
        prepare_corpus(root, speakers, per_speaker)
        print("| model | path | augment | precision | batch | samples/s | data wait | main CPU ms/sample | "
              "load avg |\n|---|---|---|---|---|---:|---:|---:|---:|")
        for model in options.models:
            steps = 2 if options.quick else max(2, round(options.steps_scale * MODELS[model]["steps"]))
            measure_model(root, model, steps, rows, options.repeats, options.device)
        if TARGET_MODEL in options.models:
            measure_precisions(root, TARGET_MODEL, rows, options.device)
    report = {"machine": machine(), "device": options.device, "quick": options.quick,
              "steps_scale": options.steps_scale, "repeats": options.repeats, "max_frames": MAX_FRAMES,
              "workers": WORKERS, "warmup_steps": WARMUP,
              "seconds": time.perf_counter() - started, "rows": rows}
    if TARGET_MODEL in options.models:
        report["targets"] = targets(rows)
        print_targets(report["targets"])
    save_json(RESULTS, report)


if __name__ == "__main__":
    main()
