"""The SASV training loop: one forward pass per batch, best-k checkpoints, dev/eval scoring, resume.

Outputs in the experiment folder (see README, "Output files"):
  config.conf, metrics.csv, scores/dev_epoch_NNN.txt, scores/eval.txt,
  metrics_eval.json, weights/last.ckpt, weights/epoch=NNN-sasv_eer_dev=X.ckpt

Resuming: every checkpoint holds the whole training state (weights, optimiser, scheduler,
grad scaler, RNG states, best-k list, metrics log, and the position inside the epoch with
its partial loss sums). Training trials are a pure function of (seed, epoch, index) and the
DataLoader draws its worker seeds from its own generator, so a run resumed from any
checkpoint trains on the same batches with the same random numbers as one never stopped.
`weights/last.ckpt` is written at the end of each epoch, every `checkpoint_interval_steps`
steps, and on SIGINT/SIGTERM at the next batch boundary.

Under torchrun (runtime/distributed.py) every rank runs this loop on its share of each global
batch and keeps the same state; rank 0 alone writes files and logs.
"""
from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from runtime.files import atomic_copy
from data.datasets import EpochSampler, leave_signals_to_main_process
from data.trials import TrialSampler
from runtime import distributed
from models.build import apply_kernel_options, build_sasv_model
from runtime.config import Config, ConfigError
from scoring.extraction import EmbeddingCache, SASVScorer, ScoringError, ScoringInputs, TrialScores
from scoring.inputs import scoring_inputs, training_sampler
from training.frozen_cache import training_inputs
from training.loop import ResumableRun
from training.objective import TrainingForward, build_auxiliary_speaker_loss
from training.state import TrainingError, TrainState, choose_resume_checkpoint, optimisation_step, tidy_after_resume
from runtime.device import resolve_amp, seed_everything
from runtime import files
from scoring.score_files import write_scores
from runtime.signals import RunInterrupted, StopRequest
from metrics.adcf import min_adcf
from metrics.eer import sasv_eers
from models.checkpoint import CheckpointError, load_checkpoint, load_sasv_weights, save_checkpoint

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "dev_sasv_eer", "dev_sv_eer", "dev_spf_eer",
                  "dev_min_a_dcf", "dev_skipped_trials", "skipped_batches", "redrawn_trials", "seconds")
_BEST_K_NAME = re.compile(r"epoch=(\d+)-sasv_eer_dev=.*\.ckpt")


def score_metrics(scores: np.ndarray, keys: list[str], skipped: np.ndarray | None = None) -> dict[str, float]:
    """SASV-EER, SV-EER, SPF-EER and min a-DCF over the trials not `skipped` (bad audio)."""
    scores = np.asarray(scores)
    keep = np.ones(len(scores), dtype=bool) if skipped is None else ~np.asarray(skipped, dtype=bool)
    kept_scores = scores[keep]
    kept_keys = [key for key, use in zip(keys, keep) if use]
    bad = int((~np.isfinite(kept_scores)).sum())
    if bad:
        raise ScoringError(f"{bad} of {len(kept_scores)} trial scores are NaN/inf: the model's output is not finite")
    result = sasv_eers(kept_scores, kept_keys)
    result["min_a_dcf"] = float(min_adcf(kept_scores, kept_keys)[0])
    return result


def skipped_summary(trial_scores: TrialScores, what: str, shown: int = 3) -> str:
    """One line saying how many trials were skipped and because of which files."""
    files = sorted(trial_scores.bad_audio)
    listed = "; ".join(f"{path}: {trial_scores.bad_audio[path]}" for path in files[:shown])
    more = f"; and {len(files) - shown} more" if len(files) > shown else ""
    return (f"warning: {what}: {trial_scores.n_skipped} of {len(trial_scores.scores)} trials skipped "
            f"(on_bad_audio: skip; score nan, left out of the EERs) because of {len(files)} bad audio "
            f"file(s): {listed}{more}")


def write_trial_scores(path: Path, inputs: ScoringInputs, scores: np.ndarray) -> None:
    trials = inputs.trials
    write_scores(path, ([t.speaker for t in trials], [t.utterance for t in trials],
                                  [t.key for t in trials]), scores)


class Trainer(ResumableRun):
    def __init__(self, config: Config, experiment_dir: Path, device: torch.device, *, progress: bool = True) -> None:
        self.config = config
        self.dir = experiment_dir
        self.device = device
        self.is_main = distributed.is_main()  # under torchrun only rank 0 writes files, logs and shows progress
        self.progress = progress = progress and self.is_main
        self.amp = resolve_amp(config["amp"], device)
        seed_everything(config["seed"])
        self.model, self.loss = build_sasv_model(config)
        self.model.to(device)
        self.loss.to(device)
        self.speaker_loss: torch.nn.Module | None = None  # speaker_loss.weight 0: the original recipe
        if config["speaker_loss"]["weight"] > 0:
            self.speaker_loss = build_auxiliary_speaker_loss(config, len(self._training_trials[0].speakers)).to(device)
        # Both before the optimiser takes the parameters, and before DDP wraps the model (_train_loader).
        self.model = distributed.synchronise_batchnorm(self.model, device)
        apply_kernel_options(self.model, device, channels_last=config["channels_last"],
                             compile=distributed.compile_allowed(config["compile"], device, self.warn))
        self.train_forward: torch.nn.Module | None = None  # set by _train_loader: waveforms or cached embeddings
        distributed.decorrelate_rng(config["seed"], 0)
        optim = config["optim"]
        groups = [{"params": list(self.model.trainable_parameters()), "name": "model"},
                  {"params": list(self.loss.parameters()), "name": "oc_center"}]
        if self.speaker_loss is not None:
            groups.append({"params": list(self.speaker_loss.parameters()), "name": "speaker_loss"})
        self.optimizer = torch.optim.Adam(groups, lr=optim["lr"], weight_decay=optim["wd"])
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=optim["gamma"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        self.state = TrainState()
        self.embedding_cache = EmbeddingCache()
        self.scorer = SASVScorer(self.model, self.loss, device, batch_size=config["eval_batch_size"],
                                 num_workers=config["loader"]["n_workers"], amp="off",
                                 sample_rate=config["sample_rate"], resample=config["resample"], progress=progress,
                                 on_bad_audio=config["on_bad_audio"])
        # Under torchrun a second signal is ignored: torchrun forwards the scheduler's signal that the workers
        # may also get directly, and kills them itself after its --shutdown-timeout.
        self.stop = StopRequest(second_aborts=distributed.world_size() == 1)
        self.resume_hint = "run the same command with --resume"  # main.py puts the exact command here
        self._clock = time.time()

    # ----------------------------------------------------------------- data
    @functools.cached_property
    def _training_trials(self) -> tuple[TrialSampler, int]:
        """The trial sampler over the training protocol(s) and the default epoch length (read once)."""
        return training_sampler(self.config)

    def _train_loader(self) -> tuple[DataLoader, EpochSampler]:
        config = self.config
        sampler, n_utterances = self._training_trials
        # Waveform trials, or cached-embedding trials when the sub-systems are frozen (training/frozen_cache.py).
        inputs = training_inputs(config, self.model, sampler, device=self.device,
                                 experiment_dir=self.dir, progress=self.progress, log=self.log, warn=self.warn,
                                 poll=lambda: self.stop.check(f"the frozen-embedding cache build (what was embedded "
                                                              f"is kept); go on with: {self.resume_hint}"))
        dataset, workers = inputs.dataset, inputs.num_workers
        forward = TrainingForward(self.model, self.loss, self.device, self.amp, cached_features=inputs.forward,
                                  speaker_loss=self.speaker_loss, speaker_weight=config["speaker_loss"]["weight"])
        self.train_forward = distributed.wrap_for_training(forward, self.device)
        trials = config["trials_per_epoch"] or n_utterances
        if trials < config["batch_size"]:
            raise ConfigError(f"{config.source}: trials_per_epoch ({trials}) is smaller than "
                                f"batch_size ({config['batch_size']}); no training step would run")
        # Whole global batches only (the last partial one is dropped), each rank every world_size-th trial.
        epoch_sampler = EpochSampler(trials - trials % config["batch_size"], rank=distributed.rank(),
                                     world_size=distributed.world_size())
        rank_batch = distributed.per_rank_batch(config["batch_size"], config.source)
        # Its own generator: creating a loader iterator must not consume the global torch RNG
        # (dropout), or a resumed run would draw different random numbers.
        loader = DataLoader(dataset, batch_size=rank_batch, sampler=epoch_sampler, drop_last=True,
                            num_workers=workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=workers > 0,
                            worker_init_fn=leave_signals_to_main_process if workers else None,
                            generator=torch.Generator().manual_seed(config["seed"]))
        return loader, epoch_sampler

    # --------------------------------------------------------------- checkpoints
    def save(self, path: Path) -> None:
        if not self.is_main:
            return
        extra = self.training_state()
        if self.speaker_loss is not None:
            extra["speaker_loss"] = self.speaker_loss.state_dict()
        save_checkpoint(path, model=self.model, loss=self.loss, config=self.config.to_dict(), extra=extra)

    def checked_parameters(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self._loss_parameters()]

    def resume(self, path: Path, checkpoint=None) -> None:
        """Restore the full training state from one of our checkpoints."""
        checkpoint = checkpoint or load_checkpoint(path)
        extra = checkpoint.meta
        if checkpoint.format != "sasv" or "optimizer" not in extra:
            raise CheckpointError(f"{path}: not a resumable training checkpoint of main.py (no optimiser state)")
        self.check_resume_config(checkpoint.config)
        load_sasv_weights(self.model, self.loss, path)
        if self.speaker_loss is not None:
            self.speaker_loss.load_state_dict(extra["speaker_loss"])
        self.restore_training_state(extra)

    def resume_latest(self) -> Path | None:
        """Restore the newest complete checkpoint under weights/ (None: there is none) and tidy the folder."""
        chosen = choose_resume_checkpoint(self.dir / "weights",
                                          lambda c: c.format == "sasv" and "optimizer" in c.meta, self.warn)
        if chosen is None:
            return None
        path, checkpoint, unreadable = chosen
        self.resume(path, checkpoint)
        tidy_after_resume(self.dir, path, self.state, unreadable, self.config["epoch"], METRIC_COLUMNS,
                          _BEST_K_NAME, self.warn)
        return path

    # --------------------------------------------------------------- loop
    def _optimise(self, loss: torch.Tensor) -> bool:
        """One optimisation step; False when the fp16 grad scaler skipped it (not counted)."""
        parameters = list(self.model.trainable_parameters()) + self._loss_parameters()
        if not optimisation_step(loss, self.optimizer, self.scaler, parameters, self.config["gradient_clip"]):
            return False
        self.state.step += 1
        if self.state.step % self.config["optim"]["scheduler_interval"] == 0:
            self.scheduler.step()
        return True

    def train_epoch(self, loader: DataLoader, epoch_sampler: EpochSampler, epoch: int) -> None:
        """Train on epoch `epoch` from batch `self.state.batch` on (0 unless resumed mid-epoch)."""
        batch_size = loader.batch_size  # this rank's share of the step's batch_size trials
        n_batches = epoch_sampler.epoch_length // batch_size
        if self.state.batch >= n_batches:
            return  # trained before a restart; only the validation is pending
        self.model.train()
        self.loss.train()
        epoch_sampler.set_epoch(epoch, start=self.state.batch * batch_size)
        self.run_batches(loader, epoch, n_batches, lambda batch: self._train_step(*batch, epoch=epoch,
                                                                                 n_batches=n_batches))

    def _loss_parameters(self) -> list[torch.nn.Parameter]:
        extra = list(self.speaker_loss.parameters()) if self.speaker_loss is not None else []
        return list(self.loss.parameters()) + extra

    def _train_step(self, enrollment: torch.Tensor, test: torch.Tensor, labels: torch.Tensor, redraws: torch.Tensor,
                    speakers: torch.Tensor, *, epoch: int, n_batches: int) -> bool:
        """One batch: forward, loss, and an optimisation step unless the loss is not finite; whether a step
        was taken (not with a non-finite loss, nor when the fp16 grad scaler skipped it)."""
        enrollment = enrollment.to(self.device, non_blocking=True)
        test = test.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        loss = self.train_forward(enrollment, test, labels, speakers.to(self.device, non_blocking=True))
        # Totals over the ranks, so that every rank keeps the same state and takes the same decision.
        step_loss, redrawn = distributed.sum_over_ranks(loss.detach() / distributed.world_size(), redraws.sum())
        self.state.redrawn_trials += int(redrawn)
        if bool(torch.isfinite(step_loss)):
            stepped = self._optimise(loss)
            self.state.loss_sum += step_loss.item()
            self.state.loss_count += 1
            return stepped
        return self.nonfinite_loss(step_loss.item(), epoch, n_batches)

    def evaluate(self, inputs: ScoringInputs) -> TrialScores:
        distributed.broadcast_states(self.model, self.loss)  # every rank scores its share with rank 0's weights
        cache = self.embedding_cache if not (self.model.train_asv and self.model.train_cm) else None
        return self.scorer.score_trials(inputs, cache=cache)

    def fit(self) -> dict:
        config = self.config
        with self.stop:
            self.scorer.poll = lambda: self.stop.check("scoring")
            loader, epoch_sampler = self._train_loader()
            dev_inputs = scoring_inputs(config, "dev")
            if self.is_main:
                (self.dir / "weights").mkdir(parents=True, exist_ok=True)
            self._clock = time.time()
            for epoch in range(self.state.epoch, config["epoch"]):
                self.train_epoch(loader, epoch_sampler, epoch)
                self._finish_epoch(epoch, dev_inputs)
            return self.test()

    def _finish_epoch(self, epoch: int, dev_inputs: ScoringInputs) -> None:
        """Validate when due, log the epoch, and checkpoint: best-k copy first, then last.ckpt."""
        config, state = self.config, self.state
        self.check_epoch_trained(epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "lr": self.optimizer.param_groups[0]["lr"],
                               "train_loss": state.loss_sum / state.loss_count if state.loss_count else math.nan,
                               "skipped_batches": state.skipped_batches, "redrawn_trials": state.redrawn_trials}
        due = (epoch + 1) % config["val_interval_epoch"] == 0 or epoch + 1 == config["epoch"]
        if due:
            try:
                result = self.evaluate(dev_inputs)
            except RunInterrupted as interruption:
                self.interrupted(f"the dev scoring of epoch {epoch + 1} (its training is saved)",
                                  interruption.signum)
            try:
                dev = score_metrics(result.scores, [t.key for t in dev_inputs.trials], result.skipped)
            except ScoringError as error:
                if not state.skipped_batches:
                    raise
                raise TrainingError(f"{error} after epoch {epoch + 1}, in which {state.skipped_batches} of "
                                    f"{state.batch} batches had a non-finite loss: training has diverged. "
                                    f"{self.last_good()}") from None
            if self.is_main:
                write_trial_scores(self.dir / "scores" / f"dev_epoch_{epoch + 1:03d}.txt", dev_inputs, result.scores)
            row.update({f"dev_{name}": value for name, value in dev.items()})
            row["dev_skipped_trials"] = result.n_skipped
            if result.n_skipped:
                self.warn(skipped_summary(result, f"dev epoch {epoch + 1}"))
            self.log(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}  dev SASV-EER {100 * dev['sasv_eer']:.2f}%  "
                     f"SV-EER {100 * dev['sv_eer']:.2f}%  SPF-EER {100 * dev['spf_eer']:.2f}%")
        if state.skipped_batches or state.redrawn_trials:
            self.warn(f"epoch {epoch + 1}: {state.skipped_batches} batch(es) left out for a non-finite loss, "
                      f"{state.redrawn_trials} training trial(s) drawn again because of bad audio")
        self.account_time()
        row["seconds"] = round(state.seconds, 3)
        state.metrics.append({name: row.get(name, "") for name in METRIC_COLUMNS})
        self.state = state = state.next_epoch()
        dropped: list[dict] = []
        if due:
            entry = {"sasv_eer": float(row["dev_sasv_eer"]), "epoch": epoch + 1,
                     "path": f"weights/epoch={epoch + 1:03d}-sasv_eer_dev={row['dev_sasv_eer']:.5f}.ckpt"}
            ranked = sorted(state.best + [entry], key=lambda e: (e["sasv_eer"], e["epoch"]))
            state.best, dropped = ranked[:config["save_top_k"]], ranked[config["save_top_k"]:]
            if entry in state.best:
                self.save_resumable(self.dir / entry["path"])
                if self.is_main:
                    atomic_copy(self.dir / entry["path"], self.dir / "weights" / "last.ckpt")
        if not any(entry["epoch"] == epoch + 1 for entry in state.best):
            self.save_resumable()
        if self.is_main:
            for old in dropped:
                (self.dir / old["path"]).unlink(missing_ok=True)
            files.write_csv(self.dir / "metrics.csv", METRIC_COLUMNS, state.metrics)

    def test(self) -> dict:
        """Score the eval trials with the best dev checkpoint (or the last one when none was validated)."""
        best = self.state.best[0] if self.state.best else None
        path = self.dir / best["path"] if best else self.dir / "weights" / "last.ckpt"
        if self.is_main:  # under torchrun rank 0 reads it and the others get its weights
            load_sasv_weights(self.model, self.loss, path)
        distributed.broadcast_states(self.model, self.loss)
        self.embedding_cache = EmbeddingCache()
        inputs = scoring_inputs(self.config, "eval")
        try:
            result = self.scorer.score_trials(inputs)
        except RunInterrupted as interruption:
            raise RunInterrupted(f"{interruption} of the eval trials; training is complete and saved; score them "
                                 f"with: {self.resume_hint}", interruption.signum) from None
        if self.is_main:
            write_trial_scores(self.dir / "scores" / "eval.txt", inputs, result.scores)
        metrics = score_metrics(result.scores, [t.key for t in inputs.trials], result.skipped)
        if result.n_skipped:
            self.warn(skipped_summary(result, "eval"))
        summary = {**metrics, "checkpoint": str(path.relative_to(self.dir)), "n_trials": len(inputs.trials),
                   "n_skipped_trials": result.n_skipped, "skipped_audio": dict(sorted(result.bad_audio.items())),
                   "epoch": best["epoch"] if best else self.state.epoch}
        if self.is_main:
            files.write_json(self.dir / "metrics_eval.json", summary)
        self.log(f"eval ({summary['checkpoint']}): SASV-EER {100 * metrics['sasv_eer']:.2f}%  SV-EER "
                 f"{100 * metrics['sv_eer']:.2f}%  SPF-EER {100 * metrics['spf_eer']:.2f}%  "
                 f"min a-DCF {metrics['min_a_dcf']:.4f}")
        return summary
