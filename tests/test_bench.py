"""bench/bench_train.py runs end to end on the tiny corpus and prints its JSON summary (not a timing test)."""
from __future__ import annotations

import json
import math

import pytest
from tiny_run import REPO, run_here, tiny_corpus, write_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


@pytest.mark.slow
def test_bench_train_prints_every_promised_number(corpus, tmp_path):
    # speaker_loss on: the bench's frozen variant must still build (a frozen ASV has no speaker loss).
    config = write_config(tmp_path / "bench.conf", corpus, speaker_loss={"weight": 0.2})
    result = run_here([REPO / "bench" / "bench_train.py", "--config", config, "--train_batches", "1",
                       "--reference_batches", "1", "--per_trial_trials", "4"], cwd=tmp_path)  # as `python ...`
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("eval_trials_per_s", "eval_trials_per_s_reference", "eval_speedup", "fixed_epoch_speedup",
                "train_trials_per_s"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["device"] == "cpu"
    assert summary["eval_max_abs_diff"] < 1e-4  # cached scoring equals the per-trial path
    assert summary["eval_speedup"] == pytest.approx(
        summary["eval_trials_per_s"] / summary["eval_trials_per_s_reference"])


@pytest.mark.slow
def test_bench_ssl_prints_every_promised_number(tmp_path):
    result = run_here([REPO / "bench" / "bench_ssl.py", "--preset", "wav2vec2_base", "--samples", "4000",
                       "--steps", "1", "--eval_batch", "1", "--eval_repeats", "1", "--device", "cpu",
                       "--variants", "fp32,fp32+checkpointing"], cwd=tmp_path)  # bf16: tens of s on an AVX2 CPU
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {row["variant"]: row for row in summary["results"]}
    assert set(rows) == {"fp32", "fp32+checkpointing"}, rows
    for row in rows.values():
        assert row["parameters"] > 90_000_000  # wav2vec 2.0 Base (95 M) + the AASIST back-end
        assert math.isfinite(row["seconds_per_step"]) and row["seconds_per_step"] > 0
        assert row["peak_memory_mib"] > 0
    assert rows["fp32"]["eval_utterances_per_second"] > 0
    assert "eval_utterances_per_second" not in rows["fp32+checkpointing"]  # the same eval as without it
