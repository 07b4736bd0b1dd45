"""Equal error rates, bit-for-bit with the reference recipes.

Two different EER definitions are in use and both are kept:

* `roc_eer` / `sasv_eers`: the SASV 2022 challenge recipe. ROC points as
  sklearn's `roc_curve` builds them (one point per distinct score, collinear
  equal-step points dropped, (0, 0) prepended), then the root of
  `1 - fpr - tpr(fpr)` by `scipy.optimize.brentq` over [0, 1] with
  `scipy.interpolate.interp1d` as tpr(fpr). Only accurate to brentq's xtol.
* `compute_eer`: the ASVspoof / AASIST per-sample sweep (stable sort, first
  index minimising |frr - far|). With ties the result depends on the input
  order: targets are placed before non-targets.

All inputs are converted to float64 1-D arrays (lists, float32 arrays and torch
tensors are accepted). Higher scores mean "target" (or bona fide).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metrics.errors import MetricError

SASV_KEYS = ("target", "nontarget", "spoof")


def as_scores(values: Any, name: str) -> np.ndarray:
    """`values` as a finite float64 1-D array; MetricError naming `name` otherwise."""
    if hasattr(values, "detach"):  # torch tensor (possibly on GPU / requiring grad)
        values = values.detach().cpu().numpy()
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MetricError(f"{name}: scores must be numbers ({error})") from None
    if scores.ndim != 1:
        raise MetricError(f"{name}: expected a 1-D array of scores, got shape {scores.shape}")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise MetricError(
            f"{name}: {int(bad.sum())} NaN/inf score(s), first at position {int(np.argmax(bad))}"
        )
    return scores


def require_nonempty(scores: np.ndarray, name: str, needed_for: str) -> None:
    if scores.size == 0:
        raise MetricError(f"no {name} trials: {needed_for} is undefined")


def key_codes(keys: Any, n_scores: int, names: tuple[str, ...] = SASV_KEYS) -> np.ndarray:
    """Map each key to its index in `names` (default `target`/`nontarget`/`spoof` -> 0/1/2), as int8, vectorised."""
    key_array = np.asarray(keys)
    if key_array.dtype.kind == "O":
        key_array = key_array.astype(str)
    if key_array.ndim != 1:
        raise MetricError(f"keys: expected a 1-D sequence, got shape {key_array.shape}")
    if key_array.size != n_scores:
        raise MetricError(f"mismatched lengths: {n_scores} scores but {key_array.size} keys")
    if key_array.dtype.kind != "U" and key_array.size:
        raise MetricError(f"keys must be strings {names}, got dtype {key_array.dtype}")
    codes = np.full(key_array.size, -1, dtype=np.int8)
    for code, key in enumerate(names):
        codes[key_array == key] = code
    unknown = codes < 0
    if unknown.any():
        position = int(np.argmax(unknown))
        raise MetricError(
            f"unknown key {str(key_array[position])!r} at position {position}; expected one of {names}"
        )
    return codes


def _eer_from_descending(scores_desc: np.ndarray, positive_desc: np.ndarray) -> float:
    """Challenge EER from scores sorted in descending order and their positive flags."""
    # One ROC point per distinct score: the counts at the end of each tie group.
    group_ends = np.flatnonzero(np.diff(scores_desc))
    group_ends = np.append(group_ends, scores_desc.size - 1)
    true_pos = np.cumsum(positive_desc, dtype=np.float64)[group_ends]
    false_pos = 1.0 + group_ends.astype(np.float64) - true_pos
    if false_pos.size > 2:
        # sklearn's drop_intermediate: keep a point unless both second differences are 0.
        keep = np.ones(false_pos.size, dtype=bool)
        keep[1:-1] = (np.diff(false_pos, 2) != 0) | (np.diff(true_pos, 2) != 0)
        false_pos, true_pos = false_pos[keep], true_pos[keep]
    false_pos = np.concatenate(([0.0], false_pos))
    true_pos = np.concatenate(([0.0], true_pos))
    fpr = false_pos / false_pos[-1]
    tpr = true_pos / true_pos[-1]
    # Imported here: scipy.interpolate takes a second to import, and a CM-only report never needs it.
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq

    # fpr is already non-decreasing, so interp1d's own stable sort would be the identity.
    tpr_at = interp1d(fpr, tpr, assume_sorted=True)
    # tpr_at(0) can be NaN (vertical first segment); brentq copes as in the reference.
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(brentq(lambda x: 1.0 - x - tpr_at(x), 0.0, 1.0))


def roc_eer(target_scores: Any, nontarget_scores: Any) -> float:
    """SASV 2022 EER (fraction) of `target_scores` against `nontarget_scores`."""
    targets = as_scores(target_scores, "target_scores")
    nontargets = as_scores(nontarget_scores, "nontarget_scores")
    require_nonempty(targets, "target", "the EER")
    require_nonempty(nontargets, "non-target", "the EER")
    scores = np.concatenate((targets, nontargets))
    order = np.argsort(scores)[::-1]
    return _eer_from_descending(scores[order], order < targets.size)


def sasv_eers(scores: Any, keys: Sequence[str] | np.ndarray) -> dict[str, float]:
    """The three SASV 2022 EERs (fractions) of one score list, with a single sort.

    `keys[i]` is `target`, `nontarget` or `spoof`. SASV-EER: target vs the rest;
    SV-EER: target vs nontarget; SPF-EER: target vs spoof.
    """
    values = as_scores(scores, "scores")
    codes = key_codes(keys, values.size)
    for code, name, needed_for in (
        (0, "target", "every SASV EER"),
        (1, "nontarget", "sv_eer"),
        (2, "spoof", "spf_eer"),
    ):
        if not np.any(codes == code):
            raise MetricError(f"no {name} trials: {needed_for} is undefined")
    order = np.argsort(values)
    return sasv_eers_from_sorted(values[order], codes[order])


def sasv_eers_from_sorted(scores: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    """`sasv_eers` of validated scores sorted ascending and their key codes, each class present (tie order
    within a score does not matter: the ROC has one point per distinct score)."""
    scores_desc, codes_desc = scores[::-1], codes[::-1]
    is_target = codes_desc == 0
    sv_part = codes_desc != 2
    spf_part = codes_desc != 1
    return {
        "sasv_eer": _eer_from_descending(scores_desc, is_target),
        "sv_eer": _eer_from_descending(scores_desc[sv_part], is_target[sv_part]),
        "spf_eer": _eer_from_descending(scores_desc[spf_part], is_target[spf_part]),
    }


def sort_by_score_then_class(
    scores: np.ndarray, codes: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scores ascending, ties ordered by class code: what a stable sort of the
    scores concatenated class by class gives (order within a class is irrelevant).

    An unstable argsort plus an O(n) regrouping of the tie groups is several
    times faster than a stable argsort or lexsort on a million scores.
    """
    order = np.argsort(scores)
    sorted_scores, sorted_codes = scores[order], codes[order]
    starts_group = np.empty(scores.size, dtype=bool)
    starts_group[:1] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=starts_group[1:])
    if starts_group.all():
        return sorted_scores, sorted_codes
    group = np.cumsum(starts_group) - 1
    group_starts = np.flatnonzero(starts_group)
    counts = np.bincount(group * n_classes + sorted_codes, minlength=group_starts.size * n_classes)
    counts = counts.reshape(group_starts.size, n_classes)
    offset_in_group = np.arange(scores.size) - group_starts[group]
    # Within a group, class c occupies offsets [sum(counts[:c]), sum(counts[:c + 1])).
    regrouped = np.zeros(scores.size, dtype=codes.dtype)
    class_end = np.zeros(scores.size, dtype=np.int64)
    for code in range(n_classes - 1):
        class_end += counts[group, code]
        regrouped += offset_in_group >= class_end
    return sorted_scores, regrouped


def det_curve(
    target_scores: np.ndarray, nontarget_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample (frr, far, thresholds), each of length n + 1.

    Point k rejects the k lowest scores (targets before non-targets on ties, as
    the reference's stable sort of [targets, non-targets]); point 0 accepts
    everything at threshold `min - 0.001`. Inputs must be validated float64 arrays.
    """
    n_target, n_nontarget = target_scores.size, nontarget_scores.size
    scores = np.concatenate((target_scores, nontarget_scores))
    codes = np.concatenate((np.zeros(n_target, dtype=np.int8), np.ones(n_nontarget, dtype=np.int8)))
    return det_curve_from_sorted(*sort_by_score_then_class(scores, codes, 2))


def det_curve_from_sorted(sorted_scores: np.ndarray, sorted_codes: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`det_curve` of scores sorted ascending, ties ordered by class (0 target, 1 non-target), both present."""
    rejected_targets = np.cumsum(sorted_codes == 0)
    n_target = int(rejected_targets[-1])
    n_nontarget = sorted_scores.size - n_target
    rejected_nontargets = np.arange(1, sorted_scores.size + 1) - rejected_targets
    frr = np.concatenate(([0.0], rejected_targets / n_target))
    far = np.concatenate(([1.0], (n_nontarget - rejected_nontargets) / n_nontarget))
    thresholds = np.concatenate(([sorted_scores[0] - 0.001], sorted_scores))
    return frr, far, thresholds


def eer_from_det(frr: np.ndarray, far: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    index = int(np.argmin(np.abs(frr - far)))
    return float((frr[index] + far[index]) / 2), float(thresholds[index])


def compute_eer(target_scores: Any, nontarget_scores: Any) -> tuple[float, float]:
    """(EER fraction, threshold) by the AASIST per-sample sweep."""
    targets = as_scores(target_scores, "target_scores")
    nontargets = as_scores(nontarget_scores, "nontarget_scores")
    require_nonempty(targets, "target", "the EER")
    require_nonempty(nontargets, "non-target", "the EER")
    return eer_from_det(*det_curve(targets, nontargets))
