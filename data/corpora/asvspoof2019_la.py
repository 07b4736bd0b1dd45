"""ASVspoof 2019 LA with the SASV 2022 protocols (dataset: asvspoof2019_la, the default).

Audio: <database>/ASVspoof2019_LA_{train,dev,eval}/flac/. Protocols: dirs.cm_{trn,dev,eval}_list (CM),
dirs.sasv_{dev,eval}_trial (SASV trials), dirs.sasv_{dev,eval}_trn_trial (speaker -> concatenated enrollment
file in dirs.enrollment_dir) and dirs.asv_{dev,eval}_enrollment_lists (speaker -> enrollment utterances).
"""
from __future__ import annotations

from pathlib import Path

from data.corpora.base import Corpus, Enrollment
from data.protocols import (
    CMEntry,
    SASVTrial,
    read_cm_protocol,
    read_enrollment_files,
    read_enrollment_utterances,
    read_sasv_trials,
)
from runtime.errors import ConfigError

_PART = {"train": "trn", "trn": "trn", "dev": "dev", "eval": "eval"}
# Where the distribution keeps each protocol left at its default (dirs.<key> -> sub-folder of dirs.database).
# The official names equal the defaults' file names; asv.*.gi.trn.txt (one concatenated enrollment file per
# speaker) is the SASV repositories' own and is looked for beside the official ASV lists.
PROTOCOL_FOLDERS = {"cm_trn_list": "ASVspoof2019_LA_cm_protocols", "cm_dev_list": "ASVspoof2019_LA_cm_protocols",
                    "cm_eval_list": "ASVspoof2019_LA_cm_protocols"}
for _key in ("sasv_dev_trial", "sasv_eval_trial", "sasv_dev_trn_trial", "sasv_eval_trn_trial",
             "asv_dev_enrollment_lists", "asv_eval_enrollment_lists"):
    PROTOCOL_FOLDERS[_key] = "ASVspoof2019_LA_asv_protocols"


def protocol_places(default: str, database: str | None, folder: str) -> list[str]:
    """Where a protocol left at its default is looked for, in order: the default path, then its file name in
    the database root (the original scripts' place) and in the distribution's sub-folder `folder`."""
    places = [default]
    if database:
        name = Path(default).name
        places += [str(Path(database) / name), str(Path(database) / folder / name)]
    return list(dict.fromkeys(places))


class ASVspoof2019LA(Corpus):
    name = "asvspoof2019_la"
    title = "ASVspoof 2019 LA"
    url = "https://datashare.ed.ac.uk/handle/10283/3336"
    partitions = ("train", "dev", "eval")
    has_sasv = True
    condition_columns = ("attack",)
    headline = {"sasv": "sasv_eer", "cm": "eer", "asv": "eer"}
    has_tdcf = True
    concatenated_enrollment = True
    audio_folders = {"train": "ASVspoof2019_LA_train/flac", "dev": "ASVspoof2019_LA_dev/flac",
                     "eval": "ASVspoof2019_LA_eval/flac"}
    protocol_keys = tuple(PROTOCOL_FOLDERS)
    cm_list_columns = (5,)
    trial_list_columns = (4,)

    @classmethod
    def search_places(cls, key: str, default: str, database: str | None) -> list[str]:
        return protocol_places(default, database, PROTOCOL_FOLDERS[key]) if key in PROTOCOL_FOLDERS else [default]

    def cm_list_key(self, partition: str) -> str:
        return f"cm_{_PART[partition]}_list"

    def trial_list_key(self, partition: str) -> str:
        return f"sasv_{partition}_trial"

    @classmethod
    def read_keys(cls, path: str | Path) -> list[CMEntry]:
        """`SPK UTT - ATTACK KEY` lines (cm.{train.trn,dev.trl,eval.trl}.txt)."""
        return read_cm_protocol(path)

    @classmethod
    def read_trials(cls, path: str | Path) -> list[SASVTrial]:
        return read_sasv_trials(path)

    def enrollment_list_key(self, partition: str) -> str:
        return f"asv_{partition}_enrollment_lists"

    def enrollment_utterances(self, partition: str) -> dict[str, list[str]]:
        return read_enrollment_utterances(self.protocol_files(f"asv_{partition}_enrollment_lists"))

    def enrollment(self, partition: str) -> Enrollment:
        """One concatenated file per speaker: <enrollment_dir>/<partition>/<entry of asv.<part>.gi.trn.txt>.flac."""
        listing = self.protocol_file(f"sasv_{partition}_trn_trial")
        folder = Path(self.dirs["enrollment_dir"]) / partition
        files = read_enrollment_files(listing)
        return Enrollment({speaker: [folder / f"{stem}.flac"] for speaker, stem in files.items()}, [listing])

    def require_database(self) -> Path:
        database = self.database
        if not database:
            raise ConfigError(f"{self.source}: dirs.database is not set; point it at the ASVspoof 2019 LA root "
                              f"(download from {self.url})")
        root = Path(database)
        if not root.is_dir():
            raise ConfigError(f"{self.source}: dirs.database folder {root} does not exist; expected ASVspoof 2019 LA "
                              f"with {root / self.audio_folders['train']} (download from {self.url})")
        return root
