"""Resume: a run killed at a random moment (SIGKILL) or stopped by a signal and resumed ends exactly
like a run that was never stopped: same weights (bit for bit), same metrics.csv, same scores."""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from tiny_run import StderrWatch, run_main, run_main_here, start_main, temporaries, tiny_corpus, write_config

from models.checkpoint import CheckpointError, load_checkpoint
from runtime.config import build_config
from runtime.signals import RunInterrupted, StopRequest
from training.state import prepare_experiment_dir
from training.trainer import Trainer

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

RUN = dict(epoch=2, trials_per_epoch=48, batch_size=8)  # 6 batches per epoch
BATCHES = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run (no intermediate checkpoints, no DataLoader workers)."""
    work = tmp_path_factory.mktemp("reference")
    config = write_config(work / "run.conf", corpus, **RUN)
    result = run_main(config, work / "exp")
    assert result.returncode == 0, result.stderr
    return work / "exp" / "run"


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint of any system: weights, loss parameters, OC-softmax centre, Adam state."""
    checkpoint = load_checkpoint(path)
    tensors = {"oc_center": checkpoint.oc_center} if checkpoint.oc_center is not None else {}
    for part in ("asv_state", "cm_state", "backend_state", "asv_loss_state"):
        tensors.update({f"{part}.{key}": value for key, value in (getattr(checkpoint, part) or {}).items()})
    for index, state in checkpoint.meta["optimizer"]["state"].items():
        tensors.update({f"adam.{index}.{key}": value for key, value in state.items() if torch.is_tensor(value)})
    return tensors


def metrics_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert float(row.pop("seconds")) >= 0  # wall-clock: the only column allowed to differ
    return rows


def assert_same_run(run: Path, reference: Path) -> None:
    ours = checkpoint_tensors(run / "weights" / "last.ckpt")
    theirs = checkpoint_tensors(reference / "weights" / "last.ckpt")
    assert ours.keys() == theirs.keys()
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"
    assert metrics_rows(run) == metrics_rows(reference)
    names = [sorted(p.name for p in (folder / "weights").iterdir()) for folder in (run, reference)]
    assert names[0] == names[1]
    for name in ("scores/eval.txt", "metrics_eval.json", "weights/calibration.json"):
        assert (run / name).read_bytes() == (reference / name).read_bytes()
    assert not temporaries(run)


def position(path: Path) -> tuple[int, int, int]:
    """(completed epochs, batch inside the next epoch, step) of a checkpoint."""
    meta = load_checkpoint(path).meta
    return meta["epoch"], meta["batch"], meta["step"]


def kill_at_random_moment(config: Path, experiment: Path, rng: random.Random) -> tuple[int, int, int]:
    """Start main.py, SIGKILL it some way past a random step; the position of its last.ckpt then."""
    shutil.rmtree(experiment, ignore_errors=True)
    last = experiment / "run" / "weights" / "last.ckpt"
    target_step = rng.choice([1, 2, 3, 7, 8, 9])  # then some way into the next step
    process = start_main(config, experiment)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            try:
                if last.is_file() and position(last)[2] >= target_step:
                    break
            except CheckpointError:  # cannot happen with atomic writes; let the assertion below say so
                raise
            time.sleep(0.01)
        assert process.poll() is None, f"the run ended before the kill: {process.communicate()[1]}"
        time.sleep(rng.uniform(0.0, 0.1))
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    return position(last)  # whatever the moment, last.ckpt is complete


def test_sigkill_at_a_random_moment_mid_epoch_then_resume_equals_uninterrupted(corpus, reference, tmp_path):
    rng = random.Random()  # deliberately unseeded: each run kills somewhere else
    config = write_config(tmp_path / "run.conf", corpus, checkpoint_interval_steps=1, **RUN)
    last = tmp_path / "exp" / "run" / "weights" / "last.ckpt"
    # On a fast machine a kill can land a few steps past its target, beyond the epoch's batches:
    # such a draw is not the case under test, so it is drawn again (at most 3 tries).
    for _ in range(3):
        epoch, batch, step = kill_at_random_moment(config, tmp_path / "exp", rng)
        if 0 < batch < BATCHES:
            break
    assert 0 < batch < BATCHES, f"killed at epoch {epoch} batch {batch}: not mid-epoch"
    assert not (tmp_path / "exp" / "run" / "metrics_eval.json").exists()

    resumed = run_main(config, tmp_path / "exp", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {last}" in resumed.stdout and f"step {step}" in resumed.stdout
    assert_same_run(tmp_path / "exp" / "run", reference)


def test_sigterm_to_the_process_group_saves_and_resume_equals_uninterrupted(corpus, reference, tmp_path):
    """No step-interval checkpoints, a DataLoader worker, SIGTERM to every process as a scheduler sends it."""
    config = write_config(tmp_path / "run.conf", corpus, loader={"n_workers": 1}, **RUN)
    process = start_main(config, tmp_path / "exp", progress=True, start_new_session=True)
    process.stdout.close()
    # The progress bars on stderr tell when training is inside epoch 1.
    watch = StderrWatch(process)
    watch.wait_for(r"\| [1-4]/6 \[")
    os.killpg(process.pid, signal.SIGTERM)
    status = process.wait(timeout=300)
    stderr = watch.join()
    message = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert status == 128 + signal.SIGTERM, stderr
    assert message.startswith("interrupted by SIGTERM at epoch 1, batch ") and "--resume" in message, message
    last = tmp_path / "exp" / "run" / "weights" / "last.ckpt"
    assert f"saved {last}" in message
    epoch, batch, _ = position(last)
    assert epoch == 0 and 0 < batch <= BATCHES

    resumed = run_main(config, tmp_path / "exp", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "exp" / "run", reference)


def test_sigint_in_process_saves_a_resumable_checkpoint(corpus, tmp_path):
    """Ctrl-C during training: the loop saves at the next batch boundary and raises RunInterrupted."""
    torch.set_num_threads(1)
    values = json.loads(write_config(tmp_path / "run.conf", corpus, **RUN).read_text())
    config = build_config(values, source="run.conf")
    folder = tmp_path / "exp"
    prepare_experiment_dir(folder, None, resume=False, overwrite=False)
    trainer = Trainer(config, folder, torch.device("cpu"), progress=False)
    original = trainer._optimise
    calls = []

    def optimise_then_interrupt(loss):
        stepped = original(loss)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives inside batch 2
        return stepped

    trainer._optimise = optimise_then_interrupt
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as caught:
        trainer.fit()
    assert caught.value.exit_status == 130
    assert "interrupted by SIGINT at epoch 1, batch 2/6 (step 2)" in str(caught.value)
    assert position(folder / "weights" / "last.ckpt") == (0, 2, 2)
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back


def test_a_second_signal_aborts_at_once():
    handler = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    assert signal.getsignal(signal.SIGTERM) is handler


def test_resume_refuses_a_changed_config_and_allows_more_epochs(corpus, reference, tmp_path):
    run = tmp_path / "exp" / "run"
    shutil.copytree(reference, run)
    config = write_config(tmp_path / "run.conf", corpus, **RUN)
    refused = run_main_here(config, tmp_path / "exp", "--resume", "--set", "optim.lr=0.01")  # refused: no training
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "cannot resume" in refused.stderr and "optim.lr (run: 0.001, now: 0.01)" in refused.stderr

    # In this process: epoch 3 is compared with nothing bit for bit (rows[:2] are the copied reference's).
    longer = run_main_here(config, tmp_path / "exp", "--resume", "--set", "epoch=3")
    assert longer.returncode == 0, longer.stderr
    assert "resumed from" in longer.stdout and "epoch 2, step 12" in longer.stdout
    rows = metrics_rows(run)
    assert rows[:2] == metrics_rows(reference) and [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[2]["step"] == "18"


def test_a_damaged_last_checkpoint_falls_back_to_the_best_k_copy(corpus, reference, tmp_path):
    run = tmp_path / "exp" / "run"
    shutil.copytree(reference, run)
    last = run / "weights" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. a disk fault; atomic writes never leave this
    (run / ".metrics.csv.x1y2.tmp").write_text("partial")  # what a killed writer leaves
    config = write_config(tmp_path / "run.conf", corpus, **RUN)
    resumed = run_main(config, tmp_path / "exp", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: skipping unreadable checkpoint: {last}" in resumed.stderr
    best = next((run / "weights").glob("epoch=*.ckpt"))
    assert f"resumed from {best}" in resumed.stdout
    assert_same_run(run, reference)


def test_a_checkpoint_position_beyond_the_epoch_is_refused_naming_the_checkpoint(corpus, tmp_path):
    """The epoch has fewer batches than the checkpoint says are done (e.g. a training protocol edited under the
    same path): one line naming the checkpoint, which is left as it was."""
    torch.set_num_threads(1)
    values = json.loads(write_config(tmp_path / "run.conf", corpus, **RUN).read_text())
    folder = tmp_path / "exp"
    prepare_experiment_dir(folder, None, resume=False, overwrite=False)
    (folder / "weights").mkdir()
    trainer = Trainer(build_config(values, source="run.conf"), folder, torch.device("cpu"), progress=False)
    trainer.state.batch = BATCHES + 1  # written when the epoch had more batches
    last = trainer.save_resumable()
    written = last.read_bytes()
    resumed = Trainer(build_config(values, source="run.conf"), folder, torch.device("cpu"), progress=False)
    assert resumed.resume_latest() == last
    with pytest.raises(CheckpointError) as caught:
        resumed.fit()
    message = str(caught.value)
    assert message.startswith(f"{last}: ") and f"batch {BATCHES + 1} " in message and "\n" not in message
    assert last.read_bytes() == written
