"""The evaluation back end: trial lists, batched embedding extraction, scoring, score normalisation,
calibration and plots. The names below are its API (as the original's evaluation functions were one module's)."""
from evaluation.embeddings_cache import load_embeddings_cache, model_fingerprint, save_embeddings_cache
from evaluation.extraction import default_files_per_batch, embed_paths, extract_embeddings
from evaluation.pipeline import check_inputs, check_outputs, report, run_evaluation
from evaluation.scoring import SCORING_MODES, score_trials
from evaluation.trials import Trials, check_files_exist, read_trials
from settings.flags import add_evaluation_arguments
from settings.sections import trial_list_paths

__all__ = ["SCORING_MODES", "Trials", "add_evaluation_arguments", "check_files_exist", "check_inputs",
           "check_outputs", "default_files_per_batch", "embed_paths", "extract_embeddings", "load_embeddings_cache",
           "model_fingerprint", "read_trials", "report", "run_evaluation", "save_embeddings_cache", "score_trials",
           "trial_list_paths"]
