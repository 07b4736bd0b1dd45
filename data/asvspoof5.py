"""Readers for the ASVspoof 5 protocol files (Track 1 utterance lists, Track 2 enrollment and trial lists).

The files are whitespace-separated whatever their extension (`.tsv` or `.txt`), without a header. Each
reader accepts the layouts confirmed from the organisers' material (docs/asvspoof5.md gives the sources)
and tells them apart by their number of columns; every line of a file must have the same layout. Any
other line is a ProtocolError naming the file, the line and the columns expected.

* utterance lists, `ASVspoof5.{train,dev.track_1,eval.track_1}.tsv` of the public release (10 columns) and
  the challenge's `ASVspoof5.{train,dev}.metadata.txt` (6 columns);
* trial lists, `ASVspoof5.{dev,eval}.track_2.trial.tsv` of the release (5 columns) and the challenge's
  `ASVspoof5.dev.trial.txt` (3 columns);
* enrollment lists, `ASVspoof5.{dev,eval}.track_2.enroll.tsv` of the release and the challenge's
  `ASVspoof5.dev.enroll.txt` (2 columns: speaker, comma-separated utterances).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.protocols import CM_KEYS, SASV_KEYS, ProtocolError, check_unique, protocol_lines, read_enrollment_utterances

GENDERS = ("F", "M")
BONAFIDE = "bonafide"
# The CODEC column: "-" for uncoded audio, else one of the release's eleven codec conditions C01-C11 (the
# database README, section 3, and the ASVspoof 5 database paper; docs/asvspoof5.md). An id outside them
# would get a row of its own in the per-codec tables, or a typo would split one condition in two.
CODECS = ("-", *(f"C{number:02d}" for number in range(1, 12)))

# Layouts by number of columns, with the column names of their documentation.
UTTERANCE_LAYOUTS = {
    10: "SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP",
    6: "speaker utterance gender codec attack key",
}
TRIAL_LAYOUTS = {
    5: "TARGET_SPEAKER_ID FLAC_FILE_NAME TARGET_GENDER ATTACK_LABEL ASV_KEY",
    3: "TARGET_SPEAKER_ID FLAC_FILE_NAME ASV_KEY",
}
ENROLLMENT_LAYOUT = "TARGET_SPEAKER_ID FLAC_FILE_NAMES (comma-separated)"


@dataclass(frozen=True)
class UtteranceEntry:
    """One utterance of a Track 1 / training list; None where the file's layout has no such column."""
    speaker: str  # the actual speaker of the utterance
    utterance: str
    gender: str
    codec: str  # "-": not coded
    attack: str  # "bonafide" or an attack id such as "A05"
    key: str  # "bonafide" or "spoof"
    codec_q: str | None = None
    codec_seed: str | None = None  # the uncoded original of a coded utterance; "-" when not coded
    attack_tag: str | None = None  # attacker adaptation condition, e.g. "AC3"; "-" for bona fide


@dataclass(frozen=True)
class Track2Trial:
    """One SASV trial. The challenge's 3-column lists give neither gender nor the attack (None)."""
    speaker: str  # claimed (target) speaker
    utterance: str  # test utterance
    key: str  # "target", "nontarget" or "spoof"
    attack: str | None = None  # "bonafide" or an attack id
    gender: str | None = None  # gender of the target speaker

    @property
    def label(self) -> int:
        """As data.protocols.SASVTrial: 0 = target bona fide, 1 = any other trial."""
        return 0 if self.key == "target" else 1


def _layout_lines(path: str | Path, layouts: dict[int, str]) -> list[tuple[int, list[str]]]:
    """The lines of `path`, all in the layout its first line has."""
    described = " or ".join(f"({names})" for names in layouts.values())
    lines = list(protocol_lines(path, tuple(layouts), described))
    if not lines:
        raise ProtocolError(f"{path}: protocol file is empty")
    width = len(lines[0][1])
    for number, fields in lines:
        if len(fields) != width:
            raise ProtocolError(f"{path}:{number}: expected the columns {layouts[width]} (the layout of line "
                                f"{lines[0][0]}), got {len(fields)} fields: {' '.join(fields)!r}")
    return lines


def _check(path: str | Path, number: int, name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ProtocolError(f"{path}:{number}: unknown {name} {value!r}; expected one of {', '.join(valid)}")


def read_utterance_list(path: str | Path) -> list[UtteranceEntry]:
    """ASVspoof5.train.tsv, ASVspoof5.{dev,eval}.track_1.tsv, or the challenge's *.metadata.txt."""
    entries, seen = [], {}
    for number, fields in _layout_lines(path, UTTERANCE_LAYOUTS):
        if len(fields) == 10:
            speaker, utterance, gender, codec, codec_q, codec_seed, attack_tag, attack, key, _ = fields
            extra = {"codec_q": codec_q, "codec_seed": codec_seed, "attack_tag": attack_tag}
        else:
            speaker, utterance, gender, codec, attack, key = fields
            extra = {}
        _check(path, number, "gender", gender, GENDERS)
        _check(path, number, "codec", codec, CODECS)
        _check(path, number, "CM key", key, CM_KEYS)
        if key == BONAFIDE:
            if attack not in (BONAFIDE, "-"):
                raise ProtocolError(f"{path}:{number}: key 'bonafide' with attack {attack!r}")
            attack = BONAFIDE
        elif attack in (BONAFIDE, "-"):
            raise ProtocolError(f"{path}:{number}: key 'spoof' without an attack (got {attack!r})")
        check_unique(seen, utterance, path, number, f"utterance id {utterance!r}")
        entries.append(UtteranceEntry(speaker, utterance, gender, codec, attack, key, **extra))
    return entries


def read_trials(path: str | Path) -> list[Track2Trial]:
    """ASVspoof5.{dev,eval}.track_2.trial.tsv, or the challenge's ASVspoof5.dev.trial.txt."""
    trials, seen = [], {}
    for number, fields in _layout_lines(path, TRIAL_LAYOUTS):
        if len(fields) == 5:
            speaker, utterance, gender, attack, key = fields
            _check(path, number, "gender", gender, GENDERS)
        else:
            (speaker, utterance, key), gender = fields, None
            attack = None if key == "spoof" else BONAFIDE
        _check(path, number, "trial key", key, SASV_KEYS)
        if attack is not None and (key == "spoof") == (attack == BONAFIDE):
            raise ProtocolError(f"{path}:{number}: key {key!r} does not match attack {attack!r}")
        check_unique(seen, (speaker, utterance), path, number,
                      f"trial of speaker {speaker!r} with test utterance {utterance!r}")
        trials.append(Track2Trial(speaker, utterance, key, attack, gender))
    return trials


def read_enrollment(path: str | Path) -> dict[str, list[str]]:
    """ASVspoof5.{dev,eval}.track_2.enroll.tsv or ASVspoof5.dev.enroll.txt: speaker -> enrollment utterances
    (some speakers have fewer than three)."""
    speakers = read_enrollment_utterances([path], ENROLLMENT_LAYOUT)
    if not speakers:
        raise ProtocolError(f"{path}: enrollment list is empty")
    return speakers
