"""Helpers for the tests that run main.py and the scripts on the tiny synthetic corpus."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tqdm
from test_pipeline import tiny_config

from data.synthetic import CorpusSpec, generate_corpus

REPO = Path(__file__).resolve().parent.parent
# One thread per process: on a busy 2-core machine OpenMP threads that wait on each other
# make the tiny runs several times slower, and the results do not depend on it.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus, generated once per test session and shared by the modules that ask for it."""
    root = tmp_path_factory.getbasetemp() / "tiny_corpus_shared"
    generate_corpus(root, CorpusSpec.tiny(), progress=False)  # a no-op when already complete
    return root


def write_config(path: Path, corpus: Path, **overrides) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tiny_config(corpus, **overrides), indent=1))
    return path


def main_command(config: Path, output_dir: Path, *extra: str, progress: bool = False) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), "--config", str(config), "--output_dir", str(output_dir),
            *([] if progress else ["--no_progress"]), *extra]


def _environment(progress: bool) -> dict[str, str]:
    environment = {**os.environ, **QUIET_ENV}
    if progress:
        del environment["TQDM_DISABLE"]
    return environment


def run_main(config: Path, output_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(main_command(config, output_dir, *extra), capture_output=True, text=True,
                          timeout=timeout, cwd=output_dir.parent, env=_environment(False))


def run_main_here(config: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """As run_main, in this process: the same outputs without a python start and its imports (seconds per run).

    Runs compared bit for bit must all be made one way, since thread settings can change the last bits; and a
    run that is killed or signalled, or that needs a lock this process holds, needs run_main.
    """
    return run_here(main_command(config, output_dir, *extra)[1:], cwd=output_dir.parent)


def run_here(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python *command` (a script and its arguments) in this process, in `cwd`, with one torch thread and
    QUIET_ENV, as run_main starts one; cwd, argv, the environment, the thread count and the random generators'
    states are put back afterwards."""
    out, err = io.StringIO(), io.StringIO()
    threads, previous_cwd = torch.get_num_threads(), os.getcwd()
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]), pytest.MonkeyPatch.context() as patch, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(sys, "argv", [str(part) for part in command])
        for key, value in QUIET_ENV.items():
            patch.setenv(key, value)
        torch.set_num_threads(1)
        os.chdir(cwd)
        try:
            runpy.run_path(str(command[0]), run_name="__main__")
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            os.chdir(previous_cwd)
            torch.set_num_threads(threads)
            random.setstate(states[0])
            np.random.set_state(states[1])
    return subprocess.CompletedProcess([sys.executable, *map(str, command)], status, out.getvalue(), err.getvalue())


def start_main(config: Path, output_dir: Path, *extra: str, progress: bool = False, **options) -> subprocess.Popen:
    """Start main.py; with `progress` its tqdm bars go to stderr (to watch where training is)."""
    return subprocess.Popen(main_command(config, output_dir, *extra, progress=progress), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=output_dir.parent,
                            env=_environment(progress), **options)


def run_script(script: str, argv: list[str], capsys: pytest.CaptureFixture,
               monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run a top-level script in this process, as `python script argv...`; returns (status, stdout, stderr)."""
    original_init = tqdm.tqdm.__init__

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.tqdm, "__init__", quiet_init)
    monkeypatch.setattr(sys, "argv", [str(REPO / script), *argv])
    capsys.readouterr()
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return status, out, err


def temporaries(folder: Path) -> list[Path]:
    """Hidden temporary files that an interrupted atomic write would leave."""
    return sorted(folder.rglob(".*.tmp"))


class StderrWatch:
    """Collects a started process's stderr in a thread; `wait_for(pattern)` until it appears there."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.seen: list[str] = []
        self.reader = threading.Thread(target=lambda: self.seen.extend(iter(lambda: process.stderr.read(1), "")),
                                       daemon=True)
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(self.seen)

    def wait_for(self, pattern: str, timeout: float = 300) -> None:
        """Return once `pattern` is in stderr; the process must still be running then."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None and not re.search(pattern, self.text):
            time.sleep(0.02)
        assert self.process.poll() is None, self.text

    def join(self) -> str:
        self.reader.join(timeout=10)
        return self.text

