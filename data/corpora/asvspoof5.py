"""The ASVspoof 5 public release (dataset: asvspoof5; docs/asvspoof5.md).

Audio: <database>/flac_T, flac_D, flac_E_eval. Protocols: dirs.asvspoof5_* (the release's file names, looked
for in dirs.database when left at their defaults), read by data.asvspoof5.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data import asvspoof5
from data.corpora.base import Corpus, Enrollment
from data.protocols import CMEntry, ProtocolError, SASVTrial
from runtime.errors import ConfigError

# dirs.<key> -> the release's file name; a key left at its default is looked for in dirs.database.
PROTOCOLS = {
    "asvspoof5_train_list": "ASVspoof5.train.tsv",
    "asvspoof5_dev_cm_list": "ASVspoof5.dev.track_1.tsv",
    "asvspoof5_eval_cm_list": "ASVspoof5.eval.track_1.tsv",
    "asvspoof5_dev_trial": "ASVspoof5.dev.track_2.trial.tsv",
    "asvspoof5_eval_trial": "ASVspoof5.eval.track_2.trial.tsv",
    "asvspoof5_dev_enroll": "ASVspoof5.dev.track_2.enroll.tsv",
    "asvspoof5_eval_enroll": "ASVspoof5.eval.track_2.enroll.tsv",
}


class ASVspoof5(Corpus):
    name = "asvspoof5"
    title = "ASVspoof 5"
    url = "https://zenodo.org/records/14498691"
    partitions = ("train", "dev", "eval")
    has_sasv = True
    condition_columns = ("attack", "codec")
    headline = {"sasv": "a_dcf", "cm": "eer", "asv": "eer"}
    has_tdcf = False  # ASVspoof 5 ranks countermeasures by min DCF / a-DCF instead
    concatenated_enrollment = False  # single enrollment utterances, not 60-90 s concatenations
    audio_folders = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}
    protocol_keys = tuple(PROTOCOLS)
    protocol_defaults = PROTOCOLS
    cm_list_columns = tuple(asvspoof5.UTTERANCE_LAYOUTS)
    trial_list_columns = tuple(asvspoof5.TRIAL_LAYOUTS)
    enrollment_columns = asvspoof5.ENROLLMENT_LAYOUT

    @classmethod
    def search_places(cls, key: str, default: str, database: str | None) -> list[str]:
        return [str(Path(database) / default) if database else default]

    @classmethod
    def notice_found(cls, default: str, found: str) -> bool:
        return False  # where the release keeps it: not worth a notice

    def cm_list_key(self, partition: str) -> str:
        return "asvspoof5_train_list" if partition in ("train", "trn") else f"asvspoof5_{partition}_cm_list"

    def trial_list_key(self, partition: str) -> str:
        return f"asvspoof5_{partition}_trial"

    def enrollment_list_key(self, partition: str) -> str:
        return f"asvspoof5_{partition}_enroll"

    @classmethod
    def read_keys(cls, path: str | Path) -> list[CMEntry]:
        """A Track 1 / training utterance list as CMEntry records (attack "-" for bona fide, as in 2019 LA),
        with the codec condition."""
        return [CMEntry(e.speaker, e.utterance, "-" if e.key == asvspoof5.BONAFIDE else e.attack, e.key,
                        {"codec": e.codec})
                for e in asvspoof5.read_utterance_list(path)]

    @classmethod
    def read_trials(cls, path: str | Path) -> list[SASVTrial]:
        """Track 2 trials; their keys are target / nontarget / spoof already (SASV_KEYS). A 3-column challenge
        list names no attack: its spoof trials get attack "-"."""
        return [SASVTrial(t.speaker, t.utterance, t.attack or "-", t.key) for t in asvspoof5.read_trials(path)]

    def enrollment_utterances(self, partition: str) -> dict[str, list[str]]:
        return asvspoof5.read_enrollment(self.protocol_file(self.enrollment_list_key(partition)))

    def enrollment(self, partition: str) -> Enrollment:
        """The enrollment utterances of each speaker, in the partition's audio folder."""
        utterances = self.enrollment_utterances(partition)
        return Enrollment({speaker: [self.audio_path(partition, utt) for utt in utts]
                           for speaker, utts in utterances.items()},
                          [self.protocol_file(self.enrollment_list_key(partition))])

    def trial_conditions(self, partition: str, trials: Sequence[SASVTrial]) -> dict[str, list[str]]:
        """The codec condition ("-": not coded) of each trial's test utterance, from the partition's utterance
        list. A test utterance the list lacks is an error (counting it as uncoded would move it to the wrong
        row)."""
        list_path = self.cm_list(partition)
        codec = {entry.utterance: entry.codec for entry in asvspoof5.read_utterance_list(list_path)}
        for number, trial in enumerate(trials, start=1):
            if trial.utterance not in codec:
                raise ProtocolError(f"{self.trial_list(partition)}:{number}: test utterance {trial.utterance} is "
                                    f"not in {list_path}, which gives the codec condition of every trial")
        return {"codec": [codec[trial.utterance] for trial in trials]}

    def require_database(self) -> Path:
        database = self.database
        expected = "the ASVspoof 5 release root with flac_T/, flac_D/, flac_E_eval/"
        if not database:
            raise ConfigError(f"{self.source}: dirs.database is not set; point it at {expected} (download from "
                              f"{self.url})")
        if not Path(database).is_dir():
            raise ConfigError(f"{self.source}: dirs.database folder {database} does not exist; expected {expected}")
        return Path(database)
