"""Score files: the writer of the toolkit's `<fields...> <score>` text format, and the readers of ASV and CM scores."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.protocols import SASV_KEYS, CMEntry, ProtocolError, SASVTrial, read_cm_protocol, read_fields, read_sasv_trials
from runtime.files import write_text


def format_score(value: float) -> str:
    """Scores are float32 from the model; repr of the float64 value is exact and round-trips.

    A trial that could not be scored (on_bad_audio: skip) is written as `nan`."""
    return repr(float(value))


def scores_text(columns: Sequence[Sequence[str]], scores: Sequence[float]) -> str:
    """One line per row: the string columns, then the score, separated by spaces."""
    lines = [" ".join([*fields, format_score(score)]) for fields, score in zip(zip(*columns), scores)]
    return "\n".join(lines) + ("\n" if lines else "")


def trial_columns(trials: Sequence[SASVTrial]) -> tuple[list[str], list[str], list[str]]:
    """The string columns of the SASV score format: `SPK UTT KEY`."""
    return [t.speaker for t in trials], [t.utterance for t in trials], [t.key for t in trials]


def write_scores(path: str | Path, columns: Sequence[Sequence[str]], scores: Sequence[float]) -> None:
    """`scores_text` written atomically."""
    write_text(path, scores_text(columns, scores))


def write_trial_scores(path: str | Path, trials: Sequence[SASVTrial], scores: Sequence[float]) -> None:
    """The SASV score format: `SPK UTT KEY score` per trial, in trial order."""
    write_scores(path, trial_columns(trials), scores)


def _score_rows(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines of a score file."""
    return read_fields(path, f"{what} score file")


# The one number syntax of every score, key and log reader: plain decimal or scientific notation, and `nan`
# (any case) for a trial left out. Python's float() also takes '1_5' (as 15), 'infinity' and Arabic-Indic
# digits: numbers that look right but are not what the file meant.
NUMBER_PATTERN = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
NAN_PATTERN = r"[nN][aA][nN]"
_NUMBER = re.compile(f"{NUMBER_PATTERN}|{NAN_PATTERN}")
_INFINITE = re.compile(r"[+-]?(?:inf|infinity)", re.IGNORECASE)


def parse_number(text: str) -> float | None:
    """`text` as a float when it is a plain decimal / scientific number or `nan`, else None."""
    return float(text) if _NUMBER.fullmatch(text) else None


def parse_score(path: str | Path, number: int, text: str, *, column: str = "score", allow_nan: bool = False) -> float:
    """The score field `text` of line `number`; `nan` (a trial left out for bad audio) only when `allow_nan`."""
    value = parse_number(text)
    if _INFINITE.fullmatch(text):
        value = float(text)  # named as what it is: a number, but not a finite one
    if value is None:
        raise ProtocolError(f"{path}:{number}: {column} {text!r} is not a number (expected decimal or scientific "
                            f"notation, e.g. -1.25 or 3.1e-05)")
    if not np.isfinite(value) and not (allow_nan and np.isnan(value)):
        raise ProtocolError(f"{path}:{number}: {column} {text!r} is not finite")
    return value


def read_trial_scores(path: str | Path, trial_path: str | Path, trials: Sequence[SASVTrial] | None = None, *,
                      allow_nan: bool = False, what: str = "ASV") -> np.ndarray:
    """One score per trial of `trial_path`, in its order: lines `SPK UTT KEY score` or `UTT score`.

    Every line must name the trial on the same line of the trial list, so a missing, repeated,
    reordered or foreign trial is reported at the first line where the file departs from the list.
    `trials` (the parsed `trial_path`) saves reading the list again.
    """
    path = Path(path)
    trials = read_sasv_trials(trial_path) if trials is None else trials
    rows = _score_rows(path, what)
    widths = {len(fields) for _, fields in rows}
    if len(widths) != 1 or not widths <= {2, 4}:
        raise ProtocolError(f"{path}: expected lines 'SPK UTT KEY score' or 'UTT score' in the order of {trial_path}, "
                            f"one format per file")
    width = widths.pop()
    for index, (number, fields) in enumerate(rows):
        if index >= len(trials):
            raise ProtocolError(f"{path}:{number}: {len(rows)} scores for the {len(trials)} trials of {trial_path}; "
                                f"line {number} is beyond the last trial")
        trial = trials[index]
        wanted = [trial.utterance] if width == 2 else [trial.speaker, trial.utterance, trial.key]
        if fields[:-1] != wanted:
            raise ProtocolError(f"{path}:{number}: expected '{' '.join(wanted)} <score>' (trial {index + 1} of "
                                f"{trial_path}), got {' '.join(fields)!r}")
    if len(rows) < len(trials):
        missing = trials[len(rows)]
        raise ProtocolError(f"{path}: {len(rows)} scores for the {len(trials)} trials of {trial_path}; the first "
                            f"trial without a score is {missing.speaker} {missing.utterance} "
                            f"(trial {len(rows) + 1})")
    return np.array([parse_score(path, number, fields[-1], allow_nan=allow_nan) for number, fields in rows])


def read_asv_score_file(path: str | Path, trial_path: str | Path) -> dict[str, np.ndarray]:
    """target / nontarget / spoof ASV scores of the trials in `trial_path`.

    Accepted lines (one format per file): `SRC KEY score` (the organisers' asv.*.gi.trl.scores.txt),
    `SPK UTT KEY score` or `UTT score` (save_asv_score.py), the last two in trial-list order
    (`read_trial_scores`). The trial counts per key must match `trial_path`, so scores of another
    partition are refused. A `nan` score (a trial left out for bad audio) is dropped.
    """
    path = Path(path)
    trials = read_sasv_trials(trial_path)
    rows = _score_rows(path, "ASV")
    widths = {len(fields) for _, fields in rows}
    if len(widths) != 1 or not widths <= {2, 3, 4}:
        raise ProtocolError(f"{path}: expected lines 'SRC KEY score', 'SPK UTT KEY score' or 'UTT score', "
                            f"one format per file")
    if widths != {3}:
        scores = read_trial_scores(path, trial_path, trials, allow_nan=True)
        keys = np.asarray([t.key for t in trials])
        return {key: scores[(keys == key) & np.isfinite(scores)] for key in SASV_KEYS}
    keys = [fields[1] for _, fields in rows]
    unknown = sorted(set(keys) - set(SASV_KEYS))
    if unknown:
        raise ProtocolError(f"{path}: unknown trial keys {unknown}; expected {', '.join(SASV_KEYS)}")
    expected, found = Counter(t.key for t in trials), Counter(keys)
    if expected != found:
        raise ProtocolError(f"{path}: {dict(found)} scores, but {trial_path} has {dict(expected)} trials "
                            f"(scores of another partition?)")
    scores = np.array([parse_score(path, number, fields[-1], allow_nan=True) for number, fields in rows])
    keys_array = np.asarray(keys)
    return {key: scores[(keys_array == key) & np.isfinite(scores)] for key in SASV_KEYS}


def read_cm_score_file(path: str | Path, protocol_path: str | Path, entries: Sequence[CMEntry] | None = None
                       ) -> dict[str, float]:
    """utterance -> CM score (higher = bona fide) from `UTT score` or `UTT ATTACK KEY score` lines.

    Every utterance must be in the CM protocol `protocol_path` (else the file belongs to another
    partition), once, with a finite score; in the four-field format its key must be the protocol's.
    `entries` (the parsed `protocol_path`) saves reading the protocol again.
    """
    path = Path(path)
    entries = read_cm_protocol(protocol_path) if entries is None else entries
    protocol = {entry.utterance: entry for entry in entries}
    rows = _score_rows(path, "CM")
    widths = {len(fields) for _, fields in rows}
    if len(widths) != 1 or not widths <= {2, 4}:
        raise ProtocolError(f"{path}: expected lines 'UTT score' or 'UTT ATTACK KEY score', one format per file")
    scores: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for number, fields in rows:
        utterance = fields[0]
        entry = protocol.get(utterance)
        if entry is None:
            raise ProtocolError(f"{path}:{number}: utterance {utterance!r} is not in {protocol_path}")
        if utterance in first_line:
            raise ProtocolError(f"{path}:{number}: duplicate utterance {utterance!r} (first on line "
                                f"{first_line[utterance]})")
        if len(fields) == 4 and fields[2] != entry.key:
            raise ProtocolError(f"{path}:{number}: key {fields[2]!r}, but {utterance} is {entry.key!r} in "
                                f"{protocol_path}")
        first_line[utterance] = number
        scores[utterance] = parse_score(path, number, fields[-1], allow_nan=False)
    return scores
