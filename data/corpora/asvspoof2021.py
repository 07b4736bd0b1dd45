"""ASVspoof 2021 LA and DF evaluation sets, read from their official release layouts (docs/cm_benchmarks.md).

`dirs.database` holds the release folders side by side:
  ASVspoof2021_LA_eval/flac/LA_E_NNNNNNN.flac     (ASVspoof2021_LA_eval.tar.gz)
  ASVspoof2021_DF_eval/flac/DF_E_NNNNNNN.flac     (ASVspoof2021_DF_eval_part0{0..3}.tar.gz, one folder)
  keys/LA/CM/trial_metadata.txt, keys/LA/ASV/trial_metadata.txt, keys/LA/ASV/ASVTorch_Kaldi/score.txt
  keys/DF/CM/trial_metadata.txt                   (LA-keys-full.tar.gz, DF-keys-full.tar.gz)

Keys files are space-separated, one trial a line, no header (the organisers' eval-package README):
  LA CM / ASV  `speaker trial codec transmission attack label trim subset`  (8 fields; ASV label:
               target / nontarget / spoof)
  DF CM        `speaker trial codec source attack label trim subset vocoder task team gender-pair language`
               (13 fields)
  LA ASV scores (organisers') `claimed-speaker trial score`, line by line beside the ASV keys.
A file whose lines are not of its layout, or a value outside the layout's conditions, is one ProtocolError
naming the file and line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from data.corpora.base import Corpus, CorpusLayoutError
from data.protocols import CMEntry, ProtocolError, check_unique, read_fields
from runtime.errors import ConfigError

# The subset column, as the organisers' packages name it: the full keys' README and main.py say `hidden`,
# the stage-1 package `hidden_track`; both are read as the subset `hidden_track`.
SUBSETS = ("progress", "eval", "hidden_track")
SUBSET_VALUES = {"progress": "progress", "eval": "eval", "hidden": "hidden_track", "hidden_track": "hidden_track"}
DEFAULT_SUBSET = "eval"  # the organisers' package's default phase
TRIM = ("notrim", "trim")
KEYS = ("bonafide", "spoof")
ASV_KEYS = ("target", "nontarget", "spoof")
BONAFIDE_ATTACKS = ("bonafide", "-")  # the attack field of a bona fide trial

LA_ATTACKS = tuple(f"A{k:02d}" for k in range(7, 20))
# Codec -> the evaluation plan's condition name, in the package's order (LA-C1 ... LA-C7).
LA_CODECS = {"none": "LA-C1", "alaw": "LA-C2", "pstn": "LA-C3", "g722": "LA-C4", "ulaw": "LA-C5", "gsm": "LA-C6",
             "opus": "LA-C7"}
LA_TRANSMISSIONS = ("loc_tx", "ita_tx", "sin_tx", "mad_tx")
DF_CODECS = {"nocodec": "DF-C1", "low_mp3": "DF-C2", "high_mp3": "DF-C3", "low_m4a": "DF-C4", "high_m4a": "DF-C5",
             "low_ogg": "DF-C6", "high_ogg": "DF-C7", "mp3m4a": "DF-C8", "oggm4a": "DF-C9"}
DF_SOURCES = ("asvspoof", "vcc2018", "vcc2020")
# Spoof vocoder types, in the package's row order (bona fide trials carry `bonafide`).
DF_VOCODERS = ("traditional_vocoder", "waveform_concatenation", "neural_vocoder_autoregressive",
               "neural_vocoder_nonautoregressive", "unknown")


@dataclass(frozen=True)
class KeyRow:
    """One line of a keys file: its number and the entry it makes."""

    line: int
    entry: CMEntry


def _check(value: str, allowed: Mapping[str, Any] | tuple[str, ...], path: str | Path, line: int, column: str) -> str:
    if value not in allowed:
        raise ProtocolError(f"{path}:{line}: unknown {column} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _rows(path: str | Path, n_fields: int, prefix: str, layout: str, what: str) -> list[tuple[int, list[str]]]:
    """(line, fields) of a keys file whose every line has `n_fields` fields and a trial id `prefix`NNNNNNN."""
    rows = read_fields(path, what)
    if not rows:
        raise ProtocolError(f"{path}: {what} is empty")
    for number, fields in rows:
        if len(fields) != n_fields:
            raise ProtocolError(f"{path}:{number}: {what} lines have {n_fields} space-separated fields "
                                f"({layout}), got {len(fields)}")
        if not fields[1].startswith(prefix):
            raise ProtocolError(f"{path}:{number}: trial id {fields[1]!r} is not a {prefix}NNNNNNN id of this "
                                f"{what}")
    return rows


def _looks_like(path: str | Path, n_fields: int, prefix: str) -> bool:
    """The first non-blank line has the layout's field count and trial id prefix."""
    try:
        with open(Path(path), encoding="utf-8-sig") as handle:
            for line in handle:
                if line.strip():
                    fields = line.split()
                    return len(fields) == n_fields and fields[1].startswith(prefix)
    except (OSError, UnicodeDecodeError):
        return False
    return False


def _label(fields: list[str], path: str | Path, line: int, attack_column: int) -> tuple[str, str]:
    """(key, attack) of a CM keys line; a bona fide trial's attack is `-`."""
    key = _check(fields[5], KEYS, path, line, "label")
    attack = fields[attack_column]
    if key == "bonafide":
        _check(attack, BONAFIDE_ATTACKS, path, line, "attack of a bona fide trial")
        return key, "-"
    if attack in BONAFIDE_ATTACKS:
        raise ProtocolError(f"{path}:{line}: a spoof trial with attack {attack!r}; expected its attack id")
    return key, attack


class _ASVspoof2021(Corpus):
    """What the LA and DF evaluation sets share: one `eval` partition of FLAC files and a keys file."""

    partitions = ("eval",)
    has_sasv = False
    headline = {"cm": "eer"}
    headline_subset = DEFAULT_SUBSET
    track: str  # "LA" / "DF"
    n_fields: int
    keys_layout: ClassVar[str]

    # ------------------------------------------------------------------ the release layout

    @property
    def database(self) -> Path:
        root = (self.config.get("dirs") or {}).get("database")
        if not root:
            raise ConfigError(f"dirs.database: not set; {self.title} needs the folder that holds "
                              f"{self.audio_folder}/ and keys/ side by side")
        return Path(root)

    @property
    def audio_folder(self) -> str:
        return f"ASVspoof2021_{self.track}_eval"

    def _partition(self, partition: str) -> None:
        if partition not in self.partitions:
            raise ConfigError(f"dataset {self.name}: no {partition!r} partition; it is an evaluation set "
                              f"(partitions: {', '.join(self.partitions)})")

    def audio_dir(self, partition: str) -> Path:
        self._partition(partition)
        return self.database / self.audio_folder / "flac"

    def audio_path(self, partition: str, utterance: str) -> Path:
        return self.audio_dir(partition) / f"{utterance}.flac"

    def protocol_places(self, key: str) -> list[Path]:
        """Where the release puts the file behind protocol key `key`, in the order looked."""
        relative = {"cm_keys": Path("keys") / self.track / "CM" / "trial_metadata.txt",
                    "asv_keys": Path("keys") / self.track / "ASV" / "trial_metadata.txt",
                    "asv_scores": Path("keys") / self.track / "ASV" / "ASVTorch_Kaldi" / "score.txt"}
        if key not in relative or (key != "cm_keys" and self.track != "LA"):
            raise ConfigError(f"dataset {self.name}: no protocol {key!r}")
        return [self.database / relative[key], self.database / f"{self.track}-keys-full" / relative[key]]

    def protocol(self, key: str) -> Path:
        places = self.protocol_places(key)
        for place in places:
            if place.is_file():
                return place
        raise ProtocolError(f"{places[0]}: {self.title} {key} not found; looked in "
                            f"{', '.join(str(p) for p in places)}; set dirs.database to the folder holding keys/")

    def check_layout(self, partitions: tuple[str, ...] | None = None) -> None:
        audio = self.audio_dir("eval")
        keys = self.protocol_places("cm_keys")
        missing = ([] if audio.is_dir() else [f"{audio}/"]) + ([] if any(p.is_file() for p in keys) else
                                                               [" or ".join(str(p) for p in keys)])
        if missing:
            raise CorpusLayoutError(f"dirs.database: {self.database} is not the {self.title} release layout: "
                                    f"expected {self.audio_folder}/flac/ and keys/{self.track}/CM/trial_metadata.txt; "
                                    f"missing {'; '.join(missing)}")

    # ------------------------------------------------------------------ entries

    def cm_list(self, partition: str) -> str:
        """The keys file, the utterance list of the one partition."""
        self._partition(partition)
        return str(self.protocol("cm_keys"))

    def cm_entries(self, partition: str) -> list[CMEntry]:
        """Every trial of the keys file (all subsets: the organisers' package takes a score for each), each
        checked to have its audio file."""
        self._partition(partition)
        self.check_layout()
        path = self.protocol("cm_keys")
        return self.entries_with_audio(self.read_key_rows(path), path, self.audio_dir(partition), ".flac")

    # ------------------------------------------------------------------ the keys file itself

    @classmethod
    def recognises_keys(cls, path: str | Path) -> bool:
        return _looks_like(path, cls.n_fields, f"{cls.track}_E_")

    @classmethod
    def read_keys(cls, path: str | Path) -> list[CMEntry]:
        return [row.entry for row in cls.read_key_rows(path)]

    @classmethod
    def read_key_rows(cls, path: str | Path) -> list[KeyRow]:
        rows = _rows(path, cls.n_fields, f"{cls.track}_E_", cls.keys_layout, f"{cls.title} keys file")
        seen: dict = {}
        keyed = []
        for number, fields in rows:
            check_unique(seen, fields[1], path, number, f"trial {fields[1]}")
            keyed.append(KeyRow(number, cls._entry(fields, path, number)))
        return keyed

    @classmethod
    def _entry(cls, fields: list[str], path: str | Path, line: int) -> CMEntry:
        raise NotImplementedError


class ASVspoof2021LA(_ASVspoof2021):
    name = "asvspoof2021_la"
    title = "ASVspoof 2021 LA eval"
    package_tables = (("attack", [(a, a) for a in LA_ATTACKS]),  # the package's eval-package/config.py tables
                      ("codec", [(c, tag.split("-")[1]) for c, tag in LA_CODECS.items()]))
    url = "https://www.asvspoof.org/index2021.html"
    condition_columns = ("attack", "codec", "transmission")
    track = "LA"
    n_fields = 8
    keys_layout = "keys/LA/CM/trial_metadata.txt: speaker trial codec transmission attack label trim subset"

    @classmethod
    def _entry(cls, fields: list[str], path: str | Path, line: int) -> CMEntry:
        key, attack = _label(fields, path, line, 4)
        if key == "spoof":
            _check(attack, LA_ATTACKS, path, line, "attack")
        return CMEntry(fields[0], fields[1], attack, key, conditions={
            "codec": _check(fields[2], LA_CODECS, path, line, "codec"),
            "transmission": _check(fields[3], LA_TRANSMISSIONS, path, line, "transmission"),
            "trim": _check(fields[6], TRIM, path, line, "trim"),
            "subset": SUBSET_VALUES[_check(fields[7], SUBSET_VALUES, path, line, "subset")]})

    @classmethod
    def read_asv_key_rows(cls, path: str | Path) -> list[tuple[int, list[str]]]:
        """(line, fields) of keys/LA/ASV/trial_metadata.txt: the CM layout with target / nontarget / spoof."""
        rows = _rows(path, cls.n_fields, "LA_E_", cls.keys_layout.replace("/CM/", "/ASV/"),
                     "ASVspoof 2021 LA ASV keys file")
        for number, fields in rows:
            label = _check(fields[5], ASV_KEYS, path, number, "ASV label")
            _check(fields[2], LA_CODECS, path, number, "codec")
            _check(fields[3], LA_TRANSMISSIONS, path, number, "transmission")
            if label == "spoof":
                _check(fields[4], LA_ATTACKS, path, number, "attack")
            _check(fields[7], SUBSET_VALUES, path, number, "subset")
        return rows


class ASVspoof2021DF(_ASVspoof2021):
    name = "asvspoof2021_df"
    title = "ASVspoof 2021 DF eval"
    package_tables = (("vocoder", list(zip(DF_VOCODERS, ("Traditional", "Wav.Concat.", "Neural AR", "Neural non-AR",
                                                         "Unknown")))),
                      ("codec", [(c, tag.split("-")[1]) for c, tag in DF_CODECS.items()]))
    url = "https://www.asvspoof.org/index2021.html"
    condition_columns = ("codec", "source", "vocoder")
    track = "DF"
    n_fields = 13
    keys_layout = ("keys/DF/CM/trial_metadata.txt: speaker trial codec source attack label trim subset vocoder "
                   "task team gender-pair language")

    @classmethod
    def _entry(cls, fields: list[str], path: str | Path, line: int) -> CMEntry:
        key, attack = _label(fields, path, line, 4)
        vocoder = fields[8]
        if key == "bonafide":
            _check(vocoder, ("bonafide",), path, line, "vocoder of a bona fide trial")
        else:
            _check(vocoder, DF_VOCODERS, path, line, "vocoder")
        return CMEntry(fields[0], fields[1], attack, key, conditions={
            "codec": _check(fields[2], DF_CODECS, path, line, "codec"),
            "source": _check(fields[3], DF_SOURCES, path, line, "source"),
            "vocoder": vocoder,
            "trim": _check(fields[6], TRIM, path, line, "trim"),
            "subset": SUBSET_VALUES[_check(fields[7], SUBSET_VALUES, path, line, "subset")]})


def read_asv_scores(score_path: str | Path, key_path: str | Path) -> tuple[np.ndarray, list[tuple[int, list[str]]]]:
    """The organisers' ASV scores (`claimed-speaker trial score`), line by line beside the ASV keys, as the
    organisers' package joins them; a line whose trial differs from the keys line's is an error.
    Returns (scores, the ASV key rows)."""
    from scoring.score_files import parse_score

    keys = ASVspoof2021LA.read_asv_key_rows(key_path)
    rows = read_fields(score_path, "ASV score file")
    if len(rows) != len(keys):
        raise ProtocolError(f"{score_path}: {len(rows)} ASV scores for the {len(keys)} trials of {key_path}")
    scores = np.empty(len(rows))
    for index, ((number, fields), (key_line, key_fields)) in enumerate(zip(rows, keys)):
        if len(fields) != 3:
            raise ProtocolError(f"{score_path}:{number}: ASV score lines have 3 fields (speaker trial score), "
                                f"got {len(fields)}")
        if fields[1] != key_fields[1]:
            raise ProtocolError(f"{score_path}:{number}: trial {fields[1]} where {key_path}:{key_line} has "
                                f"{key_fields[1]}; the ASV scores follow the ASV keys line by line")
        scores[index] = parse_score(score_path, number, fields[2], column="ASV score")
    return scores, keys
