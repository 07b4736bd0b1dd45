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
    min_tdcf_from_det,
    t_eer_from_sorted,
    track1_from_det,
)
from metrics.eer import det_curve_from_sorted, sasv_eers_from_sorted
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

    @classmethod
    def of(cls, sasv_codes: np.ndarray | None, is_spoof: np.ndarray, sasv: np.ndarray | None,
           cm: np.ndarray | None, asv: np.ndarray | None) -> TrialKinds:
        cm_classes = is_spoof.astype(np.int8)
        return cls(sasv_codes, is_spoof, cm,
                   None if sasv is None else Ranked.of(sasv, sasv_codes),
                   None if cm is None else Ranked.of(cm, cm_classes),
                   None if asv is None or cm is None else Ranked.of(asv, sasv_codes))

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
                          **self._rankings(lambda ranked: ranked.taken(keep, members, position)))


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


def sasv_cell(kinds: TrialKinds, counts: np.ndarray, cm: tuple | None, strict: bool) -> Cell:
    """sasv_eer, sv_eer, spf_eer, min_a_dcf (a_dcf package costs), a_dcf (ASVspoof 5 costs), and with CM and
    ASV scores min_tdcf (the organisers' ASV error rates) and t_eer; `counts`: targets, nontargets, spoofs;
    `cm`: `cm_det` of the cell."""
    _require(counts, ("target", "nontarget", "spoof"), "the SASV metrics are")
    scores, codes = kinds.sasv.sorted()
    cell: Cell = dict(sasv_eers_from_sorted(scores, codes))
    cell["min_a_dcf"] = adcf_curve_from_sorted(scores, codes, ADCF_DEFAULT, counts).min_adcf
    cell["a_dcf"] = adcf_curve_from_sorted(scores, codes, ADCF_ASVSPOOF5, counts).min_adcf
    if cm is not None and kinds.asv is not None:
        # The tandem metrics can be undefined where the SASV ones are not (e.g. no ASV threshold in the t-EER's
        # region): such a metric is None (`-` in the tables), never an error that loses the whole report.
        cm_scores, _, det = cm
        cell.update(guarded(lambda: {"min_tdcf": _min_tdcf(cm_scores, det)}, strict=False))
        cell.update(guarded(lambda: {"t_eer": t_eer_from_sorted(kinds.asv.sorted()[1], det)}, strict=False))
    return cell


def _min_tdcf(sorted_scores: np.ndarray, det: tuple) -> float:
    if 1 + np.count_nonzero(sorted_scores[1:] != sorted_scores[:-1]) < 3:  # not np.diff: it overflows at 1e308
        raise MetricError("CM scores take fewer than 3 distinct values: give soft scores, not decisions")
    return min_tdcf_from_det(det, ASVSPOOF5_ASV_RATES)


def cm_cell(kinds: TrialKinds, keep: np.ndarray, cm: tuple | None) -> Cell:
    """min_dcf, act_dcf, cllr (bits) and eer of ASVspoof 5 Track 1 on the CM scores of the trials in `keep`
    (flags over the set of `kinds`); `cm`: `cm_det` of the cell."""
    if cm is None:
        raise MetricError("no bona fide or no spoof CM trials: the Track 1 metrics are undefined")
    # Cllr's means take the scores in trial order, as a direct call on the cell's trials would.
    bona, spoof = kinds.cm[keep & ~kinds.is_spoof], kinds.cm[keep & kinds.is_spoof]
    return track1_from_det(cm[2], bona, spoof)
