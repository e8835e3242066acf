"""The evaluation back end: trial lists, batched embedding extraction, scoring, score normalisation,
calibration and plots. The names below are what the tools use of it; the rest lives in its modules."""
from evaluation.extraction import default_files_per_batch, extract_embeddings
from evaluation.pipeline import check_inputs, check_outputs, run_evaluation
from evaluation.scoring import score_trials
from evaluation.trials import Trials

__all__ = ["Trials", "check_inputs", "check_outputs", "default_files_per_batch", "extract_embeddings",
           "run_evaluation", "score_trials"]
