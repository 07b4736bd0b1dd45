"""Minimum tandem detection cost function (t-DCF), ASVspoof 2019 legacy form.

The ASV system is fixed at its EER threshold (per-sample sweep, see
`metrics.eer.compute_eer`); the CM threshold sweeps every per-sample point of
the CM DET curve:

    C1 = Ptar (Cmiss_cm - Cmiss_asv Pmiss_asv) - Pnon Cfa_asv Pfa_asv
    C2 = Cfa_cm Pspoof (1 - Pmiss_spoof_asv)
    t-DCF(s) = (C1 Pmiss_cm(s) + C2 Pfa_cm(s)) / min(C1, C2)

Arithmetic is done in the reference order so results match it bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metrics.eer import as_scores, det_curve, eer_from_det, require_nonempty
from metrics.errors import MetricError


@dataclass(frozen=True)
class TDCFCostModel:
    """Priors and costs of the legacy t-DCF."""

    Pspoof: float
    Ptar: float
    Pnon: float
    Cmiss_asv: float
    Cfa_asv: float
    Cmiss_cm: float
    Cfa_cm: float

    def __post_init__(self) -> None:
        priors = (self.Ptar, self.Pnon, self.Pspoof)
        if min(priors) < 0 or abs(sum(priors) - 1) > 1e-10:
            raise MetricError(f"t-DCF priors must be non-negative and sum to 1, got {priors}")
        costs = (self.Cmiss_asv, self.Cfa_asv, self.Cmiss_cm, self.Cfa_cm)
        if min(costs) < 0:
            raise MetricError(f"t-DCF costs must be non-negative, got {costs}")


# ASVspoof 2019 (as in the AASIST and ASVspoof 5 evaluation scripts): 5 % spoofs,
# the bona fide mass split 99:1 between targets and non-targets.
LEGACY_2019_COST = TDCFCostModel(
    Pspoof=0.05,
    Ptar=(1 - 0.05) * 0.99,
    Pnon=(1 - 0.05) * 0.01,
    Cmiss_asv=1,
    Cfa_asv=10,
    Cmiss_cm=1,
    Cfa_cm=10,
)


@dataclass(frozen=True)
class TDCFResult:
    """Every intermediate of one min t-DCF evaluation."""

    min_tdcf: float
    argmin_index: int
    cm_threshold_at_min: float
    curve: np.ndarray  # normalised t-DCF per CM threshold
    cm_thresholds: np.ndarray
    eer_asv: float
    asv_threshold: float
    pfa_asv: float
    pmiss_asv: float
    pmiss_spoof_asv: float
    c1: float
    c2: float
    eer_cm: float  # stand-alone CM EER, from the same DET curve
    cm_eer_threshold: float


def tdcf_curve(
    asv_target: Any,
    asv_nontarget: Any,
    asv_spoof: Any,
    cm_bonafide: Any,
    cm_spoof: Any,
    cost_model: TDCFCostModel = LEGACY_2019_COST,
) -> TDCFResult:
    """The t-DCF curve over all CM thresholds, with the ASV fixed at its EER threshold."""
    tar_asv = as_scores(asv_target, "asv_target")
    non_asv = as_scores(asv_nontarget, "asv_nontarget")
    spoof_asv = as_scores(asv_spoof, "asv_spoof")
    bona_cm = as_scores(cm_bonafide, "cm_bonafide")
    spoof_cm = as_scores(cm_spoof, "cm_spoof")
    require_nonempty(tar_asv, "ASV target", "the t-DCF")
    require_nonempty(non_asv, "ASV non-target", "the t-DCF")
    require_nonempty(spoof_asv, "ASV spoof", "the t-DCF")
    require_nonempty(bona_cm, "CM bona fide", "the t-DCF")
    require_nonempty(spoof_cm, "CM spoof", "the t-DCF")
    if np.unique(np.concatenate((bona_cm, spoof_cm))).size < 3:
        raise MetricError("CM scores take fewer than 3 distinct values: give soft scores, not decisions")

    eer_asv, asv_threshold = eer_from_det(*det_curve(tar_asv, non_asv))
    pfa_asv = np.count_nonzero(non_asv >= asv_threshold) / non_asv.size
    pmiss_asv = np.count_nonzero(tar_asv < asv_threshold) / tar_asv.size
    pmiss_spoof_asv = np.count_nonzero(spoof_asv < asv_threshold) / spoof_asv.size

    pmiss_cm, pfa_cm, cm_thresholds = det_curve(bona_cm, spoof_cm)
    cost = cost_model
    c1 = cost.Ptar * (cost.Cmiss_cm - cost.Cmiss_asv * pmiss_asv) - cost.Pnon * cost.Cfa_asv * pfa_asv
    c2 = cost.Cfa_cm * cost.Pspoof * (1 - pmiss_spoof_asv)
    if c1 < 0 or c2 < 0:
        raise MetricError(f"t-DCF weights are negative (C1={c1}, C2={c2}); check the ASV error rates")
    if c1 == 0 or c2 == 0:
        # The normalisation min(C1, C2) vanishes; the reference would return inf/nan here.
        raise MetricError(f"t-DCF is undefined: C1={c1}, C2={c2} (C2 = 0 means the ASV rejects every spoof "
                          f"at its EER threshold)")
    curve = (c1 * pmiss_cm + c2 * pfa_cm) / np.minimum(c1, c2)
    index = int(np.argmin(curve))
    eer_cm, cm_eer_threshold = eer_from_det(pmiss_cm, pfa_cm, cm_thresholds)
    return TDCFResult(
        min_tdcf=float(curve[index]),
        argmin_index=index,
        cm_threshold_at_min=float(cm_thresholds[index]),
        curve=curve,
        cm_thresholds=cm_thresholds,
        eer_asv=eer_asv,
        asv_threshold=asv_threshold,
        pfa_asv=float(pfa_asv),
        pmiss_asv=float(pmiss_asv),
        pmiss_spoof_asv=float(pmiss_spoof_asv),
        c1=float(c1),
        c2=float(c2),
        eer_cm=eer_cm,
        cm_eer_threshold=cm_eer_threshold,
    )


def min_tdcf(
    asv_target: Any,
    asv_nontarget: Any,
    asv_spoof: Any,
    cm_bonafide: Any,
    cm_spoof: Any,
    cost_model: TDCFCostModel = LEGACY_2019_COST,
) -> float:
    """Minimum normalised t-DCF (ASVspoof 2019 legacy cost model by default)."""
    return tdcf_curve(asv_target, asv_nontarget, asv_spoof, cm_bonafide, cm_spoof, cost_model).min_tdcf
