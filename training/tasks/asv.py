"""System `asv`: train ResNetSE34V2 as a speaker classifier (AAM-softmax or angular prototypical).

Training data: a VoxCeleb-style list (asv_train.train_list / train_root) or the bona fide
utterances of dirs.cm_trn_list. Validation: EER and minDCF (p_target 0.01 and 0.05,
C_miss = C_fa = 1) of cosine scores on VoxCeleb-style trials or on the bona fide trials of
the ASVspoof SASV lists. weights/best.ckpt initialises system sasv through `asv_weight`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.augment import AugmentError, Augmenter
from data.datasets import partition_audio_dir
from data.protocols import (ProtocolError, check_trials_enrolled, read_enrollment_utterances,
                            read_sasv_trials)
from data.speaker_lists import (CroppedUtteranceDataset, LabelledUtterance, SpeakerBatchSampler,
                                asvspoof_bonafide_utterances, read_voxceleb_train_list, read_voxceleb_trials,
                                speaker_classes)
from scoring.score_files import write_scores
from runtime.config import Config, ConfigError, require_database
from runtime import distributed
from runtime.device import autocast_context
from scoring.extraction import extract_sharded
from scoring.inputs import enrollment_paths
from training.stage_trainer import COMMON_COLUMNS, StageTrainer
from losses import build_loss
from metrics.dcf import min_dcf
from metrics.eer import roc_eer
from models.checkpoint import CheckpointError, apply_state, load_asv_weights
from models.build import build_asv_network

DCF_TARGET_PRIORS = {"min_dcf_p01": 0.01, "min_dcf_p05": 0.05}


def build_speaker_loss(config: Config, n_speakers: int) -> nn.Module:
    settings = config["asv_train"]
    if settings["loss"] == "angleproto":
        return build_loss("angleproto", init_w=settings["init_w"], init_b=settings["init_b"])
    if settings["loss"] == "softmaxproto":
        return build_loss("softmaxproto", embedding_dim=config["asv_model"]["n_out"], n_classes=n_speakers,
                          init_w=settings["init_w"], init_b=settings["init_b"])
    return build_loss("aamsoftmax", embedding_dim=config["asv_model"]["n_out"], n_classes=n_speakers,
                      margin=settings["margin"], scale=settings["scale"])


def training_utterances(config: Config) -> list[LabelledUtterance]:
    settings = config["asv_train"]
    if settings["train_list"]:
        return read_voxceleb_train_list(settings["train_list"], settings["train_root"])
    database = require_database(config)
    return asvspoof_bonafide_utterances(config["dirs"]["cm_trn_list"], partition_audio_dir(database, "train"),
                                        config["audio_ext"])


# --------------------------------------------------------------------------- verification trials
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
    """The `keys` trials of dirs.sasv_<partition>_trial; enrollment as asv_train.enrollment says."""
    database = require_database(config)
    dirs = config["dirs"]
    trial_path = dirs[f"sasv_{partition}_trial"]
    trials = [t for t in read_sasv_trials(trial_path) if t.key in keys]
    if not trials:
        raise ProtocolError(f"{trial_path}: no {' or '.join(keys)} trials")
    audio = partition_audio_dir(database, partition)
    ext = config["audio_ext"]
    if config["asv_train"]["enrollment"] == "utterances":
        listing = dirs[f"asv_{partition}_enrollment_lists"]
        enrollment = {speaker: [audio / f"{utt}.{ext}" for utt in utts]
                      for speaker, utts in read_enrollment_utterances(listing).items()}
        enrollment_samples = config["test_samples"]
    else:
        listing = dirs[f"sasv_{partition}_trn_trial"]
        enrollment = {speaker: [path] for speaker, path in enrollment_paths(config, partition).items()}
        enrollment_samples = config["enrollment_samples"][partition]
    check_trials_enrolled(trials, enrollment, trial_path, listing)
    return VerificationTrials(
        enrollment_ids=[t.speaker for t in trials], test_ids=[t.utterance for t in trials],
        keys=[t.key for t in trials],
        enrollment_files={speaker: enrollment[speaker] for speaker in sorted({t.speaker for t in trials})},
        enrollment_samples=enrollment_samples,
        test_files={t.utterance: audio / f"{t.utterance}.{ext}" for t in trials}, test_samples=config["test_samples"],
        columns=([t.speaker for t in trials], [t.utterance for t in trials], [t.key for t in trials]))


@torch.no_grad()
def score_trials(network: nn.Module, trials: VerificationTrials, device: torch.device, *, batch_size: int,
                 num_workers: int = 0, sample_rate: int = 16000, resample: bool = False, amp: str = "off",
                 progress: bool = False, on_bad_audio: str = "error",
                 bad_audio: dict[str, str] | None = None, poll: Callable[[], None] | None = None) -> np.ndarray:
    """Cosine score per trial (float64, trial order); every file goes through the network once.

    With on_bad_audio="skip" a trial touching an unreadable file scores NaN, and `bad_audio`
    (when given) receives path -> reason."""
    network.eval()
    options = dict(device=device, num_workers=num_workers, amp=amp, sample_rate=sample_rate, resample=resample,
                   progress=progress, on_bad_audio=on_bad_audio, bad_audio=bad_audio, poll=poll)
    test_paths = sorted({str(path) for path in trials.test_files.values()})
    embedded = {(path, trials.test_samples): row for path, row in zip(
        test_paths, _embed(network, test_paths, trials.test_samples, batch_size, "test", options))}
    enrollment_paths_needed = sorted({str(p) for files in trials.enrollment_files.values() for p in files
                                      if (str(p), trials.enrollment_samples) not in embedded})
    enrollment_batch = max(1, batch_size * trials.test_samples // max(trials.enrollment_samples, 1))
    embedded.update({(path, trials.enrollment_samples): row for path, row in zip(
        enrollment_paths_needed, _embed(network, enrollment_paths_needed, trials.enrollment_samples,
                                        enrollment_batch, "enrollment", options))})
    models = {name: np.mean([embedded[(str(p), trials.enrollment_samples)] for p in files], axis=0)
              for name, files in trials.enrollment_files.items()}
    enrolled = np.stack([models[name] for name in trials.enrollment_ids])
    tests = np.stack([embedded[(str(trials.test_files[name]), trials.test_samples)] for name in trials.test_ids])
    return np.einsum("ij,ij->i", enrolled, tests) / (np.linalg.norm(enrolled, axis=1) * np.linalg.norm(tests, axis=1))


def _embed(network: nn.Module, paths: list[str], samples: int, batch_size: int, what: str, options: dict) -> np.ndarray:
    if not paths:
        return np.empty((0, 0))
    return extract_sharded([Path(p) for p in paths], samples, {"asv": network}, batch_size=batch_size,
                   desc=f"{what} embeddings", **options)["asv"].numpy().astype(np.float64)


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


# --------------------------------------------------------------------------- trainer
class ASVTrainer(StageTrainer):
    part = "asv"
    selection = "eer"
    metric_columns = ("epoch", "step", "lr", "train_loss", "train_accuracy", "dev_eer", "dev_min_dcf_p01",
                      "dev_min_dcf_p05", *COMMON_COLUMNS)

    def __init__(self, config: Config, experiment_dir: Path, device: torch.device, *, progress: bool = True) -> None:
        super().__init__(config, experiment_dir, device, progress=progress)
        settings = config["asv_train"]
        self.utterances = training_utterances(config)
        self.classes = speaker_classes(self.utterances)
        if len(self.classes) < 2:
            raise ProtocolError(f"{settings['train_list'] or config['dirs']['cm_trn_list']}: speaker training "
                                f"needs at least 2 speakers, found {len(self.classes)}")
        self.model = build_asv_network(config)
        self.loss = build_speaker_loss(config, len(self.classes))
        if config["asv_weight"]:
            self._initialise(Path(config["asv_weight"]))
        self.place_model()
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=settings["lr"], weight_decay=settings["wd"])
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=settings["lr_decay_epochs"],
                                                         gamma=settings["lr_decay"])
        self.dev_trials = self._trials(settings["trial_list"], "dev")
        self.eval_trials = self._trials(settings["eval_trial_list"], "eval") \
            if settings["eval_trial_list"] or not settings["trial_list"] else None
        self.augment = None
        if settings["musan_dir"] or settings["rir_dir"]:
            try:
                self.augment = Augmenter(settings["musan_dir"], settings["rir_dir"], sample_rate=config["sample_rate"],
                                         resample=config["resample"])
            except AugmentError as error:
                raise ConfigError(f"{config.source}: {error}") from None
        self.loader, self.batch_sampler = self._train_loader()

    def _initialise(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"{self.config.source}: asv_weight file {path} does not exist")
        checkpoint = load_asv_weights(self.model, path)
        if checkpoint.asv_loss_state is None:
            return
        try:
            apply_state(self.loss, checkpoint.asv_loss_state, what=f"{self.config['asv_train']['loss']} loss",
                        source=path)
            self.log(f"{path}: loss parameters loaded ({', '.join(sorted(checkpoint.asv_loss_state))})")
        except CheckpointError as error:
            # e.g. an AAM-softmax over other speakers, or the other loss: the network still fine-tunes.
            self.log(f"loss parameters not loaded, the loss starts afresh: {error}")

    def _trials(self, list_path: str | None, partition: str) -> VerificationTrials:
        if list_path:
            return voxceleb_trials(list_path, self.config["asv_train"]["trial_root"], self.config["test_samples"])
        return asvspoof_trials(self.config, partition)

    def _train_loader(self) -> tuple[DataLoader, SpeakerBatchSampler]:
        config, settings = self.config, self.config["asv_train"]
        labels = [self.classes[u.speaker] for u in self.utterances]
        dataset = CroppedUtteranceDataset([u.path for u in self.utterances], labels, samples=settings["samples"],
                                          seed=config["seed"], augment=self.augment,
                                          sample_rate=config["sample_rate"], resample=config["resample"],
                                          on_bad_audio=config["on_bad_audio"])
        sampler = SpeakerBatchSampler(labels, per_speaker=settings["n_per_speaker"], batch_size=config["batch_size"],
                                      max_per_speaker=settings["max_per_speaker"], seed=config["seed"],
                                      rank=distributed.rank(), world_size=distributed.world_size())
        if len(sampler) == 0:
            raise ConfigError(f"{config.source}: no full batch of {config['batch_size']} speakers x "
                                f"{settings['n_per_speaker']} utterances can be formed from {len(labels)} utterances "
                                f"of {len(self.classes)} speakers; lower batch_size or asv_train.n_per_speaker")
        return self.training_loader(dataset, batch_sampler=sampler), sampler

    def start_epoch(self, epoch: int, batch: int) -> int:
        self.batch_sampler.set_epoch(epoch, batch)
        return self.batch_sampler.epoch_batches

    def forward_batch(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_speaker = self.config["asv_train"]["n_per_speaker"]
        waves = waves.to(self.device, non_blocking=True)
        speakers = labels.view(-1, per_speaker)[:, 0].to(self.device)
        with autocast_context(self.device, self.amp):
            embeddings = self.model(waves)
        return self.loss(embeddings.float().view(len(speakers), per_speaker, -1), speakers)

    def _score(self, trials: VerificationTrials, what: str) -> tuple[np.ndarray, dict]:
        """Scores of `trials` and the counts of those not scored (bad audio)."""
        config, bad_audio = self.config, {}
        scores = score_trials(self.model, trials, self.device, batch_size=config["eval_batch_size"],
                              num_workers=config["loader"]["n_workers"], sample_rate=config["sample_rate"],
                              resample=config["resample"], progress=self.progress and self.is_main,
                              on_bad_audio=config["on_bad_audio"], bad_audio=bad_audio,
                              poll=self.poll(f"the {what} scoring"))
        bad = set(bad_audio)
        touching = sum(str(trials.test_files[test]) in bad or
                       any(str(path) in bad for path in trials.enrollment_files[enrolled])
                       for enrolled, test in zip(trials.enrollment_ids, trials.test_ids))
        return scores, self.scored(scores, bad_audio, touching, what)

    def validate(self, epoch: int) -> dict[str, float]:
        scores, _ = self._score(self.dev_trials, f"dev epoch {epoch + 1}")
        if self.is_main:
            write_scores(self.dir / "scores" / f"dev_epoch_{epoch + 1:03d}.txt", self.dev_trials.columns,
                                   scores)
        return verification_metrics(scores, self.dev_trials.keys)

    def evaluate_final(self) -> dict | None:
        if self.eval_trials is None:
            return None
        scores, skipped = self._score(self.eval_trials, "eval")
        if self.is_main:
            write_scores(self.dir / "scores" / "eval.txt", self.eval_trials.columns, scores)
        return {**verification_metrics(scores, self.eval_trials.keys), "n_trials": len(scores), **skipped}

    def summary_text(self, summary: dict) -> str:
        text = f"best dev EER {100 * summary['best_dev']['eer']:.2f}% (epoch {summary['epoch']})" \
            if summary.get("best_dev") else f"epoch {summary['epoch']}"
        if "eer" in summary:
            text += (f" | eval EER {100 * summary['eer']:.2f}%  minDCF(0.01) {summary['min_dcf_p01']:.4f}  "
                     f"minDCF(0.05) {summary['min_dcf_p05']:.4f}")
        return text + f" | ASV weights: {self.dir / 'weights' / 'best.ckpt'}"
