"""What the ASV and CM pre-training stages share: epoch loop, best-k checkpoints, resume, final test.

Outputs in the experiment folder (see README, "Training the sub-systems"):
  config.conf, metrics.csv, scores/dev_epoch_NNN.txt, scores/eval.txt, metrics_eval.json,
  weights/last.ckpt, weights/epoch=NNN-<metric>_dev=X.ckpt (resumable, with optimiser state),
  weights/best.ckpt (weights of the best dev epoch only: what asv_weight / aasist_weight take)
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine import io as result_io
from engine.config import Config, ConfigError
from engine.signals import RunInterrupted, StopRequest, signal_name
from engine.run_state import (TrainingError, TrainState, config_changes, numpy_rng_state, python_rng_state,
                              resolve_amp, seed_everything, set_numpy_rng_state, set_python_rng_state)
from models.checkpoint import Checkpoint, CheckpointError, apply_state, load_checkpoint, save_subsystem_checkpoint

_BEST_K_NAME = re.compile(r"epoch=(\d+)-.*\.ckpt")
# Robustness options of the SASV trainer that these stages do not implement (key -> inactive value).
SASV_ONLY_KEYS = {"checkpoint_interval_steps": 0, "nonfinite_loss": "error", "on_bad_audio": "error"}


class StageTrainer:
    """Base of ASVTrainer and CMTrainer. Subclasses set `part`, `selection`, `metric_columns`, build
    `self.model`, `self.loss` (a module with parameters, or None), `self.optimizer`, `self.scheduler`,
    and implement `train_epoch`, `validate` and `evaluate_final`. Dev metrics: lower is better."""

    part: str = ""  # "asv" or "cm"
    selection: str = "eer"  # dev metric that ranks checkpoints
    metric_columns: tuple[str, ...] = ()

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
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.stop = StopRequest()
        self.resume_hint = "run the same command with --resume"  # main.py puts the exact command here
        for key, default in SASV_ONLY_KEYS.items():
            if config.get(key, default) != default:
                self._log(f"warning: {key}={config[key]!r} applies to system sasv only; the {self.part} stage "
                          f"ignores it")

    # ------------------------------------------------------------- subclass API
    def train_epoch(self, epoch: int) -> dict[str, float]:
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

    def optimise(self, loss: torch.Tensor, epoch: int) -> None:
        """Backward and optimiser step; refuses a non-finite loss, naming the last good checkpoint."""
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, step "
                                f"{self.state.step + 1}; the last good checkpoint is "
                                f"{self.dir / 'weights' / 'last.ckpt'}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config["gradient_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.config["gradient_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        self.check_stop(f"{self.part} epoch {epoch + 1} (step {self.state.step})")

    def check_stop(self, where: str) -> None:
        """After SIGINT/SIGTERM: stop here. Checkpoints are taken at epoch ends, so a partial epoch is redone."""
        if self.stop.requested is not None:
            raise RunInterrupted(f"interrupted by {signal_name(self.stop.requested)} in {where}; "
                                 f"{self.dir / 'weights' / 'last.ckpt'} holds the state after epoch "
                                 f"{self.state.epoch}; resume with: {self.resume_hint}", self.stop.requested)

    def progress_bar(self, iterable: Iterable, epoch: int) -> tqdm:
        return tqdm(iterable, desc=f"{self.part} epoch {epoch + 1}/{self.config['epoch']}", unit="batch",
                    disable=not self.progress)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------- checkpoints
    def _extra_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best": list(self.state.best),
            "metrics": list(self.state.metrics),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": numpy_rng_state(),
            "python_rng": python_rng_state(),
        }

    def _save(self, path: Path, extra: dict) -> None:
        parts = {"asv_model": self.model, "asv_loss": self.loss} if self.part == "asv" else {"cm_model": self.model}
        save_subsystem_checkpoint(path, **parts, config=self.config.to_dict(), extra=extra)

    def save(self, path: Path) -> None:
        """A resumable checkpoint: weights, loss parameters, optimiser, scheduler, counters, RNG states."""
        self._save(path, self._extra_state())

    def load_weights(self, path: Path) -> Checkpoint:
        """Load the network (and ASV loss) weights of one of this stage's checkpoints."""
        checkpoint = load_checkpoint(path)
        state = checkpoint.asv_state if self.part == "asv" else checkpoint.cm_state
        if state is None:
            raise CheckpointError(f"{path}: holds no {self.part.upper()} weights")
        apply_state(self.model, state, what=f"{self.part.upper()} model", source=path)
        if self.loss is not None and self.part == "asv":
            if checkpoint.asv_loss_state is None:
                raise CheckpointError(f"{path}: holds no ASV loss parameters to resume from")
            apply_state(self.loss, checkpoint.asv_loss_state, what="ASV loss", source=path)
        return checkpoint

    def fixed_on_resume(self) -> tuple[str, ...]:
        """Keys that resuming may not change even though the SASV trainer lets them (e.g. a schedule's length)."""
        return ()

    def resume_latest(self) -> Path | None:
        """Restore weights/last.ckpt (written at every epoch end); None when the run has none yet."""
        last = self.dir / "weights" / "last.ckpt"
        if not last.is_file():
            return None
        self.resume(last)
        return last

    def resume(self, path: Path) -> None:
        checkpoint = self.load_weights(path)
        extra = checkpoint.meta
        if "optimizer" not in extra:
            raise CheckpointError(f"{path}: holds weights only (no optimiser state); resume from weights/last.ckpt")
        if checkpoint.config is not None:
            current = self.config.to_dict()
            changes = config_changes(checkpoint.config, current) + [
                f"{key} (run: {checkpoint.config.get(key)!r}, now: {current[key]!r})"
                for key in self.fixed_on_resume() if checkpoint.config.get(key) != current[key]]
            if changes:
                raise ConfigError(f"{self.config.source}: cannot resume {self.dir}: the config differs from the "
                                  f"run's in {'; '.join(changes)}; restore it, or pass --overwrite to start again")
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self.scaler.load_state_dict(extra["scaler"])
        self.state = TrainState(epoch=extra["epoch"], step=extra["step"], best=list(extra["best"]),
                                metrics=list(extra["metrics"]))
        torch.set_rng_state(extra["torch_rng"])
        if torch.cuda.is_available() and extra["cuda_rng"]:
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        set_numpy_rng_state(extra["numpy_rng"])
        set_python_rng_state(extra["python_rng"])
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        # A run killed between saving a best-k file and last.ckpt leaves a file its state does not know.
        kept = {entry["path"] for entry in self.state.best}
        for path in (self.dir / "weights").glob("epoch=*.ckpt"):
            match = _BEST_K_NAME.fullmatch(path.name)
            if match and int(match.group(1)) > self.state.epoch and f"weights/{path.name}" not in kept:
                path.unlink()

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
            if old is not entry:
                (self.dir / old["path"]).unlink(missing_ok=True)

    # ------------------------------------------------------------- loop
    def fit(self) -> dict:
        with self.stop:
            return self._fit()

    def _fit(self) -> dict:
        config = self.config
        (self.dir / "weights").mkdir(parents=True, exist_ok=True)
        for epoch in range(self.state.epoch, config["epoch"]):
            self.check_stop(f"{self.part} epoch {epoch + 1} (before it started)")
            started = time.time()
            row: dict = {"epoch": epoch + 1, **self.train_epoch(epoch), "step": self.state.step}
            if (epoch + 1) % config["val_interval_epoch"] == 0 or epoch + 1 == config["epoch"]:
                dev = self.validate(epoch)
                row.update({f"dev_{name}": value for name, value in dev.items()})
                self.state.epoch = epoch + 1
                if dev.get(self.selection) is not None:
                    self._update_best(epoch + 1, dev[self.selection], dev)
                self._log(f"{self.part} epoch {epoch + 1}: loss {row['train_loss']:.4f}  " + "  ".join(
                    f"dev {name} {value:.4f}" for name, value in dev.items() if value is not None))
            self.state.epoch = epoch + 1
            row["seconds"] = round(time.time() - started, 3)
            self.state.metrics.append({name: _csv_value(row.get(name)) for name in self.metric_columns})
            result_io.write_csv(self.dir / "metrics.csv", self.metric_columns, self.state.metrics)
            self.save(self.dir / "weights" / "last.ckpt")
        return self.test()

    def test(self) -> dict:
        """Score the eval set with the best dev checkpoint (or the last one when none was ranked)."""
        best = self.state.best[0] if self.state.best else None
        path = self.dir / best["path"] if best else self.dir / "weights" / "last.ckpt"
        self.load_weights(path)
        summary = {"checkpoint": str(path.relative_to(self.dir)),
                   "epoch": best["epoch"] if best else self.state.epoch,
                   "best_dev": self._dev_row(best["epoch"]) if best else None}
        result = self.evaluate_final()
        if result is not None:
            summary.update(result)
            result_io.write_json(self.dir / "metrics_eval.json", summary)
        return summary

    def _dev_row(self, epoch: int) -> dict[str, float]:
        row = next((row for row in self.state.metrics if row["epoch"] == epoch), {})
        return {name[len("dev_"):]: value for name, value in row.items() if name.startswith("dev_") and value != ""}

    def _log(self, message: str) -> None:
        tqdm.write(message)


def _csv_value(value) -> object:
    if value is None:
        return ""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
