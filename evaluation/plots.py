"""DET curve and target/non-target score histograms as PNG files beside a score file."""

from __future__ import annotations

import os

import numpy as np
from sklearn.metrics import det_curve

from runtime.atomic_files import atomic_write

DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]


def _probit(rates: np.ndarray) -> np.ndarray:
    """Normal deviate of error rates, clipped so that 0 and 1 stay on the plot."""
    from scipy.stats import norm  # imported when a plot is drawn: scipy.stats takes a second to import

    return norm.ppf(np.clip(rates, 1e-4, 1 - 1e-4))


def _figure(width: float, height: float):
    """(figure, axes) drawn off screen. matplotlib is imported here, at the first plot, because importing it
    is slow and may start font-cache subprocesses."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _save(figure, path: str) -> None:
    """Write a PNG atomically."""
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")


def plot_det(path: str, target: np.ndarray, nontarget: np.ndarray, metrics: dict) -> None:
    """DET curve (probit axes) with the EER point and each MinDCF operating point marked."""
    labels = np.concatenate([np.ones(len(target)), np.zeros(len(nontarget))])
    fpr, fnr, _ = det_curve(labels, np.concatenate([target, nontarget]))
    figure, axes = _figure(5.5, 5.5)
    axes.plot(_probit(fpr), _probit(fnr), label="DET")
    eer = metrics["eer"] / 100
    axes.plot(_probit(eer), _probit(eer), "o", label=f"EER {100 * eer:.2f}%")
    for p_target, (value, threshold) in metrics["min_dcf"].items():
        point = (float((nontarget > threshold).mean()), float((target <= threshold).mean()))
        axes.plot(*_probit(np.array(point)), "s", label=f"MinDCF {value:.4f} (p_target {p_target:g})")
    ticks = _probit(np.array(DET_TICKS))
    names = [f"{100 * tick:g}" for tick in DET_TICKS]
    axes.set_xticks(ticks, names)
    axes.set_yticks(ticks, names)
    axes.set_xlim(ticks[0], ticks[-1])
    axes.set_ylim(ticks[0], ticks[-1])
    axes.set_xlabel("False acceptance rate (%)")
    axes.set_ylabel("False rejection rate (%)")
    axes.grid(True, alpha=0.4)
    axes.legend(loc="upper right", fontsize=8)
    _save(figure, path)


def plot_histograms(path: str, target: np.ndarray, nontarget: np.ndarray) -> None:
    """Overlaid density histograms of target and non-target scores."""
    figure, axes = _figure(6.5, 4)
    bins = np.linspace(min(target.min(), nontarget.min()), max(target.max(), nontarget.max()), 80)
    axes.hist(nontarget, bins=bins, density=True, alpha=0.6, label=f"non-target ({len(nontarget)})")
    axes.hist(target, bins=bins, density=True, alpha=0.6, label=f"target ({len(target)})")
    axes.set_xlabel("score")
    axes.set_ylabel("density")
    axes.legend()
    _save(figure, path)


def plot_scores(score_file: str, scores: np.ndarray, labels: np.ndarray, metrics: dict) -> list[str]:
    """Write `<score file stem>_det.png` and `_hist.png` for the labelled trials; returns the paths written."""
    if "eer" not in metrics:
        return []
    stem = os.path.splitext(score_file)[0]
    target, nontarget = scores[labels == 1], scores[labels == 0]
    plot_det(stem + "_det.png", target, nontarget, metrics)
    plot_histograms(stem + "_hist.png", target, nontarget)
    return [stem + "_det.png", stem + "_hist.png"]
