"""ASVspoof 5 metrics per attack x per codec, like the evaluation package's `calculate_*_full` functions.

Rows are "pooled" then the spoof attacks (sorted), columns "pooled" then the codecs (sorted). A cell
holds the trials of its codec (every codec for "pooled"): all its bona fide trials plus the spoofs of
its attack (every attack for "pooled"); it is None when a class it needs is empty there. Each cell is
computed by the same functions as the pooled numbers of `metrics.asvspoof5`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from metrics.asvspoof5 import (
    CM_KEYS,
    asv_rates_or_default,
    check_track2,
    track1_from_scores,
    track2_from_arrays,
)
from metrics.eer import as_scores, key_codes
from metrics.errors import MetricError

POOLED = "pooled"

Metrics = dict[str, float | None]
Table = dict[str, dict[str, Metrics | None]]  # {attack or "pooled": {codec or "pooled": metrics or None}}


def _labels(values: Any, n_trials: int, name: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1:
        raise MetricError(f"{name}: expected a 1-D sequence of labels, got shape {labels.shape}")
    if labels.size != n_trials:
        raise MetricError(f"mismatched lengths: {n_trials} trials but {labels.size} {name} labels")
    return labels.astype(str)


def _conditions(attack: Any, codec: Any, is_spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Validated attack/codec labels and the sorted row (attack) and column (codec) names, pooled first."""
    attacks = _labels(attack, is_spoof.size, "attack")
    codecs = _labels(codec, is_spoof.size, "codec")
    # Rows: the attack labels of spoof trials. (The package drops the last sorted label of all trials,
    # assuming it is the bona fide one; same rows whenever the bona fide label sorts last.)
    rows = sorted(set(attacks[is_spoof].tolist()))
    shared = np.isin(attacks, rows) & ~is_spoof
    if shared.any():
        position = int(np.argmax(shared))
        raise MetricError(f"bona fide trial {position} carries the attack label {attacks[position]!r} of spoofs")
    columns = sorted(set(codecs.tolist()))
    if POOLED in rows or POOLED in columns:
        raise MetricError(f"{POOLED!r} is reserved for the pooled row and column; rename that attack/codec")
    return attacks, codecs, [POOLED, *rows], [POOLED, *columns]


def _fill(attacks: np.ndarray, codecs: np.ndarray, is_spoof: np.ndarray, rows: list, columns: list,
          cell: Callable[[np.ndarray], Metrics | None]) -> Table:
    """{row: {column: cell(mask of the cell's trials)}}."""
    row_spoofs = {row: is_spoof if row == POOLED else is_spoof & (attacks == row) for row in rows}
    table: Table = {row: {} for row in rows}
    for column in columns:
        in_codec = np.ones(is_spoof.size, dtype=bool) if column == POOLED else codecs == column
        bona = in_codec & ~is_spoof
        for row in rows:
            table[row][column] = cell(bona | (in_codec & row_spoofs[row]))
    return table


def track1_table(cm_scores: Any, cm_keys: Any, attack: Any, codec: Any) -> Table:
    """Track 1 metrics (`track1_metrics` keys) per attack x codec; None where bona fide or spoofs are missing."""
    scores = as_scores(cm_scores, "cm_scores")
    codes = key_codes(cm_keys, scores.size, CM_KEYS)
    is_spoof = codes == 1
    attacks, codecs, rows, columns = _conditions(attack, codec, is_spoof)

    def cell(mask: np.ndarray) -> Metrics | None:
        bona, spoof = scores[mask & ~is_spoof], scores[mask & is_spoof]
        return track1_from_scores(bona, spoof) if bona.size and spoof.size else None

    return _fill(attacks, codecs, is_spoof, rows, columns, cell)


def track2_table(cm_scores: Any, asv_scores: Any, sasv_scores: Any, cm_keys: Any, asv_keys: Any, attack: Any,
                 codec: Any, *, asv_scores_org: Any = None, asv_keys_org: Any = None) -> Table:
    """Track 2 metrics (`track2_metrics` keys) per attack x codec; None where targets, nontargets or spoofs
    are missing. `asv_scores_org` / `asv_keys_org`, when given, are per trial (aligned with the other
    arrays); each cell then takes its t-DCF ASV error rates from its own trials, as the package does.
    """
    data = check_track2(cm_scores, asv_scores, sasv_scores, cm_keys, asv_keys, asv_scores_org, asv_keys_org)
    if data.asv_org is not None and data.asv_org.size != data.sasv.size:
        raise MetricError(f"mismatched lengths: {data.sasv.size} trials but {data.asv_org.size} asv_scores_org")
    is_spoof = data.codes == 2
    attacks, codecs, rows, columns = _conditions(attack, codec, is_spoof)
    # ASV error rates of the organisers' ASV only matter (and are only computed) for a tandem system.
    org = data.asv_org if data.cm is not None else None

    def part(values: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
        return None if values is None else values[mask]

    def cell(mask: np.ndarray) -> Metrics | None:
        codes = data.codes[mask]
        if np.bincount(codes, minlength=3).min() == 0:
            return None
        rates = asv_rates_or_default(part(org, mask), part(data.asv_org_codes, mask))
        return track2_from_arrays(part(data.cm, mask), part(data.asv, mask), data.sasv[mask], codes, rates)

    return _fill(attacks, codecs, is_spoof, rows, columns, cell)
