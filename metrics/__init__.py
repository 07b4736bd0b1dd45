"""SASV evaluation metrics (numpy, vectorised): SASV 2022 EERs, AASIST EER, min t-DCF, min a-DCF,
and the ASVspoof 5 Track 1 / Track 2 metrics with their per-attack x per-codec tables."""
from __future__ import annotations

from metrics.adcf import (
    ADCF_ASVSPOOF5,
    ADCF_DEFAULT,
    ADCFCostModel,
    ADCFResult,
    adcf_curve,
    min_adcf,
)
from metrics.asvspoof5 import (
    ASVSPOOF5_ASV_RATES,
    ASVErrorRates,
    asv_rates_at_eer,
    min_tdcf_asvspoof5,
    t_eer,
    track1_metrics,
    track2_metrics,
)
from metrics.asvspoof5_tables import track1_table, track2_table
from metrics.eer import compute_eer, roc_eer, sasv_eers
from metrics.errors import MetricError
from metrics.tdcf import LEGACY_2019_COST, TDCFCostModel, TDCFResult, min_tdcf, tdcf_curve

__all__ = [
    "ADCF_ASVSPOOF5",
    "ADCF_DEFAULT",
    "ASVSPOOF5_ASV_RATES",
    "LEGACY_2019_COST",
    "ADCFCostModel",
    "ADCFResult",
    "ASVErrorRates",
    "MetricError",
    "TDCFCostModel",
    "TDCFResult",
    "adcf_curve",
    "asv_rates_at_eer",
    "compute_eer",
    "min_adcf",
    "min_tdcf",
    "min_tdcf_asvspoof5",
    "roc_eer",
    "sasv_eers",
    "t_eer",
    "tdcf_curve",
    "track1_metrics",
    "track1_table",
    "track2_metrics",
    "track2_table",
]
