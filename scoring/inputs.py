"""Experiment data from a config: protocols, audio folders, scoring inputs."""
from __future__ import annotations

from pathlib import Path

from data.datasets import partition_audio_dir
from data.protocols import (ProtocolError, check_trials_enrolled, read_cm_protocol, read_enrollment_files,
                            read_sasv_trials, speaker_utterances)
from data.trials import TrialSampler
from runtime.config import Config, ConfigError, require_database
from scoring.extraction import ScoringInputs


def enrollment_paths(config: Config, partition: str) -> dict[str, Path]:
    """speaker -> `<enrollment_dir>/<partition>/<entry of asv.<partition>.gi.trn.txt>.flac`."""
    listing = config["dirs"][f"sasv_{partition}_trn_trial"]
    folder = Path(config["dirs"]["enrollment_dir"]) / partition
    return {speaker: folder / f"{stem}.flac" for speaker, stem in read_enrollment_files(listing).items()}


def scoring_inputs(config: Config, partition: str) -> ScoringInputs:
    """The SASV trials of `partition` (dev or eval) with their audio locations."""
    database = require_database(config)
    trial_path = config["dirs"][f"sasv_{partition}_trial"]
    trials = read_sasv_trials(trial_path)
    enrollment = enrollment_paths(config, partition)
    check_trials_enrolled(trials, enrollment, trial_path, config["dirs"][f"sasv_{partition}_trn_trial"])
    if config["on_bad_audio"] == "error":  # with skip, the speaker's trials are marked as skipped instead
        for speaker in sorted({t.speaker for t in trials}):
            if not enrollment[speaker].is_file():
                raise ProtocolError(f"{enrollment[speaker]}: enrollment file of speaker {speaker} is missing")
    samples = config["enrollment_samples"][partition]
    return ScoringInputs(trials=trials, test_dir=partition_audio_dir(database, partition),
                         enrollment_paths=enrollment, test_samples=config["test_samples"],
                         enrollment_samples=samples, audio_ext=config["audio_ext"])


def training_sampler(config: Config) -> tuple[TrialSampler, int]:
    """The trial sampler over the training protocol(s) and the default epoch length."""
    entries = read_cm_protocol(config["dirs"]["cm_trn_list"])
    speakers = speaker_utterances(entries)
    extra: dict = {}
    for path in config["dirs"]["extra_trn_lists"]:
        for speaker, lists in speaker_utterances(read_cm_protocol(path)).items():
            merged = extra.setdefault(speaker, {"bonafide": [], "spoof": []})
            merged["bonafide"] += lists["bonafide"]
            merged["spoof"] += lists["spoof"]
    if config["dirs"]["extra_trn_use"] == "full":
        for speaker, lists in extra.items():
            merged = speakers.setdefault(speaker, {"bonafide": [], "spoof": []})
            merged["bonafide"] = merged["bonafide"] + lists["bonafide"]
            merged["spoof"] = merged["spoof"] + lists["spoof"]
        extra = {}
    sampler = TrialSampler(speakers, config["trial_sampling"], bonafide_speakers=extra)
    return sampler, len(entries)


def check_data_layout(config: Config) -> None:
    """Fail early, naming the path, when the database layout is not ASVspoof 2019 LA."""
    database = require_database(config)
    for partition in ("train", "dev", "eval"):
        folder = partition_audio_dir(database, partition)
        if not folder.is_dir():
            raise ConfigError(f"{config.source}: expected audio folder {folder} (ASVspoof 2019 LA layout under dirs.database)")
