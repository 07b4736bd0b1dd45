"""Parsers for the ASVspoof 2019 LA / SASV 2022 protocol files.

Every parser checks field counts, labels and duplicates and reports problems as
`ProtocolError("<file>:<line>: ...")`. A UTF-8 byte-order mark and CRLF line ends are accepted.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import UserError

CM_KEYS = ("bonafide", "spoof")
SASV_KEYS = ("target", "nontarget", "spoof")


class ProtocolError(UserError, ValueError):
    """A malformed protocol file, reported with its path and line number."""


@dataclass(frozen=True)
class CMEntry:
    speaker: str
    utterance: str
    attack: str  # "-" for bona fide
    key: str  # "bonafide" or "spoof"
    # condition column (data.corpora Corpus.condition_columns, attack aside) -> this utterance's value
    conditions: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class SASVTrial:
    speaker: str  # claimed identity
    utterance: str  # test utterance
    attack: str  # "bonafide" or an attack id such as "A07"
    key: str  # "target", "nontarget" or "spoof"

    @property
    def label(self) -> int:
        """Training/OC-softmax label: 0 = target bona fide, 1 = any other trial."""
        return 0 if self.key == "target" else 1


def read_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    """(line number, line) of each non-blank line of the text file `path` (`what` it is, for the errors).

    utf-8-sig: a leading byte-order mark is not part of the first field; text mode reads CRLF and CR as
    line ends, so lines are numbered as an editor numbers them (str.splitlines would also break at \f, ...)."""
    try:
        with open(Path(path), encoding="utf-8-sig") as handle:
            return [(number, line.rstrip("\n")) for number, line in enumerate(handle, start=1) if line.strip()]
    except FileNotFoundError:
        raise ProtocolError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise ProtocolError(f"{path}: not a text {what} (invalid UTF-8)") from None
    except OSError as error:
        raise ProtocolError(f"{path}: cannot read {what} ({error.strerror})") from None


def read_fields(path: str | Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line (see `read_lines`)."""
    return [(number, line.split()) for number, line in read_lines(path, what)]


def protocol_lines(path: str | Path, n_fields: int | tuple[int, ...],
                   columns: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line of a protocol file; `columns` names the expected
    layout(s) in the error."""
    counts = (n_fields,) if isinstance(n_fields, int) else n_fields
    for number, line in read_lines(path, "protocol file"):
        fields = line.split()
        if len(fields) not in counts:
            if columns:
                raise ProtocolError(f"{path}:{number}: expected the columns {columns}, got {len(fields)} "
                                    f"fields: {line.strip()!r}")
            expected = " or ".join(str(c) for c in counts)
            raise ProtocolError(f"{path}:{number}: expected {expected} fields, got {len(fields)}: {line.strip()!r}")
        yield number, fields


def check_unique(seen: dict, key: object, path: str | Path, number: int, what: str) -> None:
    """`what` describes `key` in the message, e.g. "utterance id 'LA_T_1'"."""
    if key in seen:
        raise ProtocolError(f"{path}:{number}: duplicate {what} (first on line {seen[key]})")
    seen[key] = number


def read_cm_protocol(path: str | Path) -> list[CMEntry]:
    """`SPK UTT - ATTACK KEY` lines (cm.{train.trn,dev.trl,eval.trl}.txt)."""
    entries, seen = [], {}
    for number, (speaker, utterance, _, attack, key) in protocol_lines(path, 5):
        if key not in CM_KEYS:
            raise ProtocolError(f"{path}:{number}: unknown CM key {key!r}; expected one of {', '.join(CM_KEYS)}")
        check_unique(seen, utterance, path, number, f"utterance id {utterance!r}")
        entries.append(CMEntry(speaker, utterance, attack, key))
    if not entries:
        raise ProtocolError(f"{path}: protocol file is empty")
    return entries


def read_sasv_trials(path: str | Path) -> list[SASVTrial]:
    """`SPK UTT ATTACK KEY` lines (asv.{dev,eval}.gi.trl.txt); a (speaker, utterance) pair is one trial."""
    trials, seen = [], {}
    for number, (speaker, utterance, attack, key) in protocol_lines(path, 4):
        if key not in SASV_KEYS:
            raise ProtocolError(f"{path}:{number}: unknown trial key {key!r}; expected one of {', '.join(SASV_KEYS)}")
        if (key == "spoof") == (attack == "bonafide"):
            raise ProtocolError(f"{path}:{number}: key {key!r} does not match source {attack!r}")
        # A repeated trial would count twice in the EERs.
        check_unique(seen, (speaker, utterance), path, number,
                      f"trial of speaker {speaker!r} with test utterance {utterance!r}")
        trials.append(SASVTrial(speaker, utterance, attack, key))
    if not trials:
        raise ProtocolError(f"{path}: trial list is empty")
    return trials


def read_enrollment_files(path: str | Path) -> dict[str, str]:
    """`SPK FILE` lines (asv.{dev,eval}.gi.trn.txt): speaker -> concatenated enrollment file stem."""
    files, seen, seen_stems = {}, {}, {}
    for number, (speaker, stem) in protocol_lines(path, 2):
        check_unique(seen, speaker, path, number, f"speaker {speaker!r}")
        check_unique(seen_stems, stem, path, number, f"enrollment file {stem!r}")  # two speakers, one recording
        files[speaker] = stem
    if not files:
        raise ProtocolError(f"{path}: enrollment list is empty")
    return files


def read_enrollment_utterances(paths: list[str | Path] | tuple[str | Path, ...],
                               columns: str | None = None) -> dict[str, list[str]]:
    """`SPK UTT1,UTT2,...` lines (asv.{dev,eval}.{female,male}.trn.txt, ASVspoof 5 enrollment lists):
    speaker -> utterances. `columns` names the layout in the error for a line with another number of fields."""
    return read_enrollment_listing(paths, columns)[0]


def read_enrollment_listing(paths: list[str | Path] | tuple[str | Path, ...], columns: str | None = None
                            ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """As `read_enrollment_utterances`, with where each utterance is listed: (speaker -> utterances,
    utterance -> "file:line")."""
    speakers: dict[str, list[str]] = {}
    speaker_seen: dict[str, str] = {}  # speaker -> "file:line" where it was first listed
    first_seen: dict[str, str] = {}
    for path in paths:
        for number, (speaker, joined) in protocol_lines(path, 2, columns):
            where = f"{path}:{number}"
            if speaker in speakers:
                raise ProtocolError(f"{where}: speaker {speaker!r} is listed twice (also at {speaker_seen[speaker]})")
            utterances = [utt for utt in joined.split(",") if utt]
            if not utterances:
                raise ProtocolError(f"{where}: speaker {speaker!r} has no enrollment utterances")
            for utt in utterances:
                if utt in first_seen:
                    raise ProtocolError(f"{where}: duplicate utterance id {utt!r} (also at {first_seen[utt]})")
                first_seen[utt] = where
            speakers[speaker] = utterances
            speaker_seen[speaker] = where
    return speakers, first_seen


def check_tests_not_enrolled(trials: list[SASVTrial], enrollment: dict[str, list[str]], listed_at: dict[str, str],
                             trial_path: str | Path) -> None:
    """No trial's test utterance is one of its claimed speaker's own enrollment utterances: that trial would
    compare a recording with itself, a near-certain accept that inflates the target scores. The error names
    the trial list line and the enrollment list line (`listed_at`: utterance -> "file:line")."""
    own = {speaker: set(utterances) for speaker, utterances in enrollment.items()}
    for trial in trials:
        if trial.utterance in own.get(trial.speaker, ()):
            line = next((number for number, fields in read_fields(trial_path, "trial list")
                         if fields[:2] == [trial.speaker, trial.utterance]), None)
            raise ProtocolError(f"{trial_path}{'' if line is None else f':{line}'}: test utterance "
                                f"{trial.utterance} is one of speaker {trial.speaker}'s own enrollment utterances "
                                f"({listed_at[trial.utterance]}); a trial must not test a speaker on an "
                                f"enrollment recording")


def speaker_utterances(entries: list[CMEntry]) -> dict[str, dict[str, list[str]]]:
    """speaker -> {"bonafide": [...], "spoof": [...]} in protocol order."""
    speakers: dict[str, dict[str, list[str]]] = {}
    for entry in entries:
        speakers.setdefault(entry.speaker, {"bonafide": [], "spoof": []})[entry.key].append(entry.utterance)
    return speakers


def check_trials_enrolled(trials: list[SASVTrial], enrolled: dict, trial_path: str | Path,
                          enrollment_path: str | Path) -> None:
    """Every claimed speaker must have an enrollment."""
    for index, trial in enumerate(trials, start=1):
        if trial.speaker not in enrolled:
            raise ProtocolError(f"{trial_path}:{index}: speaker {trial.speaker!r} has no enrollment in "
                                f"{enrollment_path}")


def check_every_key(keys: list[str], path: str | Path, expected: tuple[str, ...] = SASV_KEYS,
                    needed_for: str = "the SASV metrics (SASV-, SV- and SPF-EER, a-DCF)") -> None:
    """Refuse a list that lacks a class before any scoring: its metrics would be undefined."""
    missing = [key for key in expected if key not in set(keys)]
    if missing:
        raise ProtocolError(f"{path}: no {' or '.join(missing)} trials; {needed_for} need "
                            f"{', '.join(expected)} trials")
