"""Vectorised trial scoring: the original's minus mean crop distance, or cosine of mean normalised crops."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.trials import Trials

SCORING_MODES = ("original", "cosine")


def _chunks(n_trials: int, floats_per_trial: int) -> list[slice]:
    """Slices over trials sized to keep the gathered embeddings of one chunk around 16 MB."""
    step = max(1, 4_000_000 // max(1, floats_per_trial))
    return [slice(start, start + step) for start in range(0, n_trials, step)]


def _stacked_by_crop_count(embeddings: dict[str, torch.Tensor], files: list[str],
                           normalize: bool) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Per crop count c a `[files with c crops, c, D]` array; plus each file's crop count and row in it."""
    counts = np.array([embeddings[name].shape[0] for name in files])
    rows = np.empty(len(files), dtype=np.int64)
    stacks = {}
    for count in np.unique(counts).tolist():
        members = np.flatnonzero(counts == count)
        rows[members] = np.arange(len(members))
        stack = torch.stack([embeddings[files[i]].float() for i in members.tolist()])
        stacks[count] = (F.normalize(stack, dim=-1) if normalize else stack).numpy()
    return stacks, counts, rows


def _original_scores(trials: Trials, embeddings: dict[str, torch.Tensor], normalize: bool,
                     enrol: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Minus the mean Euclidean distance between every enrol crop and every test crop, per trial."""
    stacks, counts, rows = _stacked_by_crop_count(embeddings, trials.files, normalize)
    scores = np.empty(len(enrol), dtype=np.float32)
    pair_counts = np.stack([counts[enrol], counts[test]], axis=1)
    for n_enrol, n_test in np.unique(pair_counts, axis=0).tolist():
        selected = np.flatnonzero((pair_counts[:, 0] == n_enrol) & (pair_counts[:, 1] == n_test))
        dim = stacks[n_enrol].shape[-1]
        for block in _chunks(len(selected), (n_enrol + n_test) * dim + n_enrol * n_test):
            chosen = selected[block]
            # numpy gathers rows faster than torch indexing on CPU; distances computed directly, like the original
            enrol_crops, test_crops = stacks[n_enrol][rows[enrol[chosen]]], stacks[n_test][rows[test[chosen]]]
            if n_enrol == n_test == 1:  # whole utterances: one distance per trial
                difference = enrol_crops[:, 0] - test_crops[:, 0]
                scores[chosen] = -np.sqrt(np.einsum("td,td->t", difference, difference))
            else:
                distances = torch.cdist(torch.from_numpy(enrol_crops), torch.from_numpy(test_crops),
                                        compute_mode="donot_use_mm_for_euclid_dist")
                scores[chosen] = -distances.mean(dim=(1, 2)).numpy()
    return scores


def _cosine_scores(trials: Trials, embeddings: dict[str, torch.Tensor], enrol: np.ndarray,
                   test: np.ndarray) -> np.ndarray:
    """Cosine between the means of the L2-normalised crop embeddings, per trial."""
    means = torch.stack([F.normalize(embeddings[name].float(), dim=-1).mean(0) for name in trials.files])
    means = F.normalize(means, dim=-1).numpy()
    scores = np.empty(len(enrol), dtype=np.float32)
    for block in _chunks(len(enrol), 2 * means.shape[1]):
        scores[block] = np.einsum("td,td->t", means[enrol[block]], means[test[block]])
    return scores


def score_trials(trials: Trials, embeddings: dict[str, torch.Tensor], normalize: bool,
                 mode: str = "original") -> np.ndarray:
    """Score every trial: "original" (minus mean crop distance) or "cosine" (of mean normalised crops)."""
    if mode not in SCORING_MODES:
        raise ValueError(f"Unknown scoring mode {mode!r}; choose one of {', '.join(SCORING_MODES)}")
    missing = [name for name in trials.files if name not in embeddings]
    if missing:
        raise KeyError(f"No embedding for {len(missing)} files of {trials.path}, e.g. {missing[0]}")
    index = {name: row for row, name in enumerate(trials.files)}
    enrol = np.array([index[name] for name in trials.enrol], dtype=np.int64)
    test = np.array([index[name] for name in trials.test], dtype=np.int64)
    if mode == "cosine":
        scores = _cosine_scores(trials, embeddings, enrol, test)
    else:
        scores = _original_scores(trials, embeddings, normalize, enrol, test)
    return scores.astype(np.float64)
