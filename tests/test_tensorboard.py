"""`logger: tensorboard`: a main.py run's event files, read back with TensorBoard's own reader, hold each
optimisation step's loss and learning rates, each epoch's metrics.csv numbers, metrics_eval.json's numbers and
the report's plots; a crashed and resumed run holds each step once; `logger: none` writes and imports nothing;
a missing tensorboard package stops the run at start-up naming the key."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import ToyTask
from tiny_run import run_main_here, tiny_corpus, write_config

from runtime import distributed
from runtime.config import ConfigError, build_config, load_config
from scoring.report import REPORT_PLOTS
from training import tasks
from training.loggers import TensorBoardLogger
from training.trainer import Trainer

CPU = torch.device("cpu")


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert folder.is_dir(), folder
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()


def scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def f32(value) -> float:
    """What a TensorBoard scalar (a float32) holds of `value`."""
    return float(np.float32(float(value)))


def read_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def next_second() -> None:
    """Event files are read in name order, which starts with the second they were opened in; a process that
    goes on a run is never within the second that opened its predecessor's, these tests in one process are."""
    time.sleep(1.02 - time.time() % 1)


# ------------------------------------------------------------------ a main.py run (system sasv)

class Crash(Exception):
    """Stands for a kill: the process ends with what it logged after its last checkpoint on disk."""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """main.py for 2 epochs of 3 steps on the tiny corpus, in this process, with the report's plots: it crashes
    after step 5 (the last checkpoint is epoch 1's, step 3), and `--resume` finishes it."""
    corpus = tiny_corpus(tmp_path_factory)
    work = tmp_path_factory.mktemp("tensorboard")
    config = write_config(work / "run.conf", corpus, logger="tensorboard", report_plots=True)
    log_step = TensorBoardLogger.step

    def step_then_crash(self, step, loss, rates):
        log_step(self, step, loss, rates)
        if step == 5:
            raise Crash
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        patch.setattr(TensorBoardLogger, "step", step_then_crash)
        run_main_here(config, work / "exp")
    folder = work / "exp" / "run"
    crashed = read_events(folder / "tensorboard")
    assert [step for step, _ in scalars(crashed, "train/loss")] == [1, 2, 3, 4, 5]  # 4 and 5: stale
    next_second()
    result = run_main_here(config, work / "exp", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "step 3)" in result.stdout
    return folder


@pytest.mark.slow
def test_every_step_logs_once_its_loss_and_the_learning_rates_it_used(run):
    config = load_config(run / "config.conf")
    rows = read_rows(run)
    steps = int(rows[-1]["step"])
    assert [int(row["step"]) for row in rows] == [3, 6]  # 24 trials per epoch, batches of 8
    events = read_events(run / "tensorboard")
    losses = scalars(events, "train/loss")
    assert [step for step, _ in losses] == list(range(1, steps + 1))  # each step once
    for row, first in zip(rows, (1, 4)):  # an epoch's mean step loss is metrics.csv's train_loss
        mean = np.mean([value for step, value in losses if first <= step <= int(row["step"])])
        assert mean == pytest.approx(float(row["train_loss"]), rel=1e-6)
    # Adam's rate decays by optim.gamma every optim.scheduler_interval steps; a step uses the rate before it.
    optim = config["optim"]
    expected = [(step, f32(optim["lr"] * optim["gamma"] ** ((step - 1) // optim["scheduler_interval"])))
                for step in range(1, steps + 1)]
    assert scalars(events, "train/lr") == expected
    assert scalars(events, "train/lr/oc_center") == expected  # the second parameter group
    # metrics.csv's lr is the rate after the epoch: the one the next step uses.
    assert dict(scalars(events, "train/lr"))[int(rows[0]["step"]) + 1] == f32(rows[0]["lr"])


@pytest.mark.slow
def test_every_epoch_logs_metrics_csv_numbers_at_its_last_step(run):
    rows = read_rows(run)
    events = read_events(run / "tensorboard")
    dev_columns = [name for name in rows[0] if name.startswith("dev_")]
    assert dev_columns and {f"dev/{name[4:]}" for name in dev_columns} == \
        {tag for tag in events.Tags()["scalars"] if tag.startswith("dev/")}
    for name in dev_columns:
        assert scalars(events, f"dev/{name[4:]}") == [(int(row["step"]), f32(row[name])) for row in rows]
    assert scalars(events, "train/epoch_loss") == [(int(row["step"]), f32(row["train_loss"])) for row in rows]


@pytest.mark.slow
def test_the_evaluation_logs_metrics_eval_json_and_the_report_plots(run):
    summary = json.loads((run / "metrics_eval.json").read_text())
    events = read_events(run / "tensorboard" / "eval")
    steps = int(read_rows(run)[-1]["step"])
    for key in ("sasv_eer", "sv_eer", "spf_eer", "min_a_dcf", "n_trials", "epoch"):
        assert scalars(events, f"eval/{key}") == [(steps, f32(summary[key]))]
    for key, value in summary["best_dev"].items():
        assert scalars(events, f"eval/best_dev/{key}") == [(steps, f32(value))]
    plots = sorted(path.name for path in (run / "report").glob("*.png"))
    assert plots == sorted(REPORT_PLOTS)
    assert sorted(events.Tags()["images"]) == sorted(f"report/{Path(name).stem}" for name in plots)
    for name in plots:
        (image,) = events.Images(f"report/{Path(name).stem}")
        assert image.step == steps
        assert image.encoded_image_string == (run / "report" / name).read_bytes()  # the file, unchanged
        assert (image.width, image.height) > (100, 100)


def test_a_missing_tensorboard_package_stops_main_py_before_training(tmp_path_factory, tmp_path, monkeypatch):
    corpus = tiny_corpus(tmp_path_factory)
    config = write_config(tmp_path / "run.conf", corpus, logger="tensorboard")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails as if not installed
    result = run_main_here(config, tmp_path / "exp")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.conf" in lines[0] and "'logger'" in lines[0] and \
        "pip install tensorboard" in lines[0], result.stderr
    assert not (tmp_path / "exp" / "run").exists()  # a refused start leaves nothing behind


# ------------------------------------------------------------------ the trainer on a toy task (a second or two)

@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "toy", ToyTask)  # 8 steps per epoch, the rate decays every step
    return lambda **values: build_config({"system": "toy", "epoch": 3, "save_top_k": 2, "logger": "tensorboard",
                                          **values}, source="toy.conf")


def test_a_crashed_run_resumed_logs_each_step_once_as_a_run_never_stopped(toy, tmp_path):
    Trainer(toy(), tmp_path / "straight", CPU, progress=False).fit()
    straight = read_events(tmp_path / "straight" / "tensorboard")

    crashing = Trainer(toy(checkpoint_interval_steps=3), tmp_path / "run", CPU, progress=False)
    log_step = crashing.logger.step

    def step_then_crash(step, loss, rates):
        log_step(step, loss, rates)
        if step == 13:  # last checkpoint: step 12, inside epoch 2
            on_disk = read_events(tmp_path / "run" / "tensorboard")  # the writer is still open
            assert [step for step, _ in scalars(on_disk, "train/loss")][:12] == list(range(1, 13))  # flushed
            raise Crash
    crashing.logger.step = step_then_crash
    with pytest.raises(Crash):
        crashing.fit()
    before = read_events(tmp_path / "run" / "tensorboard")
    assert [step for step, _ in scalars(before, "train/loss")] == list(range(1, 14))  # 13 was logged: stale

    next_second()
    resumed = Trainer(toy(checkpoint_interval_steps=3), tmp_path / "run", CPU, progress=False)
    assert resumed.resume_latest() is not None and resumed.state.step == 12
    resumed.fit()
    next_second()
    resumed.fit()  # --resume of a finished run scores the eval set again: its points replace the earlier ones
    events = read_events(tmp_path / "run" / "tensorboard")
    assert events.Tags()["scalars"] == straight.Tags()["scalars"]
    for tag in straight.Tags()["scalars"]:
        assert scalars(events, tag) == scalars(straight, tag), tag  # each step once, as never stopped
    assert [step for step, _ in scalars(events, "train/loss")] == list(range(1, 25))
    assert scalars(events, "train/lr") == [(step, f32(0.05 * 0.99 ** (step - 1))) for step in range(1, 25)]
    rows = read_rows(tmp_path / "run")
    assert scalars(events, "dev/mse") == [(int(row["step"]), f32(row["dev_mse"])) for row in rows] and \
        [int(row["step"]) for row in rows] == [8, 16, 24]
    summary = json.loads((tmp_path / "run" / "metrics_eval.json").read_text())
    assert scalars(read_events(tmp_path / "run" / "tensorboard" / "eval"), "eval/eval_mse") == \
        [(24, f32(summary["eval_mse"]))]


def test_logger_none_writes_no_tensorboard_folder_and_imports_nothing(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # any import of it would fail
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    Trainer(toy(logger="none"), tmp_path / "run", CPU, progress=False).fit()
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["metrics.csv", "metrics_eval.json",
                                                                          "weights"]
    assert build_config({}, source="x.conf")["logger"] == "none"  # the default


def test_under_torchrun_only_rank_0_writes(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    Trainer(toy(), tmp_path / "run", CPU, progress=False).fit()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_missing_tensorboard_package_is_refused_on_every_rank(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for main in (True, False):
        monkeypatch.setattr(distributed, "is_main", lambda main=main: main)
        with pytest.raises(ConfigError, match=r"^toy\.conf: key 'logger' .*pip install tensorboard"):
            Trainer(toy(), tmp_path / "run", CPU, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_bad_logger_value_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"x\.conf.*logger.*wandb"):
        build_config({"logger": "wandb"}, source="x.conf")
