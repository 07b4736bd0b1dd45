"""ASVspoof 5 challenge metrics, as the official evaluation package computes them (fractions, not percent).

Reimplements, vectorised, the definitions of asvspoof-challenge/asvspoof5 `evaluation-package/`
(commit fe23d30): Track 1 (CM alone) min DCF, actual DCF, Cllr and EER; Track 2 (SASV) min a-DCF,
min t-DCF (ASVspoof 5 form, with a constant term C0) and the accelerated concurrent t-EER.
Per-sample sweeps, tie orders and the order of floating-point operations follow the package so the
numbers agree with it bit for bit (Cllr, computed without overflow, to rounding); per-attack x per-codec
tables are in `metrics.asvspoof5_tables`.
Higher scores mean bona fide / target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metrics.adcf import ADCF_ASVSPOOF5, adcf_curve_from_codes
from metrics.eer import SASV_KEYS, as_scores, det_curve, eer_from_det, key_codes, sort_by_score_then_class
from metrics.errors import MetricError

CM_KEYS = ("bonafide", "spoof")

# Track 1 detection costs (calculate_minDCF_EER_CLLR_actDCF).
TRACK1_PSPOOF = 0.05
TRACK1_CMISS = 1
TRACK1_CFA = 10

# The Track 2 t-DCF shares the a-DCF's priors and costs in the package: Ptar = Ptrg, Pnon = Pnontrg,
# Pspoof = Pspf, Cmiss, Cfa = Cfa_asv, Cfa_spoof = Cfa_cm.
TDCF_COST = ADCF_ASVSPOOF5

# t-EER search: one spoof prior (every rho gives the same concurrent point) and the accelerated
# search's grid size and fine-search half-width, as in compute_teer_accelerated.
_RHO = 0.5
_TEER_DECIMATED = 3000
_TEER_BIN_WIDTH = 1600
_BLOCK_ELEMENTS = 1 << 18  # rows x CM points per t-EER block: 2 MiB float64 buffers stay in cache


@dataclass(frozen=True)
class ASVErrorRates:
    """Error rates of the fixed ASV system the min t-DCF is evaluated with."""

    pfa_nontarget: float
    pmiss_target: float
    pfa_spoof: float


# The organisers' ASV error rates pooled over all conditions, built into the package.
ASVSPOOF5_ASV_RATES = ASVErrorRates(
    pfa_nontarget=0.01881016557566423, pmiss_target=0.01880141010575793, pfa_spoof=0.4607082907604729
)


def asv_rates_at_eer(asv_scores: Any, asv_keys: Any, *, package_spoof_quirk: bool = True) -> ASVErrorRates:
    """ASV error rates at the threshold of the ASV's EER (target vs nontarget, per-sample sweep).

    With `package_spoof_quirk` (default) `pfa_spoof` holds the fraction of spoofs the ASV *rejects*:
    the package's Track 2 script takes item 2 of obtain_asv_error_rates (the spoof miss rate) where
    the t-DCF expects the spoof false-acceptance rate (item 3). False gives the acceptance rate.
    """
    scores = as_scores(asv_scores, "asv_scores")
    codes = key_codes(asv_keys, scores.size, SASV_KEYS)
    return _asv_rates(scores, codes, package_spoof_quirk)


def _asv_rates(scores: np.ndarray, codes: np.ndarray, package_spoof_quirk: bool = True) -> ASVErrorRates:
    _require_codes(codes, SASV_KEYS, "ASV error rates")
    target, nontarget, spoof = (scores[codes == code] for code in range(3))
    _, threshold = eer_from_det(*det_curve(target, nontarget))
    spoof_below = np.count_nonzero(spoof < threshold)
    return ASVErrorRates(
        pfa_nontarget=np.count_nonzero(nontarget >= threshold) / nontarget.size,
        pmiss_target=np.count_nonzero(target < threshold) / target.size,
        pfa_spoof=(spoof_below if package_spoof_quirk else spoof.size - spoof_below) / spoof.size,
    )


def _require_codes(codes: np.ndarray, names: tuple[str, ...], what: str) -> None:
    """MetricError unless every class (code 0 .. len(names) - 1) has a trial."""
    counts = np.bincount(codes, minlength=len(names))
    for name, count in zip(names, counts):
        if count == 0:
            raise MetricError(f"no {name} trials: {what} is undefined")


# ------------------------------------------------------------------------------------------ Track 1


@dataclass(frozen=True)
class BonaFideTerms:
    """What Track 1 takes from the bona fide scores beside the DET curve: their share below the actual DCF's
    threshold and their Cllr term; shared by report cells with the same bona fide trials."""

    miss: float
    cllr_term: float  # mean of log(1 + e^-score), nats

    @classmethod
    def of(cls, bona: np.ndarray) -> BonaFideTerms:
        # logaddexp(0, x) = log(1 + e^x) without the package's overflow for |x| > ~700.
        return cls(np.count_nonzero(bona < _TRACK1_THRESHOLD) / bona.size, np.mean(np.logaddexp(0.0, -bona)))


# The actual DCF reads the scores as LLRs, with the threshold at the Bayes decision point -log(beta).
_TRACK1_THRESHOLD = -np.log(TRACK1_CMISS * (1 - TRACK1_PSPOOF) / (TRACK1_CFA * TRACK1_PSPOOF))


def track1_from_scores(bona: np.ndarray, spoof: np.ndarray) -> dict[str, float]:
    """`track1_metrics` of validated (finite float64, non-empty) bona fide and spoof CM scores."""
    return track1_from_det(det_curve(bona, spoof), BonaFideTerms.of(bona), spoof)


def track1_from_det(det: tuple[np.ndarray, np.ndarray, np.ndarray], bona: BonaFideTerms, spoof: np.ndarray
                    ) -> dict[str, float]:
    """`track1_from_scores`, given the DET curve (`det_curve(bona, spoof)`) and the terms of the bona fide
    scores."""
    frr, far, thresholds = det
    eer, _ = eer_from_det(frr, far, thresholds)
    p_bona = 1 - TRACK1_PSPOOF
    # min DCF: minimum over the EER sweep's points, normalised by the cheaper trivial system.
    cost = TRACK1_CMISS * frr * p_bona + TRACK1_CFA * far * (1 - p_bona)
    min_dcf = float(np.min(cost)) / min(TRACK1_CMISS * p_bona, TRACK1_CFA * (1 - p_bona))
    false_alarm = np.count_nonzero(spoof >= _TRACK1_THRESHOLD) / spoof.size
    act = TRACK1_CMISS * (1 - TRACK1_PSPOOF) * bona.miss + TRACK1_CFA * TRACK1_PSPOOF * false_alarm
    act_dcf = act / min(TRACK1_CFA * TRACK1_PSPOOF, TRACK1_CMISS * (1 - TRACK1_PSPOOF))
    cllr = 0.5 * (bona.cllr_term + np.mean(np.logaddexp(0.0, spoof))) / np.log(2)
    return {"min_dcf": float(min_dcf), "act_dcf": float(act_dcf), "cllr": float(cllr), "eer": float(eer)}


def track1_metrics(cm_scores: Any, cm_keys: Any) -> dict[str, float]:
    """Track 1: `min_dcf`, `act_dcf`, `cllr` (bits) and `eer` (fraction) of CM scores keyed bonafide/spoof."""
    scores = as_scores(cm_scores, "cm_scores")
    codes = key_codes(cm_keys, scores.size, CM_KEYS)
    _require_codes(codes, CM_KEYS, "Track 1")
    return track1_from_scores(scores[codes == 0], scores[codes == 1])


# ------------------------------------------------------------------------------------------ Track 2


def min_tdcf_asvspoof5(cm_bonafide: Any, cm_spoof: Any, asv_rates: ASVErrorRates = ASVSPOOF5_ASV_RATES) -> float:
    """Minimum normalised t-DCF (ASVspoof 5 form) over all CM thresholds, the ASV fixed at `asv_rates`.

        C0 = Ptar Cmiss Pmiss_asv + Pnon Cfa Pfa_asv,   C1 = Ptar Cmiss - C0,   C2 = Pspoof Cfa_spoof Pfa_spoof_asv
        t-DCF(s) = (C0 + C1 Pmiss_cm(s) + C2 Pfa_cm(s)) / (C0 + min(C1, C2))
    """
    bona = as_scores(cm_bonafide, "cm_bonafide")
    spoof = as_scores(cm_spoof, "cm_spoof")
    for name, values in (("CM bona fide", bona), ("CM spoof", spoof)):
        if values.size == 0:
            raise MetricError(f"no {name} trials: the t-DCF is undefined")
    if np.unique(np.concatenate((bona, spoof))).size < 3:
        raise MetricError("CM scores take fewer than 3 distinct values: give soft scores, not decisions")
    return min_tdcf_from_det(det_curve(bona, spoof), asv_rates)


def min_tdcf_from_det(det: tuple[np.ndarray, np.ndarray, np.ndarray], asv_rates: ASVErrorRates) -> float:
    """`min_tdcf_asvspoof5` given the CM's DET curve (`det_curve(bona, spoof)`: both classes present, at
    least 3 distinct scores)."""
    cost, rates = TDCF_COST, asv_rates
    c0 = cost.Ptrg * cost.Cmiss * rates.pmiss_target + cost.Pnontrg * cost.Cfa_asv * rates.pfa_nontarget
    c1 = cost.Ptrg * cost.Cmiss - c0
    c2 = cost.Pspf * cost.Cfa_cm * rates.pfa_spoof
    if c0 < 0 or c1 < 0 or c2 < 0:
        raise MetricError(f"t-DCF weights are negative (C0={c0}, C1={c1}, C2={c2}); check the ASV error rates")
    default = c0 + min(c1, c2)
    if default == 0:
        raise MetricError("t-DCF is undefined: the cost of the default system is 0 (error-free ASV, C2 = 0)")
    pmiss_cm, pfa_cm, _ = det
    return float(np.min((c0 + c1 * pmiss_cm + c2 * pfa_cm) / default))


def _closest_cm_points_scan(pmiss_asv: np.ndarray, pfa_non: np.ndarray, pfa_spf: np.ndarray,
                            cm: tuple[np.ndarray, ...]) -> np.ndarray:
    """For each ASV point, the first CM index minimising |tandem miss - tandem false alarm|: a full scan of
    every CM point, in cache-sized blocks of rows (in-place arithmetic, reused buffers)."""
    pmiss_cm, bona_pass, weighted_pass, weighted_fa = cm
    rows = max(1, _BLOCK_ELEMENTS // pmiss_cm.size)
    buffers = [np.empty((min(rows, pmiss_asv.size), pmiss_cm.size)) for _ in range(3)]
    found = np.empty(pmiss_asv.size, dtype=np.int64)
    for start in range(0, pmiss_asv.size, rows):
        block = slice(start, start + rows)
        tandem_miss, tandem_fa, spoof_part = (buffer[: pmiss_asv[block].size] for buffer in buffers)
        np.multiply(bona_pass, pmiss_asv[block, None], out=tandem_miss)
        tandem_miss += pmiss_cm
        np.multiply(weighted_pass, pfa_non[block, None], out=tandem_fa)
        np.multiply(weighted_fa, pfa_spf[block, None], out=spoof_part)
        tandem_fa += spoof_part
        tandem_miss -= tandem_fa
        found[block] = np.argmin(np.abs(tandem_miss, out=tandem_miss), axis=1)
    return found


def _tandem_gap(rows: np.ndarray, columns: np.ndarray, asv: tuple[np.ndarray, ...], cm: tuple[np.ndarray, ...]
                ) -> np.ndarray:
    """tandem miss - tandem false alarm at (ASV row, CM column) pairs, with the same floating-point
    operations, in the same order, as the full scan (so the same bits)."""
    pmiss_asv, pfa_non, pfa_spf = asv
    pmiss_cm, bona_pass, weighted_pass, weighted_fa = cm
    tandem_miss = bona_pass[columns] * pmiss_asv[rows] + pmiss_cm[columns]
    tandem_fa = weighted_pass[columns] * pfa_non[rows] + weighted_fa[columns] * pfa_spf[rows]
    return tandem_miss - tandem_fa


def _first_at_least(rows: np.ndarray, target: np.ndarray, size: int, asv: tuple, cm: tuple) -> np.ndarray:
    """Per row, the first CM column whose tandem gap is >= target (size when none): bisection, valid
    because the gap never decreases along the CM points (see `_closest_cm_points`)."""
    low, high = np.zeros(rows.size, dtype=np.int64), np.full(rows.size, size, dtype=np.int64)
    while True:
        open_ = low < high
        if not open_.any():
            return low
        middle = (low + high) // 2
        probe = np.minimum(middle, size - 1)
        below = _tandem_gap(rows, probe, asv, cm) < target
        low = np.where(open_ & below, middle + 1, low)
        high = np.where(open_ & ~below, middle, high)


def _closest_cm_points(pmiss_asv: np.ndarray, pfa_non: np.ndarray, pfa_spf: np.ndarray,
                       cm: tuple[np.ndarray, ...]) -> np.ndarray:
    """`_closest_cm_points_scan`, in O(log n) per ASV point instead of O(n).

    Along the CM points (threshold rising) the CM miss rate never falls and its false-alarm rate never
    rises, so tandem miss - tandem false alarm never decreases, and |gap| falls to the sign change and
    rises after it. In floating point the false-alarm part is exactly monotone (products and sums of
    monotone non-negative terms round monotonically); the miss part, CM miss + (1 - CM miss) * ASV miss,
    rises by at least (1 - ASV miss) * (smallest CM miss step) at each bona fide point, which must dwarf
    its rounding (a few 1e-16) for the order to survive rounding. Rows where it might not are scanned in
    full. The first minimum of |gap| is then the sign change's right side, or the first point of the run
    of equal gaps that ends at its left side, whichever is smaller (the left one on a tie)."""
    pmiss_cm = cm[0]
    size = pmiss_cm.size
    steps = np.diff(pmiss_cm)
    smallest_step = steps[steps > 0].min() if np.any(steps > 0) else 0.0
    safe = (1 - pmiss_asv) * smallest_step > 1e-12
    found = np.empty(pmiss_asv.size, dtype=np.int64)
    unsafe = np.flatnonzero(~safe)
    if unsafe.size:
        found[unsafe] = _closest_cm_points_scan(pmiss_asv[unsafe], pfa_non[unsafe], pfa_spf[unsafe], cm)
    rows = np.flatnonzero(safe)
    if not rows.size:
        return found
    asv = (pmiss_asv, pfa_non, pfa_spf)
    crossing = _first_at_least(rows, np.zeros(rows.size), size, asv, cm)
    left = np.maximum(crossing - 1, 0)
    left_gap = _tandem_gap(rows, left, asv, cm)
    right_gap = _tandem_gap(rows, np.minimum(crossing, size - 1), asv, cm)
    take_right = (crossing == 0) | ((crossing < size) & (np.abs(right_gap) < np.abs(left_gap)))
    run_start = _first_at_least(rows, left_gap, size, asv, cm)  # first point of the left side's run
    found[rows] = np.where(take_right, crossing, run_start)
    return found


def _teer_search(pmiss_cm: np.ndarray, pfa_cm: np.ndarray, pmiss_asv: np.ndarray, pfa_non: np.ndarray,
                 pfa_spf: np.ndarray, *, full_scan: bool = False) -> tuple[float, int, int] | None:
    """Concurrent t-EER on the given operating points: (t-EER, ASV index, CM index), or None if none qualifies.

    For every ASV point, the CM point where tandem miss and false-alarm rates are closest; among the ASV
    points in the allowed region, the first whose CM point best meets Pfa_non/Pfa_spf = Pfa_cm/(1-Pmiss_cm).
    `full_scan` finds the closest CM points by scanning every one (the package's way; for tests).
    """
    bona_pass = 1 - pmiss_cm
    # Operation order of the package, so that ties break alike.
    cm = (pmiss_cm, bona_pass, (1 - _RHO) * bona_pass, _RHO * pfa_cm)
    allowed = pmiss_asv < (1 - _RHO) * pfa_non + _RHO * pfa_spf
    if not allowed.any():
        return None
    closest = _closest_cm_points_scan if full_scan else _closest_cm_points
    cm_index = np.zeros(pmiss_asv.size, dtype=np.int64)
    cm_index[allowed] = closest(pmiss_asv[allowed], pfa_non[allowed], pfa_spf[allowed], cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        crit = np.abs(pfa_non / pfa_spf - pfa_cm[cm_index] / bona_pass[cm_index])
    crit = np.where(allowed & (crit < np.inf), crit, np.inf)  # NaN/inf never win
    row = int(np.argmin(crit))  # the first minimum wins
    if not crit[row] < np.inf:
        return None
    return float(pfa_spf[row] * pfa_cm[cm_index[row]]), row, int(cm_index[row])


def _t_eer(cm: np.ndarray, asv: np.ndarray, codes: np.ndarray) -> float:
    """Accelerated concurrent t-EER (fraction) of validated per-trial CM/ASV scores and SASV key codes."""
    _, sorted_codes = sort_by_score_then_class(asv, codes, 3)
    return t_eer_from_sorted(sorted_codes, det_curve(cm[codes != 2], cm[codes == 2]))


def t_eer_from_sorted(sorted_codes: np.ndarray, cm_det: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """`_t_eer` given the key codes of the trials in ascending order of ASV score (ties ordered by code)
    and the CM's DET curve (bona fide = target and nontarget trials against the spoofs)."""
    counts = np.bincount(sorted_codes, minlength=3)
    pmiss_asv = np.concatenate(([0.0], np.cumsum(sorted_codes == 0) / counts[0]))
    pfa_non = np.concatenate(([1.0], 1 - np.cumsum(sorted_codes == 1) / counts[1]))
    pfa_spf = np.concatenate(([1.0], 1 - np.cumsum(sorted_codes == 2) / counts[2]))
    pmiss_cm, pfa_cm, _ = cm_det
    curves = (pmiss_cm, pfa_cm, pmiss_asv, pfa_non, pfa_spf)

    asv_step = pmiss_asv.size // _TEER_DECIMATED
    cm_step = pmiss_cm.size // _TEER_DECIMATED
    if asv_step > 0 and cm_step > 0:
        # Coarse search on every step-th point, then a full search in a window around its answer.
        coarse = _teer_search(pmiss_cm[::cm_step], pfa_cm[::cm_step], pmiss_asv[::asv_step],
                              pfa_non[::asv_step], pfa_spf[::asv_step])
        if coarse is None:
            raise MetricError("t-EER is undefined: no ASV operating point in the allowed region")
        asv_centre, cm_centre = coarse[1] * asv_step, coarse[2] * cm_step
        asv_window = slice(max(asv_centre - _TEER_BIN_WIDTH, 0), min(asv_centre + _TEER_BIN_WIDTH, pmiss_asv.size))
        cm_window = slice(max(cm_centre - _TEER_BIN_WIDTH, 0), min(cm_centre + _TEER_BIN_WIDTH, pmiss_cm.size))
        curves = (pmiss_cm[cm_window], pfa_cm[cm_window], pmiss_asv[asv_window], pfa_non[asv_window],
                  pfa_spf[asv_window])
    found = _teer_search(*curves)
    if found is None:
        raise MetricError("t-EER is undefined: no ASV operating point in the allowed region")
    return found[0]


def t_eer(cm_scores: Any, asv_scores: Any, asv_keys: Any) -> float:
    """Concurrent t-EER (fraction; the package prints percent) of per-trial CM and ASV scores.

    `asv_keys` are target/nontarget/spoof; the CM's bona fide trials are the target and nontarget ones.
    """
    cm = as_scores(cm_scores, "cm_scores")
    asv = as_scores(asv_scores, "asv_scores")
    if asv.size != cm.size:
        raise MetricError(f"mismatched lengths: {cm.size} CM scores but {asv.size} ASV scores")
    codes = key_codes(asv_keys, asv.size, SASV_KEYS)
    _require_codes(codes, SASV_KEYS, "the t-EER")
    return _t_eer(cm, asv, codes)


def track2_from_arrays(cm: np.ndarray | None, asv: np.ndarray | None, sasv: np.ndarray, codes: np.ndarray,
                       asv_rates: ASVErrorRates) -> dict[str, float | None]:
    """`track2_metrics` of validated arrays (see `check_track2`); CM/ASV parts only when both are given."""
    a_dcf = adcf_curve_from_codes(sasv, codes, ADCF_ASVSPOOF5).min_adcf
    if cm is None or asv is None:
        return {"a_dcf": a_dcf, "min_tdcf": None, "t_eer": None}
    return {
        "a_dcf": a_dcf,
        "min_tdcf": min_tdcf_asvspoof5(cm[codes != 2], cm[codes == 2], asv_rates),
        "t_eer": _t_eer(cm, asv, codes),
    }


@dataclass(frozen=True)
class Track2Inputs:
    """Validated Track 2 arrays: float64 scores (None for an integrated SASV system) and SASV key codes."""

    cm: np.ndarray | None
    asv: np.ndarray | None
    sasv: np.ndarray
    codes: np.ndarray
    asv_org: np.ndarray | None
    asv_org_codes: np.ndarray | None


def check_track2(cm_scores: Any, asv_scores: Any, sasv_scores: Any, cm_keys: Any, asv_keys: Any,
                 asv_scores_org: Any = None, asv_keys_org: Any = None) -> Track2Inputs:
    """Validate Track 2 inputs (MetricError on bad ones); `asv_keys_org` defaults to `asv_keys`."""
    sasv = as_scores(sasv_scores, "sasv_scores")
    codes = key_codes(asv_keys, sasv.size, SASV_KEYS)
    cm = asv = None
    if cm_scores is not None and asv_scores is not None:
        cm, asv = as_scores(cm_scores, "cm_scores"), as_scores(asv_scores, "asv_scores")
        for name, values in (("CM", cm), ("ASV", asv)):
            if values.size != sasv.size:
                raise MetricError(f"mismatched lengths: {sasv.size} SASV scores but {values.size} {name} scores")
        # The package splits CM scores by cm_keys for the t-DCF and by asv_keys for the t-EER: they must agree.
        disagree = (key_codes(cm_keys, sasv.size, CM_KEYS) == 1) != (codes == 2)
        if disagree.any():
            position = int(np.argmax(disagree))
            raise MetricError(f"cm_keys and asv_keys disagree at position {position} (spoof in one, not the other)")
    asv_org = org_codes = None
    if asv_scores_org is not None:
        asv_org = as_scores(asv_scores_org, "asv_scores_org")
        org_codes = key_codes(asv_keys if asv_keys_org is None else asv_keys_org, asv_org.size, SASV_KEYS)
    elif asv_keys_org is not None:
        raise MetricError("asv_keys_org given without asv_scores_org")
    return Track2Inputs(cm, asv, sasv, codes, asv_org, org_codes)


def asv_rates_or_default(asv_org: np.ndarray | None, org_codes: np.ndarray | None) -> ASVErrorRates:
    """The t-DCF's ASV error rates: the built-in ones, or those of validated ASV scores at their EER threshold."""
    if asv_org is None or org_codes is None:
        return ASVSPOOF5_ASV_RATES
    return _asv_rates(asv_org, org_codes)


def track2_metrics(cm_scores: Any, asv_scores: Any, sasv_scores: Any, cm_keys: Any, asv_keys: Any, *,
                   asv_scores_org: Any = None, asv_keys_org: Any = None) -> dict[str, float | None]:
    """Track 2: `a_dcf` (min a-DCF of the SASV scores), `min_tdcf` and `t_eer` (fraction).

    `min_tdcf` and `t_eer` are None when `cm_scores` or `asv_scores` is None (an integrated SASV system).
    The t-DCF's ASV error rates are the package's built-in pooled ones, or, given `asv_scores_org`
    (keys: `asv_keys_org`, default `asv_keys`), those of that ASV at its EER threshold, with the
    package's spoof-rate quirk (see `asv_rates_at_eer`).
    """
    data = check_track2(cm_scores, asv_scores, sasv_scores, cm_keys, asv_keys, asv_scores_org, asv_keys_org)
    _require_codes(data.codes, SASV_KEYS, "Track 2")
    rates = asv_rates_or_default(data.asv_org if data.cm is not None else None, data.asv_org_codes)
    return track2_from_arrays(data.cm, data.asv, data.sasv, data.codes, rates)
