"""Evaluation back end: trial lists, batched embedding extraction and vectorised trial scoring."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from tqdm import tqdm

import DatasetLoader

SCORING_MODES = ("original", "cosine")


@dataclass
class Trials:
    """A trial list: label (1 same, 0 different, -1 unlabelled), enrol and test path per line; its unique files."""

    labels: np.ndarray
    enrol: list[str]
    test: list[str]
    files: list[str]
    path: str


def read_trials(path: str) -> Trials:
    """Read `<label> <enrol> <test>` (or `<enrol> <test>`, unlabelled) lines; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise FileNotFoundError(f"Cannot read trial list {path}: {error.strerror}; check --test_list") from error
    labels, enrol, test = [], [], []
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    duplicates = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise ValueError(f"{path}, line {number}: expected '<label> <enrol> <test>' or '<enrol> <test>', "
                             f"got {len(fields)} fields: {line.strip()!r}")
        if len(fields) == 3 and fields[0] not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: the label must be 0 (different speakers) or 1 "
                             f"(same speaker), got {fields[0]!r}")
        label = int(fields[0]) if len(fields) == 3 else -1
        pair = (fields[-2], fields[-1])
        if pair in seen:
            first_line, first_label = seen[pair]
            if first_label != label:
                raise ValueError(f"{path}, lines {first_line} and {number}: the trial {pair[0]} {pair[1]} "
                                 f"appears with labels {first_label} and {label}; fix the list")
            duplicates.append(number)
        else:
            seen[pair] = (number, label)
        labels.append(label)
        enrol.append(pair[0])
        test.append(pair[1])
    if not labels:
        raise ValueError(f"Trial list {path} has no trials; expected lines '<label> <enrol> <test>'")
    if duplicates:
        warnings.warn(f"{path}: {len(duplicates)} duplicate trial lines (first at line {duplicates[0]}); "
                      "they are scored and counted again in the EER", stacklevel=2)
    return Trials(np.asarray(labels, dtype=np.int64), enrol, test, sorted(set(enrol) | set(test)), path)


def check_files_exist(files: list[str], test_path: str, list_name: str = "the trial list") -> None:
    """Raise one error listing the first files missing under test_path and how many there are."""
    DatasetLoader.check_files_exist([os.path.join(test_path, name) for name in files], list_name, "--test_path",
                                    test_path)


def _float32_items(items: list[tuple[torch.Tensor, str]]) -> list[tuple[torch.Tensor, str]]:
    """DataLoader collate function: float32 crops, items of different lengths kept apart."""
    return [(audio.float(), name) for audio, name in items]


def _audio_length(path: str) -> int:
    """Number of samples from the file header (0 when the header cannot be read)."""
    try:
        return soundfile.info(path).frames
    except (RuntimeError, soundfile.LibsndfileError):
        return 0


def _same_shape_runs(items: list) -> list[list]:
    """Split consecutive (audio, name) items into runs of equal audio shape."""
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][0][0].shape == item[0].shape:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def extract_embeddings(model, files: list[str], test_path: str, eval_frames: int, num_eval: int, num_workers: int,
                       device: torch.device | str, autocast_dtype: torch.dtype | None = None,
                       files_per_batch: int = 16) -> dict[str, torch.Tensor]:
    """Embed every file (crops of several files per forward pass); returns CPU float32 `[n_crops, D]` per file."""
    device = torch.device(device)
    if eval_frames == 0:  # whole utterances: sort by length so equal lengths share a forward pass
        files = sorted(files, key=lambda name: _audio_length(os.path.join(test_path, name)))
    dataset = DatasetLoader.test_dataset_loader(files, test_path, eval_frames=eval_frames, num_eval=num_eval)
    loader = torch.utils.data.DataLoader(dataset, batch_size=files_per_batch, shuffle=False, num_workers=num_workers,
                                         collate_fn=_float32_items, pin_memory=device.type == "cuda",
                                         worker_init_fn=DatasetLoader.worker_init_fn)
    if isinstance(model, torch.nn.Module):
        model.eval()
    embeddings: dict[str, torch.Tensor] = {}
    with torch.no_grad(), tqdm(total=len(files), unit="file", desc="Embedding", dynamic_ncols=True) as bar:
        for items in loader:
            for run in _same_shape_runs(items):
                audio = torch.cat([data.reshape(-1, data.shape[-1]) for data, _ in run])
                audio = audio.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    output = model(audio)
                if output.shape[0] != audio.shape[0]:
                    raise RuntimeError(f"The model returned {output.shape[0]} embeddings for {audio.shape[0]} "
                                       "crops; it must map [N, samples] to [N, D]")
                output = output.float().cpu()
                crops = [data.reshape(-1, data.shape[-1]).shape[0] for data, _ in run]
                for (_, name), embedding in zip(run, torch.split(output, crops)):
                    embeddings[name] = embedding.clone()
            bar.update(len(items))
    return embeddings


def _chunks(n_trials: int, floats_per_trial: int) -> list[slice]:
    """Slices over trials sized to keep the gathered embeddings of one chunk around 4 MB (cache-sized)."""
    step = max(1, 1_000_000 // max(1, floats_per_trial))
    return [slice(start, start + step) for start in range(0, n_trials, step)]


def _stacked_by_crop_count(embeddings: dict[str, torch.Tensor], files: list[str],
                           normalize: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per crop count c a `[files with c crops, c, D]` tensor; plus each file's crop count and row in it."""
    counts = torch.as_tensor([embeddings[name].shape[0] for name in files])
    rows = torch.empty(len(files), dtype=torch.long)
    stacks = {}
    for count in torch.unique(counts).tolist():
        members = (counts == count).nonzero().squeeze(1)
        rows[members] = torch.arange(len(members))
        stack = torch.stack([embeddings[files[i]].float() for i in members.tolist()])
        stacks[count] = F.normalize(stack, dim=-1) if normalize else stack
    return stacks, counts, rows


def _original_scores(trials: Trials, embeddings: dict[str, torch.Tensor], normalize: bool,
                     enrol: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Minus the mean Euclidean distance between every enrol crop and every test crop, per trial."""
    stacks, counts, rows = _stacked_by_crop_count(embeddings, trials.files, normalize)
    scores = torch.empty(len(enrol))
    pair_counts = torch.stack([counts[enrol], counts[test]], dim=1)
    for n_enrol, n_test in torch.unique(pair_counts, dim=0).tolist():
        selected = ((pair_counts[:, 0] == n_enrol) & (pair_counts[:, 1] == n_test)).nonzero().squeeze(1)
        dim = stacks[n_enrol].shape[-1]
        for block in _chunks(len(selected), (n_enrol + n_test) * dim + n_enrol * n_test):
            chosen = selected[block]
            distances = torch.cdist(stacks[n_enrol][rows[enrol[chosen]]], stacks[n_test][rows[test[chosen]]],
                                    compute_mode="donot_use_mm_for_euclid_dist")
            scores[chosen] = -distances.mean(dim=(1, 2))
    return scores


def _cosine_scores(trials: Trials, embeddings: dict[str, torch.Tensor], enrol: torch.Tensor,
                   test: torch.Tensor) -> torch.Tensor:
    """Cosine between the means of the L2-normalised crop embeddings, per trial."""
    means = torch.stack([F.normalize(embeddings[name].float(), dim=-1).mean(0) for name in trials.files])
    means = F.normalize(means, dim=-1)
    scores = torch.empty(len(enrol))
    for block in _chunks(len(enrol), 2 * means.shape[1]):
        scores[block] = (means[enrol[block]] * means[test[block]]).sum(dim=1)
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
    enrol = torch.as_tensor([index[name] for name in trials.enrol])
    test = torch.as_tensor([index[name] for name in trials.test])
    if mode == "cosine":
        scores = _cosine_scores(trials, embeddings, enrol, test)
    else:
        scores = _original_scores(trials, embeddings, normalize, enrol, test)
    return scores.numpy().astype(np.float64)
