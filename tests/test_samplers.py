"""The training samplers' resume contract: `set_epoch(epoch, batches_done)` takes the epoch's batches already
consumed (the trainer's count, the same on every rank) and continues with exactly the items of the batches
that follow, for every sampler and any number of ranks."""
from __future__ import annotations

import pytest

from data.datasets import EpochSampler, ResumePositionError
from data.speaker_lists import ShuffledEpochSampler, SpeakerBatchSampler
from runtime.errors import UserError

LABELS = [index % 7 for index in range(70)]  # 7 speakers x 10 utterances


def make(kind: str, rank: int, world: int):
    if kind == "trials":  # systems sasv and b2
        return EpochSampler(50, batch_size=12, rank=rank, world_size=world)
    if kind == "utterances":  # system cm
        return ShuffledEpochSampler(50, seed=5, batch_size=12, rank=rank, world_size=world)
    # system asv: 4 groups of 2 utterances of distinct speakers per batch
    return SpeakerBatchSampler(LABELS, per_speaker=2, batch_size=4, max_per_speaker=6, seed=5, rank=rank,
                               world_size=world)


def batches_of(kind: str, sampler, world: int) -> list[list]:
    """The sampler's items cut into this rank's batches (the batch sampler yields them whole)."""
    items = list(sampler)
    if kind == "speakers":
        return items
    share = 12 // world
    return [items[start:start + share] for start in range(0, len(items), share)]


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("kind", ["trials", "utterances", "speakers"])
def test_set_epoch_skips_whole_batches_on_every_rank(kind, world):
    for rank in range(world):
        whole = make(kind, rank, world)
        whole.set_epoch(3)
        uninterrupted = batches_of(kind, whole, world)
        assert len(uninterrupted) == whole.epoch_batches >= 3
        for done in (1, 2, whole.epoch_batches):
            resumed = make(kind, rank, world)
            resumed.set_epoch(3, done)
            assert batches_of(kind, resumed, world) == uninterrupted[done:], (rank, done)


def test_the_same_epoch_batches_on_every_rank_and_with_one_process():
    for kind in ("trials", "utterances", "speakers"):
        counts = {make(kind, rank, world).epoch_batches for world in (1, 2, 4) for rank in range(world)}
        assert len(counts) == 1, kind


def test_positions_are_those_older_checkpoints_resumed_at():
    """A checkpoint has always recorded the batches done; these are the items each sampler was started at."""
    trials = EpochSampler(20, batch_size=4, rank=1, world_size=2)  # rank 1: trials 1, 3, ..., 19; 2 per step
    trials.set_epoch(0, 2)
    assert [index for _, index in trials] == [9, 11, 13, 15, 17, 19]
    utterances = ShuffledEpochSampler(10, seed=4, batch_size=2, rank=0, world_size=2)
    utterances.set_epoch(1)
    whole = list(utterances)  # positions 0, 2, 4, 6, 8 of the epoch's permutation
    utterances.set_epoch(1, 3)  # after 3 global batches = 6 utterances over both ranks
    assert list(utterances) == whole[3:]


@pytest.mark.parametrize("kind", ["trials", "utterances", "speakers"])
def test_a_position_beyond_the_epoch_is_refused(kind):
    sampler = make(kind, 0, 2)
    sampler.set_epoch(0, sampler.epoch_batches)  # all trained, validation pending: nothing left to yield
    assert list(sampler) == []
    with pytest.raises(ResumePositionError, match=f"batch {sampler.epoch_batches + 1} of the epoch"):
        sampler.set_epoch(0, sampler.epoch_batches + 1)
    assert issubclass(ResumePositionError, UserError)


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(ValueError, match="batch_size 6"):
        EpochSampler(48, batch_size=6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="batch_size 6"):
        ShuffledEpochSampler(48, seed=0, batch_size=6, rank=0, world_size=4)
