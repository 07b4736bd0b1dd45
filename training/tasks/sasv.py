"""System `sasv`: the joint model (ASV + CM + fusion back-end) trained with OC-softmax on SASV trials.

Each batch is (enrollment, test) trials drawn per (seed, epoch, index) from the training protocol(s);
the loss is OC-softmax on the back-end features, plus, when `speaker_loss.weight` is above 0, an
AAM-softmax speaker-classification loss on the ASV embeddings of the bona fide utterances of the
batch (a multi-task extension; the original recipe has no such term). With frozen sub-systems the
batches are rows of cached embeddings (training/frozen_cache.py). Validation: SASV-EER (selects the
best checkpoint), SV-EER, SPF-EER and min a-DCF of the dev trials.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from data.corpora import corpus_for_list, corpus_of
from data.datasets import EpochSampler, leave_signals_to_main_process
from data.protocols import speaker_utterances
from data.trials import TrialSampler
from losses import build_loss
from models.build import apply_kernel_options, build_sasv_model
from models.checkpoint import Checkpoint, load_sasv_weights, save_checkpoint
from runtime import distributed
from runtime.config import Config, ConfigError
from runtime.device import autocast_context
from scoring.calibration import calibration_metrics, system_fingerprint
from scoring.extraction import EmbeddingCache
from scoring.inputs import scoring_inputs
from scoring.pipeline import Writer, dev_metrics, evaluate_sasv
from scoring.report import write_sasv_report
from scoring.sasv import SASVScorer, sasv_text
from scoring.score_files import write_trial_scores
from scoring.scored_trials import ScoredTrials
from training.frozen_cache import training_inputs
from training.optim import parameter_groups
from training.task import Run, Task

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "dev_sasv_eer", "dev_sv_eer", "dev_spf_eer",
                  "dev_min_a_dcf", "dev_skipped_trials", "skipped_batches", "redrawn_trials", "seconds")


def training_sampler(config: Config) -> tuple[TrialSampler, int]:
    """The trial sampler over the training protocol(s) and the default epoch length."""
    entries = corpus_of(config).cm_entries("train")  # dirs.cm_trn_list or dirs.asvspoof5_train_list
    speakers = speaker_utterances(entries)
    extra: dict = {}
    for path in config["dirs"]["extra_trn_lists"]:
        for speaker, lists in speaker_utterances(corpus_for_list(path, "cm").read_keys(path)).items():
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


def build_auxiliary_speaker_loss(config: Config, n_speakers: int) -> nn.Module:
    """The auxiliary speaker-classification loss (config `speaker_loss`) over `n_speakers` training speakers."""
    settings = config["speaker_loss"]
    return build_loss("aamsoftmax", embedding_dim=config["asv_model"]["n_out"], n_classes=n_speakers,
                      margin=settings["margin"], scale=settings["scale"])


def speaker_classification_loss(loss: nn.Module, embeddings: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
    """Loss over the rows with a known bona fide speaker (index >= 0); 0 when there are none."""
    known = speakers >= 0
    if not bool(known.any()):
        return embeddings.sum() * 0.0  # keeps the graph (and DDP) consistent
    value, _ = loss(embeddings[known], speakers[known])
    return value


class SASVObjective(nn.Module):
    """(enrollment waves, test waves, labels, speakers) -> (OC-softmax loss (+ speaker_loss), None): the module
    that DDP wraps under torchrun, so that the OC centre's gradient is averaged over the ranks with the networks'."""

    def __init__(self, model: nn.Module, loss: nn.Module, device: torch.device, amp: str, *,
                 cached_features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 speaker_loss: nn.Module | None = None, speaker_weight: float = 0.0) -> None:
        super().__init__()
        # Cached embedding rows instead of waveforms (training/frozen_cache.py); None: run the model.
        self.cached_features = cached_features
        if self.cached_features is not None and speaker_loss is not None:
            raise ValueError("a speaker loss needs the ASV network to run on the waveforms, not cached embeddings")
        self.model = model
        self.loss = loss
        self.speaker_loss = speaker_loss
        self.speaker_weight = speaker_weight
        self.device = device
        self.amp = amp

    def forward(self, enrollment: torch.Tensor, test: torch.Tensor, labels: torch.Tensor,
                speakers: torch.Tensor) -> tuple[torch.Tensor, None]:
        """`speakers` [B, 2]: class indices of the enrollment and test speakers (-1: spoof), for speaker_loss."""
        enrollment, test, labels, speakers = (tensor.to(self.device, non_blocking=True)
                                              for tensor in (enrollment, test, labels, speakers))
        with autocast_context(self.device, self.amp):
            if self.cached_features is not None:
                feats = self.cached_features(enrollment, test)
            elif self.speaker_loss is None:
                feats = self.model(enrollment, test)
            else:
                feats, asv_enrollment, asv_test = self.model(enrollment, test, return_asv_embeddings=True)
        loss, _ = self.loss(feats.float(), labels)
        if self.speaker_loss is not None:
            loss = loss + self.speaker_weight * speaker_classification_loss(
                self.speaker_loss, torch.cat([asv_enrollment, asv_test]).float(), speakers.t().reshape(-1))
        return loss, None


class SASVTask(Task):
    label = ""
    selection = "sasv_eer"
    metric_columns = METRIC_COLUMNS
    redrawn_column = "redrawn_trials"
    item = "trial"
    lr_column = "current"

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)
        device = run.device
        self.model, self.loss = build_sasv_model(config)
        self.model.to(device)
        self.loss.to(device)
        self.speaker_loss: nn.Module | None = None  # speaker_loss.weight 0: the original recipe
        if config["speaker_loss"]["weight"] > 0:
            self.speaker_loss = build_auxiliary_speaker_loss(config, len(self._training_trials[0].speakers)).to(device)
        # Both before the optimiser takes the parameters, and before DDP wraps the model.
        self.model = distributed.synchronise_batchnorm(self.model, device)
        apply_kernel_options(self.model, device, channels_last=config["channels_last"],
                             compile=distributed.compile_allowed(config["compile"], device, run.warn),
                             compiled=run.compiled)
        optim = config["optim"]
        groups = parameter_groups(self.model.trainable_parameters(), self.model, "model") + \
            [{"params": list(self.loss.parameters()), "name": "oc_center"}]
        if self.speaker_loss is not None:
            groups.append({"params": list(self.speaker_loss.parameters()), "name": "speaker_loss"})
        self.optimizer = torch.optim.Adam(groups, lr=optim["lr"], weight_decay=optim["wd"])
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=optim["gamma"])
        self.scheduler_every = optim["scheduler_interval"]
        self.scorer = SASVScorer(self.model, self.loss, run.extraction("scoring"))
        self.embedding_cache = EmbeddingCache()  # frozen sub-systems' dev embeddings, reused every epoch

    # ------------------------------------------------------------- weights
    def modules(self) -> list[nn.Module]:
        return [self.model, self.loss] + ([self.speaker_loss] if self.speaker_loss is not None else [])

    def trainable_parameters(self) -> list[nn.Parameter]:
        extra = list(self.speaker_loss.parameters()) if self.speaker_loss is not None else []
        return list(self.model.trainable_parameters()) + list(self.loss.parameters()) + extra

    def save(self, path: Path, training_state: dict[str, Any]) -> None:
        extra = dict(training_state)
        if self.speaker_loss is not None:
            extra["speaker_loss"] = self.speaker_loss.state_dict()
        save_checkpoint(path, model=self.model, loss=self.loss, config=self.stored_config(), extra=extra)

    def resumable(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.format == "sasv" and "optimizer" in checkpoint.meta

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        checkpoint = load_sasv_weights(self.model, self.loss, path)
        if self.speaker_loss is not None and "speaker_loss" in checkpoint.meta:
            self.speaker_loss.load_state_dict(checkpoint.meta["speaker_loss"])
        return checkpoint

    # ------------------------------------------------------------- data and loss
    @functools.cached_property
    def _training_trials(self) -> tuple[TrialSampler, int]:
        """The trial sampler over the training protocol(s) and the default epoch length (read once)."""
        return training_sampler(self.config)

    def start_training(self) -> None:
        config, run = self.config, self.run
        sampler, n_utterances = self._training_trials
        # Waveform trials, or cached-embedding trials when the sub-systems are frozen (training/frozen_cache.py).
        inputs = training_inputs(config, self.model, sampler, device=run.device, experiment_dir=run.dir,
                                 progress=run.progress, log=run.log, warn=run.warn,
                                 poll=run.poll(f"the frozen-embedding cache build (what was embedded is kept); go "
                                               f"on with: {run.resume_hint()}"))
        self.objective = SASVObjective(self.model, self.loss, run.device, run.amp, cached_features=inputs.forward,
                                       speaker_loss=self.speaker_loss,
                                       speaker_weight=config["speaker_loss"]["weight"])
        trials = config["trials_per_epoch"] or n_utterances
        if trials < config["batch_size"]:
            raise ConfigError(f"{config.source}: trials_per_epoch ({trials}) is smaller than "
                              f"batch_size ({config['batch_size']}); no training step would run")
        # Whole global batches only (the last partial one is dropped), each rank every world_size-th trial.
        self.epoch_sampler = EpochSampler(trials - trials % config["batch_size"], batch_size=config["batch_size"],
                                          rank=distributed.rank(), world_size=distributed.world_size())
        rank_batch = distributed.per_rank_batch(config["batch_size"], config.source)
        workers = inputs.num_workers
        # Its own generator: creating a loader iterator must not consume the global torch RNG
        # (dropout), or a resumed run would draw different random numbers.
        self.loader = DataLoader(inputs.dataset, batch_size=rank_batch, sampler=self.epoch_sampler, drop_last=True,
                                 num_workers=workers, pin_memory=run.device.type == "cuda",
                                 persistent_workers=workers > 0,
                                 worker_init_fn=leave_signals_to_main_process if workers else None,
                                 generator=torch.Generator().manual_seed(config["seed"]))
        self.dev_inputs = scoring_inputs(config, "dev")
        scoring_inputs(config, "eval")  # a bad eval list or missing enrollment stops the run now, not after training

    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        self.epoch_sampler.set_epoch(epoch, batch)
        return self.loader, self.epoch_sampler.epoch_batches

    def split_batch(self, batch: Any) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        enrollment, test, labels, redraws, speakers = batch
        return (enrollment, test, labels, speakers), redraws

    # ------------------------------------------------------------- metrics
    def validate(self, epoch: int) -> dict[str, Any]:
        scored = self.score_dev()
        result = evaluate_sasv(scored, f"dev epoch {epoch + 1}",
                               sasv_writer(self.run, f"dev_epoch_{epoch + 1:03d}.txt", self.dev_inputs.trials))
        self.remember_dev(epoch, scored)
        return dev_metrics(result)

    def score_dev(self) -> ScoredTrials:
        frozen = not (self.model.train_asv and self.model.train_cm)
        return self.scorer.score_trials(self.dev_inputs, cache=self.embedding_cache if frozen else None)

    def calibration_decision(self) -> tuple[str, str]:
        return "sasv", corpus_of(self.config).headline["sasv"]

    def weights_sha256(self) -> str:
        return system_fingerprint(self.model, self.loss)

    def on_new_best(self, epoch: int, dev: dict[str, Any]) -> None:
        if self.run.is_main:  # the weights alone (not resumable): what a user loads, with weights/calibration.json
            self.save(self.run.dir / "weights" / "best.ckpt", {"epoch": epoch, "dev": dict(dev)})

    def dev_text(self, dev: dict[str, Any]) -> str:
        return (f"dev SASV-EER {100 * dev['sasv_eer']:.2f}%  SV-EER {100 * dev['sv_eer']:.2f}%  "
                f"SPF-EER {100 * dev['spf_eer']:.2f}%")

    def evaluate(self) -> dict[str, Any]:
        self.embedding_cache = EmbeddingCache()
        inputs = scoring_inputs(self.config, "eval")
        scored = self.scorer.score_trials(inputs)
        calibration = None if self.calibration is None else calibration_metrics(self.calibration, scored)
        result = evaluate_sasv(scored, "eval", sasv_writer(self.run, "eval.txt", inputs.trials, report=True,
                                                           calibration=calibration))
        return result if calibration is None else {**result, "calibration": calibration}

    def eval_text(self, metrics: dict[str, Any]) -> str:
        return sasv_text(metrics)

    def summary_text(self, summary: dict[str, Any]) -> str:
        return f"eval {sasv_text(summary)} ({summary['checkpoint']})"


def sasv_writer(run: Run, name: str, trials: list, *, report: bool = False,
                calibration: dict[str, Any] | None = None) -> Writer:
    """The experiment folder as an evaluation's writer (systems sasv and b2): scores/<name>, and with `report`
    the report/ folder (with the training curves of metrics.csv, and the `calibration` loss of
    scoring.calibration.calibration_metrics when given); under torchrun rank 0 alone writes."""
    path = run.dir / "scores" / name

    def scores(scored: ScoredTrials) -> None:
        if run.is_main:
            write_trial_scores(path, trials, scored.sasv)

    def write_report(scored: ScoredTrials) -> dict[str, Any]:
        metrics_csv = run.dir / "metrics.csv"
        return write_sasv_report(run.dir / "report", replace(scored, source=str(path)),
                                 first=corpus_of(run.config).headline["sasv"],
                                 metrics_csv=metrics_csv if metrics_csv.is_file() else None,
                                 plots=run.config["report_plots"], calibration=calibration) \
            if run.is_main else {}

    return Writer(scores=scores, report=write_report if report else None, warn=run.warn)
