"""Batched embedding extraction: test crops of several files per forward pass, each rank its share."""
from __future__ import annotations

import os

import soundfile
import torch
from tqdm import tqdm

import DatasetLoader
from evaluation.embeddings_cache import cache_key, load_embeddings_cache, save_embeddings_cache
from runtime import distributed, loader_workers


def _float32_items(items: list[tuple[torch.Tensor, str]]) -> list[tuple[torch.Tensor, str]]:
    """DataLoader collate function: float32 crops, items of different lengths kept apart."""
    return [(audio.float(), name) for audio, name in items]


def _audio_length(path: str) -> int:
    """Number of samples from the file header (0 when the header cannot be read)."""
    try:
        return soundfile.info(path).frames
    except (RuntimeError, soundfile.LibsndfileError):
        return 0


def length_groups(lengths: list[int], tolerance: float, max_files: int) -> list[list[int]]:
    """Indices sorted by length, in groups of at most max_files whose lengths are at most (1 + tolerance) times
    the group's shortest (tolerance 0: equal lengths)."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and len(groups[-1]) < max_files and lengths[index] <= lengths[groups[-1][0]] * (1 + tolerance):
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _crop_to_shortest(items: list, tolerance: float) -> list:
    """Whole utterances within `tolerance` of the batch's shortest cut to its length (centred), so they share a
    forward pass; longer ones are left whole."""
    shortest = min(audio.shape[-1] for audio, _ in items)
    limit = shortest * (1 + tolerance)
    cropped = []
    for audio, name in items:
        start = (audio.shape[-1] - shortest) // 2
        cropped.append((audio[..., start:start + shortest] if audio.shape[-1] <= limit else audio, name))
    return cropped


def _same_shape_runs(items: list) -> list[list]:
    """Split consecutive (audio, name) items into runs of equal audio shape."""
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][0][0].shape == item[0].shape:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


CPU_CROPS_PER_FORWARD = 16  # on a CPU, 10-20 crops per forward pass run fastest; 160 run 1.5x slower per crop


GPU_FILES_PER_FORWARD = 16


def default_files_per_batch(device: torch.device, eval_frames: int, num_eval: int) -> int:
    """Files per forward pass: many on a GPU, which one file's crops leave idle; about 16 crops on a CPU."""
    if device.type != "cpu":
        return GPU_FILES_PER_FORWARD
    crops_per_file = 1 if eval_frames == 0 else num_eval
    return max(1, CPU_CROPS_PER_FORWARD // crops_per_file)


def extract_embeddings(model, files: list[str], test_path: str, eval_frames: int, num_eval: int, num_workers: int,
                       device: torch.device | str, autocast_dtype: torch.dtype | None = None,
                       files_per_batch: int = 0, length_tolerance: float = 0.0) -> dict[str, torch.Tensor]:
    """Embed every file (crops of several files per forward pass); returns CPU float32 `[n_crops, D]` per file.

    files_per_batch 0 picks default_files_per_batch. Whole utterances (eval_frames 0) are batched by length: equal
    lengths share a forward pass, and with length_tolerance > 0 so do lengths within that fraction of the
    batch's shortest, cut to it. The files must exist: callers check them first (check_files_exist)."""
    device = torch.device(device)
    files_per_batch = files_per_batch or default_files_per_batch(device, eval_frames, num_eval)
    if eval_frames == 0:
        batch_indices = length_groups([_audio_length(os.path.join(test_path, name)) for name in files],
                                      length_tolerance, files_per_batch)
    else:
        batch_indices = [list(range(start, min(start + files_per_batch, len(files))))
                         for start in range(0, len(files), files_per_batch)]
    dataset = DatasetLoader.test_dataset_loader(files, test_path, eval_frames=eval_frames, num_eval=num_eval,
                                                check_files=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_indices, num_workers=num_workers,
                                         collate_fn=_float32_items, pin_memory=device.type == "cuda",
                                         worker_init_fn=DatasetLoader.worker_init_fn,
                                         generator=torch.Generator())  # leaves the global random state alone
    if isinstance(model, torch.nn.Module):
        model.eval()
    embeddings: dict[str, torch.Tensor] = {}
    with torch.no_grad(), tqdm(total=len(files), unit="file", desc="Embedding", dynamic_ncols=True) as bar, \
            loader_workers.batches(loader) as batches:
        for items in batches:
            if eval_frames == 0 and length_tolerance > 0:
                items = _crop_to_shortest(items, length_tolerance)
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


def embed_paths(model, roots: dict[str, list[str]], settings, device: torch.device,
                autocast_dtype: torch.dtype | None,
                context: distributed.Context = distributed.Context()) -> dict[str, torch.Tensor]:
    """Embeddings keyed by full path of every `root -> relative names` (each rank embeds its share; cache used).

    `settings` is the EvaluationSettings of the run."""
    tolerance = settings.length_tolerance if settings.eval_frames == 0 else 0.0
    key = cache_key(model, settings.eval_frames, settings.num_eval, autocast_dtype, tolerance)
    cached = distributed.from_main(lambda: load_embeddings_cache(settings.embeddings_cache, key))
    fresh: dict[str, torch.Tensor] = {}
    for root, names in roots.items():
        missing = [name for name in names if os.path.join(root, name) not in cached][context.rank::context.world_size]
        if missing:
            embedded = extract_embeddings(model, missing, root, settings.eval_frames, settings.num_eval,
                                          settings.workers, device, autocast_dtype, settings.eval_files_per_batch,
                                          tolerance)
            fresh.update({os.path.join(root, name): value for name, value in embedded.items()})
    fresh = distributed.gather_dicts(fresh)
    if settings.embeddings_cache and fresh and context.is_main:
        save_embeddings_cache(settings.embeddings_cache, key, {**cached, **fresh})
        print(f"Saved {len(cached) + len(fresh)} embeddings to {settings.embeddings_cache}")
    return {**cached, **fresh}
