"""The save_*.py scripts' outputs are all or nothing: every output place is checked before any work (before a
model is loaded), every partition's files are moved in together, and a full disk names the file being written.

save_asv_score.py needs no network, so it runs here on synthetic embeddings and the tiny protocols of
test_fusion; the scripts that load a model are checked up to the point where they would load it.
"""
from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from test_fusion import _fail_fsync_of, synthetic_partition, write_config

from runtime.errors import UserError


def run_script(monkeypatch, name: str, *args: str) -> None:
    """<name>.main() in this process (errors propagate as exceptions)."""
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    module.main()


def write_embeddings(out: Path, protocols: Path, part: str, seed: int) -> None:
    """spk_model_{part}.pk and asv_embd_{part}.pk for every speaker and test utterance of the trial list."""
    rng = np.random.default_rng(seed)
    rows = [line.split() for line in (protocols / f"ASVspoof2019.LA.asv.{part}.gi.trl.txt").read_text().splitlines()]
    models = {speaker: rng.normal(size=8).astype(np.float32) for speaker in {row[0] for row in rows}}
    embeddings = {row[1]: rng.normal(size=8).astype(np.float32) for row in rows}
    (out / f"spk_model_{part}.pk").write_bytes(pickle.dumps(models))
    (out / f"asv_embd_{part}.pk").write_bytes(pickle.dumps(embeddings))


@pytest.fixture
def embedded(tmp_path):
    protocols, out = tmp_path / "protocols", tmp_path / "out"
    for part, seed in (("dev", 1), ("eval", 2)):
        synthetic_partition(protocols, out, part, seed=seed, n=20)
        write_embeddings(out, protocols, part, seed)
        (out / f"score_ASV_{part}.txt").unlink()  # fusion input of synthetic_partition; save_asv_score writes it
    return write_config(tmp_path, protocols), out, protocols


def _asv_outputs(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out.glob("*_ASV_*")) if p.name.startswith(("score_ASV", "metrics"))}


def test_save_asv_score_later_partition_failure_keeps_the_earlier_run(embedded, monkeypatch):
    config, out, protocols = embedded
    run_script(monkeypatch, "save_asv_score", "--config", str(config), "--comment", str(out))
    earlier = _asv_outputs(out)
    assert sorted(earlier) == ["metrics_ASV_dev.json", "metrics_ASV_eval.json", "score_ASV_dev.txt",
                               "score_ASV_eval.txt"]
    write_embeddings(out, protocols, "dev", seed=7)  # new dev embeddings: dev's scores would change ...
    embeddings = pickle.loads((out / "asv_embd_eval.pk").read_bytes())
    embeddings.pop("LA_E_1000003")  # ... but an eval trial has no embedding
    (out / "asv_embd_eval.pk").write_bytes(pickle.dumps(embeddings))
    with pytest.raises(UserError, match=r"asv.eval.gi.trl.txt:3: no ASV embedding for LA_E_1000003"):
        run_script(monkeypatch, "save_asv_score", "--config", str(config), "--comment", str(out))
    assert _asv_outputs(out) == earlier
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_save_asv_score_full_disk_names_the_destination(embedded, monkeypatch):
    config, out, _ = embedded
    _fail_fsync_of(monkeypatch, "metrics_ASV_eval.json")
    with pytest.raises(OSError) as raised:
        run_script(monkeypatch, "save_asv_score", "--config", str(config), "--comment", str(out))
    assert raised.value.filename == str(out / "metrics_ASV_eval.json")
    assert not _asv_outputs(out)  # dev's files, staged first, were not moved in
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


SCRIPTS = {  # script -> (extra arguments, a file it writes into --comment)
    "save_asv_score": ((), "metrics_ASV_dev.json"),
    "save_cm_score": (("--cm_model", "missing.pth"), "score_CM_eval_no_softmax.txt"),
    "save_asv_embeddings": (("--asv_model", "missing.model"), "spk_model_eval.pk"),
    "save_sasv_score": (("--model", "missing.ckpt"), "report_dev/report.json"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_output_places_are_checked_before_any_work(name, monkeypatch, tmp_path):
    extra, written = SCRIPTS[name]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # --comment under a file: refused before the (missing) weights are looked at or anything is created.
    with pytest.raises(UserError, match="--comment") as raised:
        run_script(monkeypatch, name, *extra, "--comment", str(blocker / "out"))
    assert str(blocker) in str(raised.value) and "\n" not in str(raised.value)
    # A folder where one of its files goes.
    out = tmp_path / "out"
    (out / written).mkdir(parents=True)
    with pytest.raises(UserError, match="--comment") as raised:
        run_script(monkeypatch, name, *extra, "--comment", str(out))
    assert str(out / written) in str(raised.value)
    assert blocker.read_text() == "" and [p.name for p in out.iterdir()] == [Path(written).parts[0]]


def test_save_asv_score_failed_move_puts_the_earlier_run_back(embedded, monkeypatch):
    import errno
    import os

    config, out, protocols = embedded
    run_script(monkeypatch, "save_asv_score", "--config", str(config), "--comment", str(out))
    earlier = _asv_outputs(out)
    (out / "score_ASV_dev.txt").unlink()  # a file the failing run would create afresh
    del earlier["score_ASV_dev.txt"]
    write_embeddings(out, protocols, "dev", seed=7)  # every file of the run would change
    write_embeddings(out, protocols, "eval", seed=8)
    real = os.replace

    def replace(source, target, **kwargs) -> None:
        if Path(target).name == "metrics_ASV_eval.json":  # the last move: the others are done by then
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as raised:
        run_script(monkeypatch, "save_asv_score", "--config", str(config), "--comment", str(out))
    assert raised.value.filename == str(out / "metrics_ASV_eval.json")
    assert _asv_outputs(out) == earlier
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
