"""Train-loader throughput (ours vs. the naive whole-file way) against what ResNetSE34L consumes per second."""
import argparse
import os
import platform
import random
import sys
import tempfile
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy import signal

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from results_file import save_json  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "dataloader.json"

import DatasetLoader  # noqa: E402
from audio import augmentation  # noqa: E402
from audio import reading as AudioReader  # noqa: E402
from audio.augmentation import original_rooms  # noqa: E402


def write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, 16000, subtype="PCM_16")


def generate(root: Path, speakers: int, per_speaker: int, rng: np.random.Generator) -> Path:
    """4-10 s utterances, 5 s split-MUSAN files and 0.5 s RIRs in the real layouts; returns the train list."""
    lines = []
    for speaker in range(speakers):
        for number in range(per_speaker):
            relative = f"id{speaker:05d}/video/{number:05d}.wav"
            write_wav(root / "wav" / relative, 0.1 * rng.standard_normal(int(rng.uniform(4, 10) * 16000)))
            lines.append(f"id{speaker:05d} {relative}\n")
    for category, count in (("noise", 30), ("speech", 60), ("music", 30)):
        for number in range(count):
            write_wav(root / "musan_split" / category / "set" / f"{category}{number}" / "00000.wav",
                      0.1 * rng.standard_normal(80000))
    for number in range(20):
        rir = np.exp(-np.arange(8000) / 1500) * rng.standard_normal(8000)
        write_wav(root / "rirs" / "smallroom" / f"Room{number:03d}" / "Room-00001.wav", 0.5 * rir / np.abs(rir).max())
    (root / "train_list.txt").write_text("".join(lines))
    return root / "train_list.txt"


def naive_crop(path: str, max_audio: int) -> np.ndarray:
    """The naive way: read the whole file as float64, then cut one random crop."""
    audio, _ = soundfile.read(path)
    if len(audio) <= max_audio:
        audio = np.pad(audio, (0, max_audio - len(audio) + 1), mode="wrap")
    start = int(random.random() * (len(audio) - max_audio))
    return audio[np.newaxis, start:start + max_audio]


class NaiveDataset(torch.utils.data.Dataset):
    """Whole-file reads of speech and noise, scipy full convolution for reverberation (the original's way)."""

    def __init__(self, ours: DatasetLoader.train_dataset_loader, musan: str, rirs: str, augment: bool):
        self.data_list, self.data_label = ours.data_list, ours.data_label
        self.max_audio = AudioReader.crop_length(ours.max_frames)
        self.noises = augmentation.musan_index(musan) if augment else None
        self.rirs = original_rooms(augmentation.rir_index(rirs)) if augment else None

    def __len__(self) -> int:
        return len(self.data_list)

    def augment(self, audio: np.ndarray) -> np.ndarray:
        kind = random.choice(augmentation.AUGMENT_TYPES)
        if kind == "reverb":
            rir, _ = soundfile.read(random.choice(self.rirs))
            rir = rir[np.newaxis] / np.sqrt(np.sum(rir ** 2))
            return signal.convolve(audio, rir, mode="full")[:, :self.max_audio]
        if kind == "none":
            return audio
        low, high = augmentation.NOISE_COUNT[kind]
        paths = random.sample(self.noises[kind], random.randint(low, high))
        noises = [naive_crop(path, self.max_audio) for path in paths]
        clean_db = 10 * np.log10(np.mean(audio ** 2) + 1e-4)
        scaled = [np.sqrt(10 ** ((clean_db - 10 * np.log10(np.mean(noise ** 2) + 1e-4)
                                  - random.uniform(*augmentation.NOISE_SNR[kind])) / 10)) * noise for noise in noises]
        return np.sum(np.concatenate(scaled, axis=0), axis=0, keepdims=True) + audio

    def __getitem__(self, indices: list[int]):
        crops = [naive_crop(self.data_list[index], self.max_audio) for index in indices]
        if self.noises is not None:
            crops = [self.augment(crop) for crop in crops]
        return torch.FloatTensor(np.concatenate(crops, axis=0)), self.data_label[indices[-1]]


def utterances_per_second(dataset, sampler, batch_size: int, workers: int, epochs: int = 2) -> float:
    """Steady-state utterances/s over `epochs` epochs after an untimed warm-up epoch (workers kept alive)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         worker_init_fn=DatasetLoader.worker_init_fn, drop_last=True,
                                         persistent_workers=workers > 0)
    count, start = 0, 0.0
    for epoch in range(epochs + 1):
        sampler.set_epoch(epoch + 1)
        if epoch == 1:
            start = time.perf_counter()
        for audio, _ in loader:
            count += audio.shape[0] * audio.shape[1] if epoch > 0 else 0
    return count / (time.perf_counter() - start)


def item_costs_ms(datasets: dict, items: list[list[int]], rounds: int = 5) -> dict:
    """Best-of-`rounds` milliseconds per utterance of each dataset indexed directly, measured interleaved."""
    best = dict.fromkeys(datasets, float("inf"))
    for _ in range(rounds):
        for name, dataset in datasets.items():
            start = time.perf_counter()
            for item in items:
                dataset[item]
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1000 * seconds / sum(len(item) for item in items) for name, seconds in best.items()}


def model_utterances_per_second(batch_items: int, n_per_speaker: int, max_frames: int, repeats: int) -> float:
    """Utterances/s ResNetSE34L (SAP, 40 mels, nOut 512) + angleproto + Adam consume in training steps."""
    model = import_module("models.ResNetSE34L").MainModel(nOut=512, encoder_type="SAP", n_mels=40, log_input=True)
    loss = import_module("loss.angleproto").LossFunction()
    optimizer = torch.optim.Adam(list(model.parameters()) + list(loss.parameters()), lr=0.001)
    batch = torch.randn(batch_items * n_per_speaker, AudioReader.crop_length(max_frames))
    label = torch.arange(batch_items)

    def step() -> None:
        optimizer.zero_grad()
        embeddings = model(batch).reshape(batch_items, n_per_speaker, -1)
        loss(embeddings, label)[0].backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats * batch_items * n_per_speaker / (time.perf_counter() - start)


def main() -> None:
    """Measure, print a Markdown table and write benchmarks/results/dataloader.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speakers", type=int, default=40, help="generated speakers (default 40)")
    parser.add_argument("--per_speaker", type=int, default=10, help="utterances per speaker (default 10)")
    parser.add_argument("--batch_size", type=int, default=10, help="speakers per batch (default 10)")
    parser.add_argument("--model_batch", type=int, default=32, help="speakers per model step (default 32)")
    args = parser.parse_args()
    n_per_speaker, max_frames = 2, 200
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        train_list = generate(root, args.speakers, args.per_speaker, rng)
        options = dict(musan_path=str(root / "musan_split"), rir_path=str(root / "rirs"), max_frames=max_frames,
                       train_path=str(root / "wav"), nPerSpeaker=n_per_speaker, seed=1)
        rows, costs = [], {}
        torch.set_num_threads(1)  # collation in the main process; avoids OpenMP contention on a busy machine
        print("| loader | augment | workers | utterances/s |\n|---|---|---:|---:|")
        for augment in (False, True):
            ours = DatasetLoader.train_dataset_loader(str(train_list), augment, **options)
            sampler = DatasetLoader.train_dataset_sampler(ours, n_per_speaker, 500, args.batch_size, False, 1)
            naive = NaiveDataset(ours, options["musan_path"], options["rir_path"], augment)
            for name, cost in item_costs_ms({"ours": ours, "naive": naive}, list(sampler)[:60]).items():
                costs[(name, augment)] = cost
            for name, dataset, worker_counts in (("ours", ours, (0, 1, 2)), ("naive", naive, (0, 2))):
                for workers in worker_counts:
                    rate = utterances_per_second(dataset, sampler, args.batch_size, workers)
                    rows.append({"loader": name, "augment": augment, "workers": workers, "utterances_per_s": rate})
                    print(f"| {name} | {'on' if augment else 'off'} | {workers} | {rate:.0f} |", flush=True)
        torch.set_num_threads(os.cpu_count() or 1)
    model_rate = model_utterances_per_second(args.model_batch, n_per_speaker, max_frames, repeats=3)
    print(f"ResNetSE34L + angleproto training step: {model_rate:.0f} utterances/s "
          f"({torch.get_num_threads()} threads)")
    rate = {(row["loader"], row["augment"], row["workers"]): row["utterances_per_s"] for row in rows}
    for (name, augment), cost in costs.items():
        print(f"{name} loader, augment {'on' if augment else 'off'}: {cost:.2f} ms per utterance")
    report = {"rows": rows, "ms_per_utterance": [{"loader": name, "augment": augment, "ms": cost}
                                                  for (name, augment), cost in costs.items()],
              "model_utterances_per_s": model_rate, "crop_seconds": max_frames / 100,
              "cost_ratio_naive_over_ours_augment": costs[("naive", True)] / costs[("ours", True)],
              "cost_ratio_naive_over_ours_clean": costs[("naive", False)] / costs[("ours", False)],
              "loader_2_workers_augment_over_model": rate[("ours", True, 2)] / model_rate,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    for key in ("cost_ratio_naive_over_ours_augment", "cost_ratio_naive_over_ours_clean",
                "loader_2_workers_augment_over_model"):
        print(f"{key}: {report[key]:.2f}")
    save_json(RESULTS, report)


if __name__ == "__main__":
    main()
