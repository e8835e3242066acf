"""EER, MinDCF and threshold tuning: the original's functions and numbers, vectorised with numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics

ArrayLike = Sequence[float] | np.ndarray


def _checked_arrays(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return scores (float64) and labels (int) after checking they form a two-class trial set."""
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_arr = np.asarray(labels).reshape(-1)
    if scores_arr.shape != labels_arr.shape:
        raise ValueError(f"got {scores_arr.size} scores but {labels_arr.size} labels; they must match one to one")
    bad = ~np.isin(labels_arr, (0, 1))
    if bad.any():
        raise ValueError(
            f"labels must be 0 (different speakers) or 1 (same speaker); found {labels_arr[bad][0]!r} "
            f"at position {int(np.argmax(bad))}"
        )
    labels_arr = labels_arr.astype(np.int64)
    n_target = int(labels_arr.sum())
    if n_target == 0 or n_target == labels_arr.size:
        raise ValueError(
            f"EER and MinDCF need both target (1) and non-target (0) trials; got {n_target} targets "
            f"and {labels_arr.size - n_target} non-targets"
        )
    if np.isnan(scores_arr).any():
        raise ValueError(f"{int(np.isnan(scores_arr).sum())} scores are NaN; check the embeddings for NaN values")
    return scores_arr, labels_arr


def tuneThresholdfromScore(
    scores: ArrayLike, labels: ArrayLike, target_fa: Sequence[float], target_fr: Sequence[float] | None = None
) -> tuple[list[list[float]], float, np.ndarray, np.ndarray]:
    """Return (tuned thresholds [threshold, fpr, fnr] per target, EER in percent, fpr, fnr) from the ROC curve."""
    scores_arr, labels_arr = _checked_arrays(scores, labels)
    fpr, tpr, thresholds = metrics.roc_curve(labels_arr, scores_arr, pos_label=1)
    fnr = 1 - tpr
    tuned = []
    for target, rates in [(t, fnr) for t in (target_fr or [])] + [(t, fpr) for t in target_fa]:
        idx = np.nanargmin(np.absolute(target - rates))
        tuned.append([thresholds[idx], fpr[idx], fnr[idx]])
    idx_eer = np.nanargmin(np.absolute(fnr - fpr))
    eer = max(fpr[idx_eer], fnr[idx_eer]) * 100
    return tuned, eer, fpr, fnr


def ComputeErrorRates(scores: ArrayLike, labels: ArrayLike) -> tuple[list[float], list[float], list[float]]:
    """Return (fnrs, fprs, thresholds) at every score, thresholds being the scores sorted ascending (stable)."""
    scores_arr, labels_arr = _checked_arrays(scores, labels)
    order = np.argsort(scores_arr, kind="stable")
    sorted_labels = labels_arr[order]
    n_target = int(sorted_labels.sum())
    n_nontarget = sorted_labels.size - n_target
    fnrs = np.cumsum(sorted_labels) / float(n_target)
    fprs = 1 - np.cumsum(1 - sorted_labels) / float(n_nontarget)
    return fnrs.tolist(), fprs.tolist(), scores_arr[order].tolist()


def ComputeMinDcf(
    fnrs: ArrayLike, fprs: ArrayLike, thresholds: ArrayLike, p_target: float, c_miss: float, c_fa: float
) -> tuple[float, float]:
    """Return (normalised minimum detection cost, threshold where it is reached)."""
    fnrs_arr = np.asarray(fnrs, dtype=np.float64)
    fprs_arr = np.asarray(fprs, dtype=np.float64)
    if fnrs_arr.size == 0 or fnrs_arr.shape != fprs_arr.shape or len(thresholds) != fnrs_arr.size:
        raise ValueError("fnrs, fprs and thresholds must be non-empty and of the same length (see ComputeErrorRates)")
    c_det = c_miss * fnrs_arr * p_target + c_fa * fprs_arr * (1 - p_target)
    idx = int(np.argmin(np.where(np.isnan(c_det), np.inf, c_det)))
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[idx] / c_def), thresholds[idx]
