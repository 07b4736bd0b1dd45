"""Atomic outputs: a process killed (SIGKILL) at random moments while it rewrites checkpoints, score
files, pickles and metrics never leaves a truncated or mixed file under a final name."""
from __future__ import annotations

import csv
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import QUIET_ENV, REPO

from models.checkpoint import load_checkpoint, save_checkpoint
from runtime import files
from runtime.files import atomic_copy, atomic_open, remove_stale_temporaries
from scoring.score_files import write_scores

# Rewrites every kind of output file in a loop, version after version; each version is uniform
# (every value equals the version number), so a file mixing two versions or cut short is detected.
WRITER = r"""
import sys, numpy as np, torch
from pathlib import Path
from torch import nn
from runtime.files import atomic_copy
from runtime import files
from scoring.score_files import write_scores
from models.checkpoint import save_checkpoint

folder = Path(sys.argv[1])
model = nn.Module()
model.asv_model, model.cm_model, model.backend = nn.Linear(1024, 2048), nn.Linear(8, 8), nn.Linear(1024, 1024)
loss = nn.Module()
loss.register_buffer("center", torch.zeros(16))
lines = 100_000
version = 0
while True:
    version += 1
    with torch.no_grad():
        for tensor in (*model.state_dict().values(), loss.center):
            tensor.fill_(version)
    save_checkpoint(folder / "last.ckpt", model=model, loss=loss, config={"version": version},
                    extra={"version": version})
    atomic_copy(folder / "last.ckpt", folder / "best.ckpt")
    write_scores(folder / "scores.txt", (["LA_0001"] * lines, ["LA_E_1"] * lines, ["target"] * lines),
                           np.full(lines, float(version)))
    files.write_pickle(folder / "embeddings.pk",
                           {f"utt{i}": np.full(512, version, np.float32) for i in range(2000)})
    files.write_json(folder / "metrics.json", {"version": version, "values": [version] * 20000})
    files.write_csv(folder / "metrics.csv", ["epoch", "version"],
                        [{"epoch": i, "version": version} for i in range(20000)])
    print(version, flush=True)
"""
FILES = ("last.ckpt", "best.ckpt", "scores.txt", "embeddings.pk", "metrics.json", "metrics.csv")


def version_of(path: Path) -> int:
    """Load a file the way a later run would and return its (single) version; fails on any damage."""
    if path.suffix == ".ckpt":
        checkpoint = load_checkpoint(path)
        version = checkpoint.meta["version"]
        tensors = [*checkpoint.asv_state.values(), *checkpoint.cm_state.values(), *checkpoint.backend_state.values(),
                   checkpoint.oc_center]
        assert checkpoint.asv_state["weight"].shape == (2048, 1024)
        assert all(bool((tensor == version).all()) for tensor in tensors)
        return version
    if path.name == "scores.txt":
        rows = [line.split() for line in path.read_text().splitlines()]
        assert len(rows) == 100_000 and all(len(row) == 4 for row in rows)
        versions = {float(row[3]) for row in rows}
        assert len(versions) == 1
        return int(versions.pop())
    if path.suffix == ".pk":
        with open(path, "rb") as handle:
            embeddings = pickle.load(handle)
        assert len(embeddings) == 2000
        versions = {int(value[0]) for value in embeddings.values()}
        assert len(versions) == 1 and all((value == value[0]).all() for value in embeddings.values())
        return versions.pop()
    if path.suffix == ".json":
        saved = json.loads(path.read_text())
        assert saved["values"] == [saved["version"]] * 20000
        return saved["version"]
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20000 and len({row["version"] for row in rows}) == 1
    return int(rows[0]["version"])


@pytest.mark.slow
def test_sigkill_during_writes_never_leaves_a_partial_file(tmp_path):
    rng = random.Random()  # unseeded on purpose: other moments on every run
    kills_mid_write = 0
    seen_versions: set[int] = set()
    for attempt in range(4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, **QUIET_ENV})
        try:
            assert writer.stdout.readline().strip(), writer.stderr.read()  # one full round of files exists
            if attempt % 2:  # at a random moment
                time.sleep(rng.uniform(0.0, 1.5))
            else:  # as soon as a temporary file shows that a write is under way
                deadline = time.time() + 60
                while time.time() < deadline and not any(p.name.startswith(".") for p in tmp_path.iterdir()):
                    time.sleep(0.0005)
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.communicate()
        temporaries = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        kills_mid_write += bool(temporaries)
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(FILES)
        assert all(name.endswith(".tmp") for name in temporaries), temporaries
        versions = {name: version_of(tmp_path / name) for name in FILES}  # every file loads and is whole
        # Files are written in order: each holds the version of the one before it or the one after.
        order = [versions[name] for name in FILES]
        assert all(0 <= before - after <= 1 for before, after in zip(order, order[1:])), versions
        seen_versions |= set(order)
        remove_stale_temporaries(tmp_path)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert kills_mid_write >= 1, "no kill landed inside a write; the test proved nothing"
    assert len(seen_versions) >= 2


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "scores.txt"
    files.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half of the new content")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.txt"]


def test_written_files_get_ordinary_permissions(tmp_path):
    model = torch.nn.Module()
    model.asv_model, model.cm_model, model.backend = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    previous = os.umask(0o022)
    try:
        files.write_json(tmp_path / "metrics.json", {"a": 1})
        atomic_copy(tmp_path / "metrics.json", tmp_path / "copy.json")
        save_checkpoint(tmp_path / "last.ckpt", model=model, loss=None, config=None)
        os.umask(0o027)
        save_checkpoint(tmp_path / "private.ckpt", model=model, loss=None, config=None)
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "copy.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.ckpt").stat().st_mode & 0o777 == 0o640  # follows the umask like other files
    assert json.loads((tmp_path / "copy.json").read_text()) == {"a": 1}


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    kept = [tmp_path / "scores.txt", tmp_path / "weights" / "last.ckpt", tmp_path / ".hidden_config"]
    stale = [tmp_path / ".scores.txt.a1b2.tmp", tmp_path / "weights" / ".last.ckpt.c3d4.tmp",
             tmp_path / "weights" / ".best.ckpt.e5f6.partial"]  # .partial: checkpoints of older versions
    for path in (*kept, *stale):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)


def test_scores_round_trip_exactly_and_nan_marks_a_skipped_trial(tmp_path):
    scores = np.array([0.1, -3.25e-7, np.nan, 1.0], dtype=np.float32)
    write_scores(tmp_path / "s.txt", (["a", "b", "c", "d"],), scores)
    rows = [line.split() for line in (tmp_path / "s.txt").read_text().splitlines()]
    assert rows[2] == ["c", "nan"]
    read = np.array([float(row[1]) for row in rows])
    np.testing.assert_array_equal(read.astype(np.float32), scores)
    assert torch.tensor(read[[0, 1, 3]]).dtype == torch.float64
