"""--eval end to end: embed the union of the trial lists once, score, normalise, calibrate, report and plot."""
from __future__ import annotations

import argparse
import os

import numpy as np

import tuneThreshold
from audio.file_lists import check_files_exist as check_paths_exist
from audio.kaldi_data import read_speaker_list
from evaluation import calibration, plots, quality, score_norm
from evaluation.extraction import embed_paths, extract_embeddings
from evaluation.scoring import SCORING_MODES, score_trials
from evaluation.trials import Trials, check_files_exist, read_trials
from runtime import atomic_files, distributed
from runtime.errors import ConfigError
from settings.sections import EvaluationSettings


def as_settings(settings: EvaluationSettings | argparse.Namespace) -> EvaluationSettings:
    """EvaluationSettings, or the flags of the original's namespace API turned into them."""
    return settings if isinstance(settings, EvaluationSettings) else EvaluationSettings.from_flags(settings)


def _cohort(settings: EvaluationSettings) -> dict[str, list[str]] | None:
    """The cohort speakers' full paths when score normalisation or centring needs them (files checked first)."""
    if settings.score_norm == "none" and not settings.center_embeddings:
        return None
    speakers, paths = read_speaker_list(settings.cohort_list, settings.cohort_path, "--cohort_list")
    cohort = score_norm.select_cohort(speakers, paths, settings.cohort_size, settings.cohort_utterances)
    if settings.score_norm == "asnorm" and len(cohort) < settings.norm_topk:
        raise ConfigError(f"The cohort from {settings.cohort_list} has {len(cohort)} speakers, fewer than "
                          f"--norm_topk {settings.norm_topk}; lower --norm_topk or use a larger cohort")
    check_paths_exist([p for group in cohort.values() for p in group], settings.cohort_list, "--train_path",
                      settings.cohort_path)
    return cohort


def _check_settings(settings: EvaluationSettings, first: Trials) -> None:
    """Refuse unknown modes and impossible calibration requests before any embedding work."""
    if settings.scoring not in SCORING_MODES or settings.score_norm not in score_norm.NORM_MODES:
        raise ConfigError(f"--scoring must be one of {', '.join(SCORING_MODES)} and --score_norm one of "
                          f"{', '.join(score_norm.NORM_MODES)}; got {settings.scoring!r} and "
                          f"{settings.score_norm!r}")
    if settings.fit_calibration and settings.calibration:
        raise ConfigError("Give either --fit_calibration (fit and save) or --calibration (apply), not both")
    if quality.parse_terms(settings.calibration_quality, settings.score_norm) and not settings.fit_calibration:
        raise ConfigError("--calibration_quality names the quality terms of --fit_calibration; a saved "
                          "--calibration applies the terms it was fitted with")
    if settings.fit_calibration and len(set(first.labels[first.labels >= 0].tolist())) < 2:
        raise ConfigError(f"--fit_calibration needs target (1) and non-target (0) trials in {first.path}, "
                          "the first --test_list")


def _saved_calibration(settings: EvaluationSettings) -> calibration.Calibration | None:
    """The --calibration to apply (checked against this run's scoring), read before any embedding work."""
    if not settings.calibration:
        return None
    loaded = calibration.Calibration.load(settings.calibration)
    loaded.check_matches(settings.scoring, settings.score_norm, settings.calibration)
    return loaded


def _fitted_calibration(settings: EvaluationSettings, trials: Trials, scores: np.ndarray,
                        features: dict[str, np.ndarray]) -> calibration.Calibration:
    """A calibration (with the quality features given, if any) fitted on the labelled trials of one list, saved to
    --fit_calibration."""
    labelled = trials.labels >= 0
    fitted = calibration.fit_calibration(scores[labelled], trials.labels[labelled], settings.calibration_prior,
                                         settings.scoring, settings.score_norm, trials.path,
                                         {name: values[labelled] for name, values in features.items()})
    fitted.save(settings.fit_calibration)
    print(f"Calibration fitted on {trials.path} saved to {settings.fit_calibration}: "
          f"llr = {fitted.slope:.6g} * score + {fitted.offset:.6g}")
    if fitted.quality:
        print("Quality model: llr = " + " + ".join(f"{weight:.6g} * {name}" for name, weight in
                                                   zip(["score", "1", *fitted.quality], fitted.quality_weights)))
    return fitted


def _quality_names(settings: EvaluationSettings, calibrator: calibration.Calibration | None) -> list[str]:
    """The quality features this run fits (--calibration_quality) or applies (those of --calibration)."""
    if settings.fit_calibration:
        return quality.feature_names(quality.parse_terms(settings.calibration_quality, settings.score_norm))
    return calibrator.quality if calibrator else []


def _calibrated(calibrator: calibration.Calibration, scores: np.ndarray, features: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(LLRs, the score-only LLRs when the calibration has quality terms, else None)."""
    if not calibrator.quality:
        return calibrator.llr(scores), None
    return calibrator.quality_llr(scores, features), calibrator.llr(scores)


def _make_output_folders(settings: EvaluationSettings) -> None:
    """Create the folders of the score file, calibration and cache outputs before any embedding work."""
    for flag in ("score_file", "fit_calibration", "embeddings_cache"):
        path = getattr(settings, flag)
        if path:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            except OSError as error:
                raise ConfigError(f"Cannot create the folder of --{flag} {path}: {error.strerror}") from None


def check_outputs(settings: EvaluationSettings, other_inputs: list[tuple[str, str | None]]) -> None:
    """Refuse a score file, fitted calibration or embeddings cache that would overwrite an input of the evaluation:
    a trial list, --calibration, the cohort list, or one of `other_inputs` ((flag, path) pairs of the caller)."""
    inputs = [*other_inputs, *(("--test_list", path) for path in settings.test_list),
              ("--calibration", settings.calibration)]
    if settings.score_norm != "none" or settings.center_embeddings:
        inputs.append(("--cohort_list", settings.cohort_list))
    outputs = [("--score_file", score_file_for(settings.score_file, path, len(settings.test_list) > 1))
               for path in settings.test_list if settings.score_file]
    outputs += [("--fit_calibration", settings.fit_calibration), ("--embeddings_cache", settings.embeddings_cache)]
    for flag, path in outputs:
        if path:
            atomic_files.check_not_an_input(path, flag, inputs)


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


def check_inputs(settings: EvaluationSettings | argparse.Namespace, main: bool = True
                 ) -> tuple[list[Trials], list[str], dict[str, list[str]] | None, calibration.Calibration | None]:
    """Read and check everything an evaluation needs before any embedding work: (trial lists, their files in
    order, the cohort, the calibration to apply). On rank 0 (`main`) also the calibration and the output folders,
    which the other ranks never touch."""
    settings = as_settings(settings)
    if not settings.test_list:
        raise ConfigError("--test_list names no trial list")
    lists = [read_trials(path, settings.test_path) for path in settings.test_list]
    _check_settings(settings, lists[0])
    files = sorted({name for trials in lists for name in trials.files})
    check_files_exist(files, settings.test_path, ", ".join(trials.path for trials in lists))
    cohort = _cohort(settings)
    if not main:
        return lists, files, cohort, None
    calibrator = _saved_calibration(settings)
    _make_output_folders(settings)
    return lists, files, cohort, calibrator


def run_evaluation(trainer_or_model, settings: EvaluationSettings | argparse.Namespace,
                   context: distributed.Context | None = None) -> dict[str, dict]:
    """--eval: embed the union of the trial lists once, score, normalise, calibrate, report and plot each list.

    Returns each list's results on rank 0 ({} on the other ranks)."""
    settings = as_settings(settings)
    model = trainer_or_model.__model__.module if hasattr(trainer_or_model, "__model__") else trainer_or_model
    device = getattr(trainer_or_model, "device", next(model.parameters()).device)
    autocast_dtype = getattr(trainer_or_model, "autocast_dtype", None)
    context = context or getattr(trainer_or_model, "context", distributed.Context())
    model.eval()
    lists, files, cohort, calibrator = check_inputs(settings, context.is_main)
    roots = {settings.test_path: files, "": [p for group in cohort.values() for p in group] if cohort else []}
    embeddings = embed_paths(model, roots, settings, device, autocast_dtype, context)
    if not context.is_main:
        return {}
    normalize, mode = bool(model.__L__.test_normalize), settings.scoring
    if settings.center_embeddings:
        embeddings = score_norm.centred(embeddings, [path for group in cohort.values() for path in group])
    test_embeddings = {name: embeddings[os.path.join(settings.test_path, name)] for name in files}
    mean = std = None
    if cohort and settings.score_norm != "none":
        speakers = score_norm.speaker_means(embeddings, cohort, mode, normalize)
        mean, std = score_norm.cohort_statistics([test_embeddings[name] for name in files], speakers, mode,
                                                 normalize, settings.score_norm, settings.norm_topk)
    names = _quality_names(settings, calibrator)
    measures = quality.file_measures([os.path.join(settings.test_path, name) for name in files],
                                     [test_embeddings[name] for name in files], quality.measures_of(names), mean, std)
    rows = {name: row for row, name in enumerate(files)}
    results = {}
    for position, trials in enumerate(lists):
        scores = score_trials(trials, test_embeddings, normalize, mode)
        enrol_rows, test_rows = np.array([rows[n] for n in trials.enrol]), np.array([rows[n] for n in trials.test])
        if mean is not None:
            scores = score_norm.normalize_scores(scores, enrol_rows, test_rows, mean, std)
        features = quality.trial_features(measures, names, enrol_rows, test_rows)
        if position == 0 and settings.fit_calibration:
            calibrator = _fitted_calibration(settings, trials, scores, features)
        score_only = None
        if calibrator is not None:
            scores, score_only = _calibrated(calibrator, scores, features)
        results[trials.path] = report(trials, scores, settings, calibrated=calibrator is not None,
                                      several=len(lists) > 1, score_only=score_only)
        if settings.score_file:
            path = score_file_for(settings.score_file, trials.path, len(lists) > 1)
            write_score_file(path, scores, trials)
            plots.plot_scores(path, scores, trials.labels, results[trials.path])
            print(f"Wrote {len(scores)} scores to {path} (plots beside it)")
    return results


def _calibration_metrics(llrs: np.ndarray, labels: np.ndarray, priors: list[float], settings: EvaluationSettings,
                         note: str = "") -> dict:
    """Print and return Cllr, minCllr and actDCF at each prior of some LLRs."""
    metrics = {"cllr": calibration.cllr(llrs, labels), "min_cllr": calibration.min_cllr(llrs, labels),
               "act_dcf": {p: calibration.act_dcf(llrs, labels, p, settings.dcf_c_miss, settings.dcf_c_fa)
                           for p in priors}}
    print(f"Cllr {metrics['cllr']:.4f} minCllr {metrics['min_cllr']:.4f} "
          + " ".join(f"actDCF {metrics['act_dcf'][p]:2.5f} (p_target {p:g})" for p in priors) + note)
    return metrics


def report(trials: Trials, scores: np.ndarray, settings: EvaluationSettings, calibrated: bool,
           several: bool = False, score_only: np.ndarray | None = None) -> dict:
    """Print and return EER, MinDCF at --dcf_p_target and 0.01 (and Cllr, minCllr, actDCF when calibrated;
    with `score_only`, the LLRs of the score-only model of a quality calibration, also theirs)."""
    labelled = trials.labels >= 0
    result: dict = {"trials": len(scores), "unlabelled": int((~labelled).sum())}
    if result["unlabelled"]:
        print(f"{result['unlabelled']} trial lines of {trials.path} have no label: scored, not in the EER")
    labels, kept = trials.labels[labelled], scores[labelled]
    if len(set(labels.tolist())) < 2:
        print(f"{trials.path}: no EER, it needs both target (1) and non-target (0) trials")
        return result
    c_miss, c_fa = settings.dcf_c_miss, settings.dcf_c_fa
    result["eer"] = tuneThreshold.tuneThresholdfromScore(kept, labels, [1, 0.1])[1]
    fnrs, fprs, thresholds = tuneThreshold.ComputeErrorRates(kept, labels)
    priors = list(dict.fromkeys([settings.dcf_p_target, 0.01]))
    result["min_dcf"] = {p: tuneThreshold.ComputeMinDcf(fnrs, fprs, thresholds, p, c_miss, c_fa) for p in priors}
    line = f"EER {result['eer']:2.4f} " + " ".join(f"MinDCF {result['min_dcf'][p][0]:2.5f} (p_target {p:g})"
                                                    for p in priors)
    print(line + (f" [{trials.path}]" if several else ""))
    if calibrated:
        result.update(_calibration_metrics(kept, labels, priors, settings,
                                           "" if score_only is None else " (with quality terms)"))
    if score_only is not None:
        result["score_only"] = _calibration_metrics(score_only[labelled], labels, priors, settings, " (score only)")
    return result


def scores_of_list(model, test_list: str, test_path: str, eval_frames: int, num_eval: int, workers: int,
                   scoring: str, device, autocast_dtype, context: distributed.Context):
    """The original's evaluateFromList: (scores, labels, '<enrol> <test>' lines) of one trial list, each rank
    embedding its share of the files."""
    model.eval()
    trials = read_trials(test_list, test_path)
    check_files_exist(trials.files, test_path)
    share = trials.files[context.rank::context.world_size]
    embeddings = distributed.gather_dicts(extract_embeddings(model, share, test_path, eval_frames, num_eval, workers,
                                                             device, autocast_dtype))
    scores = score_trials(trials, embeddings, bool(model.__L__.test_normalize), mode=scoring)
    return scores, trials.labels, [f"{enrol} {test}" for enrol, test in zip(trials.enrol, trials.test)]
