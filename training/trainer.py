"""The one training loop: a `Trainer` owns a run, its task (training/tasks/) says what is trained.

Outputs in the experiment folder (docs/outputs.md): config.conf, metrics.csv, scores/dev_epoch_NNN.txt,
scores/eval.txt, metrics_eval.json, weights/last.ckpt and the best-k copies
weights/epoch=NNN-<selection>_dev=X.ckpt, weights/best.ckpt (the best dev epoch's weights) and
weights/calibration.json (fitted on dev with the evaluated weights, scoring/calibration.py); system sasv's
evaluation writes the report/ folder, scoring/report.py.

Rules every run follows:
  * `weights/last.ckpt` holds the whole state: weights, optimiser, scheduler, grad scaler, RNG states,
    best-k list, metrics log and the position inside the epoch with its partial sums. It is written at
    each epoch end, every `checkpoint_interval_steps` steps and on SIGINT/SIGTERM at the next batch
    boundary; non-finite weights are never written. Batches are pure functions of (seed, epoch, index)
    and loaders draw from their own generators, so a resumed run trains exactly as one never stopped.
  * Under torchrun every rank runs this loop on its share of each global batch and keeps the same state
    (losses are summed over the ranks, signals agreed before each step); rank 0 alone writes and logs.
  * A non-finite loss stops the run naming the last good checkpoint, or with `nonfinite_loss: skip`
    leaves the batch out; an epoch of nothing but such batches has diverged.
"""
from __future__ import annotations

import copy
import errno
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.datasets import ResumePositionError, iterate_batches
from models.checkpoint import CheckpointError, load_checkpoint, nonfinite_key
from runtime import distributed
from runtime.compiling import CompiledNetworks
from runtime.config import Config, ConfigError
from runtime.device import resolve_amp, seed_everything
from runtime.errors import WorkerDied, worker_died
from runtime.files import atomic_copy, write_csv, write_json
from runtime.signals import RunInterrupted, StopRequest, signal_name
from scoring.calibration import CALIBRATION_FILE, calibration_text, write_calibration
from scoring.extraction import ScoringError
from training.loggers import make_logger
from training.state import (
    TrainingError,
    TrainState,
    choose_resume_checkpoint,
    config_changes,
    last_good_checkpoint,
    restore_rng,
    rng_snapshot,
    tidy_after_resume,
)
from training.task import Run, Task
from training.tasks import TASKS

BEST_K_NAME = re.compile(r"epoch=(\d+)-.*_dev=.*\.ckpt")


class Trainer:
    """Trains the task the config's `system` names; see the module docstring for the rules."""

    def __init__(self, config: Config, experiment_dir: Path, device: torch.device, *, progress: bool = True) -> None:
        self.config = config
        self.dir = experiment_dir
        self.device = device
        self.is_main = distributed.is_main()
        self.progress = progress and self.is_main
        self.amp = amp = resolve_amp(config["amp"], device)
        seed_everything(config["seed"])
        # Under torchrun a second signal is ignored: torchrun forwards the scheduler's signal that the workers
        # may also get directly, and kills them itself after its --shutdown-timeout.
        self.stop = StopRequest(second_aborts=distributed.world_size() == 1)
        self.resume_hint = "run the same command with --resume"  # main.py puts the exact command here
        self.logger = make_logger(config, experiment_dir, self.is_main)  # a refusal comes before the task is built
        self.compiled = CompiledNetworks(self.warn)  # `compile: true`: eager again when the compiler fails
        run = Run(config=config, dir=experiment_dir, device=device, amp=amp, is_main=self.is_main,
                  progress=self.progress, log=self.log, warn=self.warn, poll=self._poll,
                  resume_hint=lambda: self.resume_hint, compiled=self.compiled)
        if config["system"] not in TASKS:
            raise ConfigError(f"{config.source}: system: unknown task {config['system']!r}; known: "
                              f"{', '.join(sorted(TASKS))}")
        self.task: Task = TASKS[config["system"]](config, run)
        distributed.decorrelate_rng(config["seed"], 0)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.state = TrainState()
        self._saved: TrainState | None = None  # state of the newest checkpoint written or restored
        self._saved_path: Path | None = None  # the file that holds it (last.ckpt, or a best-k copy until copied)
        self._clock = time.time()  # wall-clock time accounted into state.seconds so far
        self._objective: torch.nn.Module | None = None  # the task's objective, behind DDP under torchrun

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.task.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.task.scheduler

    # ------------------------------------------------------------- output
    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def warn(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stderr)

    def _poll(self, what: str):
        return lambda: self.stop.check(what)

    # ------------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        return {**self.state.to_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), **rng_snapshot()}

    def save_resumable(self, path: Path | None = None) -> Path:
        """Checkpoint the whole training state (default weights/last.ckpt); refuses non-finite weights.

        A write that fails for lack of space stops the run naming the last good checkpoint, which the
        atomic write left as it was."""
        path = path or self.dir / "weights" / "last.ckpt"
        self.account_time()
        # What load_checkpoint would refuse is never written: parameters, buffers (BatchNorm statistics)
        # and the optimiser state.
        what, where = "parameters", next((f"{type(module).__name__} tensor {key}" for module in self.task.modules()
                                          if (key := nonfinite_key(module.state_dict())) is not None), None)
        if where is None and (key := nonfinite_key(self.optimizer.state_dict())) is not None:
            what, where = "optimiser state", f"optimiser tensor {key}"
        if where is not None:
            raise TrainingError(f"the {what} became NaN/inf by step {self.state.step}; not overwriting the "
                                f"checkpoint ({where} holds NaN/inf). {self.last_good()}")
        # The other ranks' random streams (their dropout masks) too: reseeding them on resume would train
        # otherwise than a run never stopped. A collective: every rank saves at the same points.
        others = distributed.gather_objects(rng_snapshot())[1:]
        if self.is_main:
            self._write(path, lambda: self.task.save(path, {**self.training_state(),
                                                            **({"rank_rng": others} if others else {})}))
            self.logger.flush()  # the steps this checkpoint covers are logged before a kill could lose them
        self._saved = TrainState.from_dict(self.state.to_dict())
        self._saved_path = path
        return path

    def _write(self, path: Path, write: Callable[[], object]) -> None:
        """Run `write` (an atomic write of `path`); a disk that is full or refuses it stops the run naming
        `path` and the last good checkpoint, which the atomic write left as it was."""
        try:
            write()
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise
            raise TrainingError(f"cannot write {path}: {error.strerror}; training stopped. "
                                f"{self.last_good()}") from None

    def last_good(self) -> str:
        return last_good_checkpoint(self.dir, self._saved, self._saved_path)

    def account_time(self) -> None:
        now = time.time()
        self.state.seconds += now - self._clock
        self._clock = now

    def resume(self, path: Path, checkpoint=None) -> None:
        """Restore the whole training state from one of this task's resumable checkpoints (files untouched)."""
        checkpoint = checkpoint or load_checkpoint(path)
        if not self.task.resumable(checkpoint):
            raise CheckpointError(f"{path}: not a resumable training checkpoint of main.py for system "
                                  f"{self.config['system']} (no optimiser state); resume from weights/last.ckpt")
        self._check_resume_config(checkpoint.config)
        self.task.load_weights(path, checkpoint)
        saved = checkpoint.meta
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"]:  # empty when written with the scaler off (no fp16 on that device)
            self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState.from_dict(saved)  # older checkpoints lack the in-epoch fields: an epoch end
        restore_rng(saved)
        others = saved.get("rank_rng", [])  # ranks 1, 2, ... of the run that wrote it
        if distributed.rank() > 0 and len(others) == distributed.world_size() - 1:
            restore_rng(others[distributed.rank() - 1])
        else:
            distributed.decorrelate_rng(self.config["seed"], self.state.step)
        self._saved = TrainState.from_dict(self.state.to_dict())
        self._saved_path = path
        self._clock = time.time()

    def _check_resume_config(self, saved: dict[str, Any] | None) -> None:
        """Refuse to resume under a config that changes what is trained (the error names the keys)."""
        if saved is None:
            return
        current = self.task.stored_config()
        changes = config_changes(saved, current) + [
            f"{key} (run: {saved.get(key)!r}, now: {current[key]!r})"
            for key in self.task.fixed_on_resume() if saved.get(key) != current[key]]
        if changes:
            raise ConfigError(f"{self.config.source}: cannot resume {self.dir}: the config differs from the "
                              f"run's in {'; '.join(changes)}; restore it, or pass --overwrite to start again")

    def resume_latest(self) -> Path | None:
        """Restore the newest readable resumable checkpoint (normally weights/last.ckpt; a best-k copy when
        last.ckpt is damaged) and tidy the folder; None when the run has none yet."""
        chosen = choose_resume_checkpoint(self.dir / "weights", self.task.resumable, self.warn)
        if chosen is None:
            return None
        path, checkpoint, unreadable = chosen
        self.resume(path, checkpoint)
        tidy_after_resume(self.dir, path, self.state, unreadable, self.config["epoch"], self.task.metric_columns,
                          BEST_K_NAME, self.warn)
        self._saved_path = self.dir / "weights" / "last.ckpt"  # tidied: it holds the restored state
        return path

    # ------------------------------------------------------------- the run
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, then score the eval set with the best checkpoint; returns its summary."""
        with self.stop:
            try:
                self.start_training()
                self.logger.open(self.state.step)
                if self.is_main:
                    (self.dir / "weights").mkdir(parents=True, exist_ok=True)
                self._clock = time.time()
                for epoch in range(self.state.epoch, self.config["epoch"]):
                    self._check_stop(f"{self.task.label}epoch {epoch + 1}")
                    self.train_epoch(epoch)
                    self._finish_epoch(epoch)
                return self.test()
            except WorkerDied as error:
                raise TrainingError(f"{error}; training stopped. {self.last_good()}") from None
            except RuntimeError as error:
                died = worker_died(error)
                if died is not None:
                    raise TrainingError(f"{died}; training stopped. {self.last_good()}") from None
                if not distributed.peer_lost(error):  # under torchrun: another process died or hung up
                    raise
                text = str(error).strip()
                first_line = text.splitlines()[0] if isinstance(error, torch.distributed.DistError) and text \
                    else "the connection to it was lost"
                raise TrainingError(f"another torchrun process stopped ({first_line}); training stopped. "
                                    f"{self.last_good()}") from None
            finally:
                self.logger.close()

    def start_training(self) -> None:
        """Let the task build what training iterates, and put its objective behind DDP under torchrun."""
        self.task.start_training()
        self._objective = distributed.wrap_for_training(self.task.objective, self.device)

    def train_epoch(self, epoch: int) -> None:
        """Train epoch `epoch` from batch `state.batch` on (0 unless resumed mid-epoch)."""
        try:
            batches, n_batches = self.task.start_epoch(epoch, self.state.batch)
        except ResumePositionError as error:  # e.g. a training protocol edited under the same path
            raise CheckpointError(f"{self._saved_path}: cannot resume at {self.task.label}epoch {epoch + 1}: "
                                  f"{error}; the training data changed since the checkpoint was written: restore "
                                  f"it, or pass --overwrite to start again") from None
        if self.state.batch >= n_batches:
            return  # trained before a restart; only the validation is pending
        for module in self.task.modules():
            module.train()
        interval = self.config["checkpoint_interval_steps"]
        label = self.task.label
        where = lambda: f"{label}epoch {epoch + 1}, batch {self.state.batch}/{n_batches}"  # noqa: E731
        iterator = iterate_batches(batches)
        with tqdm(total=n_batches, initial=self.state.batch, unit="batch",
                  desc=f"{label}epoch {epoch + 1}/{self.config['epoch']}", disable=not self.progress) as bar:
            while True:
                try:
                    batch = next(iterator)
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
                    self._interrupted(where(), signum)
                stepped = self._train_step(batch, epoch, n_batches)
                self.state.batch += 1
                bar.update()
                if self.state.loss_count:
                    bar.set_postfix(loss=f"{self.state.loss_sum / self.state.loss_count:.4f}")
                if stepped and interval and self.state.step % interval == 0:
                    self.save_resumable()
        signum = distributed.agreed_signal(self.stop.requested)
        if signum is not None:  # during the last batch: its training is kept, what follows is redone
            self._interrupted(where(), signum)

    def _train_step(self, batch: Any, epoch: int, n_batches: int) -> bool:
        """Forward, loss, and an optimisation step unless the loss is not finite; whether a step was taken
        (not with a non-finite loss, nor when the fp16 grad scaler skipped it). With compiled networks, a
        compiler failure in the step puts back what the step changed and takes it again eagerly."""
        inputs, redraws = self.task.split_batch(batch)
        if not self.compiled.active:
            return self._step(inputs, redraws, epoch, n_batches)
        before = copy.copy(self.state)  # a step changes only its scalar fields

        def undo() -> None:
            self.state = before
        return self.compiled.run_step(lambda: self._step(inputs, redraws, epoch, n_batches), self.task.modules(),
                                      undo)

    def _step(self, inputs: tuple[torch.Tensor, ...], redraws: torch.Tensor, epoch: int, n_batches: int) -> bool:
        loss, accuracy = self._objective(*inputs)
        # Means / totals over the ranks, so that every rank keeps the same state and takes the same decision.
        world = distributed.world_size()
        accuracy = accuracy.detach() if accuracy is not None else torch.zeros((), device=loss.device)
        step_loss, step_accuracy, redrawn = distributed.sum_over_ranks(loss.detach() / world, accuracy / world,
                                                                        redraws.sum())
        self.state.redrawn += int(redrawn)
        if not bool(torch.isfinite(step_loss)):
            return self._nonfinite_loss(step_loss.item(), epoch, n_batches)
        self.state.last_lr = float(self.optimizer.param_groups[0]["lr"])
        rates = self.logger.rates(self.optimizer)  # the ones this step uses
        stepped = self._optimise(loss)
        self.state.loss_sum += step_loss.item()
        self.state.loss_count += 1
        self.state.accuracy_sum += step_accuracy.item()
        if stepped:
            self.logger.step(self.state.step, step_loss.item(), rates)
        return stepped

    def _optimise(self, loss: torch.Tensor) -> bool:
        """One optimisation step; False when the fp16 grad scaler skipped it (not counted)."""
        if not optimisation_step(loss, self.optimizer, self.scaler, self.task.trainable_parameters(),
                                 self.config["gradient_clip"]):
            return False
        self.state.step += 1
        every = self.task.scheduler_every
        if every and self.state.step % every == 0:
            self.scheduler.step()
        return True

    def _nonfinite_loss(self, value: float, epoch: int, n_batches: int) -> bool:
        """A batch's loss (summed over the ranks) is NaN/inf: leave it out (skip; returns False) or stop."""
        label = self.task.label
        if self.config["nonfinite_loss"] == "skip":
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_batches += 1
            self.warn(f"warning: non-finite training loss ({value}) at {label}epoch {epoch + 1}, batch "
                      f"{self.state.batch + 1}/{n_batches}; batch left out (nonfinite_loss: skip)")
            return False
        raise TrainingError(f"non-finite training loss ({value}) at {label}epoch {epoch + 1}, step "
                            f"{self.state.step + 1} (batch {self.state.batch + 1}/{n_batches}); training stopped. "
                            f"{self.last_good()}, or set nonfinite_loss: skip to leave such batches out")

    def _check_stop(self, where: str) -> None:
        signum = distributed.agreed_signal(self.stop.requested)
        if signum is not None:
            raise RunInterrupted(f"interrupted by {signal_name(signum)} before {where}; nothing was trained since "
                                 f"the last checkpoint. {self.last_good()}", signum)

    def _interrupted(self, where: str, signum: int) -> None:
        """Save and stop: raises RunInterrupted with the command that goes on."""
        path = self.save_resumable()
        distributed.barrier()  # the others wait for rank 0's checkpoint: torchrun ends them all once one exits
        raise RunInterrupted(f"interrupted by {signal_name(signum)} at {where} (step {self.state.step}); saved "
                             f"{path}; resume with: {self.resume_hint}", signum)

    def _share_rank0_weights(self) -> None:
        distributed.broadcast_states(*self.task.modules())  # every rank scores its share with rank 0's weights

    def _validate(self, epoch: int) -> dict[str, Any]:
        state = self.state
        self._share_rank0_weights()
        try:
            return self.task.validate(epoch)
        except RunInterrupted as interruption:
            self._interrupted(f"the dev scoring of {self.task.label}epoch {epoch + 1} (its training is saved)",
                              interruption.signum)
        except ScoringError as error:  # NaN/inf scores where no bad audio explains them
            cause = (f"after {self.task.label}epoch {epoch + 1}, in which {state.skipped_batches} of {state.batch} "
                     f"batches had a non-finite loss" if state.skipped_batches else "")
            raise TrainingError(f"{error} {cause}: training has diverged. {self.last_good()}".replace(" :", ":")) \
                from None
        raise AssertionError("unreachable")

    def _finish_epoch(self, epoch: int) -> None:
        """Validate when due, log the epoch, step a per-epoch scheduler, and checkpoint: the best-k copy
        first (then copied to last.ckpt), else last.ckpt; metrics.csv last."""
        config, state, task = self.config, self.state, self.task
        if state.skipped_batches and not state.loss_count:
            raise TrainingError(f"every batch of {task.label}epoch {epoch + 1} had a non-finite loss "
                                f"({state.skipped_batches} left out); training has diverged. {self.last_good()}")
        if state.skipped_batches or state.redrawn:
            self.warn(f"warning: {task.label}epoch {epoch + 1}: {state.skipped_batches} batch(es) left out for a "
                      f"non-finite loss, {state.redrawn} training {task.item}(s) drawn again because of bad audio")
        count = state.loss_count
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": state.step,
            "lr": state.last_lr if task.lr_column == "last_step" else self.optimizer.param_groups[0]["lr"],
            "train_loss": state.loss_sum / count if count else math.nan,
            "train_accuracy": state.accuracy_sum / count if count else math.nan,
            "skipped_batches": state.skipped_batches, task.redrawn_column: state.redrawn}
        due = (epoch + 1) % config["val_interval_epoch"] == 0 or epoch + 1 == config["epoch"]
        dev = self._validate(epoch) if due else {}
        if due:
            row.update({f"dev_{name}": value for name, value in dev.items()})
            self.log(f"{task.label}epoch {epoch + 1}: loss {row['train_loss']:.4f}  {task.dev_text(dev)}")
        if not task.scheduler_every:  # after validation: a checkpoint taken in it has not stepped
            with warnings.catch_warnings():  # resumed in the validation, this process has not stepped Adam yet
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
        self.account_time()
        row["seconds"] = round(state.seconds, 3)
        state.metrics.append({name: _csv_value(row.get(name)) for name in task.metric_columns})
        self.state = state = state.next_epoch()
        value = dev.get(task.selection)
        dropped: list[dict] = []
        best_k = None
        if value is not None:
            best_k = {task.selection: float(value), "epoch": epoch + 1,
                      "path": f"weights/epoch={epoch + 1:03d}-{task.selection}_dev={value:.5f}.ckpt"}
            ranked = sorted(state.best + [best_k], key=lambda e: (e[task.selection], e["epoch"]))
            state.best, dropped = ranked[:config["save_top_k"]], ranked[config["save_top_k"]:]
        if best_k is not None and best_k in state.best:
            self.save_resumable(self.dir / best_k["path"])
            last = self.dir / "weights" / "last.ckpt"
            if self.is_main:
                self._write(last, lambda: atomic_copy(self.dir / best_k["path"], last))
            self._saved_path = last
            if state.best[0] is best_k:
                self._write(self.dir / "weights" / "best.ckpt", lambda: task.on_new_best(epoch + 1, dev))
        else:
            self.save_resumable()
        if self.is_main:
            for old in dropped:
                (self.dir / old["path"]).unlink(missing_ok=True)
            write_csv(self.dir / "metrics.csv", task.metric_columns, state.metrics)
            self.logger.epoch(state.metrics[-1])  # after the checkpoint that holds it: a resume never repeats it

    def test(self) -> dict[str, Any]:
        """Score the eval set with the best dev checkpoint (or the last one when none was ranked)."""
        best = self.state.best[0] if self.state.best else None
        path = self.dir / best["path"] if best else self.dir / "weights" / "last.ckpt"
        if self.is_main:  # under torchrun rank 0 reads it and the others get its weights
            self.task.load_weights(path)
            if best:
                self._refresh_best_copy(best["epoch"])
        self._share_rank0_weights()
        summary = {"checkpoint": str(path.relative_to(self.dir)),
                   "epoch": best["epoch"] if best else self.state.epoch,
                   "best_dev": self._dev_row(best["epoch"]) if best else None}
        try:
            # Fitted on dev with the weights evaluated, before the eval set is scored (docs/calibration.md).
            calibration = self.task.calibrate(summary["epoch"], summary["checkpoint"])
            if calibration is not None and self.is_main:
                target = self.dir / "weights" / CALIBRATION_FILE
                self._write(target, lambda: write_calibration(target, calibration))
            result = self.task.evaluate()
        except RunInterrupted as interruption:
            raise RunInterrupted(f"{interruption} of the eval set; training is complete and saved; score it "
                                 f"with: {self.resume_hint}", interruption.signum) from None
        if result is not None:
            summary.update(result)
            if self.is_main:
                write_json(self.dir / "metrics_eval.json", summary)
                self.logger.evaluation(self.state.step, summary, self.dir / "report")
            text = self.task.eval_text(result)
            if text:
                self.log(f"eval ({summary['checkpoint']}): {text}")
            if result.get("calibration"):
                self.log(f"calibration (dev fit): eval {calibration_text(result['calibration'])}")
        return summary

    def _refresh_best_copy(self, epoch: int) -> None:
        """weights/best.ckpt (what users load, beside calibration.json) holds the loaded best weights: a run killed
        after writing a new best-k copy but before best.ckpt left the previous best there."""
        target = self.dir / "weights" / "best.ckpt"
        try:
            held = load_checkpoint(target).meta.get("epoch") if target.is_file() else None
        except CheckpointError:
            held = None
        if held != epoch:
            self._write(target, lambda: self.task.on_new_best(epoch, self._dev_row(epoch)))

    def _dev_row(self, epoch: int) -> dict[str, Any]:
        row = next((row for row in self.state.metrics if row["epoch"] == epoch), {})
        return {name[len("dev_"):]: value for name, value in row.items() if name.startswith("dev_") and value != ""}


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      parameters: list[torch.nn.Parameter], clip: float) -> bool:
    """Backward, optional gradient-norm clipping, optimiser step through the (fp16) grad scaler.

    False when the scaler skipped the step (fp16 gradients overflowed; it lowers its scale and
    the weights stay as they were): such a step is not counted by the schedules."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    return scale is None or scaler.get_scale() >= scale


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
