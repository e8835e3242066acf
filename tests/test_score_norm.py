"""Score normalisation: AS-norm and S-norm against a direct loop implementation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluation
from evaluation import score_norm as norm


def make_case(crops, seed=0):
    generator = torch.Generator().manual_seed(seed)
    files = [f"t{i}.wav" for i in range(8)]
    cohort_files = {f"spk{s}": [f"c{s}_{u}.wav" for u in range(1 + s % 3)] for s in range(6)}
    names = files + [path for paths in cohort_files.values() for path in paths]
    embeddings = {name: torch.randn(crops, 5, generator=generator) for name in names}
    enrol = [files[i % 8] for i in range(20)]
    test = [files[(3 * i + 1) % 8] for i in range(20)]
    trials = evaluation.Trials(np.array([i % 2 for i in range(20)]), enrol, test, sorted(set(enrol) | set(test)), "m")
    return trials, embeddings, cohort_files


def loop_score(a, b, mode, normalize):
    """One pair scored the slow way."""
    if mode == "cosine":
        a, b = F.normalize(F.normalize(a, dim=1).mean(0), dim=0), F.normalize(F.normalize(b, dim=1).mean(0), dim=0)
        return float(a @ b)
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return -float(np.mean([[torch.linalg.norm(x - y) for y in b] for x in a]))


def loop_centroid(paths, embeddings, mode, normalize):
    vectors = []
    for path in paths:
        crops = embeddings[path]
        if mode == "cosine":
            vectors.append(F.normalize(F.normalize(crops, dim=1).mean(0), dim=0)[None])
        else:
            vectors.append(F.normalize(crops, dim=1) if normalize else crops)
    mean = torch.cat(vectors).mean(0)
    return (F.normalize(mean, dim=0) if mode == "cosine" or normalize else mean)[None]


@pytest.mark.parametrize("mode, normalize, crops",
                         [("original", True, 4), ("original", False, 1), ("cosine", False, 3)])
@pytest.mark.parametrize("method, top_k", [("asnorm", 3), ("snorm", 6)])
def test_normalisation_matches_loop(mode, normalize, crops, method, top_k):
    trials, embeddings, cohort_files = make_case(crops)
    raw = evaluation.score_trials(trials, embeddings, normalize, mode)
    cohort = norm.speaker_means(embeddings, cohort_files, mode, normalize)
    mean, std = norm.cohort_statistics([embeddings[name] for name in trials.files], cohort, mode, normalize,
                                       method, top_k, files_per_chunk=3)
    rows = {name: i for i, name in enumerate(trials.files)}
    enrol_rows = np.array([rows[n] for n in trials.enrol])
    test_rows = np.array([rows[n] for n in trials.test])
    ours = norm.normalize_scores(raw, enrol_rows, test_rows, mean, std)
    centroids = [loop_centroid(paths, embeddings, mode, normalize) for paths in cohort_files.values()]

    def stats(name):
        values = sorted((loop_score(embeddings[name], c, mode, normalize) for c in centroids), reverse=True)[:top_k]
        return np.mean(values), np.std(values, ddof=1)

    for k in range(len(raw)):
        assert raw[k] == pytest.approx(loop_score(embeddings[trials.enrol[k]], embeddings[trials.test[k]], mode,
                                                  normalize), abs=1e-5)
        (me, se), (mt, st) = stats(trials.enrol[k]), stats(trials.test[k])
        expected = 0.5 * ((raw[k] - me) / se + (raw[k] - mt) / st)
        assert ours[k] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_cohort_selection_and_errors():
    speakers = ["b", "a", "a", "a", "c", "b"]
    paths = ["b1", "a1", "a2", "a3", "c1", "b2"]
    assert norm.select_cohort(speakers, paths, 0, 2) == {"a": ["a1", "a2"], "b": ["b1", "b2"], "c": ["c1"]}
    assert norm.select_cohort(speakers, paths, 0, 0)["a"] == ["a1", "a2", "a3"]
    picked = norm.select_cohort(speakers, paths, 2, 1)
    assert len(picked) == 2 and picked == norm.select_cohort(speakers, paths, 2, 1)
    crops, cohort = [torch.randn(2, 4) for _ in range(3)], torch.randn(5, 4)
    with pytest.raises(ValueError, match="5 speakers, fewer than --norm_topk 300"):
        norm.cohort_statistics(crops, cohort, "original", True, "asnorm", 300)
    with pytest.raises(ValueError, match="Unknown score normalisation 'znorm'"):
        norm.cohort_statistics(crops, cohort, "original", True, "znorm", 3)
    with pytest.raises(ValueError, match="at least 2 cohort scores"):
        norm.cohort_statistics(crops, cohort[:1], "original", True, "snorm", 3)
