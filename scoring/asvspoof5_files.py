"""Files of the ASVspoof 5 evaluation package, read into `ScoredTrials` (scoring.scored_trials, what
scoring.report evaluates), and the toolkit's SASV score files read the same way.

The package's files (asvspoof-challenge/asvspoof5 `evaluation-package/README.md`) have a header line, then
one trial per line, fields separated by tabs (any run of blanks is accepted, as the full key table uses spaces):
  Track 2 scores  `spk filename cm-score asv-score sasv-score` (`-` for a part the system does not have)
  Track 2 keys    `spk filename cm-label asv-label`, optionally `attack` and `codec` columns (in any order;
                  the full key table's names `tar_spk_anon`, `trial_anon`, `attack_anon` are accepted too)
  Track 1 scores  `filename cm-score`;  Track 1 keys `filename cm-label` (+ optional `attack`, `codec`)
Every problem is one ProtocolError naming the file and line.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.asvspoof5 import BONAFIDE
from data.corpora import corpus_for_list, label_attacks
from data.protocols import (
    CM_KEYS,
    SASV_KEYS,
    ProtocolError,
    check_unique,
    read_fields,
)
from runtime.files import write_text
from scoring import columnar
from scoring.score_files import format_score, parse_score, read_trial_scores
from scoring.scored_trials import ScoredTrials

TRACK2_SCORE_HEADER = ("spk", "filename", "cm-score", "asv-score", "sasv-score")
TRACK1_SCORE_HEADER = ("filename", "cm-score")
ABSENT = "-"  # a score part the system does not produce
# Column names of the package's full key table, and its Track 2 rows that are not trials.
_ALIASES = {"tar_spk_anon": "spk", "trial_anon": "filename", "attack_anon": "attack", "cm_label": "cm-label",
            "asv_label": "asv-label"}
_DUMMY = ("track_2_tag", "dummy")


# ------------------------------------------------------------------ ASVspoof 5 tab-separated files


def _table(path: str | Path, what: str) -> tuple[int, list[str], list[tuple[int, list[str]]]]:
    """(header line number, header, [(line number, fields)]) of a header-first table; rows as wide as the header."""
    lines = read_fields(path, what)
    if not lines:
        raise ProtocolError(f"{path}: {what} is empty (expected a header line)")
    (header_line, header), rows = lines[0], lines[1:]
    header = [_ALIASES.get(name, name) for name in header]
    for number, fields in rows:
        if len(fields) != len(header):
            raise ProtocolError(f"{path}:{number}: expected {len(header)} tab-separated fields "
                                f"({' '.join(header)}), got {len(fields)}")
    if not rows:
        raise ProtocolError(f"{path}: {what} has a header but no trials")
    return header_line, header, rows


def _require_header(path: str | Path, line: int, header: list[str], expected: tuple[str, ...], what: str) -> None:
    if tuple(header) != expected:
        raise ProtocolError(f"{path}:{line}: {what} header must be '{' '.join(expected)}' (tab-separated), "
                            f"got '{' '.join(header)}'")


def _columns(path: str | Path, line: int, header: list[str], required: tuple[str, ...], what: str
             ) -> dict[str, int]:
    index = {name: position for position, name in enumerate(header)}
    missing = [name for name in required if name not in index]
    if missing or len(index) != len(header):
        raise ProtocolError(f"{path}:{line}: {what} header needs the columns {' '.join(required)} once each "
                            f"(optional: attack codec), got '{' '.join(header)}'")
    return index


def _label(value: str, allowed: tuple[str, ...], path: str | Path, number: int, column: str) -> str:
    if value not in allowed:
        raise ProtocolError(f"{path}:{number}: unknown {column} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _read_keys(path: str | Path, trial_columns: tuple[str, ...], track2: bool) -> tuple[list, dict]:
    """[(line, trial id, cm label, asv label or None, attack or None, codec or None)] and the header index."""
    what = f"Track {2 if track2 else 1} key file"
    header_line, header, rows = _table(path, what)
    labels = ("cm-label", "asv-label") if track2 else ("cm-label",)
    index = _columns(path, header_line, header, trial_columns + labels, what)
    keys, seen = [], {}
    for number, fields in rows:
        if track2 and _DUMMY[0] in index and fields[index[_DUMMY[0]]] == _DUMMY[1]:
            continue  # the full key table's placeholder rows, which the package drops too
        trial = tuple(fields[index[name]] for name in trial_columns)
        check_unique(seen, trial, path, number, f"trial {' '.join(trial)}")
        cm_label = _label(fields[index["cm-label"]], CM_KEYS, path, number, "cm-label")
        asv_label = None
        if track2:
            asv_label = _label(fields[index["asv-label"]], SASV_KEYS, path, number, "asv-label")
            if (cm_label == "spoof") != (asv_label == "spoof"):
                raise ProtocolError(f"{path}:{number}: cm-label {cm_label!r} does not match asv-label {asv_label!r}")
        attack, codec = (fields[index[name]] if name in index else None for name in ("attack", "codec"))
        if cm_label == "spoof" and attack in (BONAFIDE, "-"):  # it would make a per-attack row of its own
            raise ProtocolError(f"{path}:{number}: a spoof trial with attack {attack!r}; expected its attack id")
        keys.append((number, trial, cm_label, asv_label, attack, codec))
    return keys, index


def _align(score_path: str | Path, key_path: str | Path, scores: dict[tuple, tuple[int, list]], keys: list
           ) -> list[list]:
    """The score fields of every key row, in key order; a trial missing from either file is an error."""
    aligned = []
    for number, trial, *_ in keys:
        if trial not in scores:
            raise ProtocolError(f"{score_path}: no score for trial {' '.join(trial)} ({key_path}:{number})")
        aligned.append(scores.pop(trial)[1])
    if scores:
        trial = min(scores, key=lambda key: scores[key][0])
        number = scores[trial][0]
        raise ProtocolError(f"{score_path}:{number}: trial {' '.join(trial)} is not in {key_path}")
    return aligned


def _labels(keys: list, column: int, index: dict, name: str) -> np.ndarray | None:
    return np.array([row[column] for row in keys], dtype=str) if name in index else None


def _score_column(path: str | Path, column: str, position: int, aligned: list[list], lines: list[int]
                  ) -> np.ndarray | None:
    """One score column in key order: None when it is `-` on every line."""
    fields = [row[position] for row in aligned]
    if all(field == ABSENT for field in fields):
        return None
    for field, line in zip(fields, lines):
        if field == ABSENT:
            raise ProtocolError(f"{path}:{line}: {column} is '-' here but a number on other lines")
    return np.array([parse_score(path, line, field, column=column) for field, line in zip(fields, lines)])


def _track2_keys(key_path: str | Path) -> tuple | None:
    return columnar.read_keys(key_path, ("spk", "filename"), True, _ALIASES)


def _read_track2_columnar(score_path: str | Path, key_path: str | Path, required: str, keys: tuple | None
                          ) -> ScoredTrials | None:
    """`_read_track2_file` through scoring.columnar (`keys`: `_track2_keys`), or None for the line reader."""
    if keys is None:
        return None
    trials, labels = keys
    scores = columnar.read_scores(score_path, TRACK2_SCORE_HEADER, ("spk", "filename"), trials, _ALIASES)
    if scores is None or scores[required] is None:
        return None
    return ScoredTrials(source=f"{score_path} (keys {key_path})", cm_keys=labels["cm-label"],
                        asv_keys=labels["asv-label"], sasv=scores["sasv-score"], cm=scores["cm-score"],
                        asv=scores["asv-score"], attack=labels["attack"], codec=labels["codec"])


def read_track2(score_path: str | Path, key_path: str | Path, asv_org_path: str | Path | None = None
                ) -> ScoredTrials:
    """ASVspoof 5 Track 2 scores joined with their keys on (spk, filename), in key-file order.

    cm-score / asv-score hold `-` on every line when the system has no such part (None here).
    `asv_org_path`: the organisers' ASV scores of the same trials (a Track 2 score file whose asv-score
    column is filled), which give the min t-DCF its ASV error rates per cell, as the package's `--asv_org`."""
    keys = _track2_keys(key_path)  # read once for both score files
    trials = _read_track2_file(score_path, key_path, "sasv-score", keys)
    if asv_org_path is None:
        return trials
    if trials.cm is None or trials.asv is None:
        raise ProtocolError(f"{score_path}: organisers' ASV scores ({asv_org_path}) serve the min t-DCF, which "
                            f"needs the cm-score and asv-score columns, but they are '-' here")
    org = _read_track2_file(asv_org_path, key_path, "asv-score", keys)
    return replace(trials, asv_org=org.asv, source=f"{trials.source}, organisers' ASV scores {asv_org_path}")


def _read_track2_file(score_path: str | Path, key_path: str | Path, required: str, keys: tuple | None
                      ) -> ScoredTrials:
    """One Track 2 score file joined with the keys; its column `required` must hold numbers."""
    fast = _read_track2_columnar(score_path, key_path, required, keys)
    if fast is not None:
        return fast
    header_line, header, rows = _table(score_path, "Track 2 score file")
    _require_header(score_path, header_line, header, TRACK2_SCORE_HEADER, "Track 2 score file")
    scores, seen = {}, {}
    for number, fields in rows:
        check_unique(seen, (fields[0], fields[1]), score_path, number, f"trial {fields[0]} {fields[1]}")
        scores[(fields[0], fields[1])] = (number, fields[2:])
    keys, index = _read_keys(key_path, ("spk", "filename"), track2=True)
    aligned = _align(score_path, key_path, scores, keys)
    lines = [seen[row[1]] for row in keys]
    cm, asv, sasv = (_score_column(score_path, column, position, aligned, lines)
                     for position, column in enumerate(TRACK2_SCORE_HEADER[2:]))
    if {"sasv-score": sasv, "asv-score": asv}[required] is None:
        raise ProtocolError(f"{score_path}:{rows[0][0]}: {required} is '-' on every line; it is required")
    return ScoredTrials(source=f"{score_path} (keys {key_path})",
                        cm_keys=np.array([row[2] for row in keys], dtype=str),
                        asv_keys=np.array([row[3] for row in keys], dtype=str), sasv=sasv, cm=cm, asv=asv,
                        attack=_labels(keys, 4, index, "attack"), codec=_labels(keys, 5, index, "codec"))


def _read_track1_columnar(score_path: str | Path, key_path: str | Path) -> ScoredTrials | None:
    """`read_track1` through scoring.columnar, or None for the line reader to decide."""
    keys = columnar.read_keys(key_path, ("filename",), False, _ALIASES)
    if keys is None:
        return None
    trials, labels = keys
    scores = columnar.read_scores(score_path, TRACK1_SCORE_HEADER, ("filename",), trials, _ALIASES)
    if scores is None or scores["cm-score"] is None:
        return None
    return ScoredTrials(source=f"{score_path} (keys {key_path})", cm_keys=labels["cm-label"],
                        cm=scores["cm-score"], attack=labels["attack"], codec=labels["codec"])


def read_track1(score_path: str | Path, key_path: str | Path) -> ScoredTrials:
    """ASVspoof 5 Track 1 CM scores joined with their keys on filename, in key-file order."""
    fast = _read_track1_columnar(score_path, key_path)
    if fast is not None:
        return fast
    header_line, header, rows = _table(score_path, "Track 1 score file")
    _require_header(score_path, header_line, header, TRACK1_SCORE_HEADER, "Track 1 score file")
    scores, seen = {}, {}
    for number, fields in rows:
        check_unique(seen, (fields[0],), score_path, number, f"trial {fields[0]}")
        scores[(fields[0],)] = (number, fields[1:])
    keys, index = _read_keys(key_path, ("filename",), track2=False)
    aligned = _align(score_path, key_path, scores, keys)
    lines = [seen[row[1]] for row in keys]
    cm = np.array([parse_score(score_path, line, row[0], column="cm-score") for row, line in zip(aligned, lines)])
    return ScoredTrials(source=f"{score_path} (keys {key_path})", cm_keys=np.array([row[2] for row in keys], dtype=str),
                        cm=cm, attack=_labels(keys, 4, index, "attack"), codec=_labels(keys, 5, index, "codec"))


def _score_text(value: float | None) -> str:
    return ABSENT if value is None else format_score(value)


def track2_score_text(speakers: Sequence[str], filenames: Sequence[str], sasv: Sequence[float],
                      cm: Sequence[float] | None = None, asv: Sequence[float] | None = None) -> str:
    """The ASVspoof 5 Track 2 score file: header, then `spk filename cm-score asv-score sasv-score` per trial,
    tab-separated, `-` for a part not given. A trial scored nan (bad audio, skipped) keeps its `nan`."""
    absent = [None] * len(sasv)
    lines = ["\t".join(TRACK2_SCORE_HEADER)]
    for row in zip(speakers, filenames, absent if cm is None else cm, absent if asv is None else asv, sasv):
        lines.append("\t".join([row[0], row[1], *(_score_text(value) for value in row[2:])]))
    return "\n".join(lines) + "\n"


def write_track2_scores(path: str | Path, speakers: Sequence[str], filenames: Sequence[str],
                        sasv: Sequence[float], cm: Sequence[float] | None = None,
                        asv: Sequence[float] | None = None) -> None:
    write_text(path, track2_score_text(speakers, filenames, sasv, cm, asv))


def track2_key_text(speakers: Sequence[str], filenames: Sequence[str], asv_keys: Sequence[str],
                    attacks: Sequence[str], codecs: Sequence[str] | None = None) -> str:
    """The matching Track 2 key file, `spk filename cm-label asv-label attack` (+ `codec` when known),
    tab-separated."""
    lines = ["\t".join(("spk", "filename", "cm-label", "asv-label", "attack", *(("codec",) if codecs else ())))]
    for index, (speaker, filename, key, attack) in enumerate(zip(speakers, filenames, asv_keys, attacks)):
        codec = (codecs[index],) if codecs else ()
        lines.append("\t".join((speaker, filename, "spoof" if key == "spoof" else "bonafide", key, attack, *codec)))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the toolkit's SASV score files


def read_sasv_score_file(path: str | Path, trial_path: str | Path, cm_protocol: str | Path | None = None
                         ) -> ScoredTrials:
    """The toolkit's SASV scores (`SPK UTT KEY score` in the order of `trial_path`, read by
    `read_trial_scores`) with attack labels from the trial list's attack column or, given, the CM protocol.
    Either list may be ASVspoof 2019 LA's or ASVspoof 5's (told by its columns). A `nan` score (a trial
    skipped for bad audio) leaves the trial out, as the toolkit's metrics do."""
    trials = corpus_for_list(trial_path, "trials").read_trials(trial_path)
    scores = read_trial_scores(path, trial_path, trials, allow_nan=True, what="SASV")
    if cm_protocol is not None:
        entries = corpus_for_list(cm_protocol, "cm").read_keys(cm_protocol)
        trials = label_attacks(trials, trial_path, entries, cm_protocol)
    elif any(t.key == "spoof" and t.attack == "-" for t in trials):
        raise ProtocolError(f"{trial_path}: the spoof trials name no attack (a 3-column trial list); give "
                            f"--cm_protocol with the partition's utterance list for the per-attack table")
    return ScoredTrials.of_sasv_trials(f"{path} (trials {trial_path})", trials, scores,
                                       skipped=np.isnan(scores)).as_float64().kept()
