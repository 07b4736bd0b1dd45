"""The corpus adapter: everything that differs between corpora, behind one interface (docs/new_corpus.md).

A `Corpus` is built from a loaded config and answers, for its `dataset`: where the audio of a partition is,
which file each of its protocol keys (dirs.*) names (looked for lazily, on first use), its CM entries, SASV
trials and enrollment as the toolkit's records (data.protocols), its condition columns and its headline
metrics. Nothing above it compares a dataset name.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from data.protocols import (
    CMEntry,
    ProtocolError,
    SASVTrial,
    check_tests_not_enrolled,
    read_enrollment_listing,
    read_fields,
)
from runtime.errors import ConfigError


class CorpusLayoutError(ConfigError):
    """A corpus folder that is not in its release's layout: one line saying what was expected and where."""


@dataclass
class Enrollment:
    """speaker -> enrollment audio files, and the list file(s) they come from (for the errors)."""
    paths: dict[str, list[Path]]
    listing: list[str] = field(default_factory=list)  # as configured, so that messages name them as written


def label_attacks(trials: Sequence[SASVTrial], trial_path: str | Path, entries: Sequence[CMEntry],
                  list_path: str | Path) -> list[SASVTrial]:
    """`trials` with the attack of each spoof trial taken from an utterance list (`entries`, read from
    `list_path`), for trial lists that name none (attack "-": ASVspoof 5's 3-column lists). Every test
    utterance must be in the list, with the trial's key, and with the attack the trial list names if any."""
    listed = {entry.utterance: entry for entry in entries}
    labelled = []
    for number, trial in enumerate(trials, start=1):
        entry = listed.get(trial.utterance)
        if entry is None:
            raise ProtocolError(f"{trial_path}:{number}: test utterance {trial.utterance} is not in {list_path}")
        if (entry.key == "spoof") != (trial.key == "spoof"):
            raise ProtocolError(f"{trial_path}:{number}: trial key {trial.key!r}, but {trial.utterance} is "
                                f"{entry.key!r} in {list_path}")
        if trial.key == "spoof" and trial.attack not in ("-", entry.attack):
            raise ProtocolError(f"{trial_path}:{number}: attack {trial.attack!r}, but {trial.utterance} is attack "
                                f"{entry.attack!r} in {list_path}")
        labelled.append(replace(trial, attack=entry.attack if trial.key == "spoof" else "bonafide"))
    return labelled


class Corpus:
    """One corpus layout under dirs.database. Subclasses set the class attributes and the readers; building
    one touches no file."""

    name: ClassVar[str] = ""  # the config's `dataset` value
    title: ClassVar[str] = ""  # for messages: "ASVspoof 2019 LA"
    url: ClassVar[str] = ""  # where the release is downloaded
    partitions: ClassVar[tuple[str, ...]] = ("train", "dev", "eval")
    has_sasv: ClassVar[bool] = False  # SASV trials and enrollment
    condition_columns: ClassVar[tuple[str, ...]] = ("attack",)  # per-condition CM tables besides pooled
    headline: ClassVar[Mapping[str, str]] = {"sasv": "sasv_eer", "cm": "eer", "asv": "eer"}
    # Added for the move: the min t-DCF (ASVspoof 2019's tandem metric) applies to its CM scores; its
    # enrollment is one long concatenated file per speaker (enrollment_samples then keep their own defaults).
    has_tdcf: ClassVar[bool] = False
    # The `subset` condition its headline CM metrics are computed on (ASVspoof 2021: `eval`, the organisers'
    # default phase); None: every utterance of the partition.
    headline_subset: ClassVar[str | None] = None
    concatenated_enrollment: ClassVar[bool] = False
    # partition -> audio folder under dirs.database; `audio_ext` comes from the config.
    audio_folders: ClassVar[Mapping[str, str]] = {}
    # The dirs.* keys naming its protocol files; a key left at its default is looked for (search_places).
    protocol_keys: ClassVar[tuple[str, ...]] = ()
    protocol_defaults: ClassVar[Mapping[str, str]] = {}  # dirs.<key> -> its schema default, where it sets it
    # Columns of its utterance (CM) lists and SASV trial lists, to tell lists that name no dataset apart.
    cm_list_columns: ClassVar[tuple[int, ...]] = ()
    trial_list_columns: ClassVar[tuple[int, ...]] = ()
    keys_layout: ClassVar[str] = ""  # its official keys file and columns, for the error naming the known layouts
    # The organisers' evaluation package's own tables (rows: a spoof-only factor, columns: codec), each factor
    # as (column, [(value, printed tag), ...]); None: the corpus has no package tables (scoring.cm_conditions).
    package_tables: ClassVar[tuple | None] = None

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.dirs: Mapping[str, Any] = config["dirs"]
        self.source = getattr(config, "source", "<config>")

    # ------------------------------------------------------------------ audio
    @property
    def database(self) -> str | None:
        return self.dirs["database"]

    @classmethod
    def audio_folder(cls, database: str | Path, partition: str) -> Path:
        """The audio folder of `partition` (train / trn, dev, eval) under `database`."""
        part = "train" if partition == "trn" else partition
        if part not in cls.audio_folders:
            raise ConfigError(f"dataset {cls.name} has no partition {partition!r}; it has "
                              f"{', '.join(cls.partitions)}")
        return Path(database) / cls.audio_folders[part]

    def audio_dir(self, partition: str) -> Path:
        """The folder holding `<utterance>.<audio_ext>` of `partition`."""
        return self.audio_folder(self.database or "", partition)

    def audio_path(self, partition: str, utterance: str) -> Path:
        return self.audio_dir(partition) / f"{utterance}.{self.config['audio_ext']}"

    @classmethod
    def where_listed(cls, listing: str | Path, utterance: str) -> str:
        """`file:line` of the first line of `listing` (a CM list, trial list or keys file of this corpus) that
        lists `utterance` in its 2nd column, as CM protocols, trial lists and keys files of every whitespace
        layout do; `listing` alone when no line does."""
        for number, fields in read_fields(listing, "list file"):
            if len(fields) > 1 and fields[1] == utterance:
                return f"{listing}:{number}"
        return str(listing)

    # -------------------------------------------------------------- protocols
    @classmethod
    def search_places(cls, key: str, default: str, database: str | None) -> list[str]:
        """Where the protocol `default` of dirs.`key`, left at its default, is looked for, in order."""
        return [default]

    @classmethod
    def notice_found(cls, default: str, found: str) -> bool:
        """Whether the command line says that `default` was found at `found` instead (once per run)."""
        return found != default

    def is_given(self, key: str) -> bool:
        """dirs.`key` set by the config file or --set, or not one of this corpus's protocol keys: used as given,
        not looked for. A mapping that is not a loaded Config (no record of what was given) is used as given
        throughout, as before."""
        given = getattr(self.config, "given", None)
        return given is None or key not in self.protocol_keys or f"dirs.{key}" in given

    def locate(self, key: str) -> list[tuple[str, str | None, list[str]]]:
        """(value, the file found or None, the places looked) for each path of dirs.`key` (a list key has
        several). A key set in the config is taken as given (found: itself, whether or not it exists). A file
        found elsewhere than its default is noted once per config (`_note_found`)."""
        value = self.dirs[key]
        values = value if isinstance(value, list) else [value]
        located = []
        for default in values:
            default = str(default)
            if self.is_given(key):
                located.append((default, default, [default]))
                continue
            places = self.search_places(key, default, self.database)
            found = next((p for p in places if Path(p).is_file()), None)
            if found is not None and self.notice_found(default, found):
                self._note_found(default, found)
            located.append((default, found, places))
        return located

    def _note_found(self, default: str, found: str) -> None:
        """Record in the config's `found_protocols` (runtime.config.Config) that `default` was found at `found`,
        and tell its `notify` (the command line prints it) the first time: once per run, not once per use."""
        noted = getattr(self.config, "found_protocols", None)
        if noted is None or default in noted:
            return
        noted[default] = found
        notify = getattr(self.config, "notify", None)
        if notify is not None:
            notify(f"using protocol {found} ({default} does not exist)")

    def recorded_dirs(self) -> dict[str, Any]:
        """The config's dirs with each protocol key left at its default holding the file found for it (the
        default where none is found): what config.conf and checkpoints record, so that the record names the
        files the run reads and reads back the same (a recorded path is given, not looked for again)."""
        dirs = dict(self.dirs)
        for key in self.protocol_keys:
            if not self.is_given(key):
                located = [found or default for default, found, _ in self.locate(key)]
                dirs[key] = located if isinstance(dirs[key], list) else located[0]
        return dirs

    def _found(self, default: str, found: str | None, places: Sequence[str], key: str) -> str:
        if found is None:
            raise ProtocolError(f"{default}: protocol file not found; looked for dirs.{key} in "
                                f"{', '.join(places)}; set dirs.{key} to its path")
        return found

    def protocol_file(self, key: str) -> str:
        """`protocol(key)` as the text the config gave or the search found (error messages name the file
        as it was written, `./` and all)."""
        (default, found, places), *_ = self.locate(key)
        return self._found(default, found, places, key)

    def protocol_files(self, key: str) -> list[str]:
        """As `protocol_file`, for a key holding a list of files (dirs.asv_dev_enrollment_lists)."""
        return [self._found(default, found, places, key) for default, found, places in self.locate(key)]

    def protocol(self, key: str) -> Path:
        """The file behind the protocol key `key` (e.g. "cm_eval_list"), found on first use; not found: a
        ProtocolError listing every place looked and the key that sets it. A key set in the config is used as
        given (its reader names it when it is missing)."""
        return Path(self.protocol_file(key))

    # ---------------------------------------------------------------- records
    def cm_list_key(self, partition: str) -> str:
        raise NotImplementedError

    def trial_list_key(self, partition: str) -> str:
        raise self._no_sasv()

    def cm_list(self, partition: str) -> str:
        """The CM (utterance) list of `partition` (train / trn, dev, eval)."""
        return self.protocol_file(self.cm_list_key(partition))

    def trial_list(self, partition: str) -> str:
        """The SASV trial list of `partition` (dev, eval)."""
        return self.protocol_file(self.trial_list_key(partition))

    def cm_entries(self, partition: str) -> list[CMEntry]:
        return self.read_keys(self.cm_list(partition))

    @staticmethod
    def entries_with_audio(rows: Sequence[Any], keys_file: Path, folder: Path, suffix: str) -> list[CMEntry]:
        """The entries of a keys file's `rows` (each with `.entry` and `.line`), each checked to have its audio file
        `folder/<utterance><suffix>`; one directory read, not a stat per row. The first missing file is a
        ProtocolError naming the keys file's line."""
        try:
            present = {entry.name for entry in os.scandir(folder)}
        except FileNotFoundError:
            present = set()
        for row in rows:
            if f"{row.entry.utterance}{suffix}" not in present:
                raise ProtocolError(f"{keys_file}:{row.line}: audio file {folder / (row.entry.utterance + suffix)} "
                                    f"not found")
        return [row.entry for row in rows]

    def headline_selection(self, entries: Sequence[CMEntry]) -> list[bool] | None:
        """Which of a partition's CM entries its headline CM metrics are computed on (`headline_subset`); None:
        all of them."""
        if self.headline_subset is None:
            return None
        return [entry.conditions.get("subset") == self.headline_subset for entry in entries]

    @classmethod
    def read_trials(cls, path: str | Path) -> list[SASVTrial]:
        """A SASV trial list of this corpus's layout."""
        raise NotImplementedError

    def sasv_trials(self, partition: str) -> list[SASVTrial]:
        """The partition's SASV trials; a list naming no attacks (ASVspoof 5, 3 columns) gets them from the
        partition's CM list. A trial testing a speaker on one of their own enrollment utterances is an error
        (see `check_tests_not_enrolled`)."""
        if not self.has_sasv:
            raise self._no_sasv()
        path = self.trial_list(partition)
        trials = self.read_trials(path)
        self.check_tests_not_enrolled(partition, trials)
        if any(trial.key == "spoof" and trial.attack == "-" for trial in trials):
            return label_attacks(trials, path, self.cm_entries(partition), self.cm_list(partition))
        return trials

    def enrollment_list_key(self, partition: str) -> str:
        """The dirs.* key listing speaker -> enrollment utterances of `partition`."""
        raise self._no_sasv()

    enrollment_columns: ClassVar[str | None] = None  # the enrollment list's layout, for its errors

    def enrollment_list(self, partition: str) -> str | list[str]:
        """Where speaker -> enrollment utterances is listed (one file, or several for a list key)."""
        key = self.enrollment_list_key(partition)
        return self.protocol_files(key) if isinstance(self.dirs[key], list) else self.protocol_file(key)

    def check_tests_not_enrolled(self, partition: str, trials: Sequence[SASVTrial]) -> None:
        """No trial of the partition tests its claimed speaker on one of that speaker's enrollment utterances,
        as the partition's enrollment list(s) give them. Lists that are not there are not read: the scripts
        that need them say so themselves."""
        paths = [found or default for default, found, _ in self.locate(self.enrollment_list_key(partition))]
        if not paths or not all(Path(path).is_file() for path in paths):
            return
        enrollment, listed_at = read_enrollment_listing(paths, self.enrollment_columns)
        check_tests_not_enrolled(list(trials), enrollment, listed_at, self.trial_list(partition))

    def enrollment(self, partition: str) -> Enrollment:
        raise self._no_sasv()

    def enrollment_utterances(self, partition: str) -> dict[str, list[str]]:
        """speaker -> enrollment utterance ids (in the partition's audio folder), in list order."""
        raise self._no_sasv()

    def trial_conditions(self, partition: str, trials: Sequence[SASVTrial]) -> dict[str, list[str]]:
        """Condition column -> the value of each trial's test utterance, for the per-condition SASV tables
        (besides attack, which the trials carry)."""
        return {}

    def _no_sasv(self) -> ConfigError:
        return ConfigError(f"{self.source}: dataset {self.name} ({self.title}) has no SASV trials or enrollment; "
                           f"it is a CM evaluation set")

    # ----------------------------------------------------------------- layout
    def require_database(self) -> Path:
        """dirs.database, set and an existing folder."""
        if not self.database:
            raise ConfigError(f"{self.source}: dirs.database is not set; point it at the {self.title} root "
                              f"(download from {self.url})")
        if not Path(self.database).is_dir():
            raise ConfigError(f"{self.source}: dirs.database folder {self.database} does not exist; expected "
                              f"{self.title} (download from {self.url})")
        return Path(self.database)

    def check_layout(self, partitions: Sequence[str] | None = None) -> None:
        """The audio folder of each partition is under dirs.database; if not, one line saying what was
        expected and where it looked."""
        database = self.require_database()
        for partition in partitions or self.partitions:
            folder = self.audio_dir(partition)
            if not folder.is_dir():
                expected = ", ".join(f"{self.audio_folders[part]}/" for part in self.partitions)
                raise CorpusLayoutError(f"{self.source}: expected audio folder {folder} ({self.title} layout under "
                                        f"dirs.database: {expected}); looked in {database}")

    # ------------------------------------------------------------- keys files
    @classmethod
    def recognises_keys(cls, path: str | Path) -> bool:
        """Whether `path` is this corpus's official keys / CM list, told by its first line's columns."""
        lines = read_fields(path, "protocol file")
        return bool(lines) and len(lines[0][1]) in cls.cm_list_columns

    @classmethod
    def read_keys(cls, path: str | Path) -> list[CMEntry]:
        """The official keys file / CM list at `path` as CMEntry records."""
        raise NotImplementedError
