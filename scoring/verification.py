"""Speaker verification scoring: trials with their audio, speaker models, cosine scores, EER and minDCF.

A speaker model is the mean of its enrollment utterances' embeddings (as the organisers' SASV
baseline); every file goes through the network once. `cosine_scores` scores trials from exported
embeddings (save_asv_embeddings.py -> save_asv_score.py) with the same rule.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data.corpora import corpus_of
from data.protocols import ProtocolError, SASVTrial, check_trials_enrolled
from data.speaker_lists import read_voxceleb_trials
from metrics.dcf import min_dcf
from metrics.eer import roc_eer
from runtime.config import Config, ConfigError, require_database
from scoring.extraction import Extraction, extract_sharded
from scoring.inputs import check_enrollment_audio, enrollment_files, listed_audio
from scoring.score_files import trial_columns

DCF_TARGET_PRIORS = {"min_dcf_p01": 0.01, "min_dcf_p05": 0.05}


def speaker_model(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """A speaker's model: the mean of its enrollment embeddings."""
    return np.mean(embeddings, axis=0)


def cosine(enrolled: np.ndarray, tests: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (float64)."""
    enrolled, tests = np.asarray(enrolled, dtype=np.float64), np.asarray(tests, dtype=np.float64)
    return np.einsum("ij,ij->i", enrolled, tests) / (np.linalg.norm(enrolled, axis=1) * np.linalg.norm(tests, axis=1))


@dataclass
class VerificationTrials:
    """Trials with the audio behind them; an enrollment is the mean embedding of its files."""

    enrollment_ids: list[str]  # per trial
    test_ids: list[str]  # per trial
    keys: list[str]  # per trial: target, nontarget (or spoof)
    enrollment_files: dict[str, list[Path]]
    enrollment_samples: int
    test_files: dict[str, Path]
    test_samples: int
    columns: tuple[list[str], ...]  # leading fields of each score-file line

    def touching(self, bad_audio: Mapping[str, str]) -> int:
        """How many trials need one of the `bad_audio` files (test or any enrollment file)."""
        return sum(str(self.test_files[test]) in bad_audio or
                   any(str(path) in bad_audio for path in self.enrollment_files[enrolled])
                   for enrolled, test in zip(self.enrollment_ids, self.test_ids))


def voxceleb_trials(list_path: str | Path, root: str | Path, samples: int) -> VerificationTrials:
    """`label enrol test` trials; both sides are single utterances cut to `samples`."""
    pairs = read_voxceleb_trials(list_path)
    files = {name: Path(root) / name for pair in pairs for name in (pair.enrollment, pair.test)}
    return VerificationTrials(
        enrollment_ids=[p.enrollment for p in pairs], test_ids=[p.test for p in pairs],
        keys=["target" if p.target else "nontarget" for p in pairs],
        enrollment_files={name: [path] for name, path in files.items()}, enrollment_samples=samples,
        test_files=files, test_samples=samples,
        columns=(["1" if p.target else "0" for p in pairs], [p.enrollment for p in pairs], [p.test for p in pairs]))


def asvspoof_trials(config: Config, partition: str, keys: tuple[str, ...] = ("target", "nontarget")
                    ) -> VerificationTrials:
    """The `keys` trials of the partition's trial list (the corpus adapter); enrollment as asv_train.enrollment says."""
    require_database(config)
    corpus = corpus_of(config)
    trial_path = corpus.trial_list(partition)
    trials = [t for t in corpus.sasv_trials(partition) if t.key in keys]
    if not trials:
        raise ProtocolError(f"{trial_path}: no {' or '.join(keys)} trials")
    audio = corpus.audio_dir(partition)
    ext = config["audio_ext"]
    if config["asv_train"]["enrollment"] == "utterances":
        listing = corpus.enrollment_list(partition)
        enrollment = {speaker: [audio / f"{utt}.{ext}" for utt in utts]
                      for speaker, utts in corpus.enrollment_utterances(partition).items()}
        enrollment_samples = config["test_samples"]
    else:
        enrollment, listing = enrollment_files(config, partition)
        enrollment_samples = config["enrollment_samples"][partition]
    check_trials_enrolled(trials, enrollment, trial_path, listing)
    speakers = sorted({t.speaker for t in trials})
    utterances = list(dict.fromkeys(t.utterance for t in trials))
    test_files = dict(zip(utterances, listed_audio(config, partition, utterances, trial_path)))
    if config["on_bad_audio"] == "error":  # stop now, not in the middle of scoring
        check_enrollment_audio({speaker: enrollment[speaker] for speaker in speakers}, listing)
    return VerificationTrials(
        enrollment_ids=[t.speaker for t in trials], test_ids=[t.utterance for t in trials],
        keys=[t.key for t in trials],
        enrollment_files={speaker: enrollment[speaker] for speaker in speakers},
        enrollment_samples=enrollment_samples, test_files=test_files, test_samples=config["test_samples"],
        columns=trial_columns(trials))


@torch.no_grad()
def score_trials(network: nn.Module, trials: VerificationTrials, options: Extraction, *,
                 bad_audio: dict[str, str] | None = None) -> np.ndarray:
    """Cosine score per trial (float64, trial order); every file goes through the network once.

    With on_bad_audio="skip" a trial touching an unreadable file scores NaN, and `bad_audio`
    (when given) receives path -> reason."""
    network.eval()
    test_paths = sorted({str(path) for path in trials.test_files.values()})
    embedded = {(path, trials.test_samples): row for path, row in zip(
        test_paths, _embed(network, test_paths, trials.test_samples, options, "test", bad_audio))}
    enrollment_paths_needed = sorted({str(p) for files in trials.enrollment_files.values() for p in files
                                      if (str(p), trials.enrollment_samples) not in embedded})
    enrollment_batch = max(1, options.batch_size * trials.test_samples // max(trials.enrollment_samples, 1))
    embedded.update({(path, trials.enrollment_samples): row for path, row in zip(
        enrollment_paths_needed, _embed(network, enrollment_paths_needed, trials.enrollment_samples,
                                        options.replace(batch_size=enrollment_batch), "enrollment", bad_audio))})
    models = {name: speaker_model([embedded[(str(p), trials.enrollment_samples)] for p in files])
              for name, files in trials.enrollment_files.items()}
    enrolled = np.stack([models[name] for name in trials.enrollment_ids])
    tests = np.stack([embedded[(str(trials.test_files[name]), trials.test_samples)] for name in trials.test_ids])
    return cosine(enrolled, tests)


def _embed(network: nn.Module, paths: list[str], samples: int, options: Extraction, what: str,
           bad_audio: dict[str, str] | None) -> np.ndarray:
    if not paths:
        return np.empty((0, 0))
    return extract_sharded([Path(p) for p in paths], samples, {"asv": network}, options, desc=f"{what} embeddings",
                           bad_audio=bad_audio)["asv"].numpy().astype(np.float64)


def verification_metrics(scores: np.ndarray, keys: list[str]) -> dict[str, float]:
    """EER (SASV 2022 ROC definition) and minDCF at p_target 0.01 and 0.05 of target vs nontarget trials
    (trials scored NaN, i.e. not scored because of bad audio, are left out)."""
    keys_array = np.asarray(keys)
    bona = np.isin(keys_array, ("target", "nontarget")) & np.isfinite(scores)
    scores, is_target = np.asarray(scores)[bona], keys_array[bona] == "target"
    result = {"eer": roc_eer(scores[is_target], scores[~is_target])}
    for name, prior in DCF_TARGET_PRIORS.items():
        result[name] = min_dcf(scores, is_target.astype(int), prior)[0]
    return result


def cosine_scores(speaker_models: Mapping[str, np.ndarray], embeddings: Mapping[str, np.ndarray],
                  trials: Sequence[SASVTrial], trial_path: str | Path, *, skip_missing: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine score per trial from exported speaker models and utterance embeddings, and which trials were
    skipped (no speaker model or embedding; only with `skip_missing`, else an error naming the trial line)."""
    skipped = np.zeros(len(trials), dtype=bool)
    for index, trial in enumerate(trials, start=1):
        missing = (f"no speaker model for {trial.speaker}" if trial.speaker not in speaker_models else
                   f"no ASV embedding for {trial.utterance}" if trial.utterance not in embeddings else None)
        if missing and not skip_missing:
            raise ConfigError(f"{trial_path}:{index}: {missing}")
        skipped[index - 1] = missing is not None
    scores = np.full(len(trials), np.nan)
    kept = [t for t, skip in zip(trials, skipped) if not skip]
    if kept:
        scores[~skipped] = cosine(np.stack([speaker_models[t.speaker] for t in kept]),
                                  np.stack([embeddings[t.utterance] for t in kept]))
    return scores, skipped
