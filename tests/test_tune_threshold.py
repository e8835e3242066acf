"""tuneThreshold: hand-worked values, the original's loop semantics and sklearn's ROC curve."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from tuneThreshold import ComputeErrorRates, ComputeMinDcf, tuneThresholdfromScore

SCORES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
LABELS = [0, 0, 1, 0, 1, 1]


def loop_error_rates(scores, labels):
    """The original's definition written as a plain Python loop (stable ascending sort, running counts)."""
    pairs = sorted(enumerate(scores), key=lambda p: p[1])
    sorted_labels = [labels[i] for i, _ in pairs]
    fnrs, fprs, n_t, n_n = [], [], 0, 0
    for label in sorted_labels:
        n_t += label
        n_n += 1 - label
        fnrs.append(n_t)
        fprs.append(n_n)
    total_t = sum(sorted_labels)
    total_n = len(sorted_labels) - total_t
    return [x / total_t for x in fnrs], [1 - x / total_n for x in fprs], [s for _, s in pairs]


def loop_min_dcf(fnrs, fprs, thresholds, p_target, c_miss, c_fa):
    best, best_thr = float("inf"), thresholds[0]
    for fnr, fpr, thr in zip(fnrs, fprs, thresholds):
        c_det = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
        if c_det < best:
            best, best_thr = c_det, thr
    return best / min(c_miss * p_target, c_fa * (1 - p_target)), best_thr


def test_hand_worked_error_rates_and_min_dcf():
    fnrs, fprs, thresholds = ComputeErrorRates(SCORES, LABELS)
    np.testing.assert_allclose(fnrs, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(fprs, [2 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    assert thresholds == SCORES
    min_dcf, threshold = ComputeMinDcf(fnrs, fprs, thresholds, 0.05, 1, 1)
    assert min_dcf == pytest.approx((0.05 / 3) / 0.05)
    assert threshold == 0.4
    min_dcf, threshold = ComputeMinDcf(fnrs, fprs, thresholds, 0.01, 1, 1)
    assert min_dcf == pytest.approx(1 / 3)
    assert threshold == 0.4


def test_hand_worked_eer_and_tuned_thresholds():
    tuned, eer, fpr, fnr = tuneThresholdfromScore(SCORES, LABELS, [1, 0.1], target_fr=[0.5])
    assert eer == pytest.approx(100 / 3)
    # sklearn's ROC (drop_intermediate) keeps thresholds inf, .6, .5, .4, .3, .1
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 1])
    np.testing.assert_allclose(fnr, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0])
    assert len(tuned) == 3
    assert tuned[0][0] == 0.5 and tuned[0][2] == pytest.approx(1 / 3)  # target fnr 0.5 -> fnr 1/3
    assert tuned[1][0] == 0.1 and tuned[1][1] == 1.0  # target fpr 1
    assert tuned[2][0] == np.inf and tuned[2][1] == 0.0  # target fpr 0.1 -> first point with fpr 0


def test_perfect_separation_gives_zero():
    _, eer, _, _ = tuneThresholdfromScore([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [1, 0.1])
    assert eer == 0.0
    fnrs, fprs, thr = ComputeErrorRates([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert ComputeMinDcf(fnrs, fprs, thr, 0.05, 1, 1) == (0.0, 0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1).astype(np.float32)  # many ties
    fnrs, fprs, thresholds = ComputeErrorRates(scores, labels)
    ref = loop_error_rates(scores.tolist(), labels.tolist())
    assert fnrs == ref[0] and fprs == ref[1]
    np.testing.assert_array_equal(thresholds, ref[2])
    for p_target in (0.05, 0.01):
        assert ComputeMinDcf(fnrs, fprs, thresholds, p_target, 1, 1) == loop_min_dcf(*ref, p_target, 1, 1)
    assert ComputeMinDcf(fnrs, fprs, thresholds, 0.01, 10, 1) == loop_min_dcf(*ref, 0.01, 10, 1)


def test_error_rates_agree_with_sklearn_roc_curve():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(labels, 1.0)  # distinct scores
    fnrs, fprs, thresholds = ComputeErrorRates(scores, labels)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    # ours: rates with a trial counted as rejected when score <= threshold; sklearn: accepted when score >= thr
    by_thr = {t: (1 - p, f) for t, p, f in zip(thr, tpr, fpr)}
    for fnr_ours, fpr_ours, t in zip(fnrs[:-1], fprs[:-1], thresholds[:-1]):
        next_thr = thresholds[thresholds.index(t) + 1]
        fnr_sk, fpr_sk = by_thr[next_thr]
        assert fnr_ours == pytest.approx(fnr_sk) and fpr_ours == pytest.approx(fpr_sk)
    # EER from sklearn's curve, computed independently
    idx = np.argmin(np.abs((1 - tpr) - fpr))
    _, eer, _, _ = tuneThresholdfromScore(scores, labels, [1, 0.1])
    assert abs(eer - 100 * max(fpr[idx], 1 - tpr[idx])) < 0.2


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, 0.2], [1, 1], "both target"),
        ([0.1, 0.2], [0, 0], "both target"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "0 .* or 1"),
        ([0.1, 0.2], [0, 1, 1], "2 scores but 3 labels"),
        ([0.1, float("nan")], [0, 1], "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        tuneThresholdfromScore(scores, labels, [1, 0.1])
    with pytest.raises(ValueError, match=message):
        ComputeErrorRates(scores, labels)
