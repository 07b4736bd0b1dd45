"""The one trainer: a new task is one class plus one registry line; the run owns its folder (a second
main.py on it is refused, a killed run's lock blocks nothing); a checkpoint write that fails for lack of
space stops the run naming the last good checkpoint, which stays intact."""
from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_run import run_main_here, tiny_corpus, write_config
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_subsystem_checkpoint
from runtime.config import build_config
from training import tasks
from training.state import ExperimentBusy, TrainingError, experiment_lock, prepare_experiment_dir
from training.task import Run, Task
from training.trainer import Trainer

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parent.parent


class ToyTask(Task):
    """Least squares on fixed random data: what a fourth task has to write, and nothing more."""

    selection = "mse"
    metric_columns = ("epoch", "step", "lr", "train_loss", "dev_mse", "skipped_batches", "redrawn_trials",
                      "seconds")
    scheduler_every = 1

    def __init__(self, config, run: Run) -> None:
        super().__init__(config, run)
        generator = torch.Generator().manual_seed(config["seed"])
        self.inputs = torch.randn(64, 3, generator=generator)
        self.targets = self.inputs @ torch.tensor([1.0, -2.0, 0.5]) + 0.01 * torch.randn(64, generator=generator)
        self.model = nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.99)
        self.objective = _Squares(self.model)

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        batches = [(self.inputs[order[i:i + 8]], self.targets[order[i:i + 8]], torch.zeros(8))
                   for i in range(0, 64, 8)]
        return batches[batch:], len(batches)

    def validate(self, epoch: int) -> dict[str, Any]:
        with torch.no_grad():
            return {"mse": float(((self.model(self.inputs).squeeze(1) - self.targets) ** 2).mean())}

    def evaluate(self) -> dict[str, Any]:
        return {"eval_mse": self.validate(0)["mse"]}

    def save(self, path: Path, training_state: dict[str, Any]) -> None:
        save_subsystem_checkpoint(path, cm_model=self.model, config=self.config.to_dict(), extra=training_state)

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        checkpoint = checkpoint or load_checkpoint(path)
        self.model.load_state_dict(checkpoint.cm_state)
        return checkpoint

    def summary_text(self, summary: dict[str, Any]) -> str:
        return f"eval mse {summary['eval_mse']:.4f}"


class _Squares(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ((self.model(inputs).squeeze(1) - targets) ** 2).mean(), None


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "toy", ToyTask)
    return lambda **values: build_config({"system": "toy", "epoch": 3, "save_top_k": 2, **values}, source="toy.conf")


def read_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_fourth_task_is_one_class_and_one_registry_line(toy, tmp_path):
    trainer = Trainer(toy(), tmp_path / "run", CPU, progress=False)
    summary = trainer.fit()
    rows = read_rows(tmp_path / "run")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and [row["step"] for row in rows] == ["8", "16", "24"]
    losses = [float(row["train_loss"]) for row in rows]
    assert losses[2] < losses[0] / 10  # it learns
    assert float(rows[2]["lr"]) == pytest.approx(0.05 * 0.99 ** 24)  # the scheduler stepped every step
    best = sorted(path.name for path in (tmp_path / "run" / "weights").glob("epoch=*.ckpt"))
    ranked = sorted(rows, key=lambda row: float(row["dev_mse"]))
    assert best == sorted(f"epoch={int(row['epoch']):03d}-mse_dev={float(row['dev_mse']):.5f}.ckpt"
                          for row in ranked[:2])  # the 2 best kept
    assert summary["checkpoint"] == f"weights/epoch={int(ranked[0]['epoch']):03d}-mse_dev=" \
        f"{float(ranked[0]['dev_mse']):.5f}.ckpt"  # eval with the best
    assert summary["eval_mse"] == pytest.approx(min(float(row["dev_mse"]) for row in rows))

    # Resumed from an epoch in the middle, it ends with the same weights as the straight run.
    again = Trainer(toy(epoch=1), tmp_path / "resumed", CPU, progress=False)
    again.fit()
    resumed = Trainer(toy(), tmp_path / "resumed", CPU, progress=False)
    assert resumed.resume_latest() is not None and resumed.state.epoch == 1
    resumed.fit()
    assert torch.equal(resumed.task.model.weight, trainer.task.model.weight)


def test_an_unknown_task_is_a_config_error(tmp_path):
    from runtime.config import ConfigError

    with pytest.raises(ConfigError, match=r"toy.conf: system: unknown task 'nope'; known: asv, b2, cm, sasv"):
        Trainer(build_config({"system": "nope"}, source="toy.conf"), tmp_path, CPU, progress=False)


def test_a_full_disk_stops_the_run_and_keeps_the_last_good_checkpoint(toy, tmp_path, monkeypatch):
    trainer = Trainer(toy(save_top_k=1), tmp_path / "run", CPU, progress=False)
    original, calls = trainer.task.save, []

    def save(path: Path, state: dict) -> None:
        calls.append(path.name)
        if len(calls) == 2:  # the checkpoint of epoch 2: the disk is full; the writer leaves no partial file
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, state)

    monkeypatch.setattr(trainer.task, "save", save)
    with pytest.raises(TrainingError) as caught:
        trainer.fit()
    last = tmp_path / "run" / "weights" / "last.ckpt"
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'run' / 'weights'}")
    assert "No space left on device; training stopped. The last good checkpoint is " \
        f"{last} (end of epoch 1, step 8)" in str(caught.value)
    assert load_checkpoint(last).meta["epoch"] == 1  # intact


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def test_a_disk_that_fills_at_fsync_of_last_ckpt_names_it_and_keeps_the_one_before(toy, tmp_path,
                                                                                    monkeypatch):
    # Epoch 1 is not validated: weights/last.ckpt is written directly, every 4 steps and at the epoch end.
    trainer = Trainer(toy(val_interval_epoch=2, checkpoint_interval_steps=4), tmp_path / "run", CPU,
                      progress=False)
    real_fsync, writes = os.fsync, []

    def fsync(descriptor: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}")).startswith(".last.ckpt."):
            writes.append(descriptor)
            if len(writes) == 2:  # step 8: the file system finds no room for the delayed blocks
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    with monkeypatch.context() as patch, pytest.raises(TrainingError) as caught:
        patch.setattr(os, "fsync", fsync)
        trainer.fit()
    last = tmp_path / "run" / "weights" / "last.ckpt"
    message = str(caught.value)
    assert message.startswith(f"cannot write {last}: No space left on device;") and "\n" not in message
    assert f"The last good checkpoint is {last} (epoch 1, batch 4, step 4)" in message
    assert load_checkpoint(last).meta["step"] == 4 and not _temporaries(tmp_path)


def test_a_full_disk_while_copying_the_best_k_checkpoint_to_last_ckpt_names_the_copy(toy, tmp_path,
                                                                                     monkeypatch):
    import runtime.files

    trainer = Trainer(toy(save_top_k=2), tmp_path / "run", CPU, progress=False)
    real_copy, copies = runtime.files.shutil.copyfileobj, []

    def copyfileobj(reader, writer, length=0) -> None:
        copies.append(writer.name)
        if len(copies) == 2:  # epoch 2's copy: half of it is written, then the disk is full
            writer.write(reader.read(1000))
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(reader, writer, length)

    with monkeypatch.context() as patch, pytest.raises(TrainingError) as caught:
        patch.setattr(runtime.files.shutil, "copyfileobj", copyfileobj)
        trainer.fit()
    weights = tmp_path / "run" / "weights"
    [copy] = [path for path in weights.glob("epoch=002-*.ckpt")]
    message = str(caught.value)
    assert message.startswith(f"cannot write {weights / 'last.ckpt'}: No space left on device;")
    assert f"The last good checkpoint is {copy} (end of epoch 2, step 16)" in message
    assert load_checkpoint(weights / "last.ckpt").meta["epoch"] == 1 and not _temporaries(tmp_path)  # intact

    resumed = Trainer(toy(save_top_k=2), tmp_path / "run", CPU, progress=False)
    assert resumed.resume_latest() == copy and resumed.state.epoch == 2  # goes on from the named copy
    assert load_checkpoint(weights / "last.ckpt").meta["epoch"] == 2


def _poison(path: Path, key: str) -> None:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["cm_state"][key].view(-1)[0] = float("nan")
    torch.save(raw, path)


def test_resume_refuses_nan_checkpoints_naming_the_file_and_the_key(toy, tmp_path):
    from runtime.cli import exit_status

    Trainer(toy(epoch=1, save_top_k=1), tmp_path / "run", CPU, progress=False).fit()
    weights = tmp_path / "run" / "weights"
    _poison(weights / "last.ckpt", "weight")
    warnings: list[str] = []
    trainer = Trainer(toy(save_top_k=1), tmp_path / "run", CPU, progress=False)
    trainer.warn = warnings.append
    [copy] = weights.glob("epoch=001-*.ckpt")
    assert trainer.resume_latest() == copy  # a healthy best-k copy: used, with a warning naming last.ckpt
    assert len(warnings) == 1 and f"{weights / 'last.ckpt'}: tensor cm_state['weight'] holds NaN/inf" in warnings[0]

    _poison(weights / "last.ckpt", "bias")
    _poison(copy, "weight")
    with pytest.raises(CheckpointError) as caught:
        Trainer(toy(save_top_k=1), tmp_path / "run", CPU, progress=False).resume_latest()
    message = str(caught.value)
    assert message.startswith(f"{weights / 'last.ckpt'}: tensor cm_state['bias'] holds NaN/inf")
    assert "--overwrite" in message and "\n" not in message and exit_status(caught.value) == 2


def test_a_nonfinite_optimiser_state_is_never_checkpointed(toy, tmp_path):
    trainer = Trainer(toy(epoch=1), tmp_path / "run", CPU, progress=False)
    trainer.task.optimizer = torch.optim.SGD(trainer.task.model.parameters(), lr=0.05, momentum=0.9)
    trainer.task.scheduler = torch.optim.lr_scheduler.ExponentialLR(trainer.task.optimizer, gamma=0.99)
    trainer.fit()
    last = tmp_path / "run" / "weights" / "last.ckpt"
    before = last.read_bytes()
    trainer.optimizer.state[trainer.task.model.bias]["momentum_buffer"][0] = float("inf")
    with pytest.raises(TrainingError) as caught:
        trainer.save_resumable()
    message = str(caught.value)
    assert message.startswith("the optimiser state became NaN/inf by step 8; not overwriting the checkpoint")
    assert "optimiser tensor state[1]['momentum_buffer']" in message and f"{last} (end of epoch 1" in message
    assert last.read_bytes() == before


# --------------------------------------------------------------------------- the folder lock
HOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from training.state import experiment_lock
with experiment_lock(Path({folder!r})):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


def hold_lock(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), folder=str(folder))],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("flag", ["", "--resume", "--overwrite"])
@pytest.mark.slow
def test_a_second_run_on_a_live_folder_is_refused(corpus, tmp_path, flag):
    config = write_config(tmp_path / "run.conf", corpus)
    folder = tmp_path / "exp" / "run"
    prepare_experiment_dir(folder, config, resume=False, overwrite=False)
    (folder / "weights").mkdir()
    (folder / "weights" / "last.ckpt").write_bytes(b"the live run's checkpoint")
    holder = hold_lock(folder)
    try:
        refused = run_main_here(config, tmp_path / "exp", *([flag] if flag else []))  # the holder is another process
        assert refused.returncode == 2
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {folder} is in use by a running main.py (pid {holder.pid}, started ")
        assert holder.poll() is None  # the live run goes on
        assert (folder / "weights" / "last.ckpt").read_bytes() == b"the live run's checkpoint"  # unharmed
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    folder = tmp_path / "exp" / "run"
    holder = hold_lock(folder)
    holder.kill()
    holder.wait()
    assert (tmp_path / "exp" / ".run.lock").is_file()  # the file stays behind ...
    start = time.time()
    with experiment_lock(folder):  # ... and blocks nothing
        assert time.time() - start < 5


# A run with a DataLoader worker forked while the lock is held: the worker fetches item 0 (its pid), then
# sleeps in item 1, so it outlives a SIGKILLed parent (a worker notices that only between items).
HOLD_WITH_WORKER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch.utils.data
from training.state import experiment_lock

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, index):
        if index:
            time.sleep(120)
        return os.getpid()

with experiment_lock(Path({folder!r})):
    batches = iter(torch.utils.data.DataLoader(Slow(), batch_size=None, num_workers=1,
                                               multiprocessing_context="fork"))
    print("held", int(next(batches)), flush=True)
    time.sleep(120)
"""


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` (not a zombie) has `path` open."""
    try:
        return any(os.readlink(link) == str(path) for link in Path(f"/proc/{pid}/fd").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow  # a subprocess that imports torch: about 9 s on a busy machine
def test_the_lock_dies_with_a_killed_run_though_its_loader_worker_lives_on(tmp_path):
    folder = tmp_path / "exp" / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_WORKER.format(repo=str(REPO), folder=str(folder))],
                              stdout=subprocess.PIPE, text=True)
    said = holder.stdout.readline().split()
    assert said[0] == "held", said
    worker = int(said[1])
    lock_file = tmp_path / "exp" / ".run.lock"
    try:
        assert worker != holder.pid and holds_open(worker, lock_file)  # forked while the lock was held
        with pytest.raises(ExperimentBusy, match=f"^{folder} is in use by a running main.py \\(pid {holder.pid},"):
            with experiment_lock(folder):  # the live run is refused
                pass
        holder.kill()  # SIGKILL: nothing of the run's own code runs
        holder.wait()
        assert holds_open(worker, lock_file)  # the orphaned worker lives on, the lock file open ...
        with experiment_lock(folder):  # ... and the next run (a scheduler's --resume) takes the folder at once
            assert holds_open(worker, lock_file)
            assert (tmp_path / "exp" / ".run.lock").read_text().startswith(f"pid {os.getpid()}, started ")
    finally:
        holder.kill()
        holder.wait()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


# Another process asks the operating system for the lock itself (no torch to import): exit 3 when refused.
TRY_LOCK = """
import fcntl, sys
with open({path!r}, "a+") as handle:
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(3)
"""


def test_a_second_lock_in_the_same_process_is_refused_and_keeps_the_first(tmp_path):
    """A record lock never conflicts with its own process, and closing any descriptor of the file would drop it."""
    folder = tmp_path / "exp" / "run"
    with experiment_lock(folder):
        again = folder.parent / ".." / "exp" / "run"  # another spelling of the same folder
        with pytest.raises(ExperimentBusy, match=f"^{again} is in use by this process \\(pid {os.getpid()}\\)"):
            with experiment_lock(again):
                pass
        other = subprocess.run([sys.executable, "-c", TRY_LOCK.format(path=str(tmp_path / "exp" / ".run.lock"))],
                               timeout=60)
        assert other.returncode == 3  # still held by this process
    with experiment_lock(folder):  # released on leaving
        pass
