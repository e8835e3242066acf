"""Score normalisation (AS-norm, S-norm) against a cohort of speaker-mean embeddings."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NORM_MODES = ("none", "asnorm", "snorm")


def select_cohort(speakers: list[str], paths: list[str], cohort_size: int,
                  utterances_per_speaker: int) -> dict[str, list[str]]:
    """Speaker -> paths: the first `utterances_per_speaker` (0: all) of `cohort_size` speakers (0: all; seeded pick)."""
    by_speaker: dict[str, list[str]] = {}
    for speaker, path in zip(speakers, paths):
        chosen = by_speaker.setdefault(speaker, [])
        if utterances_per_speaker <= 0 or len(chosen) < utterances_per_speaker:
            chosen.append(path)
    names = sorted(by_speaker)
    if 0 < cohort_size < len(names):
        picked = np.random.default_rng(0).choice(len(names), size=cohort_size, replace=False)
        names = [names[i] for i in sorted(picked)]
    return {name: by_speaker[name] for name in names}


def centred(embeddings: dict[str, torch.Tensor], reference: list[str]) -> dict[str, torch.Tensor]:
    """Every embedding (each crop) minus the mean embedding of the `reference` files (each file's crops averaged
    first, then the files), as wespeaker subtracts the mean embedding of its training set before scoring."""
    mean = torch.stack([embeddings[path].float().mean(dim=0) for path in reference]).mean(dim=0)
    return {path: value.float() - mean for path, value in embeddings.items()}


def _mean_by_owner(values: torch.Tensor, owner: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean of the rows of `values` per group; `owner` (sorted) gives each row's group."""
    counts = torch.bincount(owner, minlength=groups)
    if len(values) == groups:
        return values
    if bool((counts == counts[0]).all()):
        return values.view(groups, int(counts[0]), -1).mean(1)
    return torch.zeros(groups, values.shape[1]).index_add_(0, owner, values) / counts.unsqueeze(1)


def _scoring_vectors(file_crops: list[torch.Tensor], mode: str, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The vectors files are scored with and each vector's file: crops ("original") or mean normalised crop."""
    owner = torch.repeat_interleave(torch.arange(len(file_crops)), torch.as_tensor([len(c) for c in file_crops]))
    crops = torch.cat(file_crops).float()
    if mode == "cosine":
        means = _mean_by_owner(F.normalize(crops, dim=-1), owner, len(file_crops))
        return F.normalize(means, dim=-1), torch.arange(len(file_crops))
    return (F.normalize(crops, dim=-1) if normalize else crops), owner


def speaker_means(embeddings: dict[str, torch.Tensor], cohort: dict[str, list[str]], mode: str,
                  normalize: bool) -> torch.Tensor:
    """`[speakers, D]`: per cohort speaker the mean of its utterances' scoring vectors, scored like one crop."""
    paths = [path for group in cohort.values() for path in group]
    speaker_of_file = torch.repeat_interleave(torch.arange(len(cohort)),
                                              torch.as_tensor([len(group) for group in cohort.values()]))
    vectors, file_of_vector = _scoring_vectors([embeddings[path] for path in paths], mode, normalize)
    means = _mean_by_owner(vectors, speaker_of_file[file_of_vector], len(cohort))
    return F.normalize(means, dim=-1) if mode == "cosine" or normalize else means


def _chunk_scores(file_crops: list[torch.Tensor], cohort: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """`[files, speakers]` scores of some files against every cohort speaker, as score_trials would score them."""
    vectors, owner = _scoring_vectors(file_crops, mode, normalize)
    kernel = vectors @ cohort.T if mode == "cosine" else -torch.cdist(vectors, cohort)
    return _mean_by_owner(kernel, owner, len(file_crops))


def top_k_statistics(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of each row's `top_k` highest scores."""
    top = scores.topk(top_k, dim=1).values
    return top.mean(dim=1), top.std(dim=1).clamp_min(1e-6)


def cohort_statistics(file_crops: list[torch.Tensor], cohort: torch.Tensor, mode: str, normalize: bool,
                      method: str, top_k: int, files_per_chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per file the mean and standard deviation of its top-k (asnorm) or all (snorm) cohort scores."""
    if method not in ("asnorm", "snorm"):
        raise ValueError(f"Unknown score normalisation {method!r}; choose one of {', '.join(NORM_MODES)}")
    count = cohort.shape[0] if method == "snorm" else top_k
    if count > cohort.shape[0]:
        raise ValueError(f"The cohort has {cohort.shape[0]} speakers, fewer than --norm_topk {top_k}; lower "
                         "--norm_topk or use a cohort with more speakers (--cohort_size 0 takes all)")
    if count < 2:
        raise ValueError(f"Score normalisation needs at least 2 cohort scores per file, got {count}")
    means, stds = [], []
    for start in range(0, len(file_crops), files_per_chunk):
        mean, std = top_k_statistics(_chunk_scores(file_crops[start:start + files_per_chunk], cohort, mode,
                                                   normalize), count)
        means.append(mean)
        stds.append(std)
    return torch.cat(means).double().numpy(), torch.cat(stds).double().numpy()


def normalize_scores(scores: np.ndarray, enrol_rows: np.ndarray, test_rows: np.ndarray, mean: np.ndarray,
                     std: np.ndarray) -> np.ndarray:
    """The mean of the enrol-side and test-side z-scores of each trial (AS-norm / S-norm)."""
    return 0.5 * ((scores - mean[enrol_rows]) / std[enrol_rows] + (scores - mean[test_rows]) / std[test_rows])
