"""PyTorch datasets over ASVspoof audio: training trials and utterance batches.

Bad audio (`data.audio.AudioError`: missing, corrupt, empty, wrong rate or channels,
NaN/inf or implausibly loud samples) either stops the run (`on_bad_audio="error"`) or is skipped: a training trial
is drawn again from the same per-trial generator, and a scoring item comes back as
zeros together with the reason, so that the caller can mark what depends on it.
"""
from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.audio import AudioError, InMemoryAudio, load_waveform
from data.corpora import corpus_class
from data.trials import TrialSampler, trial_rng
from runtime.errors import UserError, unwrap_worker_error, worker_died

BAD_AUDIO_MODES = ("error", "skip")
MAX_REDRAWS = 100  # consecutive training draws that hit bad audio before giving up

Item = TypeVar("Item")
Drawn = TypeVar("Drawn")

def partition_audio_dir(database: str | Path, partition: str, dataset: str | None = None) -> Path:
    """The audio folder of `partition` (train / trn, dev, eval) of corpus `dataset` (default ASVspoof 2019 LA)
    under `database`: its adapter's (data.corpora) audio_folder."""
    return corpus_class(dataset).audio_folder(database, partition)


class TrainTrialDataset(Dataset):
    """Item `(epoch, index)` -> (enrollment wave, test wave, label, redraws, speakers); trials from a TrialSampler.

    `redraws` counts the draws replaced because their audio was bad (always 0 with
    on_bad_audio="error", which raises the AudioError instead). `speakers` holds the class
    indices (positions in `sampler.speakers`) of the enrollment and test speakers, -1 for a
    spoofed test.
    """

    def __init__(self, sampler: TrialSampler, audio_dir: str | Path, *, samples: int, crop: str, seed: int,
                 sample_rate: int = 16000, resample: bool = False, audio_ext: str = "flac",
                 on_bad_audio: str = "error") -> None:
        if on_bad_audio not in BAD_AUDIO_MODES:
            raise ValueError(f"on_bad_audio must be one of {BAD_AUDIO_MODES}, got {on_bad_audio!r}")
        self.sampler = sampler
        self.audio_dir = Path(audio_dir)
        self.samples = samples
        self.crop = crop
        self.seed = seed
        self.sample_rate = sample_rate
        self.resample = resample
        self.audio_ext = audio_ext
        self.on_bad_audio = on_bad_audio
        self.speaker_index = {name: index for index, name in enumerate(sampler.speakers)}
        self._reported: set[str] = set()  # bad files already warned about in this process

    def trial(self, epoch: int, index: int):
        return self.sampler.draw(trial_rng(self.seed, epoch, index))

    def _waves(self, trial, epoch: int, index: int, attempt: int) -> list[torch.Tensor]:
        # The first attempt keeps the original crop stream, so runs without bad audio are unchanged.
        stream = [self.seed, epoch, index, 1] if attempt == 0 else [self.seed, epoch, index, 1, attempt]
        crop_rng = np.random.default_rng(stream) if self.crop == "random" else None
        return [load_waveform(self.audio_dir / f"{utt}.{self.audio_ext}", self.samples, crop=self.crop, rng=crop_rng,
                              sample_rate=self.sample_rate, resample=self.resample)
                for utt in (trial.enrollment, trial.test)]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor]:
        epoch, index = item
        rng = trial_rng(self.seed, epoch, index)

        def attempt(number: int) -> tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor]:
            trial = self.sampler.draw(rng)  # a redraw continues the same generator: deterministic
            enrollment, test = self._waves(trial, epoch, index, number)
            speakers = torch.tensor([self.speaker_index.get(trial.enrollment_speaker, -1),
                                     self.speaker_index.get(trial.test_speaker, -1)])
            return enrollment, test, trial.label, number, speakers

        return redraw_until_readable(attempt, self.on_bad_audio, self._reported,
                                     f"training trial (epoch {epoch + 1}, index {index}): {MAX_REDRAWS + 1} draws in "
                                     f"a row hit bad audio under {self.audio_dir}; check the training files")


def redraw_until_readable(attempt: Callable[[int], Drawn], on_bad_audio: str, reported: set[str],
                          gave_up: str) -> Drawn:
    """`attempt(0)`, `attempt(1)`, ... until one reads its audio. With on_bad_audio="skip" an AudioError
    is named on stderr (once per message and process; `reported` remembers them) and the next draw
    is tried, up to MAX_REDRAWS times, then AudioError(gave_up); with "error" it is raised at once."""
    for number in range(MAX_REDRAWS + 1):
        try:
            return attempt(number)
        except AudioError as error:
            if on_bad_audio == "error":
                raise
            if str(error) not in reported:
                reported.add(str(error))
                print(f"warning: skipping training audio (on_bad_audio: skip): {error}", file=sys.stderr, flush=True)
    raise AudioError(gave_up)


class EpochSampler(Sampler):
    """Yields `(epoch, index)` for this rank's share of an epoch's trials, cut to whole global batches.

    `batch_size` is the batch of one step over all `world_size` processes; this rank yields every
    world_size-th trial, so that its k-th run of batch_size / world_size items is its share of the
    k-th global batch. `set_epoch(epoch, batches_done)` skips the epoch's first `batches_done` batches
    (the trainer's count, the same on every rank), so that a run resumed mid-epoch continues with
    exactly the trials it has not trained on yet.
    """

    def __init__(self, trials_per_epoch: int, *, batch_size: int = 1, rank: int = 0, world_size: int = 1) -> None:
        self.rank_batch = rank_share(batch_size, world_size)
        self.trials_per_epoch = trials_per_epoch - trials_per_epoch % batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # this rank's items already consumed

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        check_batches_done(batches_done, self.epoch_batches)
        self.epoch = epoch
        self.start = batches_done * self.rank_batch

    @property
    def epoch_length(self) -> int:
        """This rank's items in a whole epoch."""
        return len(range(self.rank, self.trials_per_epoch, self.world_size))

    @property
    def epoch_batches(self) -> int:
        """Batches (optimisation steps) in a whole epoch."""
        return self.epoch_length // self.rank_batch

    def _indices(self) -> range:
        return range(self.rank, self.trials_per_epoch, self.world_size)[self.start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class ResumePositionError(UserError, ValueError):
    """A resume position beyond the epoch: the training data changed since the checkpoint was written."""


def rank_share(batch_size: int, world_size: int) -> int:
    """Items of one global batch that each rank loads (runtime.distributed.per_rank_batch checks the config)."""
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} does not split into {world_size} equal per-rank shares")
    return batch_size // world_size


def check_batches_done(batches_done: int, epoch_batches: int) -> None:
    """Every training sampler's `set_epoch(epoch, batches_done)` takes the resume position in one unit: the
    epoch's batches already consumed (trained or skipped), the trainer's own count, the same on every rank.
    Each sampler converts it to its items itself."""
    if not 0 <= batches_done <= epoch_batches:
        raise ResumePositionError(f"batch {batches_done} of the epoch is beyond its {epoch_batches} batches")


class WaveformDataset(Dataset):
    """Item i -> (i, waveform of paths[i] cut or tiled to `samples`, problem).

    `problem` is "" for a good file. With on_bad_audio="skip" a bad file gives zeros
    and the AudioError's message instead of raising it. An entry may also be a waveform already in
    memory (`data.audio.InMemoryAudio`, the Python API's), cut or tiled by the same rule.
    """

    def __init__(self, paths: Sequence[str | Path | InMemoryAudio], samples: int | None, *,
                 sample_rate: int = 16000, resample: bool = False, on_bad_audio: str = "error") -> None:
        if on_bad_audio not in BAD_AUDIO_MODES:
            raise ValueError(f"on_bad_audio must be one of {BAD_AUDIO_MODES}, got {on_bad_audio!r}")
        self.paths = [p if isinstance(p, InMemoryAudio) else Path(p) for p in paths]
        self.samples = samples
        self.sample_rate = sample_rate
        self.resample = resample
        self.on_bad_audio = on_bad_audio

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        item = self.paths[index]
        if isinstance(item, InMemoryAudio):  # checked when it was made
            return index, item.load(self.samples), ""
        try:
            wave = load_waveform(item, self.samples, crop="first",
                                 sample_rate=self.sample_rate, resample=self.resample)
        except AudioError as error:
            if self.on_bad_audio == "error":
                raise
            return index, torch.zeros(self.samples or 1), str(error)
        return index, wave, ""


def iterate_batches(loader: Iterable[Item], errors: tuple[type[BaseException], ...] = (AudioError,)) -> Iterator[Item]:
    """Iterate a DataLoader; `errors` raised in its workers come out as their original one-line message.

    On such an error the iterator is dropped before re-raising, and the raised exception
    carries no reference to it, so its worker processes are shut down now rather than
    whenever a traceback that references them happens to be collected.
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except errors as error:
            # DataLoader's re-raise leaves a reference cycle through its frames that keeps the
            # iterator (and its workers) alive until a garbage collection; clear those frames.
            traceback.clear_frames(error.__traceback__)
            failure = unwrap_worker_error(error).with_traceback(None)
            failure.__context__ = None
        except RuntimeError as error:
            failure = worker_died(error)
            if failure is None:
                raise
        else:
            yield batch
            continue
        del iterator
        raise failure


def leave_signals_to_main_process(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: leave SIGINT/SIGTERM handling to the main process, which saves and stops.

    Ctrl-C reaches every process of the terminal's group: workers ignore it and keep
    serving batches. SIGTERM (also what DataLoader uses to stop a worker) ends a worker
    with exit status 0, which the main process does not take for a worker failure; a
    scheduler that signals the whole job thus leaves the main process free to checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_worker)


def _exit_worker(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # unwinds normally, so a batch being sent to the main process is sent whole
