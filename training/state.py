"""What a training run keeps between steps and across restarts.

The training state (position, best-k list, metrics log), RNG state snapshots, the optimisation step,
the config comparison that decides whether a run may be resumed, the choice of the checkpoint to
resume from and the folder tidying after it, and the experiment folder (guard and lock).
"""
from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from runtime import files
from runtime.config import SCHEMA, Field, resume_may_change
from runtime.errors import RunFailure, UserError
from runtime.files import atomic_copy, remove_stale_temporaries

# Keys that may differ between a run and its resumption without changing what is trained: the fields
# declared with resume=True (runtime.config.resume_may_change).
RESUME_MAY_CHANGE = resume_may_change()


_DEV_SCORES_NAME = re.compile(r"dev_epoch_(\d+)\.txt")


class TrainingError(RunFailure, RuntimeError):
    """Training cannot continue (e.g. a non-finite loss)."""


@dataclass
class TrainState:
    """Everything a resumed run needs besides the weights and optimiser."""

    epoch: int = 0  # epochs completed (trained and, when due, validated)
    step: int = 0  # optimisation steps taken
    best: list[dict] = field(default_factory=list)  # [{"sasv_eer", "epoch", "path"}], best first
    metrics: list[dict] = field(default_factory=list)
    # Position inside epoch `epoch` (0-based), for a checkpoint taken mid-epoch:
    batch: int = 0  # batches consumed (trained or skipped); all of them: trained, validation pending
    loss_sum: float = 0.0  # sum of this epoch's finite batch losses so far
    loss_count: int = 0
    skipped_batches: int = 0  # this epoch: batches left out for a non-finite loss
    redrawn: int = 0  # this epoch: training items (trials, utterances) drawn again because of bad audio
    seconds: float = 0.0  # wall-clock seconds spent on this epoch up to the checkpoint
    accuracy_sum: float = 0.0  # sum of this epoch's batch accuracies (finite-loss batches; tasks that measure one)
    last_lr: float | None = None  # learning rate of the last optimisation step

    def to_dict(self) -> dict:
        return asdict(self)

    def next_epoch(self) -> TrainState:
        """The state once this epoch is complete: counters and logs kept, the in-epoch position and sums reset."""
        return TrainState(epoch=self.epoch + 1, step=self.step, best=list(self.best), metrics=self.metrics,
                          last_lr=self.last_lr)

    def position(self) -> str:
        """Where training stands, as the messages name it."""
        if self.batch == 0:
            return f"end of epoch {self.epoch}, step {self.step}"
        return f"epoch {self.epoch + 1}, batch {self.batch}, step {self.step}"

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        known = {item.name for item in fields(cls)}
        state = cls(**{key: value for key, value in values.items() if key in known})
        if "redrawn" not in values:  # checkpoints written before the trainers were one
            state.redrawn = values.get("redrawn_trials", 0) + values.get("redrawn_utterances", 0)
        return state


def _schema_field(dotted: str) -> Field | None:
    node: Any = SCHEMA
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Field) else None


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; mapping-valued keys (cm_model) stay whole."""
    if isinstance(values, dict) and not (prefix and _schema_field(prefix[:-1])):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: values}


def config_changes(stored: dict, current: dict) -> list[str]:
    """Keys whose value differs between a run's stored config and the current one (RESUME_MAY_CHANGE aside)."""
    before, after = _flatten(stored), _flatten(current)
    changed = []
    for key in sorted(set(before) & set(after)):
        declared = _schema_field(key)
        free = any(key == name or key.startswith(f"{name}.") for name in RESUME_MAY_CHANGE)
        if free or (declared is not None and declared.ignored):
            continue
        if before[key] != after[key]:
            changed.append(f"{key} (run: {before[key]!r}, now: {after[key]!r})")
    return changed


def choose_resume_checkpoint(weights: Path, resumable: Callable[[Checkpoint], bool], warn: Callable[[str], None]
                             ) -> tuple[Path, Checkpoint, set[str]] | None:
    """The newest readable checkpoint under `weights` that `resumable` accepts, and the names
    (`weights/X.ckpt`) of the unreadable ones; None when there is none to resume from.

    Newest = largest (epoch, batch); on a tie last.ckpt wins (a best-k copy never holds a newer
    state than the last.ckpt written after it). When every checkpoint is unreadable (damaged, NaN
    weights), starting again silently would be wrong: CheckpointError names the first one's fault."""
    newest, newest_position, newest_checkpoint = None, None, None
    unreadable: set[str] = set()
    errors: list[tuple[Path, CheckpointError]] = []
    for path in sorted(weights.glob("*.ckpt")):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            errors.append((path, error))
            unreadable.add(f"weights/{path.name}")
            continue
        if not resumable(checkpoint):
            continue
        # Checkpoints written before mid-epoch resumption existed have no "batch": an epoch end.
        position = (checkpoint.meta.get("epoch", 0), checkpoint.meta.get("batch", 0))
        if newest_position is None or position > newest_position or \
                (position == newest_position and path.name == "last.ckpt"):
            newest, newest_position, newest_checkpoint = path, position, checkpoint
    if newest is None and errors:
        errors.sort(key=lambda entry: entry[0].name != "last.ckpt")  # named first: the run's own checkpoint
        raise CheckpointError(f"{errors[0][1]}; no checkpoint in {weights} can be resumed from ({len(errors)} "
                              f"unreadable): start again with --overwrite")
    for _, error in errors:
        warn(f"warning: skipping unreadable checkpoint: {error}")
    return None if newest is None else (newest, newest_checkpoint, unreadable)


def tidy_after_resume(experiment_dir: Path, restored: Path, state: TrainState, unreadable: set[str],
                      total_epochs: int, metric_columns: Sequence[str], best_k_name: re.Pattern,
                      warn: Callable[[str], None]) -> None:
    """After restoring `restored`: make it weights/last.ckpt again, drop unreadable best-k copies from
    `state.best`, and remove what a killed run may have left beyond the restored state (temporaries,
    best-k copies and dev score files of later epochs, eval results of an unfinished run);
    metrics.csv is rewritten from the state."""
    last = experiment_dir / "weights" / "last.ckpt"
    if restored != last:  # last.ckpt is missing, damaged or older
        atomic_copy(restored, last)
    lost = [entry for entry in state.best if entry["path"] in unreadable]
    if lost:
        warn(f"warning: dropping unreadable best-k checkpoint(s) from the ranking: "
             f"{', '.join(entry['path'] for entry in lost)}")
        state.best = [entry for entry in state.best if entry not in lost]
    remove_stale_temporaries(experiment_dir)
    kept = {entry["path"] for entry in state.best}
    for path in (experiment_dir / "weights").glob("epoch=*.ckpt"):
        if best_k_name.fullmatch(path.name) and f"weights/{path.name}" not in kept:
            path.unlink()
    for path in (experiment_dir / "scores").glob("dev_epoch_*.txt"):
        match = _DEV_SCORES_NAME.fullmatch(path.name)
        if match and int(match.group(1)) > state.epoch:
            path.unlink()
    if state.epoch < total_epochs:  # eval results (and the calibration they used) of a shorter run would be stale
        (experiment_dir / "metrics_eval.json").unlink(missing_ok=True)
        (experiment_dir / "scores" / "eval.txt").unlink(missing_ok=True)
        (experiment_dir / "weights" / "calibration.json").unlink(missing_ok=True)
    if state.metrics:
        files.write_csv(experiment_dir / "metrics.csv", metric_columns, state.metrics)


def rng_snapshot() -> dict[str, Any]:
    """Every random stream training draws from, for a checkpoint (keys as stored in it)."""
    return {"torch_rng": torch.get_rng_state(),
            # The current device's generator only: a run may resume with other devices visible.
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else [],
            "numpy_rng": numpy_rng_state(), "python_rng": python_rng_state()}


def restore_rng(snapshot: dict[str, Any]) -> None:
    """Inverse of `rng_snapshot` (the CUDA state goes to the current device, when there is one)."""
    torch.set_rng_state(snapshot["torch_rng"])
    cuda = snapshot["cuda_rng"]
    if isinstance(cuda, list):  # checkpoints of an earlier version held one state per visible device
        cuda = cuda[0] if cuda else None
    if torch.cuda.is_available() and cuda is not None:
        torch.cuda.set_rng_state(cuda)
    set_numpy_rng_state(snapshot["numpy_rng"])
    set_python_rng_state(snapshot["python_rng"])


def numpy_rng_state() -> list:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def set_numpy_rng_state(state: list) -> None:
    name, keys, position, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


class ExperimentExists(UserError, FileExistsError):
    """The experiment folder holds a run, and neither --resume nor --overwrite was given."""


class ExperimentBusy(UserError):
    """Another live main.py holds the experiment folder."""


# Lock files (resolved paths) this process holds: a record lock does not conflict with its own process.
_HELD_LOCKS: set[Path] = set()


@contextmanager
def experiment_lock(experiment_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold `<parent>/.<name>.lock` (an advisory lock beside the folder, so that --overwrite cannot delete it)
    while the run lives: a second main.py on the same folder is refused, whatever its flags. The operating
    system releases the lock when the holder dies, so a lock file left by a killed run blocks nothing."""
    if not enabled:
        yield
        return
    experiment_dir.parent.mkdir(parents=True, exist_ok=True)
    path = experiment_dir.parent / f".{experiment_dir.name}.lock"
    key = path.resolve()
    if key in _HELD_LOCKS:
        # Checked before opening the file: closing any descriptor of it would drop this process's lock.
        raise ExperimentBusy(f"{experiment_dir} is in use by this process (pid {os.getpid()}) already")
    handle = open(path, "a+")
    try:
        try:
            # A POSIX record lock (lockf), not flock: an flock belongs to the open file, which the DataLoader
            # workers forked during the run share, so after a SIGKILL of main.py its orphaned workers kept
            # the folder locked for seconds and an immediate --resume was refused naming a dead pid. A record
            # lock belongs to this process alone: fork does not pass it on, and it goes when the process dies,
            # whatever children live on. No check of the recorded pid is needed (pids are reused, too).
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ExperimentBusy(f"{experiment_dir} is in use by a running main.py ({holder}); wait for it to "
                                 f"finish or stop it (SIGINT/SIGTERM saves a checkpoint) before --resume or "
                                 f"--overwrite") from None
        _HELD_LOCKS.add(key)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            yield
        finally:
            _HELD_LOCKS.discard(key)
    finally:
        handle.close()  # releases the lock; the file stays (harmless, reused next time)


def prepare_experiment_dir(experiment_dir: Path, config_path: Path | None, *, resume: bool, overwrite: bool,
                           config_text: str | None = None) -> bool:
    """Refuse to mix runs: an existing run needs --resume or --overwrite. Writes config.conf (`config_text`,
    else the file at `config_path`) unless resuming a run that has one; returns whether the folder is new."""
    existing = experiment_dir.exists() and any(experiment_dir.iterdir())
    if existing and not (resume or overwrite):
        raise ExperimentExists(f"{experiment_dir} already holds a run; pass --resume to continue it "
                              f"or --overwrite to start again")
    if overwrite and experiment_dir.exists():
        shutil.rmtree(experiment_dir)
    fresh = not existing or overwrite
    experiment_dir.mkdir(parents=True, exist_ok=True)
    if config_path is not None and not (resume and (experiment_dir / "config.conf").exists()):
        files.write_text(experiment_dir / "config.conf",
                         config_text if config_text is not None else Path(config_path).read_text())
    return fresh


def remove_if_unstarted(experiment_dir: Path) -> bool:
    """After a start that failed before anything was trained or cached: remove the folder (it holds
    config.conf alone), so that the same command can simply be run again. Whether it was removed."""
    if not experiment_dir.is_dir():
        return False
    if any(path.is_file() and path.name != "config.conf" for path in experiment_dir.rglob("*")):
        return False
    shutil.rmtree(experiment_dir)
    return True


def last_good_checkpoint(experiment_dir: Path, saved: TrainState | None, path: Path | None = None) -> str:
    """The sentence an error ends with: which checkpoint to go on from (or that there is none). `path` holds
    the state `saved` (default weights/last.ckpt; a best-k copy when copying it to last.ckpt failed)."""
    path = path or experiment_dir / "weights" / "last.ckpt"
    if saved is None or not path.is_file():
        return ("No checkpoint was saved before it (checkpoint_interval_steps saves during an epoch); "
                "fix the cause and start again with --overwrite")
    return f"The last good checkpoint is {path} ({saved.position()}); fix the cause and continue with --resume"
