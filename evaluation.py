"""Evaluation back end: trial lists, batched embedding extraction and vectorised trial scoring."""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import calibration
import DatasetLoader
import distributed
import scoreNormalization
import scorePlots
import tuneThreshold
from runtime.errors import ConfigError, DataError
from runtime import atomic_files
from runtime.atomic_files import atomic_write

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
    lines = DatasetLoader.read_list_lines(path, "trial list", "--test_list")
    labels, enrol, test = [], [], []
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    duplicates = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise DataError(f"{path}, line {number}: expected '<label> <enrol> <test>' or '<enrol> <test>', "
                            f"got {len(fields)} fields: {line.strip()!r}")
        if len(fields) == 3 and fields[0] not in ("0", "1"):
            raise DataError(f"{path}, line {number}: the label must be 0 (different speakers) or 1 "
                            f"(same speaker), got {fields[0]!r}")
        label = int(fields[0]) if len(fields) == 3 else -1
        pair = (fields[-2], fields[-1])
        if pair in seen:
            first_line, first_label = seen[pair]
            if first_label != label:
                raise DataError(f"{path}, lines {first_line} and {number}: the trial {pair[0]} {pair[1]} "
                                f"appears with labels {first_label} and {label}; fix the list")
            duplicates.append(number)
        else:
            seen[pair] = (number, label)
        labels.append(label)
        enrol.append(pair[0])
        test.append(pair[1])
    if not labels:
        raise DataError(f"Trial list {path} has no trials; expected lines '<label> <enrol> <test>'")
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
                       files_per_batch: int = 0) -> dict[str, torch.Tensor]:
    """Embed every file (crops of several files per forward pass); returns CPU float32 `[n_crops, D]` per file.

    files_per_batch 0 picks default_files_per_batch. The files must exist: callers check them first
    (check_files_exist), before any other work."""
    device = torch.device(device)
    files_per_batch = files_per_batch or default_files_per_batch(device, eval_frames, num_eval)
    if eval_frames == 0:  # whole utterances: sort by length so equal lengths share a forward pass
        files = sorted(files, key=lambda name: _audio_length(os.path.join(test_path, name)))
    dataset = DatasetLoader.test_dataset_loader(files, test_path, eval_frames=eval_frames, num_eval=num_eval,
                                                check_files=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=files_per_batch, shuffle=False, num_workers=num_workers,
                                         collate_fn=_float32_items, pin_memory=device.type == "cuda",
                                         worker_init_fn=DatasetLoader.worker_init_fn,
                                         generator=torch.Generator())  # leaves the global random state alone
    if isinstance(model, torch.nn.Module):
        model.eval()
    embeddings: dict[str, torch.Tensor] = {}
    with torch.no_grad(), tqdm(total=len(files), unit="file", desc="Embedding", dynamic_ncols=True) as bar, \
            DatasetLoader.batches(loader) as batches:
        for items in batches:
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


EVALUATION_FLAGS = [
    ("score_norm", str, "none", "score normalisation: none, asnorm (top-k cohort) or snorm (whole cohort)"),
    ("norm_topk", int, 300, "asnorm: cohort scores per side used for the statistics"),
    ("cohort_list", str, "", "speaker list of the cohort ('<speaker> <path>' lines, paths under --train_path); "
                             "default: --train_list"),
    ("cohort_size", int, 0, "cohort speakers (seeded pick; 0: all speakers of the cohort list)"),
    ("cohort_utterances", int, 10, "utterances averaged per cohort speaker (0: all)"),
    ("calibration", str, "", "apply this saved calibration: scores become log-likelihood ratios"),
    ("fit_calibration", str, "", "fit a calibration on the first --test_list and save it to this path"),
    ("calibration_prior", float, 0.5, "target prior the calibration is fitted at"),
    ("embeddings_cache", str, "", "file of saved embeddings: reused when model and crop settings match, "
                                  "updated with new files"),
    ("eval_files_per_batch", int, 0, "test files per forward pass (0: 16 on a GPU, 16 crops' worth on a CPU)"),
]


def add_evaluation_arguments(parser) -> None:
    """Add the evaluation back end's flags (--score_norm, --calibration, ...) to an argparse parser."""
    group = parser.add_argument_group("Evaluation back end")
    for name, kind, default, help_text in EVALUATION_FLAGS:
        group.add_argument(f"--{name}", type=kind, default=default, help=help_text)


def _option(args, name: str):
    """args.<name>, or the flag's default when the parser did not add it."""
    return getattr(args, name, next(flag[2] for flag in EVALUATION_FLAGS if flag[0] == name))


def trial_list_paths(value: str | list[str]) -> list[str]:
    """--test_list as a list of paths (comma-separated on the command line, or a YAML list)."""
    paths = value if isinstance(value, list) else str(value).split(",")
    return [path.strip() for path in paths if path.strip()]


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of every state_dict tensor: tells whether cached embeddings came from these weights."""
    digest = hashlib.sha1()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_embeddings_cache(path: str, settings: dict) -> dict[str, torch.Tensor]:
    """Embeddings saved by save_embeddings_cache under the same settings; {} when absent or made otherwise."""
    if not path or not os.path.exists(path):
        return {}
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        print(f"Embeddings cache {path} cannot be read ({error}); computing afresh")
        return {}
    if not isinstance(content, dict) or content.get("settings") != settings:
        print(f"Embeddings cache {path} was made with other weights or crop settings; computing afresh")
        return {}
    print(f"Reusing {len(content['names'])} embeddings from {path}")
    return dict(zip(content["names"], content["embeddings"]))


def save_embeddings_cache(path: str, settings: dict, embeddings: dict[str, torch.Tensor]) -> None:
    """Write the embeddings with their settings (temporary file, then rename)."""
    with atomic_write(path) as temporary:
        torch.save({"settings": settings, "names": list(embeddings), "embeddings": list(embeddings.values())},
                   temporary)


def embed_paths(model, roots: dict[str, list[str]], args, device: torch.device,
                autocast_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Embeddings keyed by full path of every `root -> relative names` (each rank embeds its share; cache used)."""
    settings = {"weights": model_fingerprint(model), "model": dict(getattr(model, "model_settings", {})),
                "eval_frames": int(args.eval_frames), "num_eval": int(args.num_eval), "autocast": str(autocast_dtype)}
    cache_path = _option(args, "embeddings_cache")
    cached = load_embeddings_cache(cache_path, settings)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    fresh: dict[str, torch.Tensor] = {}
    for root, names in roots.items():
        missing = [name for name in names if os.path.join(root, name) not in cached][rank::world_size]
        if missing:
            embedded = extract_embeddings(model, missing, root, args.eval_frames, args.num_eval,
                                          args.nDataLoaderThread, device, autocast_dtype,
                                          _option(args, "eval_files_per_batch"))
            fresh.update({os.path.join(root, name): value for name, value in embedded.items()})
    fresh = distributed.gather_dicts(fresh)
    if cache_path and fresh and rank == 0:
        save_embeddings_cache(cache_path, settings, {**cached, **fresh})
        print(f"Saved {len(cached) + len(fresh)} embeddings to {cache_path}")
    return {**cached, **fresh}


def _cohort(args) -> dict[str, list[str]] | None:
    """The cohort speakers' full paths when score normalisation is on (files checked first)."""
    if _option(args, "score_norm") == "none":
        return None
    cohort_list = _option(args, "cohort_list") or args.train_list
    speakers, paths = DatasetLoader.read_train_list(cohort_list, args.train_path)
    cohort = scoreNormalization.select_cohort(speakers, paths, _option(args, "cohort_size"),
                                              _option(args, "cohort_utterances"))
    if _option(args, "score_norm") == "asnorm" and len(cohort) < _option(args, "norm_topk"):
        raise ConfigError(f"The cohort from {cohort_list} has {len(cohort)} speakers, fewer than --norm_topk "
                          f"{_option(args, 'norm_topk')}; lower --norm_topk or use a larger cohort")
    DatasetLoader.check_files_exist([p for group in cohort.values() for p in group], cohort_list, "--train_path",
                                    args.train_path)
    return cohort


def _check_settings(args, first: Trials) -> None:
    """Refuse unknown modes and impossible calibration requests before any embedding work."""
    if args.scoring not in SCORING_MODES or _option(args, "score_norm") not in scoreNormalization.NORM_MODES:
        raise ConfigError(f"--scoring must be one of {', '.join(SCORING_MODES)} and --score_norm one of "
                          f"{', '.join(scoreNormalization.NORM_MODES)}; got {args.scoring!r} and "
                          f"{_option(args, 'score_norm')!r}")
    if _option(args, "fit_calibration") and _option(args, "calibration"):
        raise ConfigError("Give either --fit_calibration (fit and save) or --calibration (apply), not both")
    if _option(args, "fit_calibration") and len(set(first.labels[first.labels >= 0].tolist())) < 2:
        raise ConfigError(f"--fit_calibration needs target (1) and non-target (0) trials in {first.path}, "
                          "the first --test_list")


def _saved_calibration(args) -> calibration.Calibration | None:
    """The --calibration to apply (checked against this run's scoring), read before any embedding work."""
    path = _option(args, "calibration")
    if not path:
        return None
    loaded = calibration.Calibration.load(path)
    loaded.check_matches(args.scoring, _option(args, "score_norm"), path)
    return loaded


def _fitted_calibration(args, trials: Trials, scores: np.ndarray) -> calibration.Calibration:
    """A calibration fitted on the labelled trials of one list, saved to --fit_calibration."""
    labelled = trials.labels >= 0
    fitted = calibration.fit_calibration(scores[labelled], trials.labels[labelled],
                                         _option(args, "calibration_prior"), args.scoring,
                                         _option(args, "score_norm"), trials.path)
    fitted.save(_option(args, "fit_calibration"))
    print(f"Calibration fitted on {trials.path} saved to {_option(args, 'fit_calibration')}: "
          f"llr = {fitted.slope:.6g} * score + {fitted.offset:.6g}")
    return fitted


def _make_output_folders(args) -> None:
    """Create the folders of the score file, calibration and cache outputs before any embedding work."""
    for flag, path in (("score_file", args.score_file), ("fit_calibration", _option(args, "fit_calibration")),
                       ("embeddings_cache", _option(args, "embeddings_cache"))):
        if path:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            except OSError as error:
                raise ConfigError(f"Cannot create the folder of --{flag} {path}: {error.strerror}") from None


def score_file_for(score_file: str, list_path: str, several: bool) -> str:
    """The score file of one list: --score_file itself, or with the list's name added when there are several."""
    if not several:
        return score_file
    stem, extension = os.path.splitext(score_file)
    return f"{stem}_{os.path.splitext(os.path.basename(list_path))[0]}{extension or '.txt'}"


def write_score_file(path: str, scores: np.ndarray, trials: Trials) -> None:
    """One `<score> <enrol> <test>` line per trial in list order (temporary file, then rename)."""
    atomic_files.write_text(path, "".join(f"{score:.6f} {enrol} {test}\n" for score, enrol, test in
                                          zip(scores, trials.enrol, trials.test)))


def check_inputs(args) -> tuple[list[Trials], list[str], dict[str, list[str]] | None, calibration.Calibration | None]:
    """Read and check everything an evaluation needs before any embedding work: (trial lists, their files in
    order, the cohort, the calibration to apply); output folders are created."""
    lists = [read_trials(path) for path in trial_list_paths(args.test_list)]
    if not lists:
        raise ConfigError("--test_list names no trial list")
    _check_settings(args, lists[0])
    files = sorted({name for trials in lists for name in trials.files})
    check_files_exist(files, args.test_path, ", ".join(trials.path for trials in lists))
    cohort = _cohort(args)
    calibrator = _saved_calibration(args)
    _make_output_folders(args)
    return lists, files, cohort, calibrator


def run_evaluation(trainer_or_model, args) -> dict[str, dict]:
    """--eval: embed the union of the trial lists once, score, normalise, calibrate, report and plot each list."""
    model = trainer_or_model.__model__.module if hasattr(trainer_or_model, "__model__") else trainer_or_model
    device = getattr(trainer_or_model, "device", next(model.parameters()).device)
    autocast_dtype = getattr(trainer_or_model, "autocast_dtype", None)
    model.eval()
    lists, files, cohort, calibrator = check_inputs(args)
    roots = {args.test_path: files, "": [p for group in cohort.values() for p in group] if cohort else []}
    embeddings = embed_paths(model, roots, args, device, autocast_dtype)
    if dist.is_initialized() and dist.get_rank() != 0:
        return {}
    normalize, mode, norm = bool(model.__L__.test_normalize), args.scoring, _option(args, "score_norm")
    test_embeddings = {name: embeddings[os.path.join(args.test_path, name)] for name in files}
    if cohort:
        speakers = scoreNormalization.speaker_means(embeddings, cohort, mode, normalize)
        mean, std = scoreNormalization.cohort_statistics([test_embeddings[name] for name in files], speakers, mode,
                                                         normalize, norm, _option(args, "norm_topk"))
    rows = {name: row for row, name in enumerate(files)}
    results = {}
    for position, trials in enumerate(lists):
        scores = score_trials(trials, test_embeddings, normalize, mode)
        if cohort:
            scores = scoreNormalization.normalize_scores(scores, np.array([rows[n] for n in trials.enrol]),
                                                         np.array([rows[n] for n in trials.test]), mean, std)
        if position == 0 and _option(args, "fit_calibration"):
            calibrator = _fitted_calibration(args, trials, scores)
        if calibrator is not None:
            scores = calibrator.llr(scores)
        results[trials.path] = report(trials, scores, args, calibrated=calibrator is not None)
        if args.score_file:
            path = score_file_for(args.score_file, trials.path, len(lists) > 1)
            write_score_file(path, scores, trials)
            scorePlots.plot_scores(path, scores, trials.labels, results[trials.path])
            print(f"Wrote {len(scores)} scores to {path} (plots beside it)")
    return results


def report(trials: Trials, scores: np.ndarray, args, calibrated: bool) -> dict:
    """Print and return EER, MinDCF at --dcf_p_target and 0.01 (and Cllr, minCllr, actDCF when calibrated)."""
    labelled = trials.labels >= 0
    result: dict = {"trials": len(scores), "unlabelled": int((~labelled).sum())}
    if result["unlabelled"]:
        print(f"{result['unlabelled']} trial lines of {trials.path} have no label: scored, not in the EER")
    labels, kept = trials.labels[labelled], scores[labelled]
    if len(set(labels.tolist())) < 2:
        print(f"{trials.path}: no EER, it needs both target (1) and non-target (0) trials")
        return result
    c_miss, c_fa = args.dcf_c_miss, args.dcf_c_fa
    result["eer"] = tuneThreshold.tuneThresholdfromScore(kept, labels, [1, 0.1])[1]
    fnrs, fprs, thresholds = tuneThreshold.ComputeErrorRates(kept, labels)
    priors = list(dict.fromkeys([args.dcf_p_target, 0.01]))
    result["min_dcf"] = {p: tuneThreshold.ComputeMinDcf(fnrs, fprs, thresholds, p, c_miss, c_fa) for p in priors}
    line = f"EER {result['eer']:2.4f} " + " ".join(f"MinDCF {result['min_dcf'][p][0]:2.5f} (p_target {p:g})"
                                                    for p in priors)
    print(line + (f" [{trials.path}]" if trial_list_paths(args.test_list)[1:] else ""))
    if calibrated:
        result["cllr"] = calibration.cllr(kept, labels)
        result["min_cllr"] = calibration.min_cllr(kept, labels)
        result["act_dcf"] = {p: calibration.act_dcf(kept, labels, p, c_miss, c_fa) for p in priors}
        print(f"Cllr {result['cllr']:.4f} minCllr {result['min_cllr']:.4f} "
              + " ".join(f"actDCF {result['act_dcf'][p]:2.5f} (p_target {p:g})" for p in priors))
    return result
