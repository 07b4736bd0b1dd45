"""System `asv`: train ResNetSE34V2 as a speaker classifier (AAM-softmax or angular prototypical).

Training data: a VoxCeleb-style list (asv_train.train_list / train_root) or the bona fide
utterances of the dataset's training list (the corpus adapter: dirs.cm_trn_list, or dirs.asvspoof5_train_list).
Validation: EER and minDCF (p_target 0.01 and 0.05, C_miss = C_fa = 1) of cosine scores on VoxCeleb-style
trials or on the bona fide trials of the dataset's SASV trial lists.
weights/best.ckpt initialises system sasv through `asv_weight`.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.augment import Augmenter, AugmentError
from data.corpora import corpus_of
from data.protocols import ProtocolError
from data.speaker_lists import (
    CroppedUtteranceDataset,
    LabelledUtterance,
    SpeakerBatchSampler,
    asvspoof_bonafide_utterances,
    read_voxceleb_train_list,
    speaker_classes,
)
from losses import build_loss
from models.build import build_asv_network
from models.checkpoint import CheckpointError, apply_state, load_asv_weights
from runtime import distributed
from runtime.config import Config, ConfigError, require_database
from runtime.device import autocast_context
from scoring.calibration import calibration_metrics, system_fingerprint
from scoring.extraction import count_unscored
from scoring.pipeline import Writer, asv_scored, evaluate_asv
from scoring.score_files import write_scores
from scoring.scored_trials import ScoredTrials
from scoring.verification import (
    DCF_TARGET_PRIORS,
    VerificationTrials,
    asvspoof_trials,
    score_trials,
    verification_metrics,
    voxceleb_trials,
)
from training.optim import parameter_groups
from training.task import Run
from training.tasks.subsystem import COMMON_COLUMNS, SubsystemTask


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
    require_database(config)
    corpus = corpus_of(config)
    return asvspoof_bonafide_utterances(corpus.cm_entries("train"), corpus.cm_list("train"), corpus.audio_dir("train"),
                                        config["audio_ext"])


class ASVTask(SubsystemTask):
    part = "asv"
    selection = "eer"
    metric_columns = ("epoch", "step", "lr", "train_loss", "train_accuracy", "dev_eer", "dev_min_dcf_p01",
                      "dev_min_dcf_p05", *COMMON_COLUMNS)

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)
        settings = config["asv_train"]
        self.utterances = training_utterances(config)
        self.classes = speaker_classes(self.utterances)
        if len(self.classes) < 2:
            raise ProtocolError(f"{settings['train_list'] or corpus_of(config).cm_list('train')}: speaker training "
                                f"needs at least 2 speakers, found {len(self.classes)}")
        self.model = build_asv_network(config)
        self.loss = build_speaker_loss(config, len(self.classes))
        if config["asv_weight"]:
            self._initialise(Path(config["asv_weight"]))
        self.place_model()
        self.optimizer = torch.optim.Adam(parameter_groups(self.trainable_parameters(), self.model, "model"),
                                          lr=settings["lr"], weight_decay=settings["wd"])
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
            self.run.log(f"{path}: loss parameters loaded ({', '.join(sorted(checkpoint.asv_loss_state))})")
        except CheckpointError as error:
            # e.g. an AAM-softmax over other speakers, or the other loss: the network still fine-tunes.
            self.run.log(f"loss parameters not loaded, the loss starts afresh: {error}")

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

    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        self.batch_sampler.set_epoch(epoch, batch)
        return self.loader, self.batch_sampler.epoch_batches

    def batch_loss(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The speaker loss and accuracy of `n_per_speaker` utterances of each of the batch's speakers."""
        device, per_speaker = self.run.device, self.config["asv_train"]["n_per_speaker"]
        waves = waves.to(device, non_blocking=True)
        speakers = labels.view(-1, per_speaker)[:, 0].to(device)
        with autocast_context(device, self.run.amp):
            embeddings = self.model(waves)
        return self.loss(embeddings.float().view(len(speakers), per_speaker, -1), speakers)

    def _score(self, trials: VerificationTrials, what: str) -> ScoredTrials:
        bad_audio: dict[str, str] = {}
        scores = score_trials(self.model, trials, self.run.extraction(f"the {what} scoring"), bad_audio=bad_audio)
        count_unscored(scores, bad_audio, trials.touching(bad_audio), what)
        return asv_scored(scores, trials.keys, ~np.isfinite(scores), bad_audio)

    def _evaluate(self, trials: VerificationTrials, what: str, name: str) -> tuple[dict, ScoredTrials]:
        """EER and minDCF of `trials` (scores/<name>), and the counts of those not scored (bad audio)."""
        scored = self._score(trials, what)

        def write(scored: ScoredTrials) -> None:
            if self.run.is_main:
                write_scores(self.run.dir / "scores" / name, trials.columns, scored.asv)

        return evaluate_asv(scored, what, Writer(scores=write, warn=self.run.warn),
                            lambda scored: verification_metrics(scored.asv, trials.keys)), scored

    def validate(self, epoch: int) -> dict[str, float]:
        result, scored = self._evaluate(self.dev_trials, f"dev epoch {epoch + 1}", f"dev_epoch_{epoch + 1:03d}.txt")
        self.remember_dev(epoch, scored)
        return {name: result[name] for name in ("eer", *DCF_TARGET_PRIORS)}

    def score_dev(self) -> ScoredTrials:
        return self._score(self.dev_trials, "dev (calibration)")

    def calibration_decision(self) -> tuple[str, str]:
        return "asv", corpus_of(self.config).headline["asv"]

    def weights_sha256(self) -> str:
        return system_fingerprint(self.model)

    def evaluate(self) -> dict | None:
        if self.eval_trials is None:
            return None
        result, scored = self._evaluate(self.eval_trials, "eval", "eval.txt")
        if self.calibration is not None:
            result["calibration"] = calibration_metrics(self.calibration, scored)
        return result

    def summary_text(self, summary: dict) -> str:
        text = f"best dev EER {100 * summary['best_dev']['eer']:.2f}% (epoch {summary['epoch']})" \
            if summary.get("best_dev") else f"epoch {summary['epoch']}"
        if "eer" in summary:
            text += (f" | eval EER {100 * summary['eer']:.2f}%  minDCF(0.01) {summary['min_dcf_p01']:.4f}  "
                     f"minDCF(0.05) {summary['min_dcf_p05']:.4f}")
        return text + f" | ASV weights: {self.run.dir / 'weights' / 'best.ckpt'}"
