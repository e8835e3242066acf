"""Calibration: recovers a known LLR mapping; Cllr, minCllr, actDCF against hand-worked values."""

import json
import math

import numpy as np
import pytest

from evaluation import calibration as cal


def gaussian_scores(n, mean_target=2.0, mean_non=-1.0, sigma=1.5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.where(labels == 1, rng.normal(mean_target, sigma, n), rng.normal(mean_non, sigma, n))
    slope = (mean_target - mean_non) / sigma ** 2
    offset = -(mean_target ** 2 - mean_non ** 2) / (2 * sigma ** 2)
    return scores, labels, slope, offset


@pytest.mark.parametrize("prior", [0.5, 0.05])
def test_fit_recovers_the_true_llr_of_gaussian_scores(prior):
    scores, labels, slope, offset = gaussian_scores(40000)
    fitted = cal.fit_calibration(scores * 0.01 - 3.0, labels, prior=prior)  # any affine score scale
    assert fitted.slope * 0.01 == pytest.approx(slope, rel=0.05)
    test_scores = np.array([-2.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(fitted.llr(test_scores * 0.01 - 3.0), slope * test_scores + offset, atol=0.08)
    assert fitted.n_target + fitted.n_nontarget == 40000


def test_calibrated_llrs_have_cllr_near_min_cllr_and_raw_scores_do_not():
    scores, labels, _, _ = gaussian_scores(20000, seed=1)
    raw = scores * 5 + 10
    fitted = cal.fit_calibration(raw, labels)
    calibrated = cal.cllr(fitted.llr(raw), labels)
    minimum = cal.min_cllr(raw, labels)
    assert minimum <= calibrated < minimum + 0.02
    assert cal.cllr(raw, labels) > 2 * calibrated


def test_hand_worked_metrics():
    assert cal.cllr(np.zeros(2), np.array([1, 0])) == pytest.approx(1.0)
    assert cal.cllr(np.array([math.log(3), -math.log(3)]), np.array([1, 0])) == pytest.approx(math.log2(4 / 3))
    assert cal.min_cllr(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    # one swapped pair of four: PAV pools it, posterior 0.5 there -> 0.5 * (0.5 * 1 + 0.5 * 1) = 0.5 bits
    assert cal.min_cllr(np.array([0.1, 0.2, 0.3, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    llrs, labels = np.array([1.0, -1.0, 2.0, 0.5]), np.array([1, 1, 0, 0])
    assert cal.act_dcf(llrs, labels, 0.5) == pytest.approx(1.5)
    # at p_target 0.05 the threshold is log(19) ~ 2.94: everything rejected -> cost 0.05 / 0.05 = 1
    assert cal.act_dcf(llrs, labels, 0.05) == pytest.approx(1.0)
    probability, accept = cal.verdict(0.0, 0.5)
    assert probability == pytest.approx(0.5) and accept
    probability, accept = cal.verdict(math.log(19), 0.05)
    assert probability == pytest.approx(0.5) and accept
    assert cal.verdict(2.0, 0.05)[1] is False


def test_save_load_and_set_up_checks(tmp_path):
    scores, labels, _, _ = gaussian_scores(2000)
    fitted = cal.fit_calibration(scores, labels, scoring="cosine", score_norm="asnorm", fitted_on="dev.txt")
    path = str(tmp_path / "cal.json")
    fitted.save(path)
    loaded = cal.Calibration.load(path)
    assert loaded == fitted
    loaded.check_matches("cosine", "asnorm", path)
    with pytest.raises(ValueError, match="fitted on --scoring cosine --score_norm asnorm"):
        loaded.check_matches("original", "none", path)


def test_bad_calibration_input(tmp_path):
    with pytest.raises(ValueError, match="needs target .1. and non-target .0. trials.*0 targets"):
        cal.fit_calibration(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="Cllr needs"):
        cal.cllr(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(FileNotFoundError, match="Cannot read calibration .*none.json"):
        cal.Calibration.load(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cal.Calibration.load(str(tmp_path / "bad.json"))
    (tmp_path / "part.json").write_text(json.dumps({"slope": 1.0}))
    with pytest.raises(ValueError, match="lacks the keys offset"):
        cal.Calibration.load(str(tmp_path / "part.json"))
