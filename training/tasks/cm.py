"""System `cm`: train AASIST / AASIST-L on an ASVspoof-layout CM protocol, with aasist's recipe.

Weighted cross-entropy ([spoof, bona fide] = [0.1, 0.9]), Adam with a per-step cosine decay,
random 64,600-sample crops, optional frequency augmentation, optional RawBoost and codec augmentation of
each training file before its crop (docs/stages.md). Validation: the CM EER of the
bona fide logit on dirs.cm_dev_list and the min t-DCF with the *dev* ASV scores (the original
aasist code used the eval ASV scores for its dev t-DCF). weights/best.ckpt initialises
system sasv through `aasist_weight`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.codec_augment import CodecAugment
from data.corpora import corpus_of
from data.protocols import SASV_KEYS
from data.rawboost import RawBoost, RawBoostParams
from data.speaker_lists import CroppedUtteranceDataset, ShuffledEpochSampler
from models.build import build_asv_network, build_cm_network
from models.checkpoint import load_asv_weights, load_cm_weights
from runtime import distributed
from runtime.config import Config, ConfigError, require_database
from runtime.device import autocast_context
from scoring.calibration import calibration_metrics, system_fingerprint
from scoring.inputs import listed_audio
from scoring.pipeline import Writer, evaluate_cm, score_cm
from scoring.score_files import read_asv_score_file, write_scores
from scoring.scored_trials import ScoredTrials
from scoring.verification import asvspoof_trials, score_trials
from training.optim import parameter_groups
from training.task import Run
from training.tasks.subsystem import COMMON_COLUMNS, SubsystemTask

FREQ_AUG_MAX_BANDS = 20  # models.aasist.SincFilterBank masks a run of 0..19 bands


def cosine_factor(total_steps: int, final_ratio: float) -> Callable[[int], float]:
    """lr multiplier at `step`: from 1 down to `final_ratio` along half a cosine (aasist's schedule)."""
    def factor(step: int) -> float:
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(step / total_steps * math.pi))
    return factor


class CMTask(SubsystemTask):
    part = "cm"
    metric_columns = ("epoch", "step", "lr", "train_loss", "dev_eer", "dev_min_tdcf", *COMMON_COLUMNS)
    scheduler_every = 1  # the cosine is over steps, as in aasist

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)
        device = run.device
        settings = config["cm_train"]
        self.selection = settings["select_by"]
        self.database = require_database(config)
        self.model = self._build_network()
        self.place_model()
        self.criterion = nn.CrossEntropyLoss(weight=torch.tensor(settings["class_weights"], dtype=torch.float32,
                                                                 device=device))
        self.optimizer = torch.optim.Adam(parameter_groups(self.model.parameters(), self.model, "model"),
                                          lr=settings["lr"], betas=tuple(settings["betas"]),
                                          weight_decay=settings["wd"], amsgrad=settings["amsgrad"])
        self.loader, self.epoch_sampler = self._train_loader()
        total_steps = config["epoch"] * len(self.loader)
        factor = cosine_factor(total_steps, settings["lr_min"] / settings["lr"]) \
            if settings["scheduler"] == "cosine" else _constant
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=factor)
        corpus = corpus_of(config)
        self.dev_entries = corpus.cm_entries("dev")
        self.eval_entries = corpus.cm_entries("eval")
        # audio of the dev / eval lists, checked now (on_bad_audio: error) rather than after training
        self.audio = {partition: listed_audio(config, partition, [e.utterance for e in entries],
                                              corpus.cm_list(partition))
                      for partition, entries in (("dev", self.dev_entries), ("eval", self.eval_entries))}
        self._asv_scores: dict[str, dict[str, np.ndarray] | None] = {}

    def _build_network(self) -> nn.Module:
        config = self.config
        model = build_cm_network(config)
        if config["cm_train"]["freq_aug"] and getattr(model, "conv_time", None) is None:
            raise ConfigError(f"{config.source}: cm_train.freq_aug masks AASIST's sinc bands; the CM network "
                              f"{type(model).__name__} has none")
        if config["cm_train"]["freq_aug"] and model.conv_time.out_channels < FREQ_AUG_MAX_BANDS:
            raise ConfigError(f"{config.source}: cm_train.freq_aug masks up to {FREQ_AUG_MAX_BANDS - 1} sinc bands, "
                              f"so it needs at least {FREQ_AUG_MAX_BANDS} (model_config filts[0] is "
                              f"{model.conv_time.out_channels})")
        if config["aasist_weight"]:
            path = Path(config["aasist_weight"])
            if not path.is_file():
                raise ConfigError(f"{config.source}: aasist_weight file {path} does not exist")
            load_cm_weights(model, path)
        return model

    def _train_loader(self) -> tuple[DataLoader, ShuffledEpochSampler]:
        config = self.config
        corpus = corpus_of(config)
        entries = corpus.cm_entries("train")
        dataset = CroppedUtteranceDataset([corpus.audio_path("train", e.utterance) for e in entries],
                                          [int(e.key == "bonafide") for e in entries],
                                          samples=config["cm_train"]["samples"], seed=config["seed"],
                                          sample_rate=config["sample_rate"], resample=config["resample"],
                                          on_bad_audio=config["on_bad_audio"], crop=config["cm_train"]["crop"],
                                          file_augments=file_augmentations(config["cm_train"],
                                                                           config["sample_rate"]))
        sampler = ShuffledEpochSampler(len(dataset), config["seed"], batch_size=config["batch_size"],
                                       rank=distributed.rank(), world_size=distributed.world_size())
        loader = self.training_loader(dataset, batch_size=self.rank_batch, sampler=sampler, drop_last=True)
        if len(loader) == 0:
            raise ConfigError(f"{config.source}: {len(dataset)} training utterances make no full batch of "
                                f"{config['batch_size']}")
        return loader, sampler

    # ------------------------------------------------------------- ASV scores for the t-DCF
    def asv_scores(self, partition: str) -> dict[str, np.ndarray] | None:
        """ASV scores of the SASV trials of `partition`: cm_train.asv_scores, or computed with cm_train.asv_model."""
        if partition not in self._asv_scores:
            self._asv_scores[partition] = self._load_asv_scores(partition)
        return self._asv_scores[partition]

    def _load_asv_scores(self, partition: str) -> dict[str, np.ndarray] | None:
        config, settings = self.config, self.config["cm_train"]
        trial_path = corpus_of(config).trial_list(partition)  # found by the adapter, not read from dirs
        given = settings["asv_scores"][partition]
        if given:
            return read_asv_score_file(given, trial_path)
        if not settings["asv_model"]:
            return None
        cached = self.run.dir / "asv_scores" / f"{partition}.txt"
        if not distributed.broadcast_object(cached.is_file()):  # once per run: the ASV model is fixed
            network = build_asv_network(config)
            load_asv_weights(network, settings["asv_model"])
            network.to(self.run.device)
            trials = asvspoof_trials(config, partition, keys=SASV_KEYS)
            scores = score_trials(network, trials, self.run.extraction(f"the {partition} ASV scoring"))
            if self.run.is_main:
                write_scores(cached, trials.columns, scores)
            distributed.barrier()  # the file the other ranks read next
            self.run.log(f"ASV scores of the {partition} trials ({settings['asv_model']}) -> {cached}")
        return read_asv_score_file(cached, trial_path)

    # ------------------------------------------------------------- training and scoring
    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        self.epoch_sampler.set_epoch(epoch, batch)
        return self.loader, self.epoch_sampler.epoch_batches

    def batch_loss(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Weighted cross-entropy of the batch's CM logits."""
        device = self.run.device
        waves = waves.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, self.run.amp):
            _, logits = self.model(waves, freq_aug=self.config["cm_train"]["freq_aug"])
        return self.criterion(logits.float(), labels), None

    def _score(self, partition: str, what: str) -> ScoredTrials:
        """The CM scores (bona fide logit) of the partition's list."""
        self.model.eval()
        entries = self.dev_entries if partition == "dev" else self.eval_entries
        scored, _ = score_cm(lambda wave: self.model(wave)[1], entries, self.audio[partition],
                             self.config["test_samples"], self.run.extraction(f"the {what} scoring"), what,
                             f"{partition} CM")
        return scored

    def _evaluate(self, partition: str, what: str, name: str) -> tuple[dict, ScoredTrials]:
        """The CM evaluation of the partition's list (scores/<name>: `UTT ATTACK KEY score`, the bona fide logit)."""
        scored = self._score(partition, what)

        def scores(scored: ScoredTrials) -> None:
            if self.run.is_main:
                write_scores(self.run.dir / "scores" / name, (scored.utterance, scored.attack, scored.cm_keys),
                             scored.cm)

        result = evaluate_cm(scored, what, Writer(scores=scores, warn=self.run.warn), self.asv_scores(partition))
        if "min_tdcf_note" in result:
            self.run.log(f"{partition} min t-DCF undefined: {result['min_tdcf_note']}")
        if partition == "eval" and self.calibration is not None:
            result["calibration"] = calibration_metrics(self.calibration, scored)
        return result, scored

    def score_dev(self) -> ScoredTrials:
        return self._score("dev", "dev (calibration)")

    def calibration_decision(self) -> tuple[str, str]:
        return "cm", corpus_of(self.config).headline["cm"]

    def weights_sha256(self) -> str:
        return system_fingerprint(self.model)

    def validate(self, epoch: int) -> dict[str, float | None]:
        result, scored = self._evaluate("dev", f"dev epoch {epoch + 1}", f"dev_epoch_{epoch + 1:03d}.txt")
        self.remember_dev(epoch, scored)
        return {"eer": result["eer"], "min_tdcf": result["min_tdcf"]}

    def evaluate(self) -> dict | None:
        result, _ = self._evaluate("eval", "eval", "eval.txt")
        return {"eer": result["eer"], "min_tdcf": result["min_tdcf"],
                **{name: result[name] for name in ("n_utterances", "n_skipped_utterances", "skipped_audio",
                                                   "calibration") if name in result}}

    def fixed_on_resume(self) -> tuple[str, ...]:
        return ("epoch",) if self.config["cm_train"]["scheduler"] == "cosine" else ()  # the cosine spans all epochs

    def start_training(self) -> None:
        super().start_training()
        if self.asv_scores("dev") is None:
            self.run.log("no dev ASV scores (cm_train.asv_scores.dev or cm_train.asv_model): the dev min t-DCF "
                         "is skipped")

    def summary_text(self, summary: dict) -> str:
        best = summary.get("best_dev") or {}
        text = f"best dev {self.selection} {best[self.selection]:.4f} (epoch {summary['epoch']})" \
            if best.get(self.selection) is not None else f"epoch {summary['epoch']}"
        if "eer" in summary:
            tdcf = f"{summary['min_tdcf']:.4f}" if summary["min_tdcf"] is not None else "n/a (no eval ASV scores)"
            text += f" | eval CM EER {100 * summary['eer']:.2f}%  min t-DCF {tdcf}"
        return text + f" | CM weights: {self.run.dir / 'weights' / 'best.ckpt'}"


def file_augmentations(settings: Mapping[str, Any], sample_rate: int) -> list:
    """The whole-file augmentations of the CM training audio, in order: RawBoost (cm_train.rawboost), then a codec
    (cm_train.codecs); none when both are off, so that such runs are bit-for-bit those without these keys."""
    augments: list = []
    if settings["rawboost"]:
        augments.append(RawBoost(settings["rawboost"], RawBoostParams.from_settings(settings), sample_rate))
    if settings["codecs"]:
        augments.append(CodecAugment.from_settings(settings["codecs"], sample_rate))
    return augments


def _constant(step: int) -> float:
    return 1.0
