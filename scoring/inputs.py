"""Where a config's trials and audio are: enrollment files, SASV scoring inputs, the database layout check."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.audio import AudioError, check_duration
from data.corpora import corpus_of
from data.protocols import (
    ProtocolError,
    SASVTrial,
    check_every_key,
    check_trials_enrolled,
    read_lines,
)
from runtime.config import Config, require_database


def enrollment_length(system: str, config: Config, partition: str = "eval") -> int:
    """The samples each enrollment file is cut or tiled to when `system` (sasv, b2, asv, cm) scores the partition,
    as the scripts and main.py do: enrollment_samples for the SASV model (one long concatenated file per
    speaker on ASVspoof 2019 LA); test_samples for b2 (save_asv_embeddings.py's speaker models) and for an ASV
    system enrolled from utterances or scoring VoxCeleb-style trials (scoring.verification)."""
    if system == "b2":
        return config["test_samples"]
    if system == "asv":
        settings = config["asv_train"]
        voxceleb = settings["eval_trial_list"] if partition == "eval" else settings["trial_list"]
        if settings["enrollment"] == "utterances" or voxceleb:
            return config["test_samples"]
    return config["enrollment_samples"][partition]


@dataclass
class ScoringInputs:
    """What a SASV evaluation needs: the trials and where their audio lives."""

    trials: list[SASVTrial]
    test_dir: Path  # the partition's audio folder (the corpus adapter's audio_dir)
    # speaker -> enrollment files: [the concatenated file] (ASVspoof 2019 LA) or its utterances (ASVspoof 5)
    enrollment_paths: dict[str, list[Path]]
    test_samples: int
    enrollment_samples: int
    audio_ext: str = "flac"
    codecs: list[str] | None = None  # codec condition of each trial's test utterance (ASVspoof 5), for the report

    def test_path(self, utterance: str) -> Path:
        return self.test_dir / f"{utterance}.{self.audio_ext}"


def enrollment_paths(config: Config, partition: str) -> dict[str, Path]:
    """speaker -> `<enrollment_dir>/<partition>/<entry of asv.<partition>.gi.trn.txt>.flac` (ASVspoof 2019 LA)."""
    return {speaker: paths[0] for speaker, paths in corpus_of(config).enrollment(partition).paths.items()}


def _line_of(listing: str | Path | Sequence[str | Path], value: str, column: int) -> str:
    """`file:line` of the first line of `listing` (a list file, or several) whose `column` is `value`."""
    for path in [listing] if isinstance(listing, (str, Path)) else listing:
        for number, line in read_lines(path, "list file"):
            fields = line.split()
            if len(fields) > column and fields[column] == value:
                return f"{path}:{number}"
    return str(listing)


def check_enrollment_audio(enrollment: Mapping[str, Sequence[Path]], listing: str | Path | Sequence[str | Path]
                           ) -> None:
    """Every enrollment utterance of every speaker is there and long enough (data.audio.check_duration); the
    first that is not names the line of the enrollment list (`listing`) that lists its speaker."""
    for speaker, paths in enrollment.items():
        for path in paths:
            if not path.is_file():
                raise ProtocolError(f"{_line_of(listing, speaker, 0)}: enrollment utterance {path.stem} of speaker "
                                    f"{speaker} is missing ({path})")
            try:
                check_duration(path)
            except AudioError as error:
                raise AudioError(f"{_line_of(listing, speaker, 0)}: enrollment utterance {path.stem} of speaker "
                                 f"{speaker}: {error}") from None


def listed_audio(config: Config, partition: str, utterances: Sequence[str], listing: str | Path) -> list[Path]:
    """The audio file of each utterance in the partition's folder. With on_bad_audio: error, a missing one,
    or one too short by its header (data.audio.check_duration), stops now, before any scoring, naming the line
    of `listing` that lists it (the corpus adapter's `where_listed`)."""
    corpus = corpus_of(config)
    paths = [corpus.audio_path(partition, utterance) for utterance in utterances]
    if config["on_bad_audio"] == "error":
        for utterance, path in zip(utterances, paths):
            if not path.is_file():
                raise ProtocolError(f"{corpus.where_listed(listing, utterance)}: utterance {utterance} is missing "
                                    f"({path})")
            try:
                check_duration(path)
            except AudioError as error:
                raise AudioError(f"{corpus.where_listed(listing, utterance)}: utterance {utterance}: {error}") from None
    return paths


def enrollment_files(config: Config, partition: str) -> tuple[dict[str, list[Path]], str | list[str]]:
    """speaker -> enrollment audio files, and the list they come from (the corpus adapter's `enrollment`).
    ASVspoof 2019 LA: one concatenated file per speaker (dirs.sasv_<part>_trn_trial, enrollment_dir);
    ASVspoof 5: the utterances of dirs.asvspoof5_<part>_enroll in the partition's audio folder."""
    enrollment = corpus_of(config).enrollment(partition)
    return enrollment.paths, enrollment.listing[0] if len(enrollment.listing) == 1 else enrollment.listing


def scoring_inputs(config: Config, partition: str) -> ScoringInputs:
    """The SASV trials of `partition` (dev or eval) with their audio locations, checked before any scoring:
    every claimed speaker enrolled, every enrollment file there (unless on_bad_audio is skip)."""
    require_database(config)
    corpus = corpus_of(config)
    trial_path = corpus.trial_list(partition)
    trials = corpus.sasv_trials(partition)
    check_every_key([t.key for t in trials], trial_path)
    enrollment, listing = enrollment_files(config, partition)
    check_trials_enrolled(trials, enrollment, trial_path, listing)
    if config["on_bad_audio"] == "error":  # with skip, the speaker's trials are marked as skipped instead
        claimed = {speaker: enrollment[speaker] for speaker in sorted({t.speaker for t in trials})}
        if not corpus.concatenated_enrollment:
            check_enrollment_audio(claimed, listing)
        else:  # ASVspoof 2019 LA: one concatenated file per speaker
            for speaker, paths in claimed.items():
                if not paths[0].is_file():
                    raise ProtocolError(f"{paths[0]}: enrollment file of speaker {speaker} is missing")
                try:
                    check_duration(paths[0])
                except AudioError as error:
                    raise AudioError(f"{_line_of(listing, speaker, 0)}: enrollment file of speaker {speaker}: "
                                     f"{error}") from None
    listed_audio(config, partition, list(dict.fromkeys(t.utterance for t in trials)), trial_path)
    samples = config["enrollment_samples"][partition]
    return ScoringInputs(trials=trials, test_dir=corpus.audio_dir(partition),
                         enrollment_paths=enrollment, test_samples=config["test_samples"],
                         enrollment_samples=samples, audio_ext=config["audio_ext"],
                         codecs=corpus.trial_conditions(partition, trials).get("codec"))


def check_data_layout(config: Config) -> None:
    """Fail early, in one line naming the folders expected and where they were looked for, when the audio
    folders of the config's dataset are not under dirs.database (the corpus adapter's check_layout)."""
    corpus_of(config).check_layout()
