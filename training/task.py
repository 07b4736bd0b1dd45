"""The contract between the trainer and a task: what a kind of training run supplies.

`training.trainer.Trainer` owns the run: the step (AMP, grad scaler, DDP, the non-finite-loss rule),
signals, `last.ckpt` and the best-k copies, resume (also mid-epoch), `metrics.csv` and the final test
with the best checkpoint. A task (training/tasks/) supplies only what differs: its networks, loss and
optimiser; its training batches for (epoch, batches done); the loss of one batch; its validation
metrics and the one that selects the best checkpoint; the final evaluation; what a checkpoint holds.
A new task is one file in training/tasks/ plus one line in `training.tasks.TASKS`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.corpora import recorded_config
from models.checkpoint import Checkpoint
from runtime.compiling import CompiledNetworks
from runtime.config import Config
from scoring.calibration import SystemCalibration, fit_system_calibration
from scoring.extraction import Extraction, Poll
from scoring.scored_trials import ScoredTrials


@dataclass
class Run:
    """What a task may use of the run that the trainer owns."""

    config: Config
    dir: Path  # the experiment folder
    device: torch.device
    amp: str  # resolved precision of the training step: off, bf16 or fp16
    is_main: bool  # under torchrun only rank 0 writes files and logs
    progress: bool
    log: Callable[[str], None]
    warn: Callable[[str], None]
    poll: Callable[[str], Poll]  # poll(what): a check between scoring batches that stops on a signal
    resume_hint: Callable[[], str]  # the command that continues the run, for messages
    # `compile: true`: tasks compile their networks through it (falls back to eager when the compiler fails).
    compiled: CompiledNetworks = field(default_factory=CompiledNetworks)

    def extraction(self, what: str) -> Extraction:
        """Scoring options of this run (fp32), stopping between batches on a signal."""
        return Extraction.from_config(self.config, self.device, progress=self.progress, poll=self.poll(what))


class Task:
    """Base of the tasks; the trainer calls the methods below, in this order:

    `__init__` builds networks, loss, `optimizer` and `scheduler`; `start_training()` once per fit, then
    per epoch `start_epoch(epoch, batch)` and, behind DDP, `objective` on each batch; `validate(epoch)`
    when due; at the end, with the best weights loaded through `load_weights`, `calibrate(...)` and then
    `evaluate()`.
    """

    label: str = ""  # prefix of the task's messages: "" for the SASV system, "asv " / "cm " for the stages
    selection: str = "eer"  # dev metric that ranks checkpoints (lower is better)
    metric_columns: tuple[str, ...] = ()  # metrics.csv header
    redrawn_column: str = "redrawn_trials"  # metrics.csv column counting items redrawn because of bad audio
    item: str = "trial"  # what a training item is, in messages
    scheduler_every: int = 0  # optimisation steps between scheduler steps; 0: once per epoch, after validation
    lr_column: str = "current"  # metrics.csv lr: "current" (after the epoch) or "last_step" (of its last step)

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: nn.Module  # forward(*inputs) -> (loss, accuracy or None); the module DDP wraps

    def __init__(self, config: Config, run: Run) -> None:
        self.config = config
        self.run = run
        # The dev scores of the epoch (1-based) this process validated last, for the calibration of its weights.
        self.last_dev: tuple[int, ScoredTrials] | None = None
        self.calibration: SystemCalibration | None = None  # fitted by calibrate(), used by evaluate()

    # ------------------------------------------------------------- weights
    def modules(self) -> list[nn.Module]:
        """Every module whose weights the task holds (checked finite, shared from rank 0, put in train mode)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser steps (gradient clipping applies to them)."""
        return [p for module in self.modules() for p in module.parameters()]

    def save(self, path: Path, training_state: dict[str, Any]) -> None:
        """Write a checkpoint holding the weights and `training_state` (rank 0 only)."""
        raise NotImplementedError

    def stored_config(self) -> dict[str, Any]:
        """The config as a checkpoint stores it and a resume compares it: plain data, with the protocol files
        found for keys left at their defaults (data.corpora.recorded_config), as config.conf records it."""
        return recorded_config(self.config)

    def resumable(self, checkpoint: Checkpoint) -> bool:
        """Whether `checkpoint` is one of this task's resumable checkpoints."""
        return "optimizer" in checkpoint.meta

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        """Load the weights of one of this task's checkpoints (also the parts a resume needs)."""
        raise NotImplementedError

    def fixed_on_resume(self) -> tuple[str, ...]:
        """Config keys a resume may not change although RESUME_MAY_CHANGE lists them."""
        return ()

    def on_new_best(self, epoch: int, dev: dict[str, Any]) -> None:
        """Called when epoch `epoch` becomes the best so far (the stages write weights/best.ckpt)."""

    # ------------------------------------------------------------- data and loss
    def start_training(self) -> None:
        """Build what training iterates (called once per fit, after a resume)."""

    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        """The batches of epoch `epoch` from batch `batch` on, and the epoch's number of batches.

        `batch` is the trainer's count of the epoch's batches already consumed (0 unless resumed
        mid-epoch); it goes to the training sampler's `set_epoch(epoch, batches_done)` unchanged, and
        the sampler turns it into its own items (data.datasets.check_batches_done)."""
        raise NotImplementedError

    def split_batch(self, batch: Any) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(inputs of `objective`, per-item counts of redraws because of bad audio)."""
        *inputs, redraws = batch
        return tuple(inputs), redraws

    # ------------------------------------------------------------- metrics
    def validate(self, epoch: int) -> dict[str, Any]:
        """Dev metrics (without the dev_ prefix) of the current weights; writes scores/dev_epoch_NNN.txt."""
        raise NotImplementedError

    def dev_text(self, dev: dict[str, Any]) -> str:
        return "  ".join(f"dev {name} {value:.4f}" for name, value in dev.items() if value is not None)

    def evaluate(self) -> dict[str, Any] | None:
        """Eval metrics of the loaded weights (writes scores/eval.txt), or None when there is no eval set."""
        raise NotImplementedError

    # ------------------------------------------------------------- calibration (scoring/calibration.py)
    def remember_dev(self, epoch: int, scored: ScoredTrials) -> None:
        """Keep the dev scores of `epoch` (0-based, as validate's): calibrate() reuses them when that epoch's
        weights are the ones evaluated, instead of scoring dev again."""
        self.last_dev = (epoch + 1, scored)

    def score_dev(self) -> ScoredTrials | None:
        """The dev scores of the loaded weights, as validate() computes them but writing nothing (under torchrun
        sharded, every rank gets all of them); None: the task fits no calibration."""
        return None

    def calibration_decision(self) -> tuple[str, str]:
        """(the score the system's decision is on, the dev metric whose minimum sets its threshold)."""
        raise NotImplementedError

    def weights_sha256(self) -> str:
        """scoring.calibration.system_fingerprint of the loaded weights."""
        raise NotImplementedError

    def calibrate(self, epoch: int, checkpoint: str) -> SystemCalibration | None:
        """Fit the calibration of the loaded weights (those of `epoch`, 1-based, read from `checkpoint`) on the dev
        scores: the last validation's when it was of that epoch, else scored again. Kept for evaluate()."""
        reused = self.last_dev is not None and self.last_dev[0] == epoch
        scored = self.last_dev[1] if reused else self.score_dev()
        if scored is None:
            return None
        score, metric = self.calibration_decision()
        self.calibration = fit_system_calibration(
            scored, system=self.config["system"], decision_score=score, decision_metric=metric,
            prior=self.config["calibration"]["prior"], weights_sha256=self.weights_sha256(),
            checkpoint=checkpoint, fitted_on=f"dev scores of epoch {epoch} (scores/dev_epoch_{epoch:03d}.txt)",
            warn=self.run.warn)
        return self.calibration

    def eval_text(self, metrics: dict[str, Any]) -> str | None:
        """The eval metrics for the log line `eval (<checkpoint>): ...`, or None for no such line."""
        return None

    def summary_text(self, summary: dict[str, Any]) -> str:
        """One line for the end of main.py."""
        raise NotImplementedError
