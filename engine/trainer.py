"""The SASV training loop: one forward pass per batch, best-k checkpoints, dev/eval scoring.

Outputs in the experiment folder (see README, "Output files"):
  config.conf, metrics.csv, scores/dev_epoch_NNN.txt, scores/eval.txt,
  metrics_eval.json, weights/last.ckpt, weights/epoch=NNN-sasv_eer_dev=X.ckpt
"""
from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.datasets import EpochSampler, TrainTrialDataset, partition_audio_dir
from engine.builder import build_sasv_model
from engine.config import Config
from engine.evaluation import EmbeddingCache, SASVScorer, ScoringInputs, autocast_context
from engine.experiment import scoring_inputs, training_sampler
from engine import io as result_io
from metrics.adcf import min_adcf
from metrics.eer import sasv_eers
from models.checkpoint import load_sasv_weights, save_checkpoint

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "dev_sasv_eer", "dev_sv_eer", "dev_spf_eer",
                  "dev_min_a_dcf", "seconds")


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp if device.type == "cuda" else "off"


@dataclass
class TrainState:
    """Everything a resumed run needs besides the weights and optimiser."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best: list[dict] = field(default_factory=list)  # [{"sasv_eer", "epoch", "path"}], best first
    metrics: list[dict] = field(default_factory=list)


def score_metrics(scores: np.ndarray, keys: list[str]) -> dict[str, float]:
    result = sasv_eers(scores, keys)
    result["min_a_dcf"] = float(min_adcf(scores, keys)[0])
    return result


def write_trial_scores(path: Path, inputs: ScoringInputs, scores: np.ndarray) -> None:
    trials = inputs.trials
    result_io.write_scores(path, ([t.speaker for t in trials], [t.utterance for t in trials],
                                  [t.key for t in trials]), scores)


class Trainer:
    def __init__(self, config: Config, experiment_dir: Path, device: torch.device, *, progress: bool = True) -> None:
        self.config = config
        self.dir = experiment_dir
        self.device = device
        self.progress = progress
        self.amp = resolve_amp(config["amp"], device)
        seed_everything(config["seed"])
        self.model, self.loss = build_sasv_model(config)
        self.model.to(device)
        self.loss.to(device)
        optim = config["optim"]
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.model.trainable_parameters()), "name": "model"},
             {"params": list(self.loss.parameters()), "name": "oc_center"}],
            lr=optim["lr"], weight_decay=optim["wd"])
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=optim["gamma"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.state = TrainState()
        self.embedding_cache = EmbeddingCache()
        self.scorer = SASVScorer(self.model, self.loss, device, batch_size=config["eval_batch_size"],
                                 num_workers=config["loader"]["n_workers"], amp="off",
                                 sample_rate=config["sample_rate"], resample=config["resample"], progress=progress)

    # ----------------------------------------------------------------- data
    def _train_loader(self) -> tuple[DataLoader, EpochSampler]:
        config = self.config
        sampler, n_utterances = training_sampler(config)
        dataset = TrainTrialDataset(sampler, partition_audio_dir(config["dirs"]["database"], "train"),
                                    samples=config["train_samples"], crop=config["train_crop"], seed=config["seed"],
                                    sample_rate=config["sample_rate"], resample=config["resample"],
                                    audio_ext=config["audio_ext"])
        epoch_sampler = EpochSampler(config["trials_per_epoch"] or n_utterances)
        workers = config["loader"]["n_workers"]
        loader = DataLoader(dataset, batch_size=config["batch_size"], sampler=epoch_sampler, drop_last=True,
                            num_workers=workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=workers > 0)
        if len(loader) == 0:
            raise TrainingError(f"{config.source}: trials_per_epoch ({len(epoch_sampler)}) is smaller than batch_size "
                                f"({config['batch_size']}); no training step would run")
        return loader, epoch_sampler

    # --------------------------------------------------------------- checkpoints
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
            "numpy_rng": _numpy_state(),
            "python_rng": _python_state(),
        }

    def save(self, path: Path) -> None:
        save_checkpoint(path, model=self.model, loss=self.loss, config=self.config.to_dict(),
                        extra=self._extra_state())

    def resume(self, path: Path) -> None:
        checkpoint = load_sasv_weights(self.model, self.loss, path)
        extra = checkpoint.meta
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self.scaler.load_state_dict(extra["scaler"])
        self.state = TrainState(epoch=extra["epoch"], step=extra["step"], best=list(extra["best"]),
                                metrics=list(extra["metrics"]))
        torch.set_rng_state(extra["torch_rng"])
        if torch.cuda.is_available() and extra["cuda_rng"]:
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        _set_numpy_state(extra["numpy_rng"])
        _set_python_state(extra["python_rng"])

    def _update_best(self, epoch: int, sasv_eer: float) -> None:
        weights = self.dir / "weights"
        entry = {"sasv_eer": float(sasv_eer), "epoch": epoch,
                 "path": f"weights/epoch={epoch:03d}-sasv_eer_dev={sasv_eer:.5f}.ckpt"}
        ranked = sorted(self.state.best + [entry], key=lambda e: (e["sasv_eer"], e["epoch"]))
        keep, drop = ranked[:self.config["save_top_k"]], ranked[self.config["save_top_k"]:]
        self.state.best = keep
        if entry in keep:
            self.save(self.dir / entry["path"])
        for old in drop:
            if old is not entry:
                (self.dir / old["path"]).unlink(missing_ok=True)
        weights.mkdir(parents=True, exist_ok=True)

    # --------------------------------------------------------------- loop
    def train_epoch(self, loader: DataLoader, epoch_sampler: EpochSampler, epoch: int) -> float:
        self.model.train()
        self.loss.train()
        epoch_sampler.set_epoch(epoch)
        interval = self.config["optim"]["scheduler_interval"]
        clip = self.config["gradient_clip"]
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config['epoch']}", unit="batch", disable=not self.progress)
        for enrollment, test, labels in bar:
            enrollment = enrollment.to(self.device, non_blocking=True)
            test = test.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with autocast_context(self.device, self.amp):
                feats = self.model(enrollment, test)
            loss, _ = self.loss(feats.float(), labels)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, step "
                                    f"{self.state.step + 1}; the last good checkpoint is {self.dir / 'weights' / 'last.ckpt'}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(list(self.model.trainable_parameters()) + list(self.loss.parameters()), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state.step += 1
            if self.state.step % interval == 0:
                self.scheduler.step()
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def evaluate(self, inputs: ScoringInputs) -> np.ndarray:
        cache = self.embedding_cache if not (self.model.train_asv and self.model.train_cm) else None
        return self.scorer.score(inputs, cache=cache)

    def fit(self) -> dict:
        config = self.config
        loader, epoch_sampler = self._train_loader()
        dev_inputs = scoring_inputs(config, "dev")
        (self.dir / "weights").mkdir(parents=True, exist_ok=True)
        for epoch in range(self.state.epoch, config["epoch"]):
            started = time.time()
            train_loss = self.train_epoch(loader, epoch_sampler, epoch)
            row = {"epoch": epoch + 1, "step": self.state.step, "lr": self.optimizer.param_groups[0]["lr"],
                   "train_loss": train_loss}
            if (epoch + 1) % config["val_interval_epoch"] == 0 or epoch + 1 == config["epoch"]:
                scores = self.evaluate(dev_inputs)
                dev = score_metrics(scores, [t.key for t in dev_inputs.trials])
                write_trial_scores(self.dir / "scores" / f"dev_epoch_{epoch + 1:03d}.txt", dev_inputs, scores)
                row.update({f"dev_{name}": value for name, value in dev.items()})
                self.state.epoch = epoch + 1
                self._update_best(epoch + 1, dev["sasv_eer"])
                self._log(f"epoch {epoch + 1}: loss {train_loss:.4f}  dev SASV-EER {100 * dev['sasv_eer']:.2f}%  "
                          f"SV-EER {100 * dev['sv_eer']:.2f}%  SPF-EER {100 * dev['spf_eer']:.2f}%")
            self.state.epoch = epoch + 1
            row["seconds"] = round(time.time() - started, 3)
            self.state.metrics.append({name: row.get(name, "") for name in METRIC_COLUMNS})
            result_io.write_csv(self.dir / "metrics.csv", METRIC_COLUMNS, self.state.metrics)
            self.save(self.dir / "weights" / "last.ckpt")
        return self.test()

    def test(self) -> dict:
        """Score the eval trials with the best dev checkpoint (or the last one when none was validated)."""
        best = self.state.best[0] if self.state.best else None
        path = self.dir / best["path"] if best else self.dir / "weights" / "last.ckpt"
        load_sasv_weights(self.model, self.loss, path)
        self.embedding_cache = EmbeddingCache()
        inputs = scoring_inputs(self.config, "eval")
        scores = self.scorer.score(inputs)
        write_trial_scores(self.dir / "scores" / "eval.txt", inputs, scores)
        result = score_metrics(scores, [t.key for t in inputs.trials])
        summary = {**result, "checkpoint": str(path.relative_to(self.dir)), "n_trials": len(inputs.trials),
                   "epoch": best["epoch"] if best else self.state.epoch}
        result_io.write_json(self.dir / "metrics_eval.json", summary)
        self._log(f"eval ({summary['checkpoint']}): SASV-EER {100 * result['sasv_eer']:.2f}%  SV-EER "
                  f"{100 * result['sv_eer']:.2f}%  SPF-EER {100 * result['spf_eer']:.2f}%  "
                  f"min a-DCF {result['min_a_dcf']:.4f}")
        return summary

    def _log(self, message: str) -> None:
        tqdm.write(message)


def _numpy_state() -> list:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def _set_numpy_state(state: list) -> None:
    name, keys, position, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def prepare_experiment_dir(experiment_dir: Path, config_path: Path | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run needs --resume or --overwrite."""
    existing = experiment_dir.exists() and any(experiment_dir.iterdir())
    if existing and not (resume or overwrite):
        raise FileExistsError(f"{experiment_dir} already holds a run; pass --resume to continue it "
                              f"or --overwrite to start again")
    if overwrite and experiment_dir.exists():
        shutil.rmtree(experiment_dir)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    if config_path is not None and not (resume and (experiment_dir / "config.conf").exists()):
        result_io.write_text(experiment_dir / "config.conf", Path(config_path).read_text())
