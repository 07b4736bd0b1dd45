"""The metrics of many subsets ("cells") of one scored trial list: the report's pooled cell and its attack,
codec and attack x codec cells, from one sort per score kind.

Each score kind (SASV, CM, ASV) is sorted once, by score and then class, as the metrics of metrics/ sort
their inputs. A cell's trials, taken in that order, are already sorted, so each cell costs a pass over its
trials instead of a sort, and every number comes from the same functions of metrics/ as a direct call on
the cell's trials would (tests check they are equal).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from metrics.adcf import ADCF_ASVSPOOF5, ADCF_DEFAULT, adcf_curve_from_sorted
from metrics.asvspoof5 import (
    ASVSPOOF5_ASV_RATES,
    ASVErrorRates,
    BonaFideTerms,
    min_tdcf_from_det,
    t_eer_from_sorted,
    track1_from_det,
)
from metrics.eer import det_curve, det_curve_from_sorted, eer_from_det, sasv_eers_from_sorted
from metrics.errors import MetricError

Cell = dict[str, Any]


@dataclass(frozen=True)
class Ranked:
    """One score kind of a set of trials, with each trial's class code, and `index`: the positions of a
    subset of them in ascending order of score, ties in order of class."""

    scores: np.ndarray
    classes: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, classes: np.ndarray) -> Ranked:
        by_class = np.argsort(classes, kind="stable")
        return cls(scores, classes, by_class[np.argsort(scores[by_class], kind="stable")])

    def within(self, keep: np.ndarray) -> Ranked:
        """The trials of this subset where `keep` (one flag per trial of the set) is True."""
        return replace(self, index=self.index[keep[self.index]])

    def taken(self, keep: np.ndarray, members: np.ndarray, position: np.ndarray) -> Ranked:
        """The same ranking over the trials where `keep` is True (`members`: their positions, ascending;
        `position`: a position here -> one there), in their own positions, so that later cuts cost their
        number only."""
        return Ranked(self.scores[members], self.classes[members], position[self.index[keep[self.index]]])

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        return self.scores[self.index], self.classes[self.index]


@dataclass(frozen=True)
class OrganisersASV:
    """The organisers' ASV scores of a set of trials (trial order) and the threshold of their EER on the set's
    target and nontarget trials, as the package computes them per codec (None: a class is missing)."""

    scores: np.ndarray
    is_spoof: np.ndarray
    threshold: float | None
    pfa_nontarget: float
    pmiss_target: float

    @classmethod
    def of(cls, scores: np.ndarray, codes: np.ndarray) -> OrganisersASV:
        target, nontarget = scores[codes == 0], scores[codes == 1]
        if target.size == 0 or nontarget.size == 0:
            return cls(scores, codes == 2, None, np.nan, np.nan)
        _, threshold = eer_from_det(*det_curve(target, nontarget))
        return cls(scores, codes == 2, threshold, np.count_nonzero(nontarget >= threshold) / nontarget.size,
                   np.count_nonzero(target < threshold) / target.size)

    def rates(self, keep: np.ndarray) -> ASVErrorRates:
        """The t-DCF's ASV error rates for the cell of trials in `keep`, with the package's spoof-rate quirk
        (metrics.asvspoof5.asv_rates_at_eer): the share of the cell's spoofs the ASV rejects."""
        spoof = self.scores[keep & self.is_spoof]
        if self.threshold is None or spoof.size == 0:
            raise MetricError("the organisers' ASV scores lack a target, nontarget or spoof trial here")
        return ASVErrorRates(self.pfa_nontarget, self.pmiss_target,
                             np.count_nonzero(spoof < self.threshold) / spoof.size)


@dataclass(frozen=True)
class TrialKinds:
    """What the cells are computed from, for one set of trials: class codes (SASV: 0 target, 1 nontarget,
    2 spoof; None for CM-only trials), the CM's spoof flags, the CM scores in trial order, and the rankings of
    the current subset by each score kind."""

    sasv_codes: np.ndarray | None
    is_spoof: np.ndarray
    cm: np.ndarray | None
    sasv: Ranked | None
    cm_ranked: Ranked | None
    asv: Ranked | None
    asv_org: OrganisersASV | None = None
    cm_bona: BonaFideTerms | None = None  # of every bona fide trial of the set (None: no CM scores or none)

    @classmethod
    def of(cls, sasv_codes: np.ndarray | None, is_spoof: np.ndarray, sasv: np.ndarray | None,
           cm: np.ndarray | None, asv: np.ndarray | None, asv_org: np.ndarray | None = None) -> TrialKinds:
        cm_classes = is_spoof.astype(np.int8)
        return cls(sasv_codes, is_spoof, cm,
                   None if sasv is None else Ranked.of(sasv, sasv_codes),
                   None if cm is None else Ranked.of(cm, cm_classes),
                   None if asv is None or cm is None else Ranked.of(asv, sasv_codes),
                   None if asv_org is None else OrganisersASV.of(asv_org, sasv_codes), _bona_terms(cm, is_spoof))

    def _rankings(self, change: Callable[[Ranked], Ranked]) -> dict[str, Ranked | None]:
        return {name: None if getattr(self, name) is None else change(getattr(self, name))
                for name in ("sasv", "cm_ranked", "asv")}

    def within(self, keep: np.ndarray) -> TrialKinds:
        """The same trials, the rankings cut to those where `keep` is True (a cell of this set)."""
        return replace(self, **self._rankings(lambda ranked: ranked.within(keep)))

    def subset(self, keep: np.ndarray) -> TrialKinds:
        """A new set: the trials where `keep` is True (a codec's trials), in trial order."""
        members = np.flatnonzero(keep)
        position = np.zeros(keep.size, dtype=np.int64)
        position[members] = np.arange(members.size)
        return TrialKinds(None if self.sasv_codes is None else self.sasv_codes[members], self.is_spoof[members],
                          None if self.cm is None else self.cm[members],
                          **self._rankings(lambda ranked: ranked.taken(keep, members, position)),
                          asv_org=None if self.asv_org is None
                          else OrganisersASV.of(self.asv_org.scores[members], self.sasv_codes[members]),
                          cm_bona=None if self.cm is None else _bona_terms(self.cm[members], self.is_spoof[members]))


def _bona_terms(cm: np.ndarray | None, is_spoof: np.ndarray) -> BonaFideTerms | None:
    if cm is None or is_spoof.all():
        return None
    return BonaFideTerms.of(cm[~is_spoof])


def guarded(compute: Callable[[], Cell], strict: bool) -> Cell:
    """`compute()`, or nothing when a non-strict cell lacks what a metric needs."""
    try:
        return compute()
    except MetricError:
        if strict:
            raise
        return {}


def _require(counts: np.ndarray, names: tuple[str, ...], what: str) -> None:
    for name, count in zip(names, counts):
        if count == 0:
            raise MetricError(f"no {name} trials: {what} undefined")


def cm_det(kinds: TrialKinds) -> tuple[np.ndarray, np.ndarray, tuple] | None:
    """(sorted CM scores, their spoof flags, the CM's DET curve) of a cell, or None without CM scores or
    without one of the classes."""
    if kinds.cm_ranked is None:
        return None
    scores, classes = kinds.cm_ranked.sorted()
    spoofs = int(np.count_nonzero(classes))
    if spoofs in (0, scores.size):
        return None
    return scores, classes, det_curve_from_sorted(scores, classes)


def sasv_cell(kinds: TrialKinds, keep: np.ndarray, counts: np.ndarray, cm: tuple | None, strict: bool) -> Cell:
    """sasv_eer, sv_eer, spf_eer, min_a_dcf (a_dcf package costs), a_dcf (ASVspoof 5 costs), and with CM and
    ASV scores min_tdcf and t_eer, for the trials in `keep` (flags over the set of `kinds`); `counts`:
    targets, nontargets, spoofs; `cm`: `cm_det` of the cell. The min t-DCF's ASV error rates are the
    package's built-in pooled ones, or those of the organisers' ASV scores on the cell."""
    _require(counts, ("target", "nontarget", "spoof"), "the SASV metrics are")
    scores, codes = kinds.sasv.sorted()
    cell: Cell = dict(sasv_eers_from_sorted(scores, codes))
    cell["min_a_dcf"] = adcf_curve_from_sorted(scores, codes, ADCF_DEFAULT, counts).min_adcf
    cell["a_dcf"] = adcf_curve_from_sorted(scores, codes, ADCF_ASVSPOOF5, counts).min_adcf
    if cm is not None and kinds.asv is not None:
        # The tandem metrics can be undefined where the SASV ones are not (e.g. no ASV threshold in the t-EER's
        # region): such a metric is None (`-` in the tables), never an error that loses the whole report.
        cm_scores, _, det = cm
        cell.update(guarded(lambda: {"min_tdcf": _min_tdcf(cm_scores, det, kinds, keep)}, strict=False))
        cell.update(guarded(lambda: {"t_eer": t_eer_from_sorted(kinds.asv.sorted()[1], det)}, strict=False))
    return cell


def _min_tdcf(sorted_scores: np.ndarray, det: tuple, kinds: TrialKinds, keep: np.ndarray) -> float:
    if 1 + np.count_nonzero(np.diff(sorted_scores)) < 3:
        raise MetricError("CM scores take fewer than 3 distinct values: give soft scores, not decisions")
    rates = ASVSPOOF5_ASV_RATES if kinds.asv_org is None else kinds.asv_org.rates(keep)
    return min_tdcf_from_det(det, rates)


def cm_cell(kinds: TrialKinds, keep: np.ndarray, cm: tuple | None) -> Cell:
    """min_dcf, act_dcf, cllr (bits) and eer of ASVspoof 5 Track 1 on the CM scores of the trials in `keep`
    (flags over the set of `kinds`); `cm`: `cm_det` of the cell."""
    if cm is None:
        raise MetricError("no bona fide or no spoof CM trials: the Track 1 metrics are undefined")
    # The means take the scores in trial order, as a direct call on the cell's trials would; the bona fide
    # terms are the set's when the cell has all its bona fide trials (every cell of the report does).
    bona = kinds.cm_bona
    if bona is None or np.count_nonzero(keep & ~kinds.is_spoof) != np.count_nonzero(~kinds.is_spoof):
        bona = BonaFideTerms.of(kinds.cm[keep & ~kinds.is_spoof])
    return track1_from_det(cm[2], bona, kinds.cm[keep & kinds.is_spoof])
