"""What the ASV and CM pre-training stages share: epoch loop, best-k checkpoints, resume, final test.

Outputs in the experiment folder (see README, "Training the sub-systems"):
  config.conf, metrics.csv, scores/dev_epoch_NNN.txt, scores/eval.txt, metrics_eval.json,
  weights/last.ckpt, weights/epoch=NNN-<metric>_dev=X.ckpt (resumable, with optimiser state),
  weights/best.ckpt (weights of the best dev epoch only: what asv_weight / aasist_weight take)

As in the SASV trainer, `weights/last.ckpt` is written at each epoch end, every
`checkpoint_interval_steps` steps and on SIGINT/SIGTERM at the next batch boundary, with the
position inside the epoch and its partial sums; batches, crops and augmentations are pure
functions of (seed, epoch, index), so a resumed run trains exactly as one never stopped.

Under torchrun (runtime/distributed.py) `batch_size` is the batch of one step over all processes:
each rank trains on its share through DistributedDataParallel, embeds its share of the dev/eval
files, and keeps the same state; rank 0 alone writes files and logs.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.datasets import leave_signals_to_main_process
from runtime import distributed
from runtime import files
from runtime.config import Config, ConfigError
from training.loop import ResumableRun
from training.state import TrainingError, TrainState, choose_resume_checkpoint, optimisation_step, tidy_after_resume
from runtime.device import channels_last_enabled, resolve_amp, seed_everything
from runtime.signals import RunInterrupted, StopRequest, signal_name
from models.checkpoint import Checkpoint, CheckpointError, apply_state, load_checkpoint, save_subsystem_checkpoint

_BEST_K_NAME = re.compile(r"epoch=(\d+)-.*\.ckpt")
# metrics.csv columns every stage writes after its own (dev metrics first).
COMMON_COLUMNS = ("skipped_batches", "redrawn_utterances", "seconds")


class StageTrainer(ResumableRun):
    """Base of ASVTrainer and CMTrainer. Subclasses set `part`, `selection`, `metric_columns`,
    `scheduler_interval`, build `self.model`, `self.loss` (a module with parameters, or None),
    `self.optimizer`, `self.scheduler`, `self.loader`, and implement `start_epoch`, `forward_batch`,
    `validate` and `evaluate_final`. Dev metrics: lower is better."""

    part: str = ""  # "asv" or "cm"
    selection: str = "eer"  # dev metric that ranks checkpoints
    metric_columns: tuple[str, ...] = ()
    scheduler_interval: str = "epoch"  # the scheduler steps once per "epoch" or per "step"

    @property
    def label(self) -> str:  # the prefix of its messages: "asv epoch 3, ..."
        return f"{self.part} "

    def __init__(self, config: Config, experiment_dir: Path, device: torch.device, *, progress: bool = True) -> None:
        if config["init_checkpoint"]:
            weight_key = "asv_weight" if self.part == "asv" else "aasist_weight"
            raise ConfigError(f"{config.source}: init_checkpoint initialises a SASV system; for system "
                              f"{self.part} give the initial weights in {weight_key}")
        self.config = config
        self.dir = experiment_dir
        self.device = device
        self.progress = progress
        self.amp = resolve_amp(config["amp"], device)
        seed_everything(config["seed"])
        self.state = TrainState()
        self.model: nn.Module
        self.loss: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        # Under torchrun a second signal is ignored, as in the SASV trainer (torchrun forwards the signal too).
        self.stop = StopRequest(second_aborts=distributed.world_size() == 1)
        self.resume_hint = "run the same command with --resume"  # main.py puts the exact command here
        self.loader: DataLoader
        self.is_main = distributed.is_main()
        self.rank_batch = distributed.per_rank_batch(config["batch_size"], config.source)
        distributed.decorrelate_rng(config["seed"], 0)
        self._train_forward: nn.Module | None = None  # forward_batch behind DDP under torchrun (built in fit)
        self._clock = time.time()

    # ------------------------------------------------------------- subclass API
    def start_epoch(self, epoch: int, batch: int) -> int:
        """Make self.loader yield epoch `epoch` from batch `batch` on; return the epoch's number of batches."""
        raise NotImplementedError

    def forward_batch(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training loss of one batch (inputs as the loader gives them, without the redraw counts),
        and the batch's accuracy when the stage measures one."""
        raise NotImplementedError

    def validate(self, epoch: int) -> dict[str, float]:
        """Dev metrics (without the dev_ prefix); writes scores/dev_epoch_NNN.txt."""
        raise NotImplementedError

    def evaluate_final(self) -> dict | None:
        """Eval metrics of the loaded weights (writes scores/eval.txt), or None when there is no eval set."""
        raise NotImplementedError

    def summary_text(self, summary: dict) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------- helpers for subclasses
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + (list(self.loss.parameters()) if self.loss is not None else [])

    def place_model(self) -> None:
        """Move the network and loss to the device; under torchrun on CUDA make its BatchNorms synchronised.
        Call it before building the optimiser (the conversion creates new parameter tensors)."""
        self.model = distributed.synchronise_batchnorm(self.model.to(self.device), self.device)
        if self.loss is not None:
            self.loss.to(self.device)
        if channels_last_enabled(self.config.channels_last, self.device) and hasattr(self.model, "use_channels_last"):
            self.model.use_channels_last()  # the ResNet's convolutions run faster in channels_last
        if distributed.compile_allowed(self.config["compile"], self.device, self.warn):
            self.model.compile()  # in place: the state-dict keys stay as they are

    def training_loader(self, dataset, **options) -> DataLoader:
        """The DataLoader of a stage's training data (`options`: batch_size/sampler or batch_sampler, ...)."""
        workers = self.config["loader"]["n_workers"]
        # Its own generator: creating an iterator must not consume the global torch RNG (dropout),
        # or a run resumed mid-epoch would draw other random numbers than one never stopped.
        return DataLoader(dataset, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0,
                          worker_init_fn=leave_signals_to_main_process if workers else None,
                          generator=torch.Generator().manual_seed(self.config["seed"]), **options)

    def scored(self, scores: np.ndarray, bad_audio: dict[str, str], n_touching_bad: int, what: str) -> dict:
        """Check scores (NaN: not scored because of bad audio, with on_bad_audio: skip; warned) and return
        the counts for metrics_eval.json. `n_touching_bad`: trials that need a bad file; any other NaN/inf
        score means the model diverged."""
        n_skipped = int((~np.isfinite(scores)).sum())
        if n_skipped > n_touching_bad:
            raise TrainingError(f"{what}: {n_skipped} of {len(scores)} scores are NaN/inf: training has diverged. "
                                f"{self.last_good()}")
        if bad_audio:
            shown = "; ".join(f"{path}: {reason}" for path, reason in list(bad_audio.items())[:3])
            self.warn(f"warning: {what}: {n_skipped} trial(s) not scored (on_bad_audio: skip; score nan, left "
                      f"out of the metrics) because of {len(bad_audio)} bad audio file(s): {shown}")
        return {"n_skipped_trials": n_skipped, "skipped_audio": dict(sorted(bad_audio.items()))}

    def poll(self, what: str):
        """For scoring: a check between batches that stops on SIGINT/SIGTERM (RunInterrupted)."""
        return lambda: self.stop.check(what)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------- checkpoints
    def _save(self, path: Path, extra: dict) -> None:
        if not self.is_main:
            return
        parts = {"asv_model": self.model, "asv_loss": self.loss} if self.part == "asv" else {"cm_model": self.model}
        save_subsystem_checkpoint(path, **parts, config=self.config.to_dict(), extra=extra)

    def save(self, path: Path) -> None:
        """A resumable checkpoint: weights, loss parameters, optimiser, scheduler, counters, RNG states."""
        self._save(path, self.training_state())

    def checked_parameters(self) -> list[nn.Parameter]:
        return self.trainable_parameters()

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        """Load the network (and ASV loss) weights of one of this stage's checkpoints."""
        checkpoint = checkpoint or load_checkpoint(path)
        state = checkpoint.asv_state if self.part == "asv" else checkpoint.cm_state
        if state is None:
            raise CheckpointError(f"{path}: holds no {self.part.upper()} weights")
        apply_state(self.model, state, what=f"{self.part.upper()} model", source=path)
        if self.loss is not None and self.part == "asv":
            if checkpoint.asv_loss_state is None:
                raise CheckpointError(f"{path}: holds no ASV loss parameters to resume from")
            apply_state(self.loss, checkpoint.asv_loss_state, what="ASV loss", source=path)
        return checkpoint

    def resume_latest(self) -> Path | None:
        """Restore the newest readable resumable checkpoint (normally weights/last.ckpt; a best-k copy when
        last.ckpt is damaged) and tidy the folder; None when the run has none yet."""
        chosen = choose_resume_checkpoint(self.dir / "weights", lambda c: "optimizer" in c.meta, self.warn)
        if chosen is None:
            return None
        path, checkpoint, unreadable = chosen
        self.resume(path, checkpoint)
        tidy_after_resume(self.dir, path, self.state, unreadable, self.config["epoch"], self.metric_columns,
                          _BEST_K_NAME, self.warn)
        return path

    def resume(self, path: Path, checkpoint: Checkpoint | None = None) -> None:
        """Restore the whole training state from one of this stage's resumable checkpoints (files untouched)."""
        checkpoint = checkpoint or load_checkpoint(path)
        if "optimizer" not in checkpoint.meta:
            raise CheckpointError(f"{path}: holds weights only (no optimiser state); resume from weights/last.ckpt")
        self.check_resume_config(checkpoint.config)
        self.load_weights(path, checkpoint)
        self.restore_training_state(checkpoint.meta)

    def _update_best(self, epoch: int, value: float, dev: dict[str, float]) -> None:
        entry = {self.selection: float(value), "epoch": epoch,
                 "path": f"weights/epoch={epoch:03d}-{self.selection}_dev={value:.5f}.ckpt"}
        ranked = sorted(self.state.best + [entry], key=lambda e: (e[self.selection], e["epoch"]))
        keep, drop = ranked[:self.config["save_top_k"]], ranked[self.config["save_top_k"]:]
        self.state.best = keep
        if entry in keep:
            self.save(self.dir / entry["path"])
        if keep[0] is entry:
            self._save(self.dir / "weights" / "best.ckpt", {"epoch": epoch, "dev": dict(dev)})
        for old in drop:
            if old is not entry and self.is_main:
                (self.dir / old["path"]).unlink(missing_ok=True)

    # ------------------------------------------------------------- loop
    def fit(self) -> dict:
        with self.stop:
            return self._fit()

    def _fit(self) -> dict:
        config = self.config
        if self.is_main:
            (self.dir / "weights").mkdir(parents=True, exist_ok=True)
        self._train_forward = distributed.wrap_for_training(_BatchObjective(self), self.device)
        self._clock = time.time()
        for epoch in range(self.state.epoch, config["epoch"]):
            self._check_stop(f"{self.part} epoch {epoch + 1}")
            self.train_epoch(epoch)
            self.check_epoch_trained(epoch)
            state = self.state
            if state.skipped_batches or state.redrawn_utterances:
                self.warn(f"warning: {self.part} epoch {epoch + 1}: {state.skipped_batches} batch(es) left out for "
                          f"a non-finite loss, {state.redrawn_utterances} training utterance(s) replaced because of "
                          f"bad audio")
            row: dict = {"epoch": epoch + 1, "step": self.state.step, **self._epoch_means()}
            if (epoch + 1) % config["val_interval_epoch"] == 0 or epoch + 1 == config["epoch"]:
                self._share_rank0_weights()  # every rank embeds its share with the same BatchNorm statistics
                try:
                    dev = self.validate(epoch)
                except RunInterrupted as interruption:
                    self.interrupted(f"the dev scoring of {self.part} epoch {epoch + 1} (its training is saved)",
                                     interruption.signum)
                row.update({f"dev_{name}": value for name, value in dev.items()})
                self.log(f"{self.part} epoch {epoch + 1}: loss {row['train_loss']:.4f}  " + "  ".join(
                    f"dev {name} {value:.4f}" for name, value in dev.items() if value is not None))
            else:
                dev = {}
            if self.scheduler_interval == "epoch":  # after validation: a checkpoint taken in it has not stepped
                with warnings.catch_warnings():  # resumed in the validation, this process has not stepped Adam yet
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                    self.scheduler.step()
            self.account_time()
            row["seconds"] = round(self.state.seconds, 3)
            self.state.metrics.append({name: _csv_value(row.get(name)) for name in self.metric_columns})
            self.state = self.state.next_epoch()
            if dev.get(self.selection) is not None:
                self._update_best(epoch + 1, dev[self.selection], dev)
            if self.is_main:
                files.write_csv(self.dir / "metrics.csv", self.metric_columns, self.state.metrics)
            self.save_resumable()
        return self.test()

    def _epoch_means(self) -> dict:
        state, count = self.state, self.state.loss_count
        return {"lr": state.last_lr, "train_loss": state.loss_sum / count if count else math.nan,
                "train_accuracy": state.accuracy_sum / count if count else math.nan,
                "skipped_batches": state.skipped_batches, "redrawn_utterances": state.redrawn_utterances}

    def train_epoch(self, epoch: int) -> None:
        """Train epoch `epoch` from batch `self.state.batch` on (0 unless resumed mid-epoch)."""
        n_batches = self.start_epoch(epoch, self.state.batch)
        if self.state.batch < n_batches:
            self.model.train()
            if self.loss is not None:
                self.loss.train()
            self.run_batches(self.loader, epoch, n_batches, lambda batch: self._train_step(batch, epoch, n_batches))

    def _train_step(self, batch: list[torch.Tensor], epoch: int, n_batches: int) -> bool:
        """Forward, loss, and an optimisation step unless the loss is not finite; whether a step was taken."""
        *inputs, redraws = batch
        loss, accuracy = self._train_forward(*inputs)
        # Means / totals over the ranks, so that every rank keeps the same state and takes the same decision.
        world = distributed.world_size()
        accuracy = accuracy.detach() if accuracy is not None else torch.zeros(())
        step_loss, step_accuracy, redrawn = distributed.sum_over_ranks(loss.detach() / world, accuracy / world,
                                                                        redraws.sum())
        self.state.redrawn_utterances += int(redrawn)
        if bool(torch.isfinite(step_loss)):
            self.state.last_lr = self.current_lr()
            stepped = self._optimise(loss)
            self.state.loss_sum += step_loss.item()
            self.state.loss_count += 1
            self.state.accuracy_sum += step_accuracy.item()
            return stepped
        return self.nonfinite_loss(step_loss.item(), epoch, n_batches)

    def _optimise(self, loss: torch.Tensor) -> bool:
        """One optimisation step; False when the fp16 grad scaler skipped it (not counted)."""
        if not optimisation_step(loss, self.optimizer, self.scaler, self.trainable_parameters(),
                                 self.config["gradient_clip"]):
            return False
        self.state.step += 1
        if self.scheduler_interval == "step":
            self.scheduler.step()
        return True

    def _check_stop(self, where: str) -> None:
        signum = distributed.agreed_signal(self.stop.requested)
        if signum is not None:
            raise RunInterrupted(f"interrupted by {signal_name(signum)} before {where}; nothing was trained since "
                                 f"the last checkpoint. {self.last_good()}", signum)

    def test(self) -> dict:
        """Score the eval set with the best dev checkpoint (or the last one when none was ranked)."""
        best = self.state.best[0] if self.state.best else None
        path = self.dir / best["path"] if best else self.dir / "weights" / "last.ckpt"
        if self.is_main:  # under torchrun rank 0 reads it and the others get its weights
            self.load_weights(path)
        self._share_rank0_weights()
        summary = {"checkpoint": str(path.relative_to(self.dir)),
                   "epoch": best["epoch"] if best else self.state.epoch,
                   "best_dev": self._dev_row(best["epoch"]) if best else None}
        try:
            result = self.evaluate_final()
        except RunInterrupted as interruption:
            raise RunInterrupted(f"{interruption} of the eval set; training is complete and saved; score it "
                                 f"with: {self.resume_hint}", interruption.signum) from None
        if result is not None:
            summary.update(result)
            if self.is_main:
                files.write_json(self.dir / "metrics_eval.json", summary)
        return summary

    def _share_rank0_weights(self) -> None:
        distributed.broadcast_states(*[module for module in (self.model, self.loss) if module is not None])

    def _dev_row(self, epoch: int) -> dict[str, float]:
        row = next((row for row in self.state.metrics if row["epoch"] == epoch), {})
        return {name[len("dev_"):]: value for name, value in row.items() if name.startswith("dev_") and value != ""}


class _BatchObjective(nn.Module):
    """The stage's network and loss as one module whose forward is the trainer's `forward_batch`,
    so that DistributedDataParallel sees (and averages the gradients of) every trained parameter."""

    def __init__(self, trainer: StageTrainer) -> None:
        super().__init__()
        self.network = trainer.model
        self.loss = trainer.loss
        self._forward_batch = trainer.forward_batch

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._forward_batch(*inputs)


def _csv_value(value) -> object:
    if value is None:
        return ""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
