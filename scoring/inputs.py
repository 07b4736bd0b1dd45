"""Where a config's trials and audio are: enrollment files, SASV scoring inputs, the database layout check."""
from __future__ import annotations

from pathlib import Path

from data.datasets import partition_audio_dir
from data.protocols import (
    ProtocolError,
    check_every_key,
    check_trials_enrolled,
    read_enrollment_files,
    read_sasv_trials,
)
from runtime.config import Config, ConfigError, require_database
from scoring.sasv import ScoringInputs


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
    check_every_key([t.key for t in trials], trial_path)
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


def check_data_layout(config: Config) -> None:
    """Fail early, naming the path, when the database layout is not ASVspoof 2019 LA."""
    database = require_database(config)
    for partition in ("train", "dev", "eval"):
        folder = partition_audio_dir(database, partition)
        if not folder.is_dir():
            raise ConfigError(f"{config.source}: expected audio folder {folder} (ASVspoof 2019 LA layout under "
                              "dirs.database)")
