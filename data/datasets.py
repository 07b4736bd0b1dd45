"""PyTorch datasets over ASVspoof 2019 LA audio: training trials and utterance batches."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.audio import load_waveform
from data.trials import TrialSampler, trial_rng

PARTITION_FOLDERS = {"train": "ASVspoof2019_LA_train", "trn": "ASVspoof2019_LA_train",
                     "dev": "ASVspoof2019_LA_dev", "eval": "ASVspoof2019_LA_eval"}


def partition_audio_dir(database: str | Path, partition: str) -> Path:
    """`<database>/ASVspoof2019_LA_<partition>/flac`."""
    return Path(database) / PARTITION_FOLDERS[partition] / "flac"


class TrainTrialDataset(Dataset):
    """Item `(epoch, index)` -> (enrollment wave, test wave, label); trials from a TrialSampler."""

    def __init__(self, sampler: TrialSampler, audio_dir: str | Path, *, samples: int, crop: str, seed: int,
                 sample_rate: int = 16000, resample: bool = False, audio_ext: str = "flac") -> None:
        self.sampler = sampler
        self.audio_dir = Path(audio_dir)
        self.samples = samples
        self.crop = crop
        self.seed = seed
        self.sample_rate = sample_rate
        self.resample = resample
        self.audio_ext = audio_ext

    def trial(self, epoch: int, index: int):
        return self.sampler.draw(trial_rng(self.seed, epoch, index))

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = item
        trial = self.trial(epoch, index)
        crop_rng = np.random.default_rng([self.seed, epoch, index, 1]) if self.crop == "random" else None
        waves = [load_waveform(self.audio_dir / f"{utt}.{self.audio_ext}", self.samples, crop=self.crop, rng=crop_rng,
                               sample_rate=self.sample_rate, resample=self.resample)
                 for utt in (trial.enrollment, trial.test)]
        return waves[0], waves[1], trial.label


class EpochSampler(Sampler):
    """Yields `(epoch, index)` for this rank's share of an epoch's trials."""

    def __init__(self, trials_per_epoch: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.trials_per_epoch = trials_per_epoch
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in range(self.rank, self.trials_per_epoch, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.trials_per_epoch, self.world_size))


class WaveformDataset(Dataset):
    """Item i -> (i, waveform of paths[i] cut or tiled to `samples`)."""

    def __init__(self, paths: Sequence[str | Path], samples: int | None, *, sample_rate: int = 16000,
                 resample: bool = False) -> None:
        self.paths = [Path(p) for p in paths]
        self.samples = samples
        self.sample_rate = sample_rate
        self.resample = resample

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        wave = load_waveform(self.paths[index], self.samples, crop="first",
                             sample_rate=self.sample_rate, resample=self.resample)
        return index, wave
