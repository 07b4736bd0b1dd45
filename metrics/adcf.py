"""Minimum architecture-agnostic detection cost function (a-DCF).

Shim et al., "a-DCF: an architecture agnostic metric with application to
spoofing-robust speaker verification", Odyssey 2024. One SASV score per trial;
a threshold accepts trials scoring above it. Reproduces the official a_dcf
package's per-sample sweep: scores ordered target, nontarget, spoof and
stable-sorted; point 0 accepts everything at `min - 1e-8`, point k rejects the
k lowest scores. Each point costs

    Cmiss Ptrg Pmiss + Cfa_asv Pnontrg Pfa_nontarget + Cfa_cm Pspf Pfa_spoof,

normalised by min(Cfa_asv Pnontrg + Cfa_cm Pspf, Cmiss Ptrg), the cheaper of the
accept-all and reject-all systems.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metrics.eer import SASV_KEYS, as_scores, key_codes, sort_by_score_then_class
from metrics.errors import MetricError


@dataclass(frozen=True)
class ADCFCostModel:
    """Priors and costs of the a-DCF."""

    Pspf: float = 0.05
    Pnontrg: float = 0.05
    Ptrg: float = 0.9
    Cmiss: float = 1
    Cfa_asv: float = 10
    Cfa_cm: float = 20

    def __post_init__(self) -> None:
        priors = (self.Ptrg, self.Pnontrg, self.Pspf)
        if min(priors) < 0 or abs(sum(priors) - 1) > 1e-10:
            raise MetricError(f"a-DCF priors must be non-negative and sum to 1, got {priors}")
        if min(self.Cmiss, self.Cfa_asv, self.Cfa_cm) < 0:
            raise MetricError("a-DCF costs must be non-negative")

    def normalised(self, p_miss: Any, p_fa_nontarget: Any, p_fa_spoof: Any) -> Any:
        """The normalised a-DCF of a system with these error rates (numbers or arrays of them): the cost
        divided by that of the cheaper of the accept-all and reject-all systems."""
        raw = (
            self.Cmiss * self.Ptrg * p_miss
            + self.Cfa_asv * self.Pnontrg * p_fa_nontarget
            + self.Cfa_cm * self.Pspf * p_fa_spoof
        )
        return raw / min(self.Cfa_asv * self.Pnontrg + self.Cfa_cm * self.Pspf, self.Cmiss * self.Ptrg)


# The a_dcf package's CostModel() defaults (used for the golden values).
ADCF_DEFAULT = ADCFCostModel()

# ASVspoof 5 Track 2: the official evaluation package builds its a-DCF cost model
# from the legacy t-DCF priors and Cmiss = 1, Cfa = Cfa_spoof = 10
# (github.com/asvspoof-challenge/asvspoof5, evaluation-package/calculate_metrics.py,
# commit a24b52c, July 2024). The priors are written as that script computes them.
ADCF_ASVSPOOF5 = ADCFCostModel(
    Pspf=0.05,
    Pnontrg=(1 - 0.05) * 0.01,
    Ptrg=(1 - 0.05) * 0.99,
    Cmiss=1,
    Cfa_asv=10,
    Cfa_cm=10,
)


@dataclass(frozen=True)
class ADCFResult:
    min_adcf: float
    threshold: float
    argmin_index: int
    curve: np.ndarray  # normalised a-DCF per threshold
    thresholds: np.ndarray


def adcf_curve(
    scores: Any, keys: Sequence[str] | np.ndarray, cost_model: ADCFCostModel = ADCF_DEFAULT
) -> ADCFResult:
    """The normalised a-DCF at every per-sample threshold, and its minimum."""
    values = as_scores(scores, "scores")
    return adcf_curve_from_codes(values, key_codes(keys, values.size), cost_model)


def adcf_curve_from_codes(values: np.ndarray, codes: np.ndarray, cost_model: ADCFCostModel) -> ADCFResult:
    """`adcf_curve` on validated float64 scores and their `key_codes` (0 target, 1 nontarget, 2 spoof)."""
    counts = np.bincount(codes, minlength=3)
    for name, count in zip(SASV_KEYS, counts):
        if count == 0:
            raise MetricError(f"no {name} trials: the a-DCF is undefined")
    return adcf_curve_from_sorted(*sort_by_score_then_class(values, codes, 3), cost_model, counts)


def adcf_curve_from_sorted(sorted_scores: np.ndarray, sorted_codes: np.ndarray, cost_model: ADCFCostModel,
                           counts: np.ndarray | None = None) -> ADCFResult:
    """`adcf_curve_from_codes` of scores sorted ascending, ties ordered by key code, every class present
    (`counts`: the trials per class, when known)."""
    counts = np.bincount(sorted_codes, minlength=3) if counts is None else counts
    n_target, n_nontarget, n_spoof = (int(count) for count in counts)
    misses = np.concatenate(([0], np.cumsum(sorted_codes == 0)))
    nontargets_left = n_nontarget - np.concatenate(([0], np.cumsum(sorted_codes == 1)))
    spoofs_left = n_spoof - np.concatenate(([0], np.cumsum(sorted_codes == 2)))
    curve = cost_model.normalised(misses / n_target, nontargets_left / n_nontarget, spoofs_left / n_spoof)
    thresholds = np.concatenate(([float(sorted_scores[0]) - 1e-8], sorted_scores))
    index = int(np.argmin(curve))
    return ADCFResult(
        min_adcf=float(curve[index]),
        threshold=float(thresholds[index]),
        argmin_index=index,
        curve=curve,
        thresholds=thresholds,
    )


def min_adcf(
    scores: Any, keys: Sequence[str] | np.ndarray, cost_model: ADCFCostModel = ADCF_DEFAULT
) -> tuple[float, float]:
    """(minimum normalised a-DCF, threshold at the minimum)."""
    result = adcf_curve(scores, keys, cost_model)
    return result.min_adcf, result.threshold
