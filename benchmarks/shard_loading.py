"""Sharded loading against the file-list loader on many short generated files, and the data-wait share of
training ResNetSE34L from shards.

Generates `--speakers` x `--per_speaker` utterances of 1.5 s, writes them to shards with dataprep's
--make_shards, then measures in one run: utterances/s of one epoch of each loader (the same crops, batches of
`--batch_size` x 2), and a few training steps of ResNetSE34L from the shards (trainer's own data-wait share).
Tries to drop the page cache first (it needs root and a writable /proc/sys/vm/drop_caches); otherwise the files
are in the warm cache, as they are right after being written. Writes benchmarks/results/shard_loading.json.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))  # before benchmarks/, whose evaluation.py would shadow ours
from results_file import save_json  # noqa: E402
from train_throughput import Batches, build_trainer  # noqa: E402

import arguments  # noqa: E402
import DatasetLoader  # noqa: E402
from preparation.shards import make_shards  # noqa: E402
from runtime import loader_workers  # noqa: E402
from settings.sections import Settings  # noqa: E402

RESULTS = BENCHMARKS / "results" / "shard_loading.json"


def generate_corpus(root: Path, speakers: int, per_speaker: int, seconds: float = 1.5, seed: int = 0) -> Path:
    """Short noise-like utterances `wav/<speaker>/<video>/<n>.wav` and their train list; returns the list."""
    rng = np.random.default_rng(seed)
    lines = []
    for speaker in range(speakers):
        for number in range(per_speaker):
            relative = f"id{speaker:05d}/video{number % 3}/{number:05d}.wav"
            (root / "wav" / relative).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(root / "wav" / relative, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(
                np.float32), 16000, subtype="PCM_16")
            lines.append(f"id{speaker:05d} {relative}\n")
    (root / "train_list.txt").write_text("".join(lines))
    return root / "train_list.txt"


def drop_page_cache() -> str:
    """'dropped' when the kernel's page cache could be emptied, else 'warm cache' (and why)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return "dropped"
    except OSError as error:
        return f"warm cache (drop_caches not allowed: {error.strerror})"


def settings_for(root: Path, shards: bool, batch_size: int, workers: int, max_frames: int) -> argparse.Namespace:
    """The trainer's flags for the corpus, from the list or from its shards."""
    source = (["--train_shards", str(root / "shards" / "shards.list")] if shards else
              ["--train_list", str(root / "train_list.txt"), "--train_path", str(root / "wav")])
    return arguments.parse_arguments([
        "--model", "ResNetSE34L", "--encoder_type", "SAP", "--log_input", "True", "--trainfunc", "angleproto",
        "--nPerSpeaker", "2", "--batch_size", str(batch_size), "--max_frames", str(max_frames),
        "--nDataLoaderThread", str(workers), "--save_path", str(root / "exp"), "--device", "cpu", *source])


def loader_speed(args: argparse.Namespace) -> dict:
    """Utterances/s of one epoch of the trainer's epoch loader (no training)."""
    settings = Settings.from_namespace(args)
    dataset, sampler = DatasetLoader.training_data(settings.data)
    sampler.set_epoch(1)
    dataset.set_epoch(1)
    started, utterances = time.perf_counter(), 0
    with loader_workers.batches(DatasetLoader.epoch_loader(dataset, sampler, settings.data)) as batches:
        for data, _ in batches:
            utterances += data.shape[0] * data.shape[1]
    seconds = time.perf_counter() - started
    return {"utterances": utterances, "seconds": seconds, "utterances_per_second": utterances / seconds}


def training_wait(args: argparse.Namespace, steps: int) -> dict:
    """Data-wait share and samples/s of `steps` ResNetSE34L training steps from the loader, after one warm-up."""
    settings = Settings.from_namespace(args)
    dataset, sampler = DatasetLoader.training_data(settings.data)
    sampler.set_epoch(1)
    dataset.set_epoch(1)
    trainer = build_trainer(args, mixedprec=False)
    with loader_workers.batches(DatasetLoader.epoch_loader(dataset, sampler, settings.data)) as batches:
        trainer.train_network(Batches(batches, 1), verbose=False)
        trainer.train_network(Batches(batches, steps), verbose=False)
    timing = trainer.last_epoch
    return {"steps": steps, "data_wait_share": timing["data_wait_share"],
            "samples_per_second": timing["samples_per_second"], "seconds": timing["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--per_speaker", type=int, default=30)
    parser.add_argument("--shard_size_mb", type=float, default=2.0)
    parser.add_argument("--batch_size", type=int, default=20, help="speakers per batch (2 utterances each)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of both loaders")
    parser.add_argument("--max_frames", type=int, default=100)
    parser.add_argument("--train_steps", type=int, default=6)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        generate_corpus(root, options.speakers, options.per_speaker)
        generated = time.perf_counter() - started
        written, _ = make_shards(root / "train_list.txt", root / "wav", root / "shards", options.shard_size_mb, 0,
                                 quiet=True)
        sharded_seconds = time.perf_counter() - started - generated
        report = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "options": vars(options),
                  "files": options.speakers * options.per_speaker, "shards": written,
                  "make_shards_seconds": sharded_seconds}
        cache = drop_page_cache()
        report["file_list"] = loader_speed(settings_for(root, False, options.batch_size, options.workers,
                                                        options.max_frames))
        drop_page_cache()
        report["shards_loader"] = loader_speed(settings_for(root, True, options.batch_size, options.workers,
                                                            options.max_frames))
        report["page_cache"] = cache
        report["training_from_shards"] = training_wait(
            settings_for(root, True, options.batch_size, options.workers, options.max_frames), options.train_steps)
    print(f"{report['files']} files of 1.5 s in {written} shards ({sharded_seconds:.1f} s to write); {cache}")
    for name in ("file_list", "shards_loader"):
        row = report[name]
        print(f"{name:14s} {row['utterances']:5d} utterances in {row['seconds']:6.2f} s: "
              f"{row['utterances_per_second']:7.1f} utterances/s")
    train = report["training_from_shards"]
    print(f"ResNetSE34L from shards: {train['samples_per_second']:.1f} samples/s, data wait "
          f"{100 * train['data_wait_share']:.1f}% over {train['steps']} steps")
    save_json(RESULTS, report)


if __name__ == "__main__":
    main()
