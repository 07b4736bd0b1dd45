"""Hostile input, the run's surroundings: output places that are files, trial lists that lack a class,
networks that output NaN, a killed data-loading worker and a killed torchrun process. Each ends in one line
that names the culprit (and what was kept), never a traceback or a file holding NaN."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from test_pipeline import tiny_config
from tiny_run import QUIET_ENV, REPO, run_script, temporaries, tiny_corpus, write_config

from data.protocols import ProtocolError
from models.checkpoint import CheckpointError, load_checkpoint
from runtime.cli import run_cli
from runtime.config import build_config
from runtime.errors import UserError
from runtime.files import atomic_open, output_folder
from scoring.extraction import Extraction, ScoringError, extract
from scoring.inputs import scoring_inputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


# =========================================================================== output places
def test_an_output_folder_below_a_file_names_the_option_and_the_file(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(UserError, match=r"^--comment .*results/run: .*results is a file, not a folder$"):
        output_folder(tmp_path / "results" / "run", "--comment")
    with pytest.raises(UserError, match=r"^--output_dir .*results: .*results is a file, not a folder$"):
        output_folder(tmp_path / "results", "--output_dir")
    assert (tmp_path / "results").read_text() == "not a folder"


def test_an_output_folder_is_created_with_its_parents(tmp_path):
    assert output_folder(tmp_path / "a" / "b", "--comment").is_dir()


def test_main_with_an_output_dir_that_is_a_file_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "tiny.conf", corpus)
    (tmp_path / "exp").write_text("")
    status, out, err = run_script("main.py", ["--config", str(config), "--output_dir", str(tmp_path / "exp"),
                                              "--no_progress"], capsys, monkeypatch)
    assert status == 2 and out == ""
    assert err.strip() == f"error: --output_dir {tmp_path / 'exp'}: {tmp_path / 'exp'} is a file, not a folder"


def test_a_second_start_on_a_folder_with_a_run_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "tiny.conf", corpus)
    (tmp_path / "exp" / "tiny" / "weights").mkdir(parents=True)
    (tmp_path / "exp" / "tiny" / "weights" / "last.ckpt").write_bytes(b"kept")
    status, _, err = run_script("main.py", ["--config", str(config), "--output_dir", str(tmp_path / "exp"),
                                            "--no_progress"], capsys, monkeypatch)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "already holds a run; pass --resume" in err and "Errno" not in err
    assert (tmp_path / "exp" / "tiny" / "weights" / "last.ckpt").read_bytes() == b"kept"


@pytest.mark.parametrize("code, strerror", [(errno.ENOSPC, "No space left on device"),
                                             (errno.EROFS, "Read-only file system"),
                                             (errno.EACCES, "Permission denied")])
def test_a_write_the_machine_refuses_is_one_line_that_says_nothing_was_half_written(tmp_path, capsys, code, strerror):
    target = tmp_path / "scores.txt"
    target.write_text("earlier\n")

    def failing_write():
        with atomic_open(target) as handle:
            handle.write("new\n")
            raise OSError(code, strerror, str(target))

    with pytest.raises(SystemExit) as exit_:
        run_cli(failing_write)
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert err == f"error: {target}: {strerror} (earlier outputs are intact; nothing was half-written)\n"
    assert target.read_text() == "earlier\n" and not temporaries(tmp_path)


# =========================================================================== trial lists
@pytest.mark.parametrize("dropped", ["target", "nontarget", "spoof"])
def test_a_trial_list_without_a_class_is_refused_before_any_scoring(corpus, tmp_path, dropped):
    source = corpus / "protocols" / "ASVspoof2019.LA.asv.eval.gi.trl.txt"
    kept = [line for line in source.read_text().splitlines() if line.split()[-1] != dropped]
    trial_list = tmp_path / "trials.txt"
    trial_list.write_text("\n".join(kept) + "\n")
    config = build_config(tiny_config(corpus))
    config["dirs"]["sasv_eval_trial"] = str(trial_list)
    with pytest.raises(ProtocolError, match=rf"^{trial_list}: no {dropped} trials; the SASV metrics"):
        scoring_inputs(config, "eval")


# =========================================================================== weight files
@pytest.mark.parametrize("content, expected", [
    ({"state_dict": {}, "epoch": 3}, "its state_dict is empty; the file holds no weights"),
    ({}, "not a recognised checkpoint"),
    ({"state_dict": "weights"}, "not a recognised checkpoint"),
])
def test_a_checkpoint_without_weights_names_the_file(tmp_path, content, expected):
    path = tmp_path / "model.ckpt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: {expected}"):
        load_checkpoint(path)


# =========================================================================== network outputs
def test_a_network_output_that_is_nan_for_a_sane_file_names_the_file(tmp_path):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"utt{index}.wav")
        soundfile.write(paths[-1], 0.1 * np.sin(np.arange(4000) / (5.0 + index)), 16000)

    def embed(waves: torch.Tensor) -> torch.Tensor:  # NaN for utt2: its second sample is 0.1 sin(1/7) = 0.0142
        out = waves[:, :4].clone()
        out[waves[:, 1] < 0.0155] = float("nan")  # utt1's is 0.1 sin(1/6) = 0.0166
        return out

    with pytest.raises(ScoringError, match=rf"^{paths[2]}: the network's asv output is NaN/inf although the audio "
                                           r"is sane"):
        extract(paths, 4000, {"asv": embed}, Extraction(torch.device("cpu"), batch_size=2, progress=False))


# =========================================================================== killed processes
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _long_config(corpus: Path, path: Path, **overrides) -> Path:
    return write_config(path, corpus, epoch=40, trials_per_epoch=256, **overrides)


@pytest.mark.slow
def test_a_killed_data_loading_worker_is_one_line(corpus, tmp_path):
    config = _long_config(corpus, tmp_path / "tiny.conf", loader={"n_workers": 1})
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), "--config", str(config), "--output_dir",
                                str(tmp_path / "exp"), "--no_progress"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ, **QUIET_ENV})
    try:
        worker = _wait(lambda: _children(process.pid), 120, "the DataLoader worker")[0]
        os.kill(worker, signal.SIGKILL)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert err.startswith("error: a data-loading worker process died") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "lower loader.n_workers" in err
    assert not temporaries(tmp_path)


def _rank_of(pid: int) -> int | None:
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(item[5:]) for item in environment if item.startswith(b"RANK=")), None)


@pytest.mark.slow
def test_a_killed_torchrun_process_stops_the_others_naming_the_last_checkpoint(corpus, tmp_path):
    config = _long_config(corpus, tmp_path / "tiny.conf")
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                str(REPO / "main.py"), "--config", str(config), "--output_dir", str(tmp_path / "exp"),
                                "--no_progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path, env={**os.environ, **QUIET_ENV}, start_new_session=True)
    run = tmp_path / "exp" / "tiny"
    try:
        _wait(lambda: (run / "metrics.csv").exists(), 240, "the first epoch")
        ranks = {}

        def both_ranks():
            pending = _children(process.pid)
            while pending:  # the ranks are descendants of the launcher, at a depth that depends on torch
                child = pending.pop()
                ranks[_rank_of(child)] = child
                pending += _children(child)
            return 1 in ranks

        _wait(both_ranks, 30, "the torchrun processes")
        os.kill(ranks[1], signal.SIGKILL)
        out, err = process.communicate(timeout=180)
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert process.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and ours[0].startswith("error: another torchrun process stopped"), err
    assert "The last good checkpoint is" in ours[0] and "last.ckpt" in ours[0]
    assert "[rank0]: Traceback" not in err and "[rank0]:" not in err  # rank 0 ends in one line
    assert load_checkpoint(run / "weights" / "last.ckpt").meta["epoch"] >= 1  # whole: it loads and resumes
