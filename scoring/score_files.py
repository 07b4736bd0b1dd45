"""Score files: the writer of the toolkit's `<fields...> <score>` text format, and the ASV score reader."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.protocols import SASV_KEYS, ProtocolError, read_sasv_trials
from runtime.files import write_text


def format_score(value: float) -> str:
    """Scores are float32 from the model; repr of the float64 value is exact and round-trips.

    A trial that could not be scored (on_bad_audio: skip) is written as `nan`."""
    return repr(float(value))


def write_scores(path: str | Path, columns: Sequence[Sequence[str]], scores: Sequence[float]) -> None:
    """One line per row: the string columns, then the score, separated by spaces."""
    lines = [" ".join([*fields, format_score(score)]) for fields, score in zip(zip(*columns), scores)]
    write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_asv_score_file(path: str | Path, trial_path: str | Path) -> dict[str, np.ndarray]:
    """target / nontarget / spoof ASV scores of the trials in `trial_path`.

    Accepted lines (one format per file): `SRC KEY score` (the organisers' asv.*.gi.trl.scores.txt),
    `SPK UTT KEY score` or `UTT score` (save_asv_score.py), the last two in trial-list order. The
    trial counts per key must match `trial_path`, so scores of another partition are refused. A `nan`
    score (a trial left out for bad audio) is dropped.
    """
    path = Path(path)
    trials = read_sasv_trials(trial_path)
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ProtocolError(f"{path}: ASV score file not found") from None
    widths = {len(row) for row in rows}
    if len(widths) != 1 or not widths <= {2, 3, 4}:
        raise ProtocolError(f"{path}: expected lines 'SRC KEY score', 'SPK UTT KEY score' or 'UTT score', "
                            f"one format per file")
    width = widths.pop()
    if width == 3:
        keys = [row[1] for row in rows]
        unknown = sorted(set(keys) - set(SASV_KEYS))
        if unknown:
            raise ProtocolError(f"{path}: unknown trial keys {unknown}; expected {', '.join(SASV_KEYS)}")
        expected, found = Counter(t.key for t in trials), Counter(keys)
        if expected != found:
            raise ProtocolError(f"{path}: {dict(found)} scores, but {trial_path} has {dict(expected)} trials "
                                f"(scores of another partition?)")
    else:
        if len(rows) != len(trials):
            raise ProtocolError(f"{path}: {len(rows)} scores for {len(trials)} trials in {trial_path}")
        for number, (row, trial) in enumerate(zip(rows, trials), start=1):
            wanted = [trial.utterance] if width == 2 else [trial.speaker, trial.utterance, trial.key]
            if row[:-1] != wanted:
                raise ProtocolError(f"{path}:{number}: expected '{' '.join(wanted)} <score>' (line {number} of "
                                    f"{trial_path}), got {' '.join(row)!r}")
        keys = [t.key for t in trials]
    scores = np.empty(len(rows))
    for number, row in enumerate(rows, start=1):
        try:
            scores[number - 1] = float(row[-1])
        except ValueError:
            raise ProtocolError(f"{path}:{number}: score {row[-1]!r} is not a number") from None
    keys_array = np.asarray(keys)
    return {key: scores[(keys_array == key) & np.isfinite(scores)] for key in SASV_KEYS}
