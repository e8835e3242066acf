"""Reference scorer for a trial list: cosine of per-file mean MFCCs (no training); prints and saves the EER."""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from sklearn.metrics import roc_curve

RESULTS = Path(__file__).resolve().parent / "results"


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER in percent, where the miss and false-alarm rates cross on the ROC curve."""
    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    index = int(np.nanargmin(np.abs(fnr - fpr)))
    return float(100 * (fpr[index] + fnr[index]) / 2)


def mean_mfcc(path: Path, transform: torchaudio.transforms.MFCC) -> np.ndarray:
    """Mean MFCC vector of one file, without c0 (overall level)."""
    samples, _ = soundfile.read(path, dtype="float32")
    with torch.no_grad():
        mfcc = transform(torch.from_numpy(samples))
    return mfcc[1:].mean(dim=1).numpy()


def score_trials(trial_list: Path, wav_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores (after removing the mean over all trial files) and labels of a veri_test-format list."""
    trials = [line.split() for line in trial_list.read_text().splitlines() if line.strip()]
    files = sorted({path for trial in trials for path in trial[1:]})
    transform = torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=20,
                                           melkwargs={"n_fft": 512, "win_length": 400, "hop_length": 160,
                                                      "n_mels": 40})
    vectors = np.stack([mean_mfcc(wav_path / name, transform) for name in files])
    vectors -= vectors.mean(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9
    index = {name: i for i, name in enumerate(files)}
    scores = np.array([vectors[index[a]] @ vectors[index[b]] for _, a, b in trials])
    labels = np.array([int(label) for label, _, _ in trials])
    return scores, labels


def main() -> None:
    """Score the trials, print the EER and write benchmarks/results/mfcc_baseline.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test_list", default="data/demo/veri_test.txt", help="trial list (label file1 file2)")
    parser.add_argument("--test_path", default="data/demo/wav", help="folder the trial paths are relative to")
    args = parser.parse_args()
    start = time.perf_counter()
    scores, labels = score_trials(Path(args.test_list), Path(args.test_path))
    eer = equal_error_rate(scores, labels)
    seconds = time.perf_counter() - start
    print(f"MFCC-mean cosine baseline: EER {eer:.2f}% on {len(labels)} trials of {args.test_list} ({seconds:.1f} s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mfcc_baseline.json").write_text(json.dumps(
        {"test_list": args.test_list, "trials": int(len(labels)), "eer_percent": eer, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
