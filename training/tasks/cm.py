"""System `cm`: train AASIST / AASIST-L on an ASVspoof-layout CM protocol, with aasist's recipe.

Weighted cross-entropy ([spoof, bona fide] = [0.1, 0.9]), Adam with a per-step cosine decay,
random 64,600-sample crops, optional frequency augmentation. Validation: the CM EER of the
bona fide logit on dirs.cm_dev_list and the min t-DCF with the *dev* ASV scores (the original
aasist code used the eval ASV scores for its dev t-DCF). weights/best.ckpt initialises
system sasv through `aasist_weight`.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.datasets import partition_audio_dir
from data.protocols import SASV_KEYS, CMEntry, ProtocolError, read_cm_protocol, read_sasv_trials
from data.speaker_lists import CroppedUtteranceDataset, ShuffledEpochSampler
from scoring.score_files import write_scores
from training.tasks.asv import asvspoof_trials, build_asv_network, score_trials
from models.build import aasist_model_config
from runtime.config import Config, ConfigError, require_database
from runtime import distributed
from runtime.device import autocast_context
from scoring.extraction import extract_sharded
from training.stage_trainer import COMMON_COLUMNS, StageTrainer
from metrics import MetricError
from metrics.eer import compute_eer
from metrics.tdcf import min_tdcf
from models.aasist import AASIST
from models.checkpoint import load_asv_weights, load_cm_weights

FREQ_AUG_MAX_BANDS = 20  # models.aasist.SincFilterBank masks a run of 0..19 bands


def cosine_factor(total_steps: int, final_ratio: float) -> Callable[[int], float]:
    """lr multiplier at `step`: from 1 down to `final_ratio` along half a cosine (aasist's schedule)."""
    def factor(step: int) -> float:
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(step / total_steps * math.pi))
    return factor


def read_asv_score_file(path: str | Path, trial_path: str | Path) -> dict[str, np.ndarray]:
    """target / nontarget / spoof ASV scores of the trials in `trial_path`.

    Accepted lines (one format per file): `SRC KEY score` (the organisers' asv.*.gi.trl.scores.txt),
    `SPK UTT KEY score` or `UTT score`, the last two in trial-list order. The trial counts per key
    must match `trial_path`, so scores of another partition are refused.
    """
    path = Path(path)
    trials = read_sasv_trials(trial_path)
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ProtocolError(f"{path}: ASV score file not found") from None
    widths = {len(row) for row in rows}
    if len(widths) != 1 or not widths <= {2, 3, 4}:
        raise ProtocolError(f"{path}: expected lines 'SRC KEY score', 'SPK UTT KEY score' or 'UTT score', "
                            f"one format per file")
    width = widths.pop()
    if width == 3:
        keys = [row[1] for row in rows]
        unknown = sorted(set(keys) - set(SASV_KEYS))
        if unknown:
            raise ProtocolError(f"{path}: unknown trial keys {unknown}; expected {', '.join(SASV_KEYS)}")
        expected, found = Counter(t.key for t in trials), Counter(keys)
        if expected != found:
            raise ProtocolError(f"{path}: {dict(found)} scores, but {trial_path} has {dict(expected)} trials "
                                f"(scores of another partition?)")
    else:
        if len(rows) != len(trials):
            raise ProtocolError(f"{path}: {len(rows)} scores for {len(trials)} trials in {trial_path}")
        for number, (row, trial) in enumerate(zip(rows, trials), start=1):
            wanted = [trial.utterance] if width == 2 else [trial.speaker, trial.utterance, trial.key]
            if row[:-1] != wanted:
                raise ProtocolError(f"{path}:{number}: expected '{' '.join(wanted)} <score>' (line {number} of "
                                    f"{trial_path}), got {' '.join(row)!r}")
        keys = [t.key for t in trials]
    try:
        scores = np.array([float(row[-1]) for row in rows])
    except ValueError:
        raise ProtocolError(f"{path}: a score is not a number") from None
    return {key: scores[np.asarray(keys) == key] for key in SASV_KEYS}


class CMTrainer(StageTrainer):
    part = "cm"
    metric_columns = ("epoch", "step", "lr", "train_loss", "dev_eer", "dev_min_tdcf", *COMMON_COLUMNS)
    scheduler_interval = "step"  # the cosine is over steps, as in aasist

    def __init__(self, config: Config, experiment_dir: Path, device: torch.device, *, progress: bool = True) -> None:
        super().__init__(config, experiment_dir, device, progress=progress)
        settings = config["cm_train"]
        self.selection = settings["select_by"]
        self.database = require_database(config)
        self.model = self._build_network()
        self.place_model()
        self.criterion = nn.CrossEntropyLoss(weight=torch.tensor(settings["class_weights"], dtype=torch.float32,
                                                                 device=device))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["lr"], betas=tuple(settings["betas"]),
                                          weight_decay=settings["wd"], amsgrad=settings["amsgrad"])
        self.loader, self.epoch_sampler = self._train_loader()
        total_steps = config["epoch"] * len(self.loader)
        factor = cosine_factor(total_steps, settings["lr_min"] / settings["lr"]) \
            if settings["scheduler"] == "cosine" else _constant
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=factor)
        self.dev_entries = read_cm_protocol(config["dirs"]["cm_dev_list"])
        self.eval_entries = read_cm_protocol(config["dirs"]["cm_eval_list"])
        self._asv_scores: dict[str, dict[str, np.ndarray] | None] = {}

    def _build_network(self) -> AASIST:
        config = self.config
        try:
            model = AASIST(aasist_model_config(config))
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise ConfigError(f"{config.source}: invalid AASIST model_config ({error!r})") from None
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
        entries = read_cm_protocol(config["dirs"]["cm_trn_list"])
        audio = partition_audio_dir(self.database, "train")
        dataset = CroppedUtteranceDataset([audio / f"{e.utterance}.{config['audio_ext']}" for e in entries],
                                          [int(e.key == "bonafide") for e in entries],
                                          samples=config["cm_train"]["samples"], seed=config["seed"],
                                          sample_rate=config["sample_rate"], resample=config["resample"],
                                          on_bad_audio=config["on_bad_audio"])
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
        trial_path = config["dirs"][f"sasv_{partition}_trial"]
        given = settings["asv_scores"][partition]
        if given:
            return read_asv_score_file(given, trial_path)
        if not settings["asv_model"]:
            return None
        cached = self.dir / "asv_scores" / f"{partition}.txt"
        if not distributed.broadcast_object(cached.is_file()):  # once per run: the ASV model is fixed
            network = build_asv_network(config)
            load_asv_weights(network, settings["asv_model"])
            network.to(self.device)
            trials = asvspoof_trials(config, partition, keys=SASV_KEYS)
            scores = score_trials(network, trials, self.device, batch_size=config["eval_batch_size"],
                                  num_workers=config["loader"]["n_workers"], sample_rate=config["sample_rate"],
                                  resample=config["resample"], progress=self.progress and self.is_main,
                                  on_bad_audio=config["on_bad_audio"])
            if self.is_main:
                write_scores(cached, trials.columns, scores)
            distributed.barrier()  # the file the other ranks read next
            self.log(f"ASV scores of the {partition} trials ({settings['asv_model']}) -> {cached}")
        return read_asv_score_file(cached, trial_path)

    # ------------------------------------------------------------- training and scoring
    def start_epoch(self, epoch: int, batch: int) -> int:
        self.epoch_sampler.set_epoch(epoch, batch * self.config["batch_size"])
        return self.epoch_sampler.n_items // self.config["batch_size"]  # drop_last: whole batches only

    def forward_batch(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        waves = waves.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp):
            _, logits = self.model(waves, freq_aug=self.config["cm_train"]["freq_aug"])
        return self.criterion(logits.float(), labels), None

    def _score(self, partition: str, entries: Sequence[CMEntry], what: str) -> tuple[np.ndarray, dict]:
        """Bona fide logits of `entries` and the counts of those not scored (bad audio)."""
        config, bad_audio = self.config, {}
        audio = partition_audio_dir(self.database, partition)
        self.model.eval()
        paths = [audio / f"{e.utterance}.{config['audio_ext']}" for e in entries]
        logits = extract_sharded(paths, config["test_samples"], {"logits": lambda wave: self.model(wave)[1]},
                                 device=self.device, batch_size=config["eval_batch_size"],
                                 num_workers=config["loader"]["n_workers"], sample_rate=config["sample_rate"],
                                 resample=config["resample"], desc=f"{partition} CM",
                                 progress=self.progress and self.is_main, on_bad_audio=config["on_bad_audio"],
                                 bad_audio=bad_audio, poll=self.poll(f"the {what} scoring"))["logits"]
        scores = logits[:, 1].numpy()  # bona fide logit: higher = bona fide
        return scores, self.scored(scores, bad_audio, sum(str(path) in bad_audio for path in paths), what)

    def _metrics(self, partition: str, entries: Sequence[CMEntry], scores: np.ndarray, name: str
                 ) -> dict[str, float | None]:
        if self.is_main:
            columns = ([e.utterance for e in entries], [e.attack for e in entries], [e.key for e in entries])
            write_scores(self.dir / "scores" / name, columns, scores)
        is_bona = np.array([e.key == "bonafide" for e in entries])
        scores, is_bona = scores[np.isfinite(scores)], is_bona[np.isfinite(scores)]  # NaN: bad audio, not scored
        result: dict[str, float | None] = {"eer": compute_eer(scores[is_bona], scores[~is_bona])[0], "min_tdcf": None}
        asv = self.asv_scores(partition)
        if asv is not None:
            asv = {key: values[np.isfinite(values)] for key, values in asv.items()}  # NaN: bad audio
            try:
                result["min_tdcf"] = min_tdcf(asv["target"], asv["nontarget"], asv["spoof"],
                                              scores[is_bona], scores[~is_bona])
            except MetricError as error:
                self.log(f"{partition} min t-DCF undefined: {error}")
        return result

    def validate(self, epoch: int) -> dict[str, float | None]:
        scores, _ = self._score("dev", self.dev_entries, f"dev epoch {epoch + 1}")
        return self._metrics("dev", self.dev_entries, scores, f"dev_epoch_{epoch + 1:03d}.txt")

    def evaluate_final(self) -> dict | None:
        scores, skipped = self._score("eval", self.eval_entries, "eval")
        return {**self._metrics("eval", self.eval_entries, scores, "eval.txt"), "n_utterances": len(scores),
                **skipped}

    def fixed_on_resume(self) -> tuple[str, ...]:
        return ("epoch",) if self.config["cm_train"]["scheduler"] == "cosine" else ()  # the cosine spans all epochs

    def fit(self) -> dict:
        if self.asv_scores("dev") is None:
            self.log("no dev ASV scores (cm_train.asv_scores.dev or cm_train.asv_model): the dev min t-DCF is skipped")
        return super().fit()

    def summary_text(self, summary: dict) -> str:
        best = summary.get("best_dev") or {}
        text = f"best dev {self.selection} {best[self.selection]:.4f} (epoch {summary['epoch']})" \
            if best.get(self.selection) is not None else f"epoch {summary['epoch']}"
        if "eer" in summary:
            tdcf = f"{summary['min_tdcf']:.4f}" if summary["min_tdcf"] is not None else "n/a (no eval ASV scores)"
            text += f" | eval CM EER {100 * summary['eer']:.2f}%  min t-DCF {tdcf}"
        return text + f" | CM weights: {self.dir / 'weights' / 'best.ckpt'}"


def _constant(step: int) -> float:
    return 1.0
