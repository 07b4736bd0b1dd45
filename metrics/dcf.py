"""Minimum normalised detection cost (minDCF) of a speaker verifier, NIST SRE 2016 form.

    C_det(t) = C_miss P_miss(t) p_target + C_fa P_fa(t) (1 - p_target)
    minDCF   = min_t C_det(t) / min(C_miss p_target, C_fa (1 - p_target))

As in voxceleb_trainer (`ComputeErrorRates` / `ComputeMinDcf`), the sweep is per sample:
trials are sorted by score with a stable sort (ties keep trial order), threshold i rejects
the first i + 1 sorted trials (P_miss counts targets at or below it, P_fa nontargets above
it), and the first minimum wins. The "accept everything" point is not on the sweep.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from metrics.eer import as_scores
from metrics.errors import MetricError


def min_dcf(scores: Any, labels: Any, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
            ) -> tuple[float, float]:
    """(minDCF, threshold at the minimum); `labels` are 1 for target trials, 0 for nontarget, in score order."""
    values = as_scores(scores, "scores")
    truth = np.asarray(labels)
    if truth.shape != values.shape:
        raise MetricError(f"min_dcf: {truth.size} labels for {values.size} scores")
    if not np.isin(truth, (0, 1)).all():
        raise MetricError("min_dcf: labels must be 1 (target) or 0 (nontarget)")
    if not 0.0 < p_target < 1.0:
        raise MetricError(f"min_dcf: p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise MetricError(f"min_dcf: costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    n_target = int(np.count_nonzero(truth == 1))
    n_nontarget = truth.size - n_target
    if n_target == 0 or n_nontarget == 0:
        raise MetricError(f"min_dcf needs target and nontarget trials (got {n_target} and {n_nontarget})")
    order = np.argsort(values, kind="stable")
    sorted_truth = truth[order].astype(np.float64)
    p_miss = np.cumsum(sorted_truth) / n_target
    p_fa = 1.0 - np.cumsum(1.0 - sorted_truth) / n_nontarget
    cost = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    index = int(np.argmin(cost))
    normaliser = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(cost[index] / normaliser), float(values[order[index]])
