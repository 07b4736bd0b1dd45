"""Score-level fusion of separate ASV and CM scores into SASV scores (numpy only).

Three baselines, all written as one SASV score per trial (higher = target bona fide):
  sum      SASV 2022 Baseline 1: ASV cosine + CM bona fide logit, raw.
  linear   each sub-system calibrated to log-odds on dev by prior-weighted logistic regression
           (ASV: target vs nontarget bona fide trials; CM: bona fide vs spoof utterances), then
           the sum of the two calibrated log-odds (the "linear" fusion of the ASVspoof 5 tool).
  product  log(P(target) * P(bona fide)) with the calibrated posteriors at the calibration prior,
           i.e. log-sigmoid(asv log-odds) + log-sigmoid(cm log-odds): the log of the product rule.
The logistic regression is BOSARIS-style: each class carries a total weight of its prior, the
prior's log-odds is added to the linear score while fitting and left out of the calibrated output,
no regularisation; solved by Newton's method on the two parameters (scale, offset). Scores whose two
classes a threshold separates (touching at one value included) have no finite optimum and are refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtime.errors import UserError

FUSIONS = ("sum", "linear", "product")
CALIBRATED = ("linear", "product")  # fusions that need calibration parameters fitted on dev


class FusionError(UserError):
    """Scores that cannot be calibrated or fused (e.g. a class with no scores, perfect separation)."""


@dataclass(frozen=True)
class Calibration:
    """Affine map of a raw score to calibrated log-odds: `scale * score + offset`."""
    scale: float
    offset: float
    prior: float  # the positive-class prior the fit was weighted for
    n_positive: int
    n_negative: int
    iterations: int

    def log_odds(self, scores: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def as_dict(self) -> dict:
        return asdict(self)


def _log1p_exp(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-_log1p_exp(-x))


def fit_logistic(positive: np.ndarray, negative: np.ndarray, prior: float = 0.5, *, what: str = "scores",
                 classes: tuple[str, str] = ("positive", "negative"), max_iterations: int = 100,
                 tolerance: float = 1e-12) -> Calibration:
    """Prior-weighted logistic regression of one score: positive vs negative class.

    Minimises prior * mean_pos log(1 + exp(-z)) + (1 - prior) * mean_neg log(1 + exp(z)) with
    z = scale * s + offset + logit(prior), so `scale * s + offset` estimates the log-likelihood ratio.
    `what` names the scores (their file) in error messages, `classes` the two classes.
    Scores whose classes are separated, even touching at one value, are refused: they have no finite optimum.
    """
    positive = np.asarray(positive, dtype=np.float64).ravel()
    negative = np.asarray(negative, dtype=np.float64).ravel()
    if not 0.0 < prior < 1.0:
        raise FusionError(f"{what}: calibration prior {prior} is not in (0, 1)")
    if positive.size == 0 or negative.size == 0:
        raise FusionError(f"{what}: {positive.size} {classes[0]} and {negative.size} {classes[1]} scores; "
                          f"calibration needs both classes")
    if not (np.isfinite(positive).all() and np.isfinite(negative).all()):
        raise FusionError(f"{what}: non-finite scores cannot be calibrated")
    separation = _separation(positive, negative, classes)
    scores = np.concatenate([positive, negative])
    sign = np.concatenate([np.ones(positive.size), -np.ones(negative.size)])
    weight = np.concatenate([np.full(positive.size, prior / positive.size),
                             np.full(negative.size, (1.0 - prior) / negative.size)])
    prior_log_odds = np.log(prior / (1.0 - prior))
    # Scores centred and scaled for the solve: the same optimum, a better-conditioned Hessian.
    centre, spread = scores.mean(), scores.std() or 1.0
    standard = (scores - centre) / spread
    # Rounding can make scores that overlap by a hair touch in the solver's units; that diverges just the same.
    separation = separation or _separation(standard[:positive.size], standard[positive.size:], classes)
    if separation:
        raise FusionError(f"{what}: the {classes[0]} and {classes[1]} scores are perfectly separated "
                          f"({separation}), so the logistic calibration has no finite optimum (its scale grows "
                          f"without bound); use --fusion sum")
    features = np.stack([standard, np.ones_like(scores)], axis=1)

    def loss(theta: np.ndarray) -> float:
        return float(weight @ _log1p_exp(-sign * (features @ theta + prior_log_odds)))

    theta = np.zeros(2)
    current = loss(theta)
    for iteration in range(1, max_iterations + 1):
        z = features @ theta + prior_log_odds
        residual = -sign * _sigmoid(-sign * z)  # d loss / d z per score, before its weight
        curvature = _sigmoid(z) * _sigmoid(-z)
        gradient = features.T @ (weight * residual)
        hessian = (features * (weight * curvature)[:, None]).T @ features
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:  # not expected once separation is refused; never a traceback
            raise FusionError(f"{what}: logistic calibration failed (singular Hessian at Newton step "
                              f"{iteration})") from None
        size = 1.0
        while True:  # Newton step, halved until the loss does not go up
            candidate = theta - size * step
            new = loss(candidate)
            if new <= current or size < 1e-10:
                break
            size /= 2
        converged = abs(current - new) <= tolerance * max(1.0, abs(current)) and \
            np.max(np.abs(size * step)) <= 1e-9 * (1.0 + np.max(np.abs(theta)))
        theta, current = candidate, new
        if converged:
            break
    else:
        raise FusionError(f"{what}: logistic calibration did not converge in {max_iterations} Newton steps")
    if not np.isfinite(theta).all():
        raise FusionError(f"{what}: logistic calibration diverged (non-finite parameters)")
    scale = theta[0] / spread
    return Calibration(scale=float(scale), offset=float(theta[1] - scale * centre), prior=float(prior),
                       n_positive=int(positive.size), n_negative=int(negative.size), iterations=iteration)


def _separation(positive: np.ndarray, negative: np.ndarray, classes: tuple[str, str]) -> str:
    """Why a threshold separates the two classes, touching allowed ("" when the classes overlap).

    A 1-D logistic regression with an offset has a finite optimum exactly when no threshold t puts every
    score of one class at or above t and every score of the other at or below it (with the points at t
    fixed, a steeper scale always lowers the loss; with every score at t the scale is not determined)."""
    low, high = float(positive.min()), float(negative.max())
    if low >= high:
        return f"lowest {classes[0]} score {low!r} >= highest {classes[1]} score {high!r}"
    low, high = float(negative.min()), float(positive.max())
    if low >= high:
        return f"lowest {classes[1]} score {low!r} >= highest {classes[0]} score {high!r}"
    return ""


@dataclass(frozen=True)
class Calibrations:
    """The two sub-systems' calibrations, fitted on dev."""
    asv: Calibration
    cm: Calibration

    def as_dict(self) -> dict:
        return {"asv": self.asv.as_dict(), "cm": self.cm.as_dict()}


def fit_calibrations(asv_scores: np.ndarray, trial_keys: list[str], cm_scores: np.ndarray, cm_bonafide: np.ndarray,
                     prior: float = 0.5, *, asv_source: str = "dev ASV scores",
                     cm_source: str = "dev CM scores") -> Calibrations:
    """ASV: target vs nontarget trials (spoofed trials left out); CM: bona fide vs spoof utterances.
    `asv_source` / `cm_source` name the scores (their files) in error messages."""
    asv_scores, keys = np.asarray(asv_scores, dtype=np.float64), np.asarray(trial_keys)
    cm_scores, cm_bonafide = np.asarray(cm_scores, dtype=np.float64), np.asarray(cm_bonafide, dtype=bool)
    return Calibrations(
        asv=fit_logistic(asv_scores[keys == "target"], asv_scores[keys == "nontarget"], prior, what=asv_source,
                         classes=("target", "nontarget")),
        cm=fit_logistic(cm_scores[cm_bonafide], cm_scores[~cm_bonafide], prior, what=cm_source,
                        classes=("bona fide", "spoof")))


def fuse(fusion: str, asv_scores: np.ndarray, cm_scores: np.ndarray, calibrations: Calibrations | None = None
         ) -> np.ndarray:
    """SASV score per trial from its ASV and CM scores (same length, trial order)."""
    asv = np.asarray(asv_scores, dtype=np.float64)
    cm = np.asarray(cm_scores, dtype=np.float64)
    if fusion == "sum":
        return asv + cm
    if fusion not in CALIBRATED:
        raise FusionError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
    if calibrations is None:
        raise FusionError(f"{fusion} fusion needs calibration parameters fitted on dev")
    asv_log_odds, cm_log_odds = calibrations.asv.log_odds(asv), calibrations.cm.log_odds(cm)
    if fusion == "linear":
        return asv_log_odds + cm_log_odds
    # Posterior at each fit's prior: P = sigmoid(log-odds + logit(prior)); log P = -log(1 + exp(-that)).
    asv_prior = np.log(calibrations.asv.prior / (1 - calibrations.asv.prior))
    cm_prior = np.log(calibrations.cm.prior / (1 - calibrations.cm.prior))
    return -_log1p_exp(-(asv_log_odds + asv_prior)) - _log1p_exp(-(cm_log_odds + cm_prior))
