"""run_evaluation end to end on generated audio: several lists, cache, AS-norm, calibration, score files, plots."""

import argparse
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluation
from evaluation import calibration
from settings.flags import add_evaluation_arguments
from SpeakerNet import SpeakerNet


@pytest.fixture(scope="module")
def speaker_net():
    torch.manual_seed(0)
    return SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                      encoder_type="SAP", n_mels=40, log_input=True)


def make_args(corpus, tmp_path, *flags, **values):
    parser = argparse.ArgumentParser()
    add_evaluation_arguments(parser)
    args = parser.parse_args(list(flags))
    settings = dict(test_list=corpus["test_list"], test_path=corpus["test_path"], train_list=corpus["train_list"],
                    train_path=corpus["train_path"], eval_frames=50, num_eval=3, nDataLoaderThread=0,
                    scoring="original", score_file=str(tmp_path / "out" / "scores.txt"), dcf_p_target=0.05,
                    dcf_c_miss=1, dcf_c_fa=1)
    settings.update(values)
    for key, value in settings.items():
        setattr(args, key, value)
    return args


def read_scores(path):
    return [line.split() for line in open(path, encoding="utf-8")]


def is_png(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    width, height = struct.unpack(">II", header[16:24])
    return header[:8] == b"\x89PNG\r\n\x1a\n" and width > 100 and height > 100


def test_several_lists_cache_asnorm_and_calibration(speaker_net, tiny_corpus, tmp_path, capsys):
    lines = open(tiny_corpus["test_list"]).read().splitlines()
    second = tmp_path / "second.txt"
    second.write_text("\n".join(lines[:6]) + "\n" + " ".join(lines[7].split()[1:]) + "\n")
    lists = f"{tiny_corpus['test_list']},{second}"
    cache, fitted = str(tmp_path / "cache.pt"), str(tmp_path / "cal.json")
    args = make_args(tiny_corpus, tmp_path, "--score_norm", "asnorm", "--norm_topk", "3", "--cohort_utterances", "2",
                     "--embeddings_cache", cache, "--fit_calibration", fitted, test_list=lists)
    first = evaluation.run_evaluation(speaker_net, args)
    output = capsys.readouterr().out
    assert output.count("EER ") == 2 and "Cllr " in output and "1 trial lines" in output
    assert "Saved 18 embeddings" in output  # 6 test files + 6 x 2 cohort files, embedded once
    assert set(first) == {tiny_corpus["test_list"], str(second)}
    assert first[str(second)]["trials"] == 7 and first[str(second)]["unlabelled"] == 1
    main_file = tmp_path / "out" / "scores_test_list.txt"  # the folder is created
    rows = read_scores(main_file)
    assert [row[1:] for row in rows] == [line.split()[1:] for line in lines]
    assert is_png(tmp_path / "out" / "scores_test_list_det.png") and is_png(tmp_path / "out" / "scores_second_hist.png")
    # second run: embeddings from the cache, the saved calibration applied -> the same LLRs
    args = make_args(tiny_corpus, tmp_path, "--score_norm", "asnorm", "--norm_topk", "3", "--cohort_utterances", "2",
                     "--embeddings_cache", cache, "--calibration", fitted, score_file=str(tmp_path / "again.txt"))
    again = evaluation.run_evaluation(speaker_net, args)
    assert "Reusing 18 embeddings" in capsys.readouterr().out
    np.testing.assert_allclose([float(r[0]) for r in read_scores(tmp_path / "again.txt")],
                               [float(r[0]) for r in rows], atol=2e-6)
    assert again[tiny_corpus["test_list"]]["eer"] == first[tiny_corpus["test_list"]]["eer"]


def brute_force_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER in percent where miss and false-alarm rates are closest, over every threshold (the larger of the two)."""
    best = None
    for threshold in np.concatenate([np.sort(scores), [np.inf]]):
        miss = np.mean(scores[labels == 1] < threshold)
        false_alarm = np.mean(scores[labels == 0] >= threshold)
        if best is None or abs(miss - false_alarm) < best[0]:
            best = (abs(miss - false_alarm), 100 * max(miss, false_alarm))
    return best[1]


def test_cosine_snorm_without_score_file(speaker_net, tiny_corpus, tmp_path, tmp_path_factory):
    args = make_args(tiny_corpus, tmp_path, "--score_norm", "snorm", "--cohort_utterances", "1", scoring="cosine",
                     score_file="")
    result = evaluation.run_evaluation(speaker_net, args)[tiny_corpus["test_list"]]
    assert "cllr" not in result
    assert not list(tmp_path.iterdir())
    elsewhere = tmp_path_factory.mktemp("written")
    written = {}
    for norm in ("snorm", "none"):
        path = elsewhere / f"{norm}.txt"
        evaluation.run_evaluation(speaker_net, make_args(tiny_corpus, elsewhere, "--score_norm", norm,
                                                         "--cohort_utterances", "1", scoring="cosine",
                                                         score_file=str(path)))
        written[norm] = [float(row[0]) for row in read_scores(path)]
    scores = np.array(written["snorm"])
    labels = np.array([int(line.split()[0]) for line in open(tiny_corpus["test_list"])])
    assert result["eer"] == pytest.approx(brute_force_eer(scores, labels), abs=1e-9)
    assert not np.allclose(scores, written["none"], atol=1e-3), "s-norm changed the scores"


@pytest.mark.parametrize("flags, message, one_class", [
    (["--score_norm", "asnorm", "--norm_topk", "300"], "has 6 speakers, fewer than --norm_topk 300", False),
    (["--fit_calibration", "a.json", "--calibration", "b.json"], "either --fit_calibration", False),
    (["--score_norm", "znorm"], "--score_norm one of none, asnorm, snorm; got 'original' and 'znorm'", False),
    (["--fit_calibration", "a.json"], "--fit_calibration needs target .1. and non-target .0. trials", True),
])
def test_bad_settings_fail_before_embedding(speaker_net, tiny_corpus, tmp_path, flags, message, one_class, capsys):
    trial_list = tiny_corpus["test_list"]
    if one_class:
        trial_list = tmp_path / "non_targets.txt"
        trial_list.write_text("".join(line for line in open(tiny_corpus["test_list"]) if line.startswith("0")))
    with pytest.raises(ValueError, match=message):
        evaluation.run_evaluation(speaker_net, make_args(tiny_corpus, tmp_path, *flags, test_list=str(trial_list)))
    assert "Embedding" not in capsys.readouterr().err


def test_calibration_from_another_set_up_is_refused(speaker_net, tiny_corpus, tmp_path):
    fitted = str(tmp_path / "cal.json")
    calibration.Calibration(2.0, 1.0, 0.5, "original", "none", "dev.txt", 5, 5).save(fitted)
    args = make_args(tiny_corpus, tmp_path, "--calibration", fitted, scoring="cosine")
    with pytest.raises(ValueError, match="fitted on --scoring original --score_norm none"):
        evaluation.run_evaluation(speaker_net, args)


def test_missing_test_files_are_listed(speaker_net, tiny_corpus, tmp_path):
    trial_list = tmp_path / "trials.txt"
    trial_list.write_text("1 ghost/a.wav ghost/b.wav\n0 ghost/a.wav ghost/c.wav\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)3 of 3 files.*ghost/a.wav"):
        evaluation.run_evaluation(speaker_net, make_args(tiny_corpus, tmp_path, test_list=str(trial_list)))


def test_centred_embeddings_score_as_wespeaker(speaker_net, tiny_corpus, tmp_path):
    """--center_embeddings: every embedding minus the mean of the cohort list's utterance embeddings (all of them
    with --cohort_utterances 0), then cosine scoring; checked against the same computation done here by hand."""
    from audio.kaldi_data import read_speaker_list
    from evaluation.trials import read_trials

    args = make_args(tiny_corpus, tmp_path, "--center_embeddings", "--cohort_utterances", "0", scoring="cosine",
                     eval_frames=0, num_eval=1)
    evaluation.run_evaluation(speaker_net, args)
    scores = np.array([float(row[0]) for row in read_scores(tmp_path / "out" / "scores.txt")])
    _, cohort_paths = read_speaker_list(tiny_corpus["train_list"], tiny_corpus["train_path"])
    trials = read_trials(tiny_corpus["test_list"], tiny_corpus["test_path"])
    test_paths = [f"{tiny_corpus['test_path']}/{name}" for name in trials.files]
    embedded = evaluation.extract_embeddings(speaker_net, cohort_paths + test_paths, "", 0, 1, 0, "cpu")
    assert len(cohort_paths) == 24  # every utterance of every training speaker
    mean = torch.stack([embedded[path][0] for path in cohort_paths]).mean(dim=0)
    vector = {name: F.normalize(embedded[f"{tiny_corpus['test_path']}/{name}"][0] - mean, dim=0)
              for name in trials.files}
    expected = [float(vector[enrol] @ vector[test]) for enrol, test in zip(trials.enrol, trials.test)]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    plain = make_args(tiny_corpus, tmp_path, scoring="cosine", eval_frames=0, num_eval=1,
                      score_file=str(tmp_path / "plain.txt"))
    evaluation.run_evaluation(speaker_net, plain)
    assert not np.allclose([float(row[0]) for row in read_scores(tmp_path / "plain.txt")], scores, atol=1e-3)
