"""How well scores are calibrated: the actual costs of their decisions next to the minimum ones.

For log-likelihood ratios (LLRs) of a binary detector (labels 1: target / bona fide, 0: the other class):
  act_dcf(llr, labels, prior)  the normalised detection cost of the Bayes decisions at `prior` (accept when
                               llr > -logit(prior)), C_miss = C_fa = 1, normalised by min(prior, 1 - prior):
                               the same normalisation as metrics.dcf.min_dcf, so that act - min is the
                               calibration loss at that operating point;
  min_dcf_at(scores, labels, prior)  that minimum over every threshold, the trivial systems (accept all,
                               reject all) included, so that act_dcf is never below it;
  cllr(llr, labels)            the log-likelihood-ratio cost in bits, both classes weighted equally;
  min_cllr(scores, labels)     Cllr after the optimal monotone calibration of the scores: the pool-adjacent-
                               violators (isotonic) fit of the target posterior, tied scores pooled, turned
                               into LLRs by removing the empirical prior's log-odds (Brümmer's minimum Cllr).
For SASV scores and a threshold: `adcf_at_threshold`, the a-DCF of accepting the trials scoring above it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from metrics.adcf import ADCF_DEFAULT, ADCFCostModel
from metrics.dcf import min_dcf
from metrics.eer import as_scores, key_codes
from metrics.errors import MetricError


def _two_classes(values: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores of label 1, scores of label 0), both non-empty; MetricError otherwise."""
    scores = as_scores(values, what)
    truth = np.asarray(labels)
    if truth.shape != scores.shape:
        raise MetricError(f"{what}: {truth.size} labels for {scores.size} scores")
    if not np.isin(truth, (0, 1)).all():
        raise MetricError(f"{what}: labels must be 1 (target) or 0 (nontarget)")
    positive, negative = scores[truth == 1], scores[truth == 0]
    if positive.size == 0 or negative.size == 0:
        raise MetricError(f"{what}: needs both classes (got {positive.size} target and {negative.size} nontarget)")
    return positive, negative


def _check_prior(prior: float) -> None:
    if not 0.0 < prior < 1.0:
        raise MetricError(f"prior must be in (0, 1), got {prior}")


def act_dcf(llr: Any, labels: Any, prior: float) -> float:
    """Normalised cost of the Bayes decisions of `llr` at `prior` (accept when llr > -logit(prior))."""
    _check_prior(prior)
    positive, negative = _two_classes(llr, labels, "act_dcf")
    threshold = -np.log(prior / (1.0 - prior))
    p_miss = np.count_nonzero(positive <= threshold) / positive.size
    p_fa = np.count_nonzero(negative > threshold) / negative.size
    return float((prior * p_miss + (1.0 - prior) * p_fa) / min(prior, 1.0 - prior))


def min_dcf_at(scores: Any, labels: Any, prior: float) -> float:
    """metrics.dcf.min_dcf at `prior` (C_miss = C_fa = 1), the accept-all system included (cost 1 at most)."""
    _check_prior(prior)
    _two_classes(scores, labels, "min_dcf")
    # The sweep holds reject-all (cost prior / min(prior, 1 - prior)), not accept-all ((1 - prior) / min(...)):
    # the cheaper of the two costs exactly 1.
    return min(min_dcf(scores, labels, prior)[0], 1.0)


def cllr(llr: Any, labels: Any) -> float:
    """Log-likelihood-ratio cost in bits: the mean log2(1 + e^-llr) of the targets and log2(1 + e^llr) of the
    nontargets, averaged over the two classes."""
    return _cllr_bits(*_two_classes(llr, labels, "cllr"))


def _cllr_bits(positive: np.ndarray, negative: np.ndarray) -> float:
    """Cllr of target and nontarget LLRs; an infinite LLR on the side that costs nothing adds 0."""
    return float((np.mean(np.logaddexp(0.0, -positive)) + np.mean(np.logaddexp(0.0, negative))) / (2 * np.log(2)))


def pav_llr(scores: Any, labels: Any) -> np.ndarray:
    """LLRs of the optimal monotone (non-decreasing) calibration of `scores`, in their order; +-inf where a
    pooled group holds one class only."""
    values = as_scores(scores, "pav_llr")
    _two_classes(values, labels, "pav_llr")
    truth = np.asarray(labels, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    distinct, group = np.unique(values[order], return_inverse=True)
    # Tied scores are one point: a calibration is a function of the score.
    weights = np.bincount(group, minlength=distinct.size).astype(np.float64)
    sums = np.bincount(group, weights=truth[order], minlength=distinct.size)
    # Pool adjacent violators on (sum of labels, count) blocks.
    block_sum: list[float] = []
    block_weight: list[float] = []
    block_size: list[int] = []
    for total, weight in zip(sums, weights):
        block_sum.append(total)
        block_weight.append(weight)
        block_size.append(1)
        while len(block_sum) > 1 and block_sum[-2] / block_weight[-2] >= block_sum[-1] / block_weight[-1]:
            total, weight, size = block_sum.pop(), block_weight.pop(), block_size.pop()
            block_sum[-1] += total
            block_weight[-1] += weight
            block_size[-1] += size
    posterior = np.repeat(np.array(block_sum) / np.array(block_weight), block_size)
    n_target = truth.sum()
    prior_log_odds = np.log(n_target / (truth.size - n_target))
    with np.errstate(divide="ignore"):
        group_llr = np.log(posterior) - np.log1p(-posterior) - prior_log_odds
    result = np.empty(values.size)
    result[order] = group_llr[group]
    return result


def min_cllr(scores: Any, labels: Any) -> float:
    """Cllr (bits) of the scores after the optimal monotone calibration (`pav_llr`): the part of Cllr that no
    calibration removes; cllr - min_cllr is the calibration loss."""
    llr, truth = pav_llr(scores, labels), np.asarray(labels)
    return _cllr_bits(llr[truth == 1], llr[truth == 0])  # +-inf only where it costs nothing


def adcf_at_threshold(scores: Any, keys: Any, threshold: float, cost_model: ADCFCostModel = ADCF_DEFAULT) -> float:
    """Normalised a-DCF of accepting the trials that score above `threshold` (keys target / nontarget / spoof),
    normalised as metrics.adcf.adcf_curve."""
    values = as_scores(scores, "scores")
    codes = key_codes(keys, values.size)
    counts = np.bincount(codes, minlength=3)
    if (counts == 0).any():
        raise MetricError("a-DCF needs target, nontarget and spoof trials "
                          f"(got {counts[0]}, {counts[1]} and {counts[2]})")
    accepted = values > threshold
    p_miss = np.count_nonzero(~accepted & (codes == 0)) / counts[0]
    p_fa_nontarget = np.count_nonzero(accepted & (codes == 1)) / counts[1]
    p_fa_spoof = np.count_nonzero(accepted & (codes == 2)) / counts[2]
    return float(cost_model.normalised(p_miss, p_fa_nontarget, p_fa_spoof))
