"""What the SASV trainer and the ASV / CM stage trainers share: the resumable training state, the
batch loop with its signal and checkpoint rules, and the non-finite-loss rule.

`ResumableRun` is a base class. A trainer sets `config`, `dir`, `device`, `is_main`, `progress`,
`state`, `optimizer`, `scheduler`, `scaler`, `stop`, `resume_hint` and `label` (the prefix of its
messages: "" for the SASV system, "asv " / "cm " for the stages), and implements `save(path)` and
`checked_parameters()`.

Rules every trainer follows:
  * `weights/last.ckpt` holds the whole state (`training_state`): weights, optimiser, scheduler,
    grad scaler, RNG states, best-k list, metrics log and the position inside the epoch with its
    partial sums. It is written at each epoch end, every `checkpoint_interval_steps` steps, and
    on SIGINT/SIGTERM at the next batch boundary; non-finite weights are never written.
  * Under torchrun the processes agree on a signal before each step, so all stop at the same batch.
  * A non-finite loss stops the run naming the last good checkpoint, or with
    `nonfinite_loss: skip` leaves the batch out; an epoch of nothing but such batches has diverged.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from data.datasets import iterate_batches
from runtime import distributed
from runtime.config import Config, ConfigError
from training.state import TrainingError, TrainState, config_changes, last_good_checkpoint, restore_rng, rng_snapshot
from runtime.signals import RunInterrupted, StopRequest, signal_name


class ResumableRun:
    config: Config
    dir: Path
    device: torch.device
    is_main: bool
    progress: bool
    state: TrainState
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    stop: StopRequest
    resume_hint: str
    label: str = ""
    _saved: TrainState | None = None  # state of the newest checkpoint written or restored
    _clock: float = 0.0  # wall-clock time accounted into state.seconds so far

    # ------------------------------------------------------------- provided by the trainer
    def save(self, path: Path) -> None:
        """Write a checkpoint holding `training_state()` (rank 0 only)."""
        raise NotImplementedError

    def checked_parameters(self) -> Iterable[torch.Tensor]:
        """The parameters that must be finite before a checkpoint is written."""
        raise NotImplementedError

    # ------------------------------------------------------------- state and checkpoints
    def training_state(self) -> dict[str, Any]:
        return {**self.state.to_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), **rng_snapshot()}

    def fixed_on_resume(self) -> tuple[str, ...]:
        """Keys that resuming may not change although RESUME_MAY_CHANGE lists them (e.g. a schedule's length)."""
        return ()

    def check_resume_config(self, saved: dict[str, Any] | None) -> None:
        """Refuse to resume under a config that changes what is trained (the error names the keys)."""
        if saved is None:
            return
        current = self.config.to_dict()
        changes = config_changes(saved, current) + [
            f"{key} (run: {saved.get(key)!r}, now: {current[key]!r})"
            for key in self.fixed_on_resume() if saved.get(key) != current[key]]
        if changes:
            raise ConfigError(f"{self.config.source}: cannot resume {self.dir}: the config differs from the "
                              f"run's in {'; '.join(changes)}; restore it, or pass --overwrite to start again")

    def restore_training_state(self, saved: dict[str, Any]) -> None:
        """Inverse of `training_state` (the weights are the trainer's business)."""
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"]:  # empty when written with the scaler off (no fp16 on that device)
            self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState.from_dict(saved)  # older checkpoints lack the in-epoch fields: an epoch end
        restore_rng(saved)
        distributed.decorrelate_rng(self.config["seed"], self.state.step)
        self._saved = TrainState.from_dict(self.state.to_dict())
        self._clock = time.time()

    def account_time(self) -> None:
        now = time.time()
        self.state.seconds += now - self._clock
        self._clock = now

    def save_resumable(self, path: Path | None = None) -> Path:
        """Checkpoint the whole training state (default weights/last.ckpt); refuses non-finite weights."""
        path = path or self.dir / "weights" / "last.ckpt"
        self.account_time()
        if not all(bool(torch.isfinite(tensor.detach()).all()) for tensor in self.checked_parameters()):
            raise TrainingError(f"the parameters became NaN/inf by step {self.state.step}; not overwriting the "
                                f"checkpoint. {self.last_good()}")
        self.save(path)
        self._saved = TrainState.from_dict(self.state.to_dict())
        return path

    def last_good(self) -> str:
        return last_good_checkpoint(self.dir, self._saved)

    def interrupted(self, where: str, signum: int) -> None:
        """Save and stop: raises RunInterrupted with the command that goes on."""
        path = self.save_resumable()
        distributed.barrier()  # the others wait for rank 0's checkpoint: torchrun ends them all once one exits
        raise RunInterrupted(f"interrupted by {signal_name(signum)} at {where} (step {self.state.step}); saved "
                             f"{path}; resume with: {self.resume_hint}", signum)

    # ------------------------------------------------------------- the batch loop
    def run_batches(self, loader: Iterable, epoch: int, n_batches: int, step: Callable[[Any], bool]) -> None:
        """Train on the batches of `loader`, from position `state.batch` of epoch `epoch` on.

        `step(batch)` trains on one batch and says whether an optimisation step was taken."""
        interval = self.config["checkpoint_interval_steps"]
        batches = iterate_batches(loader)
        where = lambda: f"{self.label}epoch {epoch + 1}, batch {self.state.batch}/{n_batches}"  # noqa: E731
        with tqdm(total=n_batches, initial=self.state.batch, unit="batch",
                  desc=f"{self.label}epoch {epoch + 1}/{self.config['epoch']}",
                  disable=not (self.progress and self.is_main)) as bar:  # closed before any message below
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception:  # noqa: BLE001 - re-raised unless a stop was requested
                    if self.stop.requested is None:
                        raise
                    # The signal also ended the DataLoader workers (fetching then fails in various ways:
                    # worker gone, shared-memory handle lost); nothing of this batch was used yet.
                    batch = None
                # Checked before the step, so that all ranks stop at the same batch (a collective under torchrun).
                signum = distributed.agreed_signal(self.stop.requested)
                if signum is not None:
                    bar.close()
                    self.interrupted(where(), signum)
                stepped = step(batch)
                self.state.batch += 1
                bar.update()
                if self.state.loss_count:
                    bar.set_postfix(loss=f"{self.state.loss_sum / self.state.loss_count:.4f}")
                if stepped and interval and self.state.step % interval == 0:
                    self.save_resumable()
        signum = distributed.agreed_signal(self.stop.requested)
        if signum is not None:  # during the last batch: its training is kept, what follows is redone
            self.interrupted(where(), signum)

    def nonfinite_loss(self, value: float, epoch: int, n_batches: int) -> bool:
        """A batch's loss (summed over the ranks) is NaN/inf: leave it out (skip; returns False) or stop."""
        if self.config["nonfinite_loss"] == "skip":
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_batches += 1
            self.warn(f"warning: non-finite training loss ({value}) at {self.label}epoch {epoch + 1}, batch "
                      f"{self.state.batch + 1}/{n_batches}; batch left out (nonfinite_loss: skip)")
            return False
        raise TrainingError(f"non-finite training loss ({value}) at {self.label}epoch {epoch + 1}, step "
                            f"{self.state.step + 1} (batch {self.state.batch + 1}/{n_batches}); training stopped. "
                            f"{self.last_good()}, or set nonfinite_loss: skip to leave such batches out")

    def check_epoch_trained(self, epoch: int) -> None:
        """Every batch of the epoch had a non-finite loss: the run has diverged."""
        if self.state.skipped_batches and not self.state.loss_count:
            raise TrainingError(f"every batch of {self.label}epoch {epoch + 1} had a non-finite loss "
                                f"({self.state.skipped_batches} left out); training has diverged. {self.last_good()}")

    # ------------------------------------------------------------- output
    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def warn(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stderr)
