"""In-the-Wild (Müller et al., Interspeech 2022), read from its release folder (docs/cm_benchmarks.md).

`dirs.database` holds the release folder `release_in_the_wild/`: `N.wav` files (N = 0, 1, ...) and
`meta.csv`, comma-separated with the header `file,speaker,label`, labels `bona-fide` / `spoof`
(`0.wav,Alec Guinness,spoof`). Utterance ids are the file names without `.wav`; the attack of a spoof is
not given by the release (`unknown` here). A bad line is one ProtocolError naming the file and line.
"""
from __future__ import annotations

import csv
from pathlib import Path

from data.corpora.asvspoof2021 import KeyRow
from data.corpora.base import Corpus, CorpusLayoutError
from data.protocols import CMEntry, ProtocolError, check_unique
from runtime.errors import ConfigError

HEADER = ("file", "speaker", "label")
LABELS = {"bona-fide": "bonafide", "spoof": "spoof"}
RELEASE_FOLDER = "release_in_the_wild"
SPOOF_ATTACK = "unknown"  # the release names no spoofing system


def _read_lines(path: str | Path) -> list[tuple[int, list[str]]]:
    try:
        with open(Path(path), encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            return [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except FileNotFoundError:
        raise ProtocolError(f"{path}: In-the-Wild meta.csv not found") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise ProtocolError(f"{path}: not a readable CSV file ({error})") from None


class InTheWild(Corpus):
    name = "in_the_wild"
    title = "In-the-Wild"
    url = "https://deepfake-total.com/in_the_wild"
    partitions = ("eval",)
    has_sasv = False
    condition_columns = ("speaker",)
    headline = {"cm": "eer"}
    keys_layout = "release_in_the_wild/meta.csv: header file,speaker,label"

    @property
    def database(self) -> Path:
        root = (self.config.get("dirs") or {}).get("database")
        if not root:
            raise ConfigError(f"dirs.database: not set; {self.title} needs the folder that holds {RELEASE_FOLDER}/")
        return Path(root)

    def _places(self) -> list[Path]:
        return [self.database / RELEASE_FOLDER, self.database]

    def _release(self) -> Path:
        for place in self._places():
            if (place / "meta.csv").is_file():
                return place
        raise CorpusLayoutError(f"dirs.database: {self.database} is not the {self.title} release layout: expected "
                                f"{RELEASE_FOLDER}/meta.csv beside the N.wav files; looked in "
                                f"{', '.join(str(p / 'meta.csv') for p in self._places())}")

    def _partition(self, partition: str) -> None:
        if partition not in self.partitions:
            raise ConfigError(f"dataset {self.name}: no {partition!r} partition; it is an evaluation set "
                              f"(partitions: eval)")

    def audio_dir(self, partition: str) -> Path:
        self._partition(partition)
        return self._release()

    def audio_path(self, partition: str, utterance: str) -> Path:
        return self.audio_dir(partition) / f"{utterance}.wav"

    def protocol(self, key: str) -> Path:
        if key != "cm_keys":
            raise ConfigError(f"dataset {self.name}: no protocol {key!r}")
        return self._release() / "meta.csv"

    def check_layout(self, partitions: tuple[str, ...] | None = None) -> None:
        self._release()

    def cm_list(self, partition: str) -> str:
        """meta.csv, the utterance list of the one partition."""
        self._partition(partition)
        return str(self.protocol("cm_keys"))

    @classmethod
    def where_listed(cls, listing: str | Path, utterance: str) -> str:
        """`meta.csv:line` of the line naming `utterance`.wav."""
        for number, fields in _read_lines(listing):
            if fields and fields[0].strip() == f"{utterance}.wav":
                return f"{listing}:{number}"
        return str(listing)

    def cm_entries(self, partition: str) -> list[CMEntry]:
        """Every file of meta.csv, each checked to be in the release folder."""
        self._partition(partition)
        path = self.protocol("cm_keys")
        return self.entries_with_audio(self.read_key_rows(path), path, path.parent, ".wav")

    @classmethod
    def recognises_keys(cls, path: str | Path) -> bool:
        try:
            with open(Path(path), encoding="utf-8-sig", newline="") as handle:
                first = next(csv.reader(handle), None)
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return first is not None and tuple(field.strip() for field in first) == HEADER

    @classmethod
    def read_keys(cls, path: str | Path) -> list[CMEntry]:
        return [row.entry for row in cls.read_key_rows(path)]

    @classmethod
    def read_key_rows(cls, path: str | Path) -> list[KeyRow]:
        lines = _read_lines(path)
        if not lines:
            raise ProtocolError(f"{path}: In-the-Wild meta.csv is empty (expected the header file,speaker,label)")
        (header_line, header), rows = lines[0], lines[1:]
        if tuple(field.strip() for field in header) != HEADER:
            raise ProtocolError(f"{path}:{header_line}: In-the-Wild meta.csv header must be "
                                f"'{','.join(HEADER)}', got '{','.join(header)}'")
        if not rows:
            raise ProtocolError(f"{path}: In-the-Wild meta.csv has a header but no files")
        seen: dict = {}
        keyed = []
        for number, fields in rows:
            if len(fields) != 3:
                raise ProtocolError(f"{path}:{number}: expected 3 comma-separated fields (file,speaker,label), "
                                    f"got {len(fields)}")
            name, speaker, label = (field.strip() for field in fields)
            if not name.endswith(".wav") or len(name) <= 4 or "/" in name:
                raise ProtocolError(f"{path}:{number}: file {name!r} is not a .wav file name of the release")
            if not speaker:
                raise ProtocolError(f"{path}:{number}: empty speaker")
            if label not in LABELS:
                raise ProtocolError(f"{path}:{number}: unknown label {label!r}; expected one of {', '.join(LABELS)}")
            check_unique(seen, name, path, number, f"file {name}")
            key = LABELS[label]
            keyed.append(KeyRow(number, CMEntry(speaker, name[:-4], "-" if key == "bonafide" else SPOOF_ATTACK, key,
                                                conditions={"speaker": speaker})))
        return keyed
