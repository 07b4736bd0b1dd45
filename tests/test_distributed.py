"""torchrun: 2 gloo processes train the tiny system; rank 0 writes every output once; the gathered dev and
eval scores equal single-process scoring of the same weights; SIGTERM saves and --resume goes on; every
task killed mid-epoch resumes to the uninterrupted run's weights and metrics. Plus the pieces: disjoint
per-rank trial shares covering the global batches, and shard reassembly."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tiny_run import QUIET_ENV, REPO, StderrWatch, tiny_corpus, write_config

from data.datasets import EpochSampler
from data.protocols import read_sasv_trials
from models.build import build_sasv_model
from models.checkpoint import load_checkpoint, load_sasv_weights
from runtime import distributed
from runtime.cli import exit_status
from runtime.config import ConfigError, load_config
from runtime.errors import RunFailure, UserError
from runtime.signals import RunInterrupted
from scoring.extraction import Extraction, extract
from scoring.inputs import scoring_inputs
from scoring.sasv import SASVScorer
from training.state import experiment_lock

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


# ----------------------------------------------------------------------------- pieces, one process
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shares_are_disjoint_and_each_step_holds_the_single_process_batch(world):
    batch, trials = 12, 50  # 4 whole global batches; the last 2 trials are dropped, as with one process
    used = trials - trials % batch
    shares = [list(EpochSampler(trials, batch_size=batch, rank=r, world_size=world)) for r in range(world)]
    items = [item for share in shares for item in share]
    assert len(items) == len(set(items)) == used and {index for _, index in items} == set(range(used))
    rank_batch = batch // world
    assert {len(share) for share in shares} == {used // world}  # every rank runs the same number of steps
    for step in range(used // batch):
        step_items = {index for share in shares for _, index in share[step * rank_batch:(step + 1) * rank_batch]}
        assert step_items == set(range(step * batch, (step + 1) * batch))
    # Resumed after 2 steps: each rank continues with exactly the trials no rank trained on yet.
    resumed = []
    for r in range(world):
        sampler = EpochSampler(trials, batch_size=batch, rank=r, world_size=world)
        sampler.set_epoch(3, 2)  # batches done, as the trainer counts them
        resumed += list(sampler)
    assert sorted(index for _, index in resumed) == list(range(2 * batch, used))
    assert {epoch for epoch, _ in resumed} == {3}


def test_one_process_runs_the_whole_share_and_keeps_its_rows():
    calls = []
    pieces = distributed.gather_shards(5, lambda share: calls.append(share) or torch.arange(len(share)))
    assert calls == [[0, 1, 2, 3, 4]]
    assert distributed.assemble_rows(pieces) is pieces[0][1]  # no copy, no reordering


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_shards_are_put_back_in_item_order(kind):
    rows = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    shares = [[0, 3, 6], [1, 4], [2, 5], []]  # a rank may get no item at all
    convert = torch.from_numpy if kind == "tensor" else np.asarray
    pieces = [(share, convert(rows[share]) if share else convert(np.empty(0, dtype=np.float32)))
              for share in shares]
    assembled = distributed.assemble_rows(pieces)
    assert type(assembled) is type(pieces[0][1])
    np.testing.assert_array_equal(np.asarray(assembled), rows)


def test_batch_size_is_global_and_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    assert distributed.per_rank_batch(20, "x.conf") == 5
    with pytest.raises(ConfigError, match=r"x.conf: batch_size \(18\) .* over all 4 processes .* multiple of 4"):
        distributed.per_rank_batch(18, "x.conf")


def test_one_process_does_rank_zeros_work_itself_and_raises_its_error_as_it_is():
    assert distributed.on_main_rank(lambda: 7, exit_status) == 7
    refusal = UserError("exp/run is in use")
    with pytest.raises(UserError) as caught:
        distributed.on_main_rank(lambda: (_ for _ in ()).throw(refusal), exit_status)
    assert caught.value is refusal


@pytest.mark.parametrize("error, status", [(UserError("bad key"), 2), (RunFailure("diverged"), 1),
                                           (RunInterrupted("stopped", signal.SIGTERM), 143),
                                           (KeyboardInterrupt(), 130), (SystemExit(3), 3), (ValueError("bug"), 1)])
def test_the_other_ranks_exit_with_the_status_run_cli_gives_rank_zeros_error(error, status):
    assert exit_status(error) == status


def test_whole_files_of_different_lengths_are_embedded_unpadded(tmp_path_factory):
    corpus = tiny_corpus(tmp_path_factory)
    paths = sorted((corpus / "enr_audio" / "dev").glob("*.flac"))[:2] + \
        sorted((corpus / "LA" / "ASVspoof2019_LA_dev" / "flac").glob("*.flac"))[:3]
    length = lambda wave: wave.new_full((len(wave), 1), wave.shape[-1])  # noqa: E731 - a "network": input length
    rows = extract(paths, None, {"length": length}, Extraction(torch.device("cpu"), batch_size=4, progress=False))
    assert rows["length"][:, 0].tolist() == [soundfile.info(str(path)).frames for path in paths]
    assert len(set(rows["length"][:, 0].tolist())) > 1


# ----------------------------------------------------------------------------- torchrun, 2 processes
def torchrun(config: Path, output_dir: Path, *extra: str, progress: bool = False, kill_at_step: int | None = None,
             **options):
    """main.py under torchrun; with `kill_at_step` every process is SIGKILLed once rank 0 has written the
    mid-epoch checkpoint of that step (tests/kill_at_step.py)."""
    script = [str(REPO / "main.py")] if kill_at_step is None else \
        [str(REPO / "tests" / "kill_at_step.py"), str(kill_at_step)]
    command = [*TORCHRUN, *script, "--config", str(config), "--output_dir", str(output_dir),
               *([] if progress else ["--no_progress"]), *extra]
    environment = {**os.environ, **QUIET_ENV}
    if progress:
        del environment["TQDM_DISABLE"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=output_dir.parent, env=environment, **options)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def score_file(path: Path) -> tuple[list[tuple[str, ...]], np.ndarray]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [tuple(row[:3]) for row in rows], np.array([float(row[3]) for row in rows])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """`system` -> (config, run folder, stdout) of its 2-process run of 2 epochs of 3 global batches, never
    stopped (_kill_config): made once per module, both the subject of the output tests and the reference
    that the killed-and-resumed runs must equal."""
    runs = {}

    def run(system: str) -> tuple[Path, Path, str]:
        if system not in runs:
            work = tmp_path_factory.mktemp(f"straight_{system}")
            config = _kill_config(system, corpus, work)
            status, out, err = finish(torchrun(config, work / "exp"))
            assert status == 0, out + err
            runs[system] = config, work / "exp" / "run", out
        return runs[system]

    return run


@pytest.fixture(scope="module")
def two_process_run(uninterrupted):
    return uninterrupted("sasv")  # the tiny system: 2 epochs of 3 steps of batch 8 (4 per process)


def test_two_processes_write_every_output_once(two_process_run, corpus):
    config, run, out = two_process_run
    assert out.count("done: ") == 1 and out.count("epoch 1: loss") == 1 and out.count("eval (") == 1  # rank 0 only
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["step"]) for row in rows] == [("1", "3"), ("2", "6")]  # steps of the global batch
    assert all(np.isfinite(float(row["train_loss"])) for row in rows)
    best_k = [path.name for path in (run / "weights").glob("epoch=*.ckpt")]
    assert len(best_k) == 1 and sorted(path.name for path in (run / "weights").iterdir()) == \
        sorted([*best_k, "best.ckpt", "calibration.json", "last.ckpt"])
    assert sorted(path.name for path in (run / "scores").iterdir()) == \
        ["dev_epoch_001.txt", "dev_epoch_002.txt", "eval.txt"]
    summary = json.loads((run / "metrics_eval.json").read_text())
    assert summary["n_trials"] == len(read_sasv_trials(corpus / "protocols" / "ASVspoof2019.LA.asv.eval.gi.trl.txt"))
    assert load_config(run / "config.conf").to_dict() == load_config(config).to_dict()  # the effective config
    assert not [path for path in run.rglob(".*") if path.is_file()]  # no temporaries left


@pytest.mark.parametrize("partition, scores, weights", [("dev", "dev_epoch_002.txt", "last.ckpt"),
                                                        ("eval", "eval.txt", "epoch=*.ckpt")])
def test_gathered_scores_equal_single_process_scoring(two_process_run, partition, scores, weights):
    """Each trial once, in protocol order, with the score one process gives the same weights."""
    config_path, run, _ = two_process_run
    config = load_config(config_path)
    model, loss = build_sasv_model(config, load_weights=False)
    load_sasv_weights(model, loss, next((run / "weights").glob(weights)))
    inputs = scoring_inputs(config, partition)
    expected = SASVScorer(model, loss, Extraction(torch.device("cpu"), batch_size=16, progress=False)).score(inputs)
    trials, gathered = score_file(run / "scores" / scores)
    assert trials == [(t.speaker, t.utterance, t.key) for t in inputs.trials]
    np.testing.assert_allclose(gathered, expected, atol=1e-5, rtol=0)
    assert np.abs(gathered - np.roll(expected, 1)).max() > 1e-3  # the tolerance tells trials apart


def sigterm_mid_epoch_then_resume(config: Path, output_dir: Path, run: Path, progress_pattern: str,
                                  n_batches: int) -> None:
    """SIGTERM to torchrun once the progress bar matches: one message (rank 0), a mid-epoch last.ckpt,
    and the same command with --resume goes on from it to the end."""
    process = torchrun(config, output_dir, progress=True)
    watch = StderrWatch(process)
    watch.wait_for(progress_pattern)
    process.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both workers
    process.wait(timeout=120)
    text = watch.join().replace("\r", "\n")
    assert process.returncode != 0
    messages = [line for line in text.splitlines() if line.startswith("interrupted by SIGTERM")]
    assert len(messages) == 1, text  # rank 0 alone prints it
    last = run / "weights" / "last.ckpt"
    assert f"saved {last}" in messages[0] and "torchrun --standalone --nproc_per_node=2" in messages[0]
    meta = load_checkpoint(last).meta
    assert meta["epoch"] == 0 and 0 < meta["batch"] <= n_batches and meta["step"] == meta["batch"]
    status, out, err = finish(torchrun(config, output_dir, "--resume"))
    assert status == 0, out + err
    assert out.count(f"resumed from {last} (epoch 0, step {meta['step']})") == 1


def test_sigterm_to_torchrun_saves_once_and_resume_finishes_frozen_subsystems(corpus, tmp_path):
    """Frozen ASV and CM (the _fixed configs): only the back-end is trained through DDP."""
    config = write_config(tmp_path / "run.conf", corpus, model_arch="ResNetSE34V2_AASIST_OC_fixed",
                          trials_per_epoch=48, loader={"n_workers": 1})  # 6 steps per epoch
    sigterm_mid_epoch_then_resume(config, tmp_path / "exp", tmp_path / "exp" / "run", r"\| [1-4]/6 \[", 6)
    with open(tmp_path / "exp" / "run" / "metrics.csv") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["6", "12"]
    assert (tmp_path / "exp" / "run" / "metrics_eval.json").is_file()


@pytest.mark.slow
def test_a_second_launch_on_a_live_folder_is_refused_in_one_line_by_every_rank(corpus, tmp_path):
    """Rank 0's refusal reaches rank 1 before any collective: both exit with status 2 and no rank prints a
    traceback (torchrun itself still reports the failed processes, with its own ChildFailedError traceback)."""
    config = write_config(tmp_path / "run.conf", corpus)
    folder = tmp_path / "exp" / "run"
    with experiment_lock(folder):  # a live run (this process) holds the folder
        status, out, err = finish(torchrun(config, tmp_path / "exp", "--resume"))
    assert status != 0
    refusals = [line for line in err.splitlines() if line.startswith("error: ")]
    assert refusals == [line for line in refusals if line.startswith(
        f"error: {folder} is in use by a running main.py (pid {os.getpid()}, started ")] and len(refusals) == 1, err
    assert "[rank" not in err and f'File "{REPO}' not in err, err  # no process of the run printed a traceback
    assert err.count("Traceback") == err.count("ChildFailedError:") <= 1, err  # torchrun's own report alone
    exits = dict(re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*exitcode\s*: (-?\d+)", err))
    # Both ranks exit with the refusal's status by themselves, unless torchrun, which stops the others
    # once one has failed, sends its SIGTERM before the second is gone.
    assert exits.get("0") == "2" or exits.get("1") == "2", err
    assert set(exits.values()) <= {"2", "-15"}, err
    assert not folder.exists()  # refused before anything was written


# ----------------------------------------------------------------------------- the ASV and CM stages
def test_stage_samplers_give_each_rank_its_share_of_every_global_batch():
    from data.speaker_lists import ShuffledEpochSampler, SpeakerBatchSampler

    single = ShuffledEpochSampler(50, seed=3, batch_size=12)
    single.set_epoch(2)
    whole = [index for _, index in single]
    assert len(whole) == 48  # whole global batches only
    shares = []
    for rank in range(3):
        sampler = ShuffledEpochSampler(50, seed=3, batch_size=12, rank=rank, world_size=3)
        sampler.set_epoch(2, 1)  # resumed after one step
        shares.append([index for _, index in sampler])
    for step in range(3):  # each rank loads 4 per step; together they hold the single-process batch
        assert sorted(i for share in shares for i in share[4 * step:4 * step + 4]) == \
            sorted(whole[12 * (step + 1):12 * (step + 2)])

    labels = [index % 6 for index in range(36)]
    plan = SpeakerBatchSampler(labels, per_speaker=2, batch_size=4, max_per_speaker=6, seed=3)
    ranks = [SpeakerBatchSampler(labels, per_speaker=2, batch_size=4, max_per_speaker=6, seed=3, rank=r, world_size=2)
             for r in range(2)]
    for batch, first, second in zip(plan, *ranks):
        assert len(first) == len(second) == 4 and sorted(first + second) == sorted(batch)


def _stage_config(corpus: Path, path: Path, system: str) -> Path:
    from test_pipeline import tiny_config

    config = tiny_config(corpus, system=system, epoch=2, save_top_k=1)
    if system == "asv":  # 6 speakers x 2 groups of 2 utterances: 3 steps of 4 distinct speakers (2 per process)
        config.update(batch_size=4, asv_train={"loss": "angleproto", "samples": 8000, "max_per_speaker": 4})
    else:  # the whole training list: 9 steps of 8 utterances (4 per process), time to signal inside epoch 1
        config["cm_train"] = {"samples": 8000}
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("system", ["asv", "cm"])
def test_stages_train_under_torchrun_and_score_every_file_once(uninterrupted, tmp_path, system):
    config_path, run, out = uninterrupted(system)  # also the kill-resume test's reference
    assert out.count("done: ") == 1 and out.count(f"{system} epoch 1: loss") == 1  # rank 0 alone logs
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == [str(STEPS[system]), str(2 * STEPS[system])]  # of the global batch
    assert sorted(path.name for path in (run / "scores").iterdir()) == \
        ["dev_epoch_001.txt", "dev_epoch_002.txt", "eval.txt"]
    assert not [path for path in run.rglob(".*") if path.is_file()]  # no temporaries left

    # The gathered dev scores are those one process gives the final weights, each file once, in order.
    from training.trainer import Trainer

    config = load_config(config_path)
    trainer = Trainer(config, tmp_path / "check", torch.device("cpu"), progress=False)
    trainer.task.load_weights(run / "weights" / "last.ckpt")
    trainer.task.validate(1)
    expected = score_file(tmp_path / "check" / "scores" / "dev_epoch_002.txt")
    gathered = score_file(run / "scores" / "dev_epoch_002.txt")
    assert gathered[0] == expected[0]
    np.testing.assert_allclose(gathered[1], expected[1], atol=1e-5, rtol=0)
    assert np.abs(gathered[1] - np.roll(expected[1], 1)).max() > 1e-3


# ----------------------------------------------------------------------------- every task killed and resumed
KILL_STEP = 5  # epoch 2 of 3 batches each, after its second batch
STEPS = {"sasv": 3, "asv": 3, "cm": 9, "b2": 3}  # global batches per epoch of each _kill_config run


def _kill_config(system: str, corpus: Path, folder: Path, **overrides) -> Path:
    """A run of `system` of 2 epochs of STEPS[system] global batches under 2 processes, as small as the task
    allows (cm: enough batches that a signal sent once the progress bar shows epoch 1 lands inside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.conf"
    if system == "sasv":
        write_config(path, corpus, **overrides)  # 24 trials of batch 8
    elif system == "b2":
        from test_b2_task import b2_config, build_data

        data = corpus.parent / "b2_kill_data"  # embedding pickles on the tiny corpus's protocols
        if not (data / "emb").is_dir():
            build_data(data, corpus / "protocols")
        path.write_text(json.dumps(b2_config(data, epoch=2, trials_per_epoch=96, batch_size=32, save_top_k=1,
                                             **overrides)))
    else:
        _stage_config(corpus, path, system)
        config = json.loads(path.read_text())
        config.update(overrides)
        path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("system", ["sasv", "asv", "cm", "b2"])
def test_every_task_killed_mid_epoch_resumes_to_the_uninterrupted_result(corpus, uninterrupted, tmp_path, system):
    """SIGKILL of both processes after the checkpoint of step 5 (epoch 2, batch 2), then --resume: the
    weights, loss parameters and Adam state bit for bit, metrics.csv (seconds aside) and the score files
    are those of the same run never stopped. The cm run is stopped by SIGTERM to torchrun instead, at a
    moment in epoch 1 that its progress bar shows, with a DataLoader worker and no step checkpoints: it
    saves on the signal, once (sigterm_mid_epoch_then_resume)."""
    from test_resume import checkpoint_tensors, metrics_rows

    _, reference, _ = uninterrupted(system)
    steps = STEPS[system]
    assert [row["step"] for row in metrics_rows(reference)] == [str(steps), str(2 * steps)]

    run = tmp_path / "killed" / "exp" / "run"
    last = run / "weights" / "last.ckpt"
    if system == "cm":
        killed = _kill_config(system, corpus, tmp_path / "killed", loader={"n_workers": 1})
        sigterm_mid_epoch_then_resume(killed, tmp_path / "killed" / "exp", run,
                                      rf"cm epoch 1/2: .*\| [1-{steps - 1}]/{steps} \[", steps - 1)
    else:
        killed = _kill_config(system, corpus, tmp_path / "killed", checkpoint_interval_steps=1)
        status, out, err = finish(torchrun(killed, tmp_path / "killed" / "exp", kill_at_step=KILL_STEP))
        assert status != 0 and "done: " not in out, out + err
        meta = load_checkpoint(last).meta
        assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 2, KILL_STEP)
        assert not (run / "metrics_eval.json").exists()

        status, out, err = finish(torchrun(killed, tmp_path / "killed" / "exp", "--resume"))
        assert status == 0, out + err
        assert out.count(f"resumed from {last} (epoch 1, step {KILL_STEP})") == 1, out

    ours, theirs = checkpoint_tensors(last), checkpoint_tensors(reference / "weights" / "last.ckpt")
    assert ours.keys() == theirs.keys() and len(ours) > 0
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"
    assert metrics_rows(run) == metrics_rows(reference)
    names = [sorted(path.name for path in (folder / "weights").iterdir()) for folder in (run, reference)]
    assert names[0] == names[1]
    for name in ["metrics_eval.json", "weights/calibration.json",
                 *(f"scores/{path.name}" for path in (reference / "scores").iterdir())]:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
