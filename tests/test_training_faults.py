"""Training faults: a non-finite loss stops (naming the step, keeping the last good checkpoint) or is
skipped and counted; out of GPU memory while scoring halves the batch and retries."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import run_script, temporaries, tiny_corpus, write_config

from models.build import build_sasv_model
from models.checkpoint import load_checkpoint
from models.sasv import SASVModel
from runtime.config import build_config
from scoring.extraction import AdaptiveBatch, Extraction, ScoringError, extract
from scoring.inputs import scoring_inputs
from scoring.sasv import SASVScorer

RUN = dict(epoch=2, trials_per_epoch=24, batch_size=8)  # 3 batches per epoch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def train(config: Path, folder: Path, capsys, monkeypatch, *extra: str):
    argv = ["--config", str(config), "--output_dir", str(folder / "exp"), "--no_progress", *extra]
    return run_script("main.py", argv, capsys, monkeypatch)


def nan_on_calls(monkeypatch, calls: set[int]) -> None:
    """Make SASVModel.forward (training only; scoring uses the embedding methods) return NaN on these calls."""
    original = SASVModel.forward
    count = {"n": 0}

    def forward(self, enrollment, test):
        count["n"] += 1
        feats = original(self, enrollment, test)
        return feats * float("nan") if count["n"] in calls else feats

    monkeypatch.setattr(SASVModel, "forward", forward)


def metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys,
                                                                                  monkeypatch):
    config = write_config(tmp_path / "run.conf", corpus, **RUN)
    nan_on_calls(monkeypatch, {5})  # epoch 2, batch 2
    status, _, err = train(config, tmp_path, capsys, monkeypatch)
    run = tmp_path / "exp" / "run"
    last = run / "weights" / "last.ckpt"
    assert status == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: non-finite training loss (nan) at epoch 2, step 5 (batch 2/3)")
    assert f"The last good checkpoint is {last} (end of epoch 1, step 3)" in line and "--resume" in line
    meta = load_checkpoint(last).meta
    assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 0, 3)
    assert [row["epoch"] for row in metrics(run)] == ["1"] and not temporaries(run)

    monkeypatch.undo()  # the cause is gone: the run continues from the last good checkpoint
    torch.set_num_threads(1)
    status, out, err = train(config, tmp_path, capsys, monkeypatch, "--resume")
    assert status == 0, err
    assert [row["epoch"] for row in metrics(run)] == ["1", "2"]


def test_a_learning_rate_of_1e30_stops_at_the_first_bad_step(corpus, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "run.conf", corpus, **RUN)
    status, _, err = train(config, tmp_path, capsys, monkeypatch, "--set", "optim.lr=1e30")
    assert status == 1, err
    [line] = err.strip().splitlines()
    assert "non-finite training loss" in line and "at epoch 1, step 2 (batch 2/3)" in line
    assert "No checkpoint was saved before it" in line
    assert not (tmp_path / "exp" / "run" / "weights" / "last.ckpt").exists()


@pytest.mark.slow
def test_skip_leaves_nonfinite_batches_out_and_counts_them(corpus, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "run.conf", corpus, nonfinite_loss="skip", **RUN)
    nan_on_calls(monkeypatch, {2, 6})  # epoch 1 batch 2, epoch 2 batch 3
    status, _, err = train(config, tmp_path, capsys, monkeypatch)
    assert status == 0, err
    run = tmp_path / "exp" / "run"
    rows = metrics(run)
    assert [row["skipped_batches"] for row in rows] == ["1", "1"]
    assert [row["step"] for row in rows] == ["2", "4"]  # optimisation steps: batches minus skipped ones
    assert all(np.isfinite(float(row["train_loss"])) for row in rows)
    assert "at epoch 1, batch 2/3; batch left out" in err and "at epoch 2, batch 3/3; batch left out" in err
    checkpoint = load_checkpoint(run / "weights" / "last.ckpt")
    assert all(torch.isfinite(value).all() for value in checkpoint.backend_state.values())


def test_skip_stops_when_training_diverges(corpus, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "run.conf", corpus, nonfinite_loss="skip", **RUN)
    status, _, err = train(config, tmp_path, capsys, monkeypatch, "--set", "optim.lr=1e30")
    assert status == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "after epoch 1, in which 2 of 3 batches had a non-finite loss: " \
        "training has diverged" in line


def test_skip_stops_when_every_batch_of_an_epoch_is_nonfinite(corpus, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "run.conf", corpus, nonfinite_loss="skip", **RUN)
    nan_on_calls(monkeypatch, {1, 2, 3})
    status, _, err = train(config, tmp_path, capsys, monkeypatch)
    assert status == 1, err
    assert err.strip().splitlines()[-1].startswith("error: every batch of epoch 1 had a non-finite loss (3 left out)")


# --------------------------------------------------------------------------- out of memory while scoring
def failing_above(limit: int, error: Exception, network, calls: list[int] | None = None):
    def run(batch: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(len(batch))
        if len(batch) > limit:
            raise error
        return network(batch)

    return run


OOM_ERRORS = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              RuntimeError("CUDA error: out of memory"),
              RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")]


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["typed", "cuda-message", "mps-message"])
def test_out_of_memory_halves_the_batch_and_retries(corpus, error, capsys):
    paths = sorted((corpus / "LA" / "ASVspoof2019_LA_dev" / "flac").glob("*.flac"))[:13]
    network = lambda batch: torch.stack([batch.mean(1), batch.std(1)], dim=1)  # noqa: E731
    options = Extraction(torch.device("cpu"), batch_size=8, progress=False)  # warnings are shown regardless
    expected = extract(paths, 4000, {"stats": network}, options)["stats"]
    calls: list[int] = []
    result = extract(paths, 4000, {"stats": failing_above(3, error, network, calls)}, options)["stats"]
    assert torch.equal(result, expected)
    # loader batches of 8 and 5: 8 and 4 fail, then 2 is kept for the rest
    assert calls == [8, 4, 2, 2, 2, 2, 2, 2, 1]
    err = capsys.readouterr().err
    assert "out of CPU memory with a batch of 8 (embeddings); retrying with 4" in err
    assert "with a batch of 4 (embeddings); retrying with 2" in err


def test_out_of_memory_for_a_single_item_fails_clearly():
    chunked = AdaptiveBatch(4, torch.device("cpu"), "test CM")
    always = failing_above(0, torch.OutOfMemoryError("CUDA out of memory"), lambda batch: batch)
    with pytest.raises(ScoringError, match="out of CPU memory for a single item while computing test CM"):
        chunked.run(lambda batch: {"x": always(batch)}, torch.zeros(5, 3))


def test_other_errors_are_not_retried():
    chunked = AdaptiveBatch(4, torch.device("cpu"), "x")
    calls: list[int] = []
    broken = failing_above(0, RuntimeError("shape mismatch"), lambda batch: batch, calls)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        chunked.run(lambda batch: {"x": broken(batch)}, torch.zeros(5, 3))
    assert calls == [4]


def test_sasv_scoring_survives_out_of_memory_with_the_same_scores(corpus, tmp_path, monkeypatch):
    values = json.loads(write_config(tmp_path / "run.conf", corpus, eval_batch_size=16).read_text())
    config = build_config(values)
    torch.manual_seed(0)
    model, loss = build_sasv_model(config, load_weights=False)
    inputs = scoring_inputs(config, "dev")
    small = SASVScorer(model, loss, Extraction(torch.device("cpu"), batch_size=4, progress=False)).score(
        inputs, backend_batch=8)
    oom = torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(model, "asv_embedding", failing_above(4, oom, model.asv_embedding))
    monkeypatch.setattr(model, "cm_embedding", failing_above(4, oom, model.cm_embedding))
    monkeypatch.setattr(model, "score_embeddings", lambda enr, *rest, original=model.score_embeddings:
                        failing_above(8, oom, lambda batch: original(batch, *rest))(enr))
    big = SASVScorer(model, loss, Extraction(torch.device("cpu"), batch_size=16, progress=False)).score(
        inputs, backend_batch=64)
    np.testing.assert_allclose(big, small, atol=1e-6, rtol=0)  # chunks of 4 (enrollments: 3 vs 2 + 1)



def test_weights_that_became_nonfinite_are_never_checkpointed(corpus, tmp_path, capsys, monkeypatch):
    from training.trainer import Trainer

    config = write_config(tmp_path / "run.conf", corpus, checkpoint_interval_steps=1, **RUN)
    original = Trainer._optimise

    def optimise_then_poison(self, loss):
        stepped = original(self, loss)
        if self.state.step == 2:  # an update that leaves an infinite weight behind a finite loss
            with torch.no_grad():
                next(self.task.model.backend.parameters()).view(-1)[0] = float("inf")
        return stepped

    monkeypatch.setattr(Trainer, "_optimise", optimise_then_poison)
    status, _, err = train(config, tmp_path, capsys, monkeypatch)
    assert status == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: the parameters became NaN/inf by step 2; not overwriting the checkpoint")
    last = tmp_path / "exp" / "run" / "weights" / "last.ckpt"
    assert f"{last} (epoch 1, batch 1, step 1)" in line
    assert load_checkpoint(last).meta["step"] == 1
