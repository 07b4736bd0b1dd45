"""SASV evaluation metrics (numpy, vectorised): SASV 2022 EERs, AASIST EER, min t-DCF, min a-DCF."""
from __future__ import annotations

from metrics.adcf import (
    ADCF_ASVSPOOF5,
    ADCF_DEFAULT,
    ADCFCostModel,
    ADCFResult,
    adcf_curve,
    min_adcf,
)
from metrics.eer import compute_eer, roc_eer, sasv_eers
from metrics.errors import MetricError
from metrics.tdcf import LEGACY_2019_COST, TDCFCostModel, TDCFResult, min_tdcf, tdcf_curve

__all__ = [
    "ADCF_ASVSPOOF5",
    "ADCF_DEFAULT",
    "LEGACY_2019_COST",
    "ADCFCostModel",
    "ADCFResult",
    "MetricError",
    "TDCFCostModel",
    "TDCFResult",
    "adcf_curve",
    "compute_eer",
    "min_adcf",
    "min_tdcf",
    "roc_eer",
    "sasv_eers",
    "tdcf_curve",
]
