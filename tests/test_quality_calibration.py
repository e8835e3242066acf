"""Quality-aware calibration (QMF): helps where quality shapes the scores, does no harm where it does not."""

import json

import numpy as np
import pytest
import torch
from test_evaluation_run import make_args

import evaluation
from evaluation import calibration as cal
from evaluation import quality
from SpeakerNet import SpeakerNet


def duration_dependent_trials(n: int, quality_matters: bool, seed: int):
    """Scores that drift (both classes) and get noisier as the shorter side of the trial gets shorter."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    durations = np.exp(rng.uniform(np.log(1.0), np.log(30.0), (2, n)))
    short = np.log(durations.min(0))
    effect = short if quality_matters else np.log(np.exp(rng.uniform(0.0, np.log(30.0), n)))
    mean = np.where(labels == 1, 2.0, -1.0) + 1.5 * (1.5 - effect)
    scores = rng.normal(mean, 1.6 - 0.3 * effect)
    features = {"log_duration_min": short, "log_duration_max": np.log(durations.max(0))}
    return scores, labels, features


def held_out_cllr(quality_matters: bool) -> tuple[float, float]:
    """(score-only Cllr, QMF Cllr) on held-out trials of a calibration fitted on 20,000 others."""
    scores, labels, features = duration_dependent_trials(40000, quality_matters, seed=1)
    train, test = slice(0, 20000), slice(20000, None)
    fitted = cal.fit_calibration(scores[train], labels[train],
                                 quality={name: value[train] for name, value in features.items()})
    held_out = {name: value[test] for name, value in features.items()}
    return (cal.cllr(fitted.llr(scores[test]), labels[test]),
            cal.cllr(fitted.quality_llr(scores[test], held_out), labels[test]))


def test_quality_terms_lower_cllr_where_duration_shapes_the_scores():
    score_only, with_quality = held_out_cllr(quality_matters=True)
    assert with_quality < score_only - 0.15, (score_only, with_quality)


def test_quality_terms_do_not_hurt_where_duration_does_not_matter():
    score_only, with_quality = held_out_cllr(quality_matters=False)
    assert with_quality == pytest.approx(score_only, abs=0.005)


def test_quality_model_saves_loads_and_old_files_still_load(tmp_path):
    scores, labels, features = duration_dependent_trials(3000, True, seed=2)
    fitted = cal.fit_calibration(scores, labels, quality=features)
    assert fitted.quality == ["log_duration_min", "log_duration_max"] and len(fitted.quality_weights) == 4
    path = str(tmp_path / "qmf.json")
    fitted.save(path)
    loaded = cal.Calibration.load(path)
    np.testing.assert_allclose(loaded.quality_llr(scores, features), fitted.quality_llr(scores, features), atol=1e-9)
    old = {key: value for key, value in json.load(open(path)).items() if not key.startswith("quality")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    plain = cal.Calibration.load(str(tmp_path / "old.json"))
    assert plain.quality == [] and plain.llr(np.array([1.0]))[0] == pytest.approx(fitted.llr(np.array([1.0]))[0])


def test_a_constant_feature_gets_no_weight():
    scores, labels, _ = duration_dependent_trials(2000, True, seed=3)
    fitted = cal.fit_calibration(scores, labels, quality={"log_duration_min": np.full(2000, np.log(1.5))})
    assert fitted.quality_weights[2] == 0.0
    np.testing.assert_allclose(fitted.quality_llr(scores, {"log_duration_min": np.full(2000, 0.4)}),
                               fitted.llr(scores), atol=1e-4)


def test_terms_and_their_errors():
    assert quality.feature_names(quality.parse_terms("duration, norm", "none")) == [
        "log_duration_min", "log_duration_max", "norm_min", "norm_max"]
    with pytest.raises(ValueError, match="unknown term 'snr'"):
        quality.parse_terms("duration,snr", "asnorm")
    with pytest.raises(ValueError, match="cohort needs the cohort statistics"):
        quality.parse_terms("cohort", "none")


@pytest.fixture(scope="module")
def speaker_net():
    torch.manual_seed(0)
    return SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                      encoder_type="SAP", n_mels=40, log_input=True)


def test_eval_fits_and_applies_a_quality_calibration(speaker_net, tiny_corpus, tmp_path, capsys):
    fitted = str(tmp_path / "qmf.json")
    common = ["--score_norm", "asnorm", "--norm_topk", "3", "--cohort_utterances", "2",
              "--embeddings_cache", str(tmp_path / "cache.pt")]
    first = evaluation.run_evaluation(speaker_net, make_args(tiny_corpus, tmp_path, *common, "--fit_calibration",
                                                             fitted, "--calibration_quality", "duration,norm,cohort"))
    output = capsys.readouterr().out
    assert "(with quality terms)" in output and "(score only)" in output and "Quality model: llr = " in output
    result = first[tiny_corpus["test_list"]]
    assert {"cllr", "min_cllr", "act_dcf"} <= set(result["score_only"])
    assert 0 <= result["cllr"] <= result["score_only"]["cllr"]  # on the list it was fitted on: never worse
    assert len(cal.Calibration.load(fitted).quality) == 8
    again = evaluation.run_evaluation(speaker_net, make_args(tiny_corpus, tmp_path, *common, "--calibration", fitted,
                                                             score_file=str(tmp_path / "again.txt")))
    assert again[tiny_corpus["test_list"]]["cllr"] == pytest.approx(result["cllr"], abs=1e-9)
    with pytest.raises(ValueError, match="--calibration_quality names the quality terms of --fit_calibration"):
        evaluation.run_evaluation(speaker_net, make_args(tiny_corpus, tmp_path, "--calibration", fitted,
                                                         "--calibration_quality", "norm"))
