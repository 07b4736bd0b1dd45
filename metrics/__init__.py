"""SASV evaluation metrics (numpy, vectorised): SASV 2022 EERs, AASIST EER, min t-DCF, min a-DCF."""
from __future__ import annotations

from runtime.errors import UserError


class MetricError(UserError, ValueError):
    """Invalid metric input: empty class, unknown key, mismatched lengths, NaN/inf."""


# Imported after MetricError: the submodules import it from this package.
from metrics.adcf import (  # noqa: E402
    ADCF_ASVSPOOF5,
    ADCF_DEFAULT,
    ADCFCostModel,
    ADCFResult,
    adcf_curve,
    min_adcf,
)
from metrics.eer import compute_eer, roc_eer, sasv_eers  # noqa: E402
from metrics.tdcf import LEGACY_2019_COST, TDCFCostModel, TDCFResult, min_tdcf, tdcf_curve  # noqa: E402

__all__ = [
    "MetricError",
    "roc_eer",
    "sasv_eers",
    "compute_eer",
    "min_tdcf",
    "tdcf_curve",
    "TDCFCostModel",
    "TDCFResult",
    "LEGACY_2019_COST",
    "min_adcf",
    "adcf_curve",
    "ADCFCostModel",
    "ADCFResult",
    "ADCF_DEFAULT",
    "ADCF_ASVSPOOF5",
]
