"""Several training processes under torchrun: process group, rank 0's side effects, sharded work, DDP.

`torchrun --nproc_per_node=N main.py ...` starts N processes and gives each RANK, WORLD_SIZE and
LOCAL_RANK. With WORLD_SIZE > 1, `process_group` joins them (NCCL on CUDA, gloo on CPU). With
one process no group is created and every helper below returns its input or does nothing, so a
plain `python main.py` runs exactly the single-process code.

Conventions the trainer relies on:
  * `batch_size` is the batch of one optimisation step over all processes; each process loads
    `batch_size / world_size` trials (`per_rank_batch`) and DDP averages the gradients, so the
    recipe (steps per epoch, learning rate, schedule) does not depend on the process count.
  * Only rank 0 writes files and logs; every rank keeps the same training state, so every
    rank takes the same decisions (best-k, when to stop) without asking rank 0.
  * Work that each rank does on its own share (embedding extraction, back-end scoring) goes
    through `gather_shards`, which also makes the ranks agree on a stop signal first.
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.config import ConfigError
from runtime.signals import RunInterrupted, signal_name

Result = TypeVar("Result")
Rows = TypeVar("Rows", torch.Tensor, np.ndarray)


def launched_world_size() -> int:
    """Processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and logs."""
    return rank() == 0


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's processes when there are several; yields this process's device (cuda:LOCAL_RANK on CUDA).

    The group is torn down when the body returns, or raises an error that every rank raised together
    (on_main_rank's); after any other error it is left to the process exit, since a rank that fails may leave
    the others inside a collective.
    """
    if launched_world_size() <= 1:
        yield device
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank} but this node has "
                              f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node <= that")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
    except BaseException as error:
        if getattr(error, "raised_on_every_rank", False):  # an agreed stop (on_main_rank): no rank is left behind
            _tear_down()
        raise
    _tear_down()


def _tear_down() -> None:
    # All ranks tear down together: a process leaving gloo's group alive at exit, or destroying it while another
    # still talks to it, can abort ("terminate called without an active exception"; seen after a torchrun
    # resume, and after a refusal that every rank raised).
    dist.barrier()
    dist.destroy_process_group()


# How gloo and NCCL report, as a plain RuntimeError, that another process of the group went away.
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "remote worker crash", "broken pipe",
              "nccl communicator was aborted", "ncclremoteerror", "socket timeout")


def peer_lost(error: BaseException) -> bool:
    """Whether `error`, raised under torchrun, means that another process died or hung up."""
    if isinstance(error, dist.DistError):
        return True
    return is_distributed() and isinstance(error, RuntimeError) and \
        any(pattern in str(error).lower() for pattern in _PEER_LOST)


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agreed_signal(local: int | None) -> int | None:
    """The stop signal any rank received (None: none did). A collective: every rank must call it."""
    if not is_distributed():
        return local
    flag = torch.tensor([local or 0], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def sum_over_ranks(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each scalar summed over the ranks (the values themselves with one process); NaN/inf stays NaN/inf."""
    if not is_distributed():
        return values
    totals = torch.stack([value.detach().to(_collective_device(), torch.float64) for value in values])
    dist.all_reduce(totals)
    return tuple(totals.unbind())


def broadcast_object(value: Result) -> Result:
    """Rank 0's `value` on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: Result) -> list[Result]:
    """Every rank's `value`, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


class MainRankStopped(SystemExit):
    """Ends a rank > 0 without a word, with rank 0's exit status, when rank 0 failed in `on_main_rank`
    (rank 0 says why)."""


def on_main_rank(work: Callable[[], Result], exit_status: Callable[[BaseException], int]) -> Result:
    """`work()` done by rank 0 alone (taking the experiment folder, writing the demo corpus), its result
    on every rank. A collective: every rank must call it.

    When `work` raises, rank 0 re-raises and the other ranks raise MainRankStopped(exit_status(error)).
    Otherwise they would wait in their next collective for a process that is gone, and gloo or NCCL
    would end each of them with a traceback under rank 0's one-line refusal.
    """
    if not is_distributed():
        return work()
    result, failure = None, None
    if is_main():
        try:
            result = work()
        except BaseException as error:
            failure = error
    status = exit_status(failure) if failure is not None else 0
    failed, status, result = broadcast_object((failure is not None, status, result))
    if failure is not None:
        failure.raised_on_every_rank = True  # process_group may tear the group down cleanly
        raise failure
    if failed:
        stopped = MainRankStopped(status)
        stopped.raised_on_every_rank = True
        raise stopped
    return result


def broadcast_states(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's modules (in place)."""
    if not is_distributed():
        return
    for module in modules:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def per_rank_batch(batch_size: int, source: str) -> int:
    """Trials each process loads per step: `batch_size` is the global batch of one optimisation step."""
    world = world_size()
    if batch_size % world:
        raise ConfigError(f"{source}: batch_size ({batch_size}) is the batch of one optimisation step over all "
                          f"{world} processes and must be a multiple of {world}")
    return batch_size // world


def decorrelate_rng(seed: int, step: int) -> None:
    """Give ranks > 0 their own random streams (dropout masks), derived from (seed, rank, step).

    Rank 0 keeps the single-process stream; called after seeding, and after restoring a checkpoint
    that holds rank 0's RNG state alone (one written before the checkpoints held every rank's, or by
    another number of processes).
    """
    if rank() == 0:
        return
    derived = int(np.random.SeedSequence([seed, rank(), step]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def shard(n_items: int) -> list[int]:
    """This rank's items of range(n_items): every world_size-th, so that shares differ by at most one."""
    return list(range(rank(), n_items, world_size()))


def gather_shards(n_items: int, compute: Callable[[list[int]], Result]) -> list[tuple[list[int], Result]]:
    """Run `compute` on this rank's share of range(n_items); every rank gets every rank's (indices, result).

    A RunInterrupted (stop signal) inside `compute` is agreed on first, so that all ranks raise it
    at the same point instead of some waiting for the others' results.
    """
    indices = shard(n_items)
    if not is_distributed():
        return [(indices, compute(indices))]
    try:
        result, interruption = compute(indices), None
    except RunInterrupted as caught:
        result, interruption = None, caught
    signum = agreed_signal(interruption.signum if interruption is not None else None)
    if signum is not None:
        raise interruption or RunInterrupted(f"interrupted by {signal_name(signum)} (received by another "
                                             f"process) during scoring", signum)
    pieces: list[Any] = [None] * world_size()
    dist.all_gather_object(pieces, (indices, result))
    return pieces


def assemble_rows(pieces: Sequence[tuple[list[int], Rows]]) -> Rows:
    """Rows of `gather_shards` pieces (indices, rows) put back in item order; one piece is returned as it is."""
    if len(pieces) == 1:
        return pieces[0][1]
    filled = [(indices, rows) for indices, rows in pieces if indices]
    if not filled:
        return pieces[0][1]
    order = np.argsort(np.concatenate([indices for indices, _ in filled]), kind="stable")
    if isinstance(filled[0][1], torch.Tensor):
        return torch.cat([rows for _, rows in filled])[torch.from_numpy(order)]
    return np.concatenate([rows for _, rows in filled])[order]


def syncs_batchnorm(device: torch.device) -> bool:
    """Whether `synchronise_batchnorm` converts: several processes on CUDA."""
    return is_distributed() and device.type == "cuda"


def compile_allowed(requested: bool, device: torch.device, warn: Callable[[str], None]) -> bool:
    """`compile: true`, unless BatchNorms are synchronised: torch.compile breaks its graph at every
    SyncBatchNorm (and compile + DDP + SyncBatchNorm has open failure reports), so it is skipped."""
    if requested and syncs_batchnorm(device):
        warn("warning: compile is ignored under torchrun on CUDA: torch.compile cannot trace SyncBatchNorm")
        return False
    return requested


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Under torchrun on CUDA, `module` with its BatchNorms made SyncBatchNorm (children replaced in place).

    Call it before an optimiser takes the parameters: the conversion creates new parameter
    tensors. SyncBatchNorm needs CUDA; on CPU, or with one process, `module` is returned as it is
    and each process normalises its own share.
    """
    if not syncs_batchnorm(device):
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def wrap_for_training(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` itself with one process; else DistributedDataParallel (BatchNorms: `synchronise_batchnorm`).

    Frozen sub-systems have requires_grad False, so DDP leaves them out of the gradient
    reduction. Some trainable parameters never get a gradient (the back-end's fc_out kept for
    the checkpoint format, AASIST's logit layer and a few unused BatchNorms), hence
    find_unused_parameters. Buffers are not broadcast every step: SyncBatchNorm keeps the
    running statistics equal on every rank, and scoring starts from rank 0's state anyway
    (`broadcast_states`).
    """
    if not is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False, find_unused_parameters=True)


def launcher_prefix() -> list[str]:
    """The command that starts the same processes again: [] without torchrun."""
    if launched_world_size() <= 1:
        return []
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", launched_world_size()))
    nodes = launched_world_size() // max(per_node, 1)
    if nodes == 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={per_node}"]
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={per_node}", "--rdzv_backend=c10d",
            "--rdzv_endpoint=HOST:PORT"]
