"""System `b2`: the SASV 2022 baseline B2, a DNN back-end trained on pre-extracted embeddings.

Inputs are save_asv_embeddings.py's pickles in `b2.embeddings`. A training trial is drawn per
(seed, epoch, index) from the training list (data.corpora) by data.trials.TrialSampler (`trial_sampling`, two_class by
default as in the baseline: half target bona fide, a quarter zero-effort nontarget, a quarter spoof of
the claimed speaker); its enrollment side is the ASV embedding of one bona fide utterance of the claimed
speaker (or, with `b2.enrollment: speaker_model`, the speaker's mean without the test utterance). The
loss is weighted cross-entropy of target bona fide vs everything else; Adam with the baseline's
Keras-style per-step decay. Dev / eval trials are the SASV trial lists, enrolled with spk_model_*.pk;
the score is the target log-odds (models/b2_backend.py). A trial, speaker or training utterance without
an embedding is an error naming the pickle and the id, or with `on_bad_audio: skip` is left out.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.corpora import corpus_of
from data.datasets import EpochSampler
from data.embeddings import EmbeddingError, embedding_size, read_embeddings
from data.protocols import CMEntry, SASVTrial, speaker_utterances
from data.trials import TrainTrial, TrialSampler, trial_rng
from models.b2_backend import B2Backend
from models.checkpoint import Checkpoint, CheckpointError, apply_state, load_checkpoint, save_backend_checkpoint
from runtime import distributed
from runtime.config import Config, ConfigError
from runtime.device import autocast_context
from scoring.calibration import calibration_metrics, system_fingerprint
from scoring.pipeline import bad_audio_summary, dev_metrics, evaluate_sasv
from scoring.sasv import sasv_text
from scoring.scored_trials import ScoredTrials
from training.task import Run, Task
from training.tasks.sasv import METRIC_COLUMNS, sasv_writer

SCORE_BATCH = 8192  # trials per back-end call when scoring


@dataclass
class EmbeddedTrials:
    """The back-end's input: SASV trials as rows of embedding matrices; `skipped` marks trials without an
    embedding (on_bad_audio: skip), which `B2Task.score` scores nan. Its output is a ScoredTrials."""

    trials: list[SASVTrial]
    enrollment: torch.Tensor  # [speakers, A]
    test_asv: torch.Tensor  # [utterances, A]
    test_cm: torch.Tensor  # [utterances, C]
    enrollment_rows: torch.Tensor  # [trials] long
    test_rows: torch.Tensor  # [trials] long
    skipped: np.ndarray  # [trials] bool
    codecs: list[str] | None = None  # codec condition of each trial's test utterance (ASVspoof 5), for the report


def _matrix(table: dict[str, np.ndarray], ids: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([table[i] for i in ids])) if ids else torch.empty(0)


def _check_size(path: Path, table: dict[str, np.ndarray], expected: int, what: str) -> None:
    if embedding_size(table) != expected:
        raise EmbeddingError(f"{path}: vectors of {embedding_size(table)} values, but {what} has {expected}")


class B2Objective(nn.Module):
    """(enrollment ASV, test ASV, test CM, target) -> (weighted cross-entropy, None); the module DDP wraps."""

    def __init__(self, model: B2Backend, class_weights: torch.Tensor, device: torch.device, amp: str) -> None:
        super().__init__()
        self.model = model
        self.class_weights = class_weights
        self.device = device
        self.amp = amp

    def forward(self, enrollment: torch.Tensor, test: torch.Tensor, cm: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, None]:
        enrollment, test, cm, target = (tensor.to(self.device, non_blocking=True)
                                        for tensor in (enrollment, test, cm, target))
        with autocast_context(self.device, self.amp):
            logits = self.model(enrollment, test, cm)
        return F.cross_entropy(logits.float(), target, weight=self.class_weights), None


class B2Task(Task):
    label = "b2 "
    selection = "sasv_eer"
    metric_columns = METRIC_COLUMNS
    scheduler_every = 1  # the Keras-style decay is per step
    lr_column = "last_step"

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)
        settings = config["b2"]
        if not settings["embeddings"]:
            raise ConfigError(f"{config.source}: system b2 needs b2.embeddings, the folder of "
                              f"save_asv_embeddings.py's pickles")
        if config["init_checkpoint"] or config["dirs"]["extra_trn_lists"]:
            key = "init_checkpoint" if config["init_checkpoint"] else "dirs.extra_trn_lists"
            raise ConfigError(f"{config.source}: {key} is not used by system b2 (it trains a new back-end on the "
                              f"embeddings of dirs.cm_trn_list); remove it")
        self.folder = Path(settings["embeddings"])
        self.skip_missing = config["on_bad_audio"] == "skip"
        # Everything is read and checked up front: a bad eval pickle stops the run before training.
        self._read_training_pool()
        self.dev = self._trial_rows("dev")
        self.eval = self._trial_rows("eval")
        self.model = B2Backend(self.asv_dim, self.cm_dim, settings["hidden_dims"]).to(run.device)
        if distributed.compile_allowed(config["compile"], run.device, run.warn):
            run.compiled.compile(self.model, "the back-end")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["lr"], weight_decay=settings["wd"])
        decay = settings["lr_decay"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=keras_decay(decay))
        self.rank_batch = distributed.per_rank_batch(config["batch_size"], config.source)

    # ------------------------------------------------------------- embeddings
    def _pickle(self, name: str) -> tuple[Path, dict[str, np.ndarray]]:
        path = self.folder / name
        return path, read_embeddings(path)

    def _missing(self, path: Path, what: str, key: str, where: str) -> None:
        """A needed id the pickle lacks: an error, or with on_bad_audio: skip nothing (the caller leaves it out)."""
        if not self.skip_missing:
            raise EmbeddingError(f"{path}: no embedding for {what} {key!r} ({where}); set on_bad_audio: skip to "
                                 f"leave such trials out")

    def _read_training_pool(self) -> None:
        """Training embeddings, the trial sampler over the utterances that have them, and their rows."""
        config = self.config
        protocol = corpus_of(config).cm_list("train")
        asv_path, asv = self._pickle("asv_embd_trn.pk")
        cm_path, cm = self._pickle("cm_embd_trn.pk")
        self.asv_dim, self.cm_dim = embedding_size(asv), embedding_size(cm)
        entries = corpus_of(config).read_keys(protocol)
        kept: list[CMEntry] = []
        for number, entry in enumerate(entries, start=1):
            gaps = [path for path, table in ((asv_path, asv), (cm_path, cm)) if entry.utterance not in table]
            for path in gaps:
                self._missing(path, "training utterance", entry.utterance, f"entry {number} of {protocol}")
            if not gaps:
                kept.append(entry)
        if len(kept) < len(entries):
            self.run.warn(bad_audio_summary("training", len(entries) - len(kept), len(entries), "utterances", None,
                                            cause=f"they have no embedding in {self.folder}",
                                            consequence="left out of the training trials"))
        self.n_training_utterances = len(entries)
        utterances = [entry.utterance for entry in kept]
        self.train_row = {utterance: row for row, utterance in enumerate(utterances)}
        self.train_asv = _matrix(asv, utterances)
        self.train_cm = _matrix(cm, utterances)
        speakers = speaker_utterances(kept)
        self.sampler = TrialSampler(speakers, config["trial_sampling"])
        # b2.enrollment speaker_model: per speaker, the sum and the set of its bona fide ASV embeddings.
        self.bonafide_of = {s: set(lists["bonafide"]) for s, lists in speakers.items() if lists["bonafide"]}
        self.bonafide_sum = {s: self.train_asv[[self.train_row[u] for u in sorted(utts)]].double().sum(0)
                             for s, utts in self.bonafide_of.items()} \
            if config["b2"]["enrollment"] == "speaker_model" else {}

    def _trial_rows(self, partition: str) -> EmbeddedTrials:
        """The SASV trials of `partition` with their speaker-model and test-utterance rows."""
        corpus = corpus_of(self.config)
        trial_path = corpus.trial_list(partition)
        trials = corpus.sasv_trials(partition)  # with attack labels, for the report
        model_path, models = self._pickle(f"spk_model_{partition}.pk")
        asv_path, asv = self._pickle(f"asv_embd_{partition}.pk")
        cm_path, cm = self._pickle(f"cm_embd_{partition}.pk")
        _check_size(model_path, models, self.asv_dim, "asv_embd_trn.pk")
        _check_size(asv_path, asv, self.asv_dim, "asv_embd_trn.pk")
        _check_size(cm_path, cm, self.cm_dim, "cm_embd_trn.pk")
        skipped = np.zeros(len(trials), dtype=bool)
        for index, trial in enumerate(trials):
            where = f"trial {index + 1} of {trial_path}: {trial.speaker} {trial.utterance}"
            needs = ((model_path, models, "speaker", trial.speaker), (asv_path, asv, "utterance", trial.utterance),
                     (cm_path, cm, "utterance", trial.utterance))
            for path, table, what, key in needs:
                if key not in table:
                    self._missing(path, what, key, where)
                    skipped[index] = True
        usable = [trial for trial, skip in zip(trials, skipped) if not skip]
        speakers = sorted({trial.speaker for trial in usable})
        utterances = sorted({trial.utterance for trial in usable})
        speaker_row = {s: row for row, s in enumerate(speakers)}
        utterance_row = {u: row for row, u in enumerate(utterances)}
        return EmbeddedTrials(trials=trials, enrollment=_matrix(models, speakers), test_asv=_matrix(asv, utterances),
                         test_cm=_matrix(cm, utterances),
                         enrollment_rows=torch.tensor([speaker_row.get(t.speaker, 0) for t in trials]),
                         test_rows=torch.tensor([utterance_row.get(t.utterance, 0) for t in trials]),
                         skipped=skipped, codecs=corpus.trial_conditions(partition, trials).get("codec"))

    # ------------------------------------------------------------- weights
    def modules(self) -> list[nn.Module]:
        return [self.model]

    def save(self, path: Path, training_state: dict[str, Any]) -> None:
        save_backend_checkpoint(path, backend=self.model, config=self.stored_config(), extra=training_state)

    def resumable(self, checkpoint: Checkpoint) -> bool:
        return (checkpoint.format == "sasv" and checkpoint.asv_state is None and checkpoint.cm_state is None
                and checkpoint.backend_state is not None and "optimizer" in checkpoint.meta)

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        checkpoint = checkpoint or load_checkpoint(path)
        if checkpoint.backend_state is None or checkpoint.asv_state is not None:
            raise CheckpointError(f"{path}: not a system b2 checkpoint (it holds no back-end trained alone)")
        apply_state(self.model, checkpoint.backend_state, what="B2 back-end", source=path)
        return checkpoint

    # ------------------------------------------------------------- data and loss
    def start_training(self) -> None:
        config = self.config
        weights = torch.tensor(config["b2"]["class_weights"], dtype=torch.float32, device=self.run.device)
        self.objective = B2Objective(self.model, weights, self.run.device, self.run.amp)
        trials = config["trials_per_epoch"] or self.n_training_utterances
        if trials < config["batch_size"]:
            raise ConfigError(f"{config.source}: trials_per_epoch ({trials}) is smaller than batch_size "
                              f"({config['batch_size']}); no training step would run")
        # Whole global batches only, each rank every world_size-th trial (as system sasv).
        self.epoch_sampler = EpochSampler(trials - trials % config["batch_size"], batch_size=config["batch_size"],
                                          rank=distributed.rank(), world_size=distributed.world_size())

    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        self.epoch_sampler.set_epoch(epoch, batch)
        return self._batches(iter(self.epoch_sampler)), self.epoch_sampler.epoch_batches

    def _batches(self, items: Iterator[tuple[int, int]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """(enrollment, test ASV, test CM, target, redraws) per batch of this rank's (epoch, index) items."""
        seed = self.config["seed"]
        while True:
            chunk = [item for _, item in zip(range(self.rank_batch), items)]
            if len(chunk) < self.rank_batch:
                return
            trials = [self.sampler.draw(trial_rng(seed, epoch, index)) for epoch, index in chunk]
            test_rows = [self.train_row[t.test] for t in trials]
            yield (self._enrollment(trials), self.train_asv[test_rows], self.train_cm[test_rows],
                   torch.tensor([1 - t.label for t in trials]), torch.zeros(len(trials), dtype=torch.long))

    def _enrollment(self, trials: list[TrainTrial]) -> torch.Tensor:
        if self.config["b2"]["enrollment"] == "utterance":
            return self.train_asv[[self.train_row[t.enrollment] for t in trials]]
        rows = []
        for trial in trials:
            speaker = trial.enrollment_speaker
            total, count = self.bonafide_sum[speaker], len(self.bonafide_of[speaker])
            if trial.test in self.bonafide_of[speaker]:  # a target trial: its test utterance is not in the model
                total, count = total - self.train_asv[self.train_row[trial.test]].double(), count - 1
            rows.append((total / count).float())
        return torch.stack(rows)

    # ------------------------------------------------------------- metrics
    @torch.no_grad()
    def score(self, rows: EmbeddedTrials) -> np.ndarray:
        """Target log-odds per trial in trial order (fp32); nan for the skipped ones."""
        self.model.eval()
        device = self.run.device
        scores = np.full(len(rows.trials), np.nan, dtype=np.float32)
        keep = np.flatnonzero(~rows.skipped)
        for start in range(0, len(keep), SCORE_BATCH):
            chosen = torch.from_numpy(keep[start:start + SCORE_BATCH])
            enrollment = rows.enrollment[rows.enrollment_rows[chosen]].to(device)
            test = rows.test_rows[chosen]
            logits = self.model(enrollment, rows.test_asv[test].to(device), rows.test_cm[test].to(device))
            scores[chosen.numpy()] = B2Backend.score(logits.float()).cpu().numpy()
        return scores

    def _scored(self, rows: EmbeddedTrials) -> ScoredTrials:
        return ScoredTrials.of_sasv_trials("", rows.trials, self.score(rows), skipped=rows.skipped, bad_audio=None,
                                           codec=rows.codecs)

    def _evaluate(self, scored: ScoredTrials, rows: EmbeddedTrials, what: str, name: str, *, report: bool = False
                  ) -> dict[str, Any]:
        calibration = None if not report or self.calibration is None else \
            calibration_metrics(self.calibration, scored)
        result = evaluate_sasv(scored, what, sasv_writer(self.run, name, rows.trials, report=report,
                                                         calibration=calibration),
                               cause=f"they lack an embedding in {self.folder}")
        return result if calibration is None else {**result, "calibration": calibration}

    def validate(self, epoch: int) -> dict[str, Any]:
        scored = self._scored(self.dev)
        result = self._evaluate(scored, self.dev, f"dev epoch {epoch + 1}", f"dev_epoch_{epoch + 1:03d}.txt")
        self.remember_dev(epoch, scored)
        return dev_metrics(result)

    def score_dev(self) -> ScoredTrials:
        return self._scored(self.dev)

    def calibration_decision(self) -> tuple[str, str]:
        return "sasv", corpus_of(self.config).headline["sasv"]

    def weights_sha256(self) -> str:
        return system_fingerprint(self.model)

    def on_new_best(self, epoch: int, dev: dict[str, Any]) -> None:
        if self.run.is_main:  # the back-end's weights alone (not resumable), with weights/calibration.json
            save_backend_checkpoint(self.run.dir / "weights" / "best.ckpt", backend=self.model,
                                    config=self.stored_config(), extra={"epoch": epoch, "dev": dict(dev)})

    def dev_text(self, dev: dict[str, Any]) -> str:
        return f"dev {sasv_text(dev)}"

    def evaluate(self) -> dict[str, Any]:
        return self._evaluate(self._scored(self.eval), self.eval, "eval", "eval.txt", report=True)

    def eval_text(self, metrics: dict[str, Any]) -> str:
        return sasv_text(metrics)

    def summary_text(self, summary: dict[str, Any]) -> str:
        return f"eval {sasv_text(summary)} ({summary['checkpoint']})"


def keras_decay(decay: float) -> Callable[[int], float]:
    """lr multiplier at `step`: 1 / (1 + decay * step) (the baseline's keras scheduler)."""
    return lambda step: 1.0 / (1.0 + decay * step)
