"""Speaker-labelled training lists, verification trial lists, and the batches built from them.

Training lists:
  * VoxCeleb style: `speaker_id relative/path.wav` per line, paths relative to a root folder;
  * ASVspoof style: the bona fide utterances of a CM protocol (`SPK UTT - - bonafide`).
Trial lists (VoxCeleb style): `label enrol/path.wav test/path.wav`, label 1 = same speaker.

Random draws are pure functions of (seed, epoch, ...), so resuming a run or changing the
number of DataLoader workers gives the same batches, crops and augmentations.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.audio import pad_or_tile, random_crop, read_audio
from data.datasets import BAD_AUDIO_MODES, MAX_REDRAWS, check_batches_done, rank_share, redraw_until_readable
from data.protocols import CMEntry, ProtocolError, read_fields


@dataclass(frozen=True)
class LabelledUtterance:
    speaker: str
    path: Path


@dataclass(frozen=True)
class VerificationPair:
    target: bool  # True: same speaker
    enrollment: str  # path relative to the trial root
    test: str


def read_voxceleb_train_list(path: str | Path, root: str | Path) -> list[LabelledUtterance]:
    """`speaker_id relative/path.wav` lines -> utterances with paths under `root`."""
    utterances, seen = [], {}
    for number, fields in read_fields(path, "list file"):
        if len(fields) != 2:
            raise ProtocolError(f"{path}:{number}: expected 'speaker_id relative/path.wav', got {' '.join(fields)!r}")
        if fields[1] in seen:  # it would be drawn twice as often as the others
            raise ProtocolError(f"{path}:{number}: duplicate utterance {fields[1]!r} (first on line {seen[fields[1]]})")
        seen[fields[1]] = number
        utterances.append(LabelledUtterance(fields[0], Path(root) / fields[1]))
    if not utterances:
        raise ProtocolError(f"{path}: training list is empty")
    return utterances


def asvspoof_bonafide_utterances(entries: Sequence[CMEntry], protocol: str | Path, audio_dir: str | Path,
                                 audio_ext: str = "flac") -> list[LabelledUtterance]:
    """The bona fide utterances of CM protocol entries (read from `protocol`), labelled by speaker, in order."""
    entries = [entry for entry in entries if entry.key == "bonafide"]
    if not entries:
        raise ProtocolError(f"{protocol}: no bona fide utterance to train a speaker model on")
    return [LabelledUtterance(entry.speaker, Path(audio_dir) / f"{entry.utterance}.{audio_ext}") for entry in entries]


def speaker_classes(utterances: Sequence[LabelledUtterance]) -> dict[str, int]:
    """Speaker id -> class index, in sorted id order (as voxceleb_trainer)."""
    return {speaker: index for index, speaker in enumerate(sorted({u.speaker for u in utterances}))}


def read_voxceleb_trials(path: str | Path) -> list[VerificationPair]:
    """`label enrol test` lines (VoxCeleb1 veri_test.txt style), label 1 = target, 0 = nontarget."""
    pairs, seen = [], {}
    for number, fields in read_fields(path, "list file"):
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ProtocolError(f"{path}:{number}: expected '1|0 enrol/path.wav test/path.wav', "
                                f"got {' '.join(fields)!r}")
        pair = (fields[1], fields[2])
        if pair in seen:  # a repeated trial would count twice in the EER
            raise ProtocolError(f"{path}:{number}: duplicate trial {fields[1]!r} {fields[2]!r} "
                                f"(first on line {seen[pair]})")
        seen[pair] = number
        pairs.append(VerificationPair(fields[0] == "1", fields[1], fields[2]))
    if not pairs:
        raise ProtocolError(f"{path}: trial list is empty")
    if all(p.target for p in pairs) or not any(p.target for p in pairs):
        raise ProtocolError(f"{path}: the trial list needs both target (1) and nontarget (0) trials")
    return pairs


def plan_speaker_batches(labels: Sequence[int], *, per_speaker: int, batch_size: int, max_per_speaker: int,
                         seed: int, epoch: int, distinct_speakers: bool) -> list[list[list[int]]]:
    """One epoch of batches: each batch holds `batch_size` groups of `per_speaker` utterance indices of one speaker.

    Each speaker's utterances are shuffled, capped at `max_per_speaker` and cut into groups
    (a remainder shorter than a group is left out this epoch); the groups are shuffled. With
    `distinct_speakers` a group whose speaker is already in the batch being filled waits
    for the next batch instead of being dropped. An incomplete last batch is dropped.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    by_speaker: dict[int, list[int]] = {}
    for index in rng.permutation(len(labels)):
        by_speaker.setdefault(int(labels[index]), []).append(int(index))
    groups: list[list[int]] = []
    for speaker in sorted(by_speaker):
        indices = by_speaker[speaker][:max_per_speaker]
        usable = len(indices) - len(indices) % per_speaker
        groups += [indices[start:start + per_speaker] for start in range(0, usable, per_speaker)]
    order = rng.permutation(len(groups))
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    in_current: set[int] = set()  # speakers of the batch being filled
    waiting: list[list[int]] = []
    for position in order:
        candidates = waiting + [groups[position]]
        waiting = []
        for candidate in candidates:
            speaker = int(labels[candidate[0]])
            if distinct_speakers and speaker in in_current:
                waiting.append(candidate)
                continue
            current.append(candidate)
            in_current.add(speaker)
            if len(current) == batch_size:
                batches.append(current)
                current, in_current = [], set()
    return batches


class SpeakerBatchSampler(Sampler):
    """Yields each batch of `plan_speaker_batches` as a flat list of (epoch, utterance index), group-major.

    `batch_size` groups make the batch of one step over all `world_size` processes; this rank
    yields every world_size-th group of it (groups rank, rank + world_size, ...).
    `set_epoch(epoch, batches_done)` skips the epoch's first `batches_done` batches (a run resumed mid-epoch).
    """

    def __init__(self, labels: Sequence[int], *, per_speaker: int, batch_size: int, max_per_speaker: int,
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.labels = list(labels)
        self.per_speaker = per_speaker
        self.batch_size = batch_size
        self.max_per_speaker = max_per_speaker
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self._batches = self._plan()

    def _plan(self) -> list[list[list[int]]]:
        return plan_speaker_batches(self.labels, per_speaker=self.per_speaker, batch_size=self.batch_size,
                                    max_per_speaker=self.max_per_speaker, seed=self.seed, epoch=self.epoch,
                                    distinct_speakers=self.per_speaker > 1)

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._batches = self._plan()
        check_batches_done(batches_done, len(self._batches))
        self.start = batches_done  # batches already consumed

    @property
    def epoch_batches(self) -> int:
        """Batches in the whole current epoch (the plan can lose a few when speakers collide)."""
        return len(self._batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._batches[self.start:]:
            yield [(self.epoch, index) for group in batch[self.rank::self.world_size] for index in group]

    def __len__(self) -> int:
        return len(self._batches) - self.start


class ShuffledEpochSampler(Sampler):
    """Yields (epoch, index) over a permutation of range(n) drawn from (seed, epoch).

    The permutation is cut to whole batches of `batch_size` (the batch of one step over all
    `world_size` processes); this rank yields every world_size-th item of it, so that its
    k-th batch of batch_size / world_size items is its share of the k-th global batch.
    `set_epoch(epoch, batches_done)` skips the epoch's first `batches_done` global batches.
    """

    def __init__(self, n_items: int, seed: int, *, batch_size: int = 1, rank: int = 0, world_size: int = 1) -> None:
        rank_share(batch_size, world_size)  # whole per-rank shares of each global batch
        self.n_items = n_items
        self.seed = seed
        self.batch_size = batch_size
        self.usable = n_items - n_items % batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # items of the epoch already consumed, over all processes

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        check_batches_done(batches_done, self.epoch_batches)
        self.epoch = epoch
        self.start = batches_done * self.batch_size

    @property
    def epoch_batches(self) -> int:
        """Batches (optimisation steps) in a whole epoch."""
        return self.usable // self.batch_size

    def _positions(self) -> range:
        return range(self.start + self.rank, self.usable, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch, 11]).permutation(self.n_items)
        return ((self.epoch, int(order[position])) for position in self._positions())

    def __len__(self) -> int:
        return len(self._positions())


class CroppedUtteranceDataset(Dataset):
    """Item (epoch, index) -> (random crop of paths[index] as float32 [samples], labels[index], redraws).

    The crop, and the optional `augment(waveform, rng)`, draw from a generator seeded with
    (seed, epoch, index): an utterance gets a fresh crop every epoch, reproducibly.
    `file_augments` (CM training: RawBoost, then codecs) apply in order to the whole file BEFORE the crop,
    as SSL_Anti-spoofing does; each is called with the item key (seed, epoch, index, attempt) and draws
    from its own stream of it, so the crop (which depends only on the length, kept) is unchanged.
    With on_bad_audio="skip" an unreadable file is replaced by another utterance of the same
    label (drawn from (seed, epoch, index, attempt)); `redraws` counts the replacements.
    """

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], *, samples: int, seed: int,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 file_augments: Sequence[Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray]] = (),
                 sample_rate: int = 16000, resample: bool = False, on_bad_audio: str = "error",
                 crop: str = "random") -> None:
        if crop not in ("random", "first"):
            raise ValueError(f"CroppedUtteranceDataset: crop must be 'random' or 'first', got {crop!r}")
        if len(paths) != len(labels):
            raise ValueError(f"CroppedUtteranceDataset: {len(paths)} paths but {len(labels)} labels")
        if on_bad_audio not in BAD_AUDIO_MODES:
            raise ValueError(f"on_bad_audio must be one of {BAD_AUDIO_MODES}, got {on_bad_audio!r}")
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels)
        self.samples = samples
        self.crop = crop
        self.seed = seed
        self.augment = augment
        self.file_augments = tuple(file_augments)
        self.sample_rate = sample_rate
        self.resample = resample
        self.on_bad_audio = on_bad_audio
        self._same_label: dict[int, np.ndarray] = {}
        for label in sorted(set(self.labels)):
            self._same_label[label] = np.flatnonzero(np.asarray(self.labels) == label)
        self._reported: set[str] = set()  # bad files already warned about in this process

    def __len__(self) -> int:
        return len(self.paths)

    def _crop(self, index: int, rng: np.random.Generator, key: tuple[int, int, int, int]) -> np.ndarray:
        waveform = read_audio(self.paths[index], sample_rate=self.sample_rate, resample=self.resample)
        for file_augment in self.file_augments:
            waveform = file_augment(waveform, key)
        # "first": the file's first samples, tiled when short (SSL_Anti-spoofing's training `pad`); no draw
        waveform = random_crop(waveform, self.samples, rng) if self.crop == "random" else \
            pad_or_tile(waveform, self.samples)
        if self.augment is not None:
            waveform = self.augment(waveform, rng)
        return waveform

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, index = item
        label = self.labels[index]

        def attempt(number: int) -> tuple[torch.Tensor, int, int]:
            # The first attempt keeps the original stream, so runs without bad audio are unchanged.
            stream = [self.seed, epoch, index, 3] if number == 0 else [self.seed, epoch, index, 3, number]
            rng = np.random.default_rng(stream)
            source = int(rng.choice(self._same_label[label])) if number else index
            waveform = self._crop(source, rng, (self.seed, epoch, index, number))
            return torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)), label, number

        return redraw_until_readable(attempt, self.on_bad_audio, self._reported,
                                     f"training utterance (epoch {epoch + 1}, index {index}): {MAX_REDRAWS + 1} "
                                     f"draws in a row of label {label} hit bad audio; check the training files")
