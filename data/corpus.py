"""Which protocol lists and audio folder a config's `dataset` uses, read into the toolkit's own records.

ASVspoof 2019 LA (dirs.cm_* / dirs.sasv_* / dirs.asv_*_enrollment_lists) and the ASVspoof 5 release
(dirs.asvspoof5_*) give the same things: CM entries (speaker, utterance, attack, key) that the training
samplers and CM scoring read, SASV trials, and speaker -> enrollment utterances. Everything that reads a
protocol by partition goes through here, so the rest of the toolkit does not know which corpus it has.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from data import asvspoof5
from data.datasets import partition_audio_dir
from data.protocols import (
    CMEntry,
    ProtocolError,
    SASVTrial,
    check_tests_not_enrolled,
    read_cm_protocol,
    read_enrollment_listing,
    read_enrollment_utterances,
    read_fields,
    read_sasv_trials,
)

ASVSPOOF2019_LA, ASVSPOOF5 = "asvspoof2019_la", "asvspoof5"
_PART = {"train": "trn", "trn": "trn", "dev": "dev", "eval": "eval"}
# Column count -> dataset, for lists whose dataset no config says (extra training lists, evaluate.py).
_CM_LAYOUTS = {5: ASVSPOOF2019_LA, **dict.fromkeys(asvspoof5.UTTERANCE_LAYOUTS, ASVSPOOF5)}
_TRIAL_LAYOUTS = {4: ASVSPOOF2019_LA, **dict.fromkeys(asvspoof5.TRIAL_LAYOUTS, ASVSPOOF5)}


def dataset(config: Mapping[str, Any]) -> str:
    return config.get("dataset") or ASVSPOOF2019_LA


def audio_dir(config: Mapping[str, Any], partition: str) -> Path:
    """The folder holding `<utterance>.<audio_ext>` of `partition` (train / trn, dev, eval)."""
    return partition_audio_dir(config["dirs"]["database"], partition, dataset(config))


def cm_list(config: Mapping[str, Any], partition: str) -> str:
    """The utterance list of `partition`: dirs.cm_{trn,dev,eval}_list or dirs.asvspoof5_{train_list,*_cm_list}."""
    part = _PART[partition]
    if dataset(config) == ASVSPOOF5:
        return config["dirs"]["asvspoof5_train_list" if part == "trn" else f"asvspoof5_{part}_cm_list"]
    return config["dirs"][f"cm_{part}_list"]


def list_dataset(path: str | Path, layouts: Mapping[int, str], what: str) -> str:
    """The dataset whose layout the first line of the list `path` has, told by its number of columns."""
    lines = read_fields(path, "protocol file")
    if not lines:
        return ASVSPOOF2019_LA  # its reader names the empty file
    number, fields = lines[0]
    if len(fields) not in layouts:
        counts = {name: " or ".join(str(n) for n, owner in layouts.items() if owner == name)
                  for name in dict.fromkeys(layouts.values())}
        raise ProtocolError(f"{path}:{number}: not a {what} of ASVspoof 2019 LA ({counts[ASVSPOOF2019_LA]} "
                            f"columns) or ASVspoof 5 ({counts[ASVSPOOF5]} columns); got {len(fields)} fields")
    return layouts[len(fields)]


def read_cm_entries(path: str | Path, name: str | None = ASVSPOOF2019_LA) -> list[CMEntry]:
    """A CM protocol of dataset `name` (None: told by its columns) as CMEntry records (attack "-" for bona
    fide, as in 2019 LA)."""
    name = name or list_dataset(path, _CM_LAYOUTS, "CM protocol or utterance list")
    if name == ASVSPOOF5:
        return [CMEntry(e.speaker, e.utterance, "-" if e.key == asvspoof5.BONAFIDE else e.attack, e.key)
                for e in asvspoof5.read_utterance_list(path)]
    return read_cm_protocol(path)


def cm_entries(config: Mapping[str, Any], partition: str) -> list[CMEntry]:
    return read_cm_entries(cm_list(config, partition), dataset(config))


def trial_codecs(config: Mapping[str, Any], partition: str, trials: Sequence[SASVTrial]) -> list[str] | None:
    """The codec condition ("-": not coded) of each trial's test utterance, from the partition's ASVspoof 5
    utterance list, for the per-codec report; None for a dataset without codec conditions. A test utterance
    the list lacks is an error (counting it as uncoded would move it to the wrong row)."""
    if dataset(config) != ASVSPOOF5:
        return None
    list_path = cm_list(config, partition)
    codec = {entry.utterance: entry.codec for entry in asvspoof5.read_utterance_list(list_path)}
    for number, trial in enumerate(trials, start=1):
        if trial.utterance not in codec:
            raise ProtocolError(f"{trial_list(config, partition)}:{number}: test utterance {trial.utterance} is "
                                f"not in {list_path}, which gives the codec condition of every trial")
    return [codec[trial.utterance] for trial in trials]


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


def primary_metric(config: Mapping[str, Any]) -> str:
    """The metric a report puts first: the benchmark's own (ASVspoof 5: a-DCF; SASV 2022: SASV-EER)."""
    return "a_dcf" if dataset(config) == ASVSPOOF5 else "sasv_eer"


def trial_list(config: Mapping[str, Any], partition: str) -> str:
    """dirs.sasv_{dev,eval}_trial or dirs.asvspoof5_{dev,eval}_trial."""
    key = f"asvspoof5_{partition}_trial" if dataset(config) == ASVSPOOF5 else f"sasv_{partition}_trial"
    return config["dirs"][key]


def read_trials(path: str | Path, name: str | None = ASVSPOOF2019_LA) -> list[SASVTrial]:
    """SASV trials of dataset `name` (None: told by its columns); ASVspoof 5's keys are target / nontarget /
    spoof already (SASV_KEYS). A 3-column challenge list names no attack: its spoof trials get attack "-"."""
    name = name or list_dataset(path, _TRIAL_LAYOUTS, "SASV trial list")
    if name == ASVSPOOF5:
        return [SASVTrial(t.speaker, t.utterance, t.attack or "-", t.key) for t in asvspoof5.read_trials(path)]
    return read_sasv_trials(path)


def sasv_trials(config: Mapping[str, Any], partition: str) -> list[SASVTrial]:
    """The partition's SASV trials; a list naming no attacks (ASVspoof 5, 3 columns) gets them from the
    partition's utterance list. A trial testing a speaker on one of their own enrollment utterances is an
    error (see `check_tests_not_enrolled`)."""
    trials = read_trials(trial_list(config, partition), dataset(config))
    check_tests_not_enrolled_in(config, partition, trials)
    if any(trial.key == "spoof" and trial.attack == "-" for trial in trials):
        return label_attacks(trials, trial_list(config, partition), cm_entries(config, partition),
                             cm_list(config, partition))
    return trials


def check_tests_not_enrolled_in(config: Mapping[str, Any], partition: str, trials: Sequence[SASVTrial]) -> None:
    """No trial of the partition tests its claimed speaker on one of that speaker's enrollment utterances, as
    the partition's enrollment list(s) give them (ASVspoof 5: dirs.asvspoof5_<part>_enroll; 2019 LA:
    dirs.asv_<part>_enrollment_lists, the utterances behind the concatenated enrollment files). Lists that are
    not there are not read: the scripts that need them say so themselves."""
    listing = enrollment_list(config, partition)
    paths = [listing] if isinstance(listing, (str, Path)) else list(listing)
    if not paths or not all(Path(path).is_file() for path in paths):
        return
    columns = asvspoof5.ENROLLMENT_LAYOUT if dataset(config) == ASVSPOOF5 else None
    enrollment, listed_at = read_enrollment_listing(paths, columns)
    check_tests_not_enrolled(list(trials), enrollment, listed_at, trial_list(config, partition))


def enrollment_list(config: Mapping[str, Any], partition: str) -> str | list[str]:
    """Where speaker -> enrollment utterances is listed: dirs.asv_<part>_enrollment_lists (2019 LA, two files)
    or dirs.asvspoof5_<part>_enroll."""
    if dataset(config) == ASVSPOOF5:
        return config["dirs"][f"asvspoof5_{partition}_enroll"]
    return config["dirs"][f"asv_{partition}_enrollment_lists"]


def enrollment_utterances(config: Mapping[str, Any], partition: str) -> dict[str, list[str]]:
    """speaker -> enrollment utterance ids (in the partition's audio folder), in list order."""
    listing = enrollment_list(config, partition)
    if dataset(config) == ASVSPOOF5:
        return asvspoof5.read_enrollment(listing)
    return read_enrollment_utterances(listing)
