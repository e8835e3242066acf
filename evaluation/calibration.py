"""Score calibration to log-likelihood ratios (linear logistic regression) and calibration-sensitive metrics."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from runtime.atomic_files import write_text
from runtime.errors import ConfigError, MissingFileError


def _two_class(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores and boolean target flags, after checking both classes are present."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    n_target = int((labels == 1).sum())
    if n_target == 0 or n_target == labels.size or scores.size != labels.size:
        raise ValueError(f"{what} needs target (1) and non-target (0) trials, one label per score; got "
                         f"{n_target} targets, {labels.size - n_target} non-targets and {scores.size} scores")
    return scores, labels == 1


def logit(probability: float) -> float:
    """log(p / (1 - p))."""
    return math.log(probability / (1 - probability))


def _log2_one_plus_exp(x: np.ndarray) -> np.ndarray:
    """log2(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x) / math.log(2)


def cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits (0 perfect, 1 for an uninformative system saying 0 everywhere)."""
    llrs, target = _two_class(llrs, labels, "Cllr")
    return 0.5 * (float(_log2_one_plus_exp(-llrs[target]).mean()) + float(_log2_one_plus_exp(llrs[~target]).mean()))


def min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr after the best monotonic calibration (pool-adjacent-violators): the discrimination part of Cllr."""
    scores, target = _two_class(scores, labels, "minCllr")
    posterior = IsotonicRegression(increasing=True).fit_transform(scores, target.astype(np.float64))
    with np.errstate(divide="ignore"):
        llrs = np.log(posterior) - np.log1p(-posterior) - math.log(target.sum() / (~target).sum())
    return cllr(llrs, target.astype(int))


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR above which accepting costs less than rejecting at this prior and these costs."""
    return math.log(c_fa * (1 - p_target) / (c_miss * p_target))


def act_dcf(llrs: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised detection cost of the decisions `llr >= Bayes threshold` (the cost actually paid)."""
    llrs, target = _two_class(llrs, labels, "actDCF")
    accept = llrs >= bayes_threshold(p_target, c_miss, c_fa)
    p_miss = float((~accept[target]).mean())
    p_fa = float(accept[~target].mean())
    return (c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa) / min(c_miss * p_target, c_fa * (1 - p_target))


@dataclass
class Calibration:
    """llr = slope * score + offset, fitted on one trial list for one scoring set-up.

    With quality terms (QMF) it also holds a second model, llr = w_score * score + w_offset + sum_k w_k * q_k
    over the named per-trial quality features q_k (`quality_weights` = [w_score, w_offset, w_1, ...]); slope and
    offset stay the score-only fit, so readers that know no quality terms still get a valid calibration."""

    slope: float
    offset: float
    prior: float
    scoring: str
    score_norm: str
    fitted_on: str
    n_target: int
    n_nontarget: int
    quality: list[str] = field(default_factory=list)
    quality_weights: list[float] = field(default_factory=list)

    def llr(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated log-likelihood ratios of raw scores (the score-only model)."""
        return self.slope * np.asarray(scores, dtype=np.float64) + self.offset

    def quality_llr(self, scores: np.ndarray, features: dict[str, np.ndarray]) -> np.ndarray:
        """Log-likelihood ratios of the quality model, given each trial's features named in `quality`."""
        weights = self.quality_weights
        llrs = weights[0] * np.asarray(scores, dtype=np.float64) + weights[1]
        for name, weight in zip(self.quality, weights[2:]):
            llrs = llrs + weight * np.asarray(features[name], dtype=np.float64)
        return llrs

    def decide(self, score: float, p_target: float) -> dict:
        """A pair's LLR, the probability of one speaker at p_target and the decision at unit costs."""
        llr = float(self.llr(np.array([score]))[0])
        probability, accept = verdict(llr, p_target)
        return {"llr": llr, "probability": probability, "same_speaker": accept, "p_target": p_target}

    def save(self, path: str) -> None:
        """Write as JSON (temporary file, then rename)."""
        write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str) -> Calibration:
        """Read a calibration written by save(); errors name the file and what is wrong."""
        try:
            with open(path, encoding="utf-8") as handle:
                content = json.load(handle)
        except OSError as error:
            raise MissingFileError(f"Cannot read calibration {path}: {error.strerror}; write one with "
                                   "trainSpeakerNet.py --eval --fit_calibration") from error
        except json.JSONDecodeError as error:
            raise ConfigError(f"Calibration {path} is not valid JSON ({error})") from error
        missing = [item.name for item in fields(cls) if item.name not in content and item.default is MISSING
                   and item.default_factory is MISSING]
        if missing:
            raise ConfigError(f"Calibration {path} lacks the keys {', '.join(missing)}; write it again with "
                              "trainSpeakerNet.py --eval --fit_calibration")
        return cls(**{item.name: content[item.name] for item in fields(cls) if item.name in content})

    def check_matches(self, scoring: str, score_norm: str, path: str) -> None:
        """Raise when the scores to calibrate come from another scoring set-up than the fitted ones."""
        if (scoring, score_norm) != (self.scoring, self.score_norm):
            raise ConfigError(f"Calibration {path} was fitted on --scoring {self.scoring} --score_norm "
                              f"{self.score_norm} scores, but this run uses --scoring {scoring} --score_norm "
                              f"{score_norm}; fit a calibration for this set-up")


def _logistic_regression(columns: np.ndarray, target: np.ndarray, prior: float) -> tuple[np.ndarray, float]:
    """(weights, offset) minimising the prior-weighted cross-entropy of `target` given `columns` `[n, k]`.

    A column that is constant on these trials (e.g. durations when every file is equally long) gets weight 0:
    it carries no information, and fitting it would only amplify rounding noise."""
    centre, spread = columns.mean(0), columns.std(0)
    spread[spread <= 1e-9 * np.maximum(1.0, np.abs(centre))] = np.inf
    standard = (columns - centre) / spread
    weights = np.where(target, prior / target.sum(), (1 - prior) / (~target).sum())
    sign = np.where(target, -1.0, 1.0)
    prior_logit = logit(prior)

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (standard @ params[:-1] + params[-1] + prior_logit)
        loss = float((weights * np.logaddexp(0.0, margin)).sum())
        gradient_margin = weights * expit(margin) * sign
        return loss, np.append(standard.T @ gradient_margin, gradient_margin.sum())

    start = np.zeros(columns.shape[1] + 1)
    start[0] = 1.0
    result = minimize(objective, start, jac=True, method="L-BFGS-B")
    slopes = result.x[:-1] / spread
    return slopes, float(result.x[-1] - slopes @ centre)


def fit_calibration(scores: np.ndarray, labels: np.ndarray, prior: float = 0.5, scoring: str = "original",
                    score_norm: str = "none", fitted_on: str = "",
                    quality: dict[str, np.ndarray] | None = None) -> Calibration:
    """Prior-weighted logistic regression of the labels on the scores; its output minus logit(prior) is an LLR.

    With `quality` (feature name -> one value per trial) a quality model on the score and the features is fitted
    too, by the same regression."""
    scores, target = _two_class(scores, labels, "Calibration")
    slopes, offset = _logistic_regression(scores[:, None], target, prior)
    fitted = Calibration(float(slopes[0]), offset, prior, scoring, score_norm, fitted_on, int(target.sum()),
                         int((~target).sum()))
    if quality:
        columns = np.column_stack([scores, *(np.asarray(quality[name], dtype=np.float64) for name in quality)])
        slopes, offset = _logistic_regression(columns, target, prior)
        fitted.quality = list(quality)
        fitted.quality_weights = [float(slopes[0]), offset, *map(float, slopes[1:])]
    return fitted


def verdict(llr: float, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, bool]:
    """(probability of the same speaker at prior p_target, whether to accept at these costs)."""
    return float(expit(llr + logit(p_target))), bool(llr >= bayes_threshold(p_target, c_miss, c_fa))
