"""system cm on the tiny synthetic corpus: aasist's recipe, dev EER / min t-DCF with the dev ASV scores
(checked against metrics/), exact resume after a crash, and the checkpoint loading into system sasv."""
from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.audio import AudioError
from data.protocols import ProtocolError, read_cm_protocol, read_sasv_trials
from metrics.eer import compute_eer
from metrics.tdcf import min_tdcf
from models.build import build_asv_network, build_sasv_model
from models.checkpoint import load_checkpoint, save_subsystem_checkpoint
from runtime.config import ConfigError, build_config
from scoring.score_files import read_asv_score_file
from training.state import TrainingError
from training.tasks.cm import cosine_factor
from training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from test_pipeline import tiny_config  # noqa: E402  (the tiny widths shared by the pipeline tests)
from tiny_run import run_main_here, tiny_corpus  # noqa: E402

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

torch.set_num_threads(2)
CPU = torch.device("cpu")
STEPS_PER_EPOCH = 3  # 24 training utterances, batch 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)  # generated once per session, shared with the other modules


def short_list(corpus: Path) -> Path:
    """A shorter training protocol (2 bona fide + 2 spoofed utterances per speaker) keeps the test fast.
    Written beside the corpus, not into it: the corpus is shared with other modules."""
    path = corpus.parent / f"{corpus.name}.cm.train.short.txt"
    if not path.is_file():
        lines, taken = [], {}
        for line in (corpus / "protocols" / "ASVspoof2019.LA.cm.train.trn.txt").read_text().splitlines():
            speaker, key = line.split()[0], line.split()[4]
            if taken.setdefault((speaker, key), 0) < 2:
                taken[(speaker, key)] += 1
                lines.append(line)
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def asv_checkpoint(corpus, tmp_path_factory) -> Path:
    """An (untrained, seeded) tiny ASV model in the asv stage's checkpoint format."""
    torch.manual_seed(3)
    network = build_asv_network(build_config(tiny_config(corpus)))
    return save_subsystem_checkpoint(tmp_path_factory.mktemp("asv") / "asv.ckpt", asv_model=network)


def cm_config(corpus: Path, **overrides) -> dict:
    config = tiny_config(corpus, system="cm", epoch=2, batch_size=8, save_top_k=1)
    config["dirs"]["cm_trn_list"] = str(short_list(corpus))
    config["cm_train"] = {"samples": 8000, "lr": 0.001, "lr_min": 0.0001, "freq_aug": True}
    config["cm_model"]["filts"][0] = 24  # frequency augmentation masks up to 19 sinc bands
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def trained(corpus, asv_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("cm_run")
    config = cm_config(corpus)
    config["cm_train"]["asv_model"] = str(asv_checkpoint)
    path = work / "cm.conf"
    path.write_text(json.dumps(config))
    result = run_main_here(path, work / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    return config, work / "exp" / "cm", result.stdout


def read_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def cm_split(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array([float(row[3]) for row in rows])
    bona = np.array([row[2] == "bonafide" for row in rows])
    return scores[bona], scores[~bona]


def test_dev_metrics_use_the_dev_asv_scores(trained, corpus):
    _, experiment, stdout = trained
    with open(experiment / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "dev_eer", "dev_min_tdcf", "skipped_batches",
                             "redrawn_utterances", "seconds"]
    assert [(row["skipped_batches"], row["redrawn_utterances"]) for row in rows] == [("0", "0")] * len(rows)
    assert [int(row["step"]) for row in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    # The ASV scores were computed on the *dev* trial list, every trial kind included.
    dev_trials = read_sasv_trials(corpus / "protocols" / "ASVspoof2019.LA.asv.dev.gi.trl.txt")
    asv_rows = read_rows(experiment / "asv_scores" / "dev.txt")
    assert [row[:3] for row in asv_rows] == [[t.speaker, t.utterance, t.key] for t in dev_trials]
    asv = {key: np.array([float(r[3]) for r in asv_rows if r[2] == key]) for key in ("target", "nontarget", "spoof")}
    protocol = read_cm_protocol(corpus / "protocols" / "ASVspoof2019.LA.cm.dev.trl.txt")
    for row in rows:
        cm_rows = read_rows(experiment / "scores" / f"dev_epoch_{int(row['epoch']):03d}.txt")
        assert [r[:3] for r in cm_rows] == [[e.utterance, e.attack, e.key] for e in protocol]
        bona, spoof = cm_split(cm_rows)
        assert float(row["dev_eer"]) == pytest.approx(compute_eer(bona, spoof)[0], abs=1e-12)
        assert float(row["dev_min_tdcf"]) == pytest.approx(
            min_tdcf(asv["target"], asv["nontarget"], asv["spoof"], bona, spoof), abs=1e-12)
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    eval_asv = read_asv_score_file(experiment / "asv_scores" / "eval.txt",
                                   corpus / "protocols" / "ASVspoof2019.LA.asv.eval.gi.trl.txt")
    bona, spoof = cm_split(read_rows(experiment / "scores" / "eval.txt"))
    assert summary["eer"] == pytest.approx(compute_eer(bona, spoof)[0], abs=1e-12)
    assert summary["min_tdcf"] == pytest.approx(
        min_tdcf(eval_asv["target"], eval_asv["nontarget"], eval_asv["spoof"], bona, spoof), abs=1e-12)
    assert "eval CM EER" in stdout and "weights/best.ckpt" in stdout


def test_the_run_carries_its_calibration(trained):
    from test_calibration import check_run_calibration

    from models.build import build_cm_network
    from runtime.config import load_config

    _, experiment, stdout = trained
    check_run_calibration(experiment, "cm", build_cm_network(load_config(experiment / "config.conf")))
    assert "calibration (dev fit): eval" in stdout


def test_cosine_schedule_per_step(trained):
    config, experiment, _ = trained
    with open(experiment / "metrics.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    total, ratio = 2 * STEPS_PER_EPOCH, config["cm_train"]["lr_min"] / config["cm_train"]["lr"]
    # The lr column is the rate of each epoch's last step (steps 2 and 5, counted from 0).
    expected = [0.001 * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(step / total * math.pi))) for step in (2, 5)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    factor = cosine_factor(100, 0.05)
    assert (factor(0), factor(50), factor(100)) == pytest.approx((1.0, 0.525, 0.05))


def test_best_checkpoint_initialises_the_sasv_model(trained, corpus, asv_checkpoint):
    config, experiment, _ = trained
    best = load_checkpoint(experiment / "weights" / "best.ckpt")
    assert best.asv_state is None and best.backend_state is None and "optimizer" not in best.meta
    sasv = build_config(tiny_config(corpus, aasist_weight=str(experiment / "weights" / "best.ckpt"),
                                    asv_weight=str(asv_checkpoint), cm_model=config["cm_model"]))
    model, _ = build_sasv_model(sasv)
    for key, value in best.cm_state.items():
        assert torch.equal(model.cm_model.state_dict()[key], value), key
    for key, value in load_checkpoint(asv_checkpoint).asv_state.items():
        assert torch.equal(model.asv_model.state_dict()[key], value), key


def test_asv_score_formats_and_partition_guard(trained, corpus, tmp_path):
    _, experiment, _ = trained
    dev_list = corpus / "protocols" / "ASVspoof2019.LA.asv.dev.gi.trl.txt"
    rows = read_rows(experiment / "asv_scores" / "dev.txt")
    four = read_asv_score_file(experiment / "asv_scores" / "dev.txt", dev_list)
    organisers = tmp_path / "ASVspoof2019.LA.asv.dev.gi.trl.scores.txt"
    organisers.write_text("".join(f"{'bonafide' if r[2] != 'spoof' else 'A01'} {r[2]} {r[3]}\n" for r in rows))
    by_utterance = tmp_path / "score_ASV_dev.txt"
    by_utterance.write_text("".join(f"{r[1]} {r[3]}\n" for r in rows))
    for path in (organisers, by_utterance):
        loaded = read_asv_score_file(path, dev_list)
        assert all(np.array_equal(loaded[key], four[key]) for key in four)
    # The original's bug: eval ASV scores for the dev t-DCF. The trial counts give it away.
    eval_scores = tmp_path / "eval_scores.txt"
    eval_scores.write_text("".join(f"{'bonafide' if r[2] != 'spoof' else 'A07'} {r[2]} {r[3]}\n"
                                   for r in read_rows(experiment / "asv_scores" / "eval.txt")))
    with pytest.raises(ProtocolError, match="scores of another partition"):
        read_asv_score_file(eval_scores, dev_list)
    by_utterance.write_text("".join(f"{r[1]} {r[3]}\n" for r in reversed(rows)))
    with pytest.raises(ProtocolError, match=r"score_ASV_dev.txt:1: expected"):
        read_asv_score_file(by_utterance, dev_list)


class Crash(Exception):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(trained, corpus, tmp_path, monkeypatch):
    _, experiment, _ = trained
    config = cm_config(corpus)
    config["cm_train"]["asv_scores"] = {"dev": str(experiment / "asv_scores" / "dev.txt"),
                                        "eval": str(experiment / "asv_scores" / "eval.txt")}
    config["cm_train"]["select_by"] = "min_tdcf"
    straight = Trainer(build_config(config), tmp_path / "straight", CPU, progress=False)
    straight.fit()

    # The crashing run also checkpoints after every step: saving must not change what is trained.
    crashing = Trainer(build_config({**config, "checkpoint_interval_steps": 1}), tmp_path / "resumed", CPU,
                         progress=False)
    original, calls = crashing.task.batch_loss, []

    def crash_in_second_epoch(*inputs):
        calls.append(1)
        if len(calls) == STEPS_PER_EPOCH + 2:  # epoch 2, batch 2
            raise Crash()
        return original(*inputs)

    monkeypatch.setattr(crashing.task, "batch_loss", crash_in_second_epoch)
    with pytest.raises(Crash):
        crashing.fit()
    longer = Trainer(build_config({**config, "epoch": 3}), tmp_path / "resumed", CPU, progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* epoch \(run: 2, now: 3\)"):
        longer.resume(tmp_path / "resumed" / "weights" / "last.ckpt")  # the cosine spans all epochs
    resumed = Trainer(build_config(config), tmp_path / "resumed", CPU, progress=False)
    resumed.resume_latest()
    assert (resumed.state.epoch, resumed.state.batch, resumed.state.step) == (1, 1, STEPS_PER_EPOCH + 1)
    resumed.fit()
    ends = [load_checkpoint(tmp_path / run / "weights" / "last.ckpt") for run in ("straight", "resumed")]
    for key, value in ends[0].cm_state.items():
        assert torch.equal(value, ends[1].cm_state[key]), key
    assert ends[0].meta["metrics"] == [{**row, "seconds": ends[0].meta["metrics"][i]["seconds"]}
                                       for i, row in enumerate(ends[1].meta["metrics"])]
    assert all("-min_tdcf_dev=" in path.name for path in (tmp_path / "resumed" / "weights").glob("epoch=*.ckpt"))


def test_recipe_settings_and_refusals(corpus, tmp_path):
    trainer = Trainer(build_config(cm_config(corpus)), tmp_path, CPU, progress=False)
    assert trainer.task.criterion.weight.tolist() == pytest.approx([0.1, 0.9])  # [spoof, bona fide]
    entries = read_cm_protocol(short_list(corpus))
    assert trainer.task.loader.dataset.labels == [int(e.key == "bonafide") for e in entries]
    group = trainer.optimizer.param_groups[0]
    assert (group["betas"], group["weight_decay"], group["amsgrad"]) == ((0.9, 0.999), 0.0001, False)
    with pytest.raises(ConfigError, match="for system cm give the initial weights in aasist_weight"):
        Trainer(build_config(cm_config(corpus, init_checkpoint="x.ckpt")), tmp_path, CPU, progress=False)
    small = cm_config(corpus)
    small["cm_model"]["filts"][0] = 12
    with pytest.raises(ConfigError, match=r"freq_aug masks up to 19 sinc bands, so it needs at least 20 .* is 12"):
        Trainer(build_config(small), tmp_path, CPU, progress=False)
    with pytest.raises(ConfigError, match="select_by is min_tdcf, which needs dev ASV scores"):
        build_config(cm_config(corpus, cm_train={"select_by": "min_tdcf"}))


def _nan_loss_on_call(trainer: Trainer, call: int) -> None:
    original, calls = trainer.task.batch_loss, []

    def forward(*inputs):
        calls.append(1)
        loss, accuracy = original(*inputs)
        return (loss * float("nan") if len(calls) == call else loss), accuracy

    trainer.task.batch_loss = forward


def test_nonfinite_loss_is_skipped_or_stops_naming_the_last_checkpoint(corpus, tmp_path, capsys):
    trainer = Trainer(build_config(cm_config(corpus, epoch=1, nonfinite_loss="skip")), tmp_path / "skip", CPU,
                        progress=False)
    _nan_loss_on_call(trainer, 2)
    trainer.fit()
    assert "non-finite training loss (nan) at cm epoch 1, batch 2/3; batch left out" in capsys.readouterr().err
    with open(tmp_path / "skip" / "metrics.csv") as handle:
        row = next(csv.DictReader(handle))
    assert (row["skipped_batches"], row["step"]) == ("1", str(STEPS_PER_EPOCH - 1))

    config = cm_config(corpus, epoch=2, checkpoint_interval_steps=2)
    trainer = Trainer(build_config(config), tmp_path / "error", CPU, progress=False)
    _nan_loss_on_call(trainer, STEPS_PER_EPOCH + 2)
    with pytest.raises(TrainingError, match=r"non-finite training loss \(nan\) at cm epoch 2, step 5 \(batch 2/3\); "
                                            r"training stopped. The last good checkpoint is .*last.ckpt \(epoch 2, "
                                            r"batch 1, step 4\)"):
        trainer.fit()


def test_bad_audio_is_replaced_in_training_and_left_out_of_the_metrics(corpus, tmp_path, capsys):
    root = tmp_path / "corpus"
    shutil.copytree(corpus, root)
    train_entry = next(e for e in read_cm_protocol(short_list(root)) if e.key == "bonafide")
    dev_entry = read_cm_protocol(root / "protocols" / "ASVspoof2019.LA.cm.dev.trl.txt")[0]
    eval_entry = read_cm_protocol(root / "protocols" / "ASVspoof2019.LA.cm.eval.trl.txt")[-1]
    flac = root / "LA" / "ASVspoof2019_LA_{}" / "flac" / "{}.flac"
    for partition, entry in (("train", train_entry), ("dev", dev_entry), ("eval", eval_entry)):
        Path(str(flac).format(partition, entry.utterance)).write_bytes(b"not a flac file")
    config = cm_config(root, epoch=1)
    with pytest.raises(AudioError, match=f"{train_entry.utterance}.flac"):
        Trainer(build_config(config), tmp_path / "error", CPU, progress=False).fit()

    trainer = Trainer(build_config({**config, "on_bad_audio": "skip"}), tmp_path / "skip", CPU, progress=False)
    trainer.fit()
    captured = capsys.readouterr()
    warning = next(line for line in captured.err.splitlines() if "skipping training audio (on_bad_audio: skip)" in line)
    assert str(flac).format("train", train_entry.utterance) in warning
    assert "dev epoch 1: 1 of " in captured.err and " utterances skipped (on_bad_audio: skip" in captured.err
    with open(tmp_path / "skip" / "metrics.csv") as handle:
        row = next(csv.DictReader(handle))
    assert int(row["redrawn_utterances"]) >= 1 and math.isfinite(float(row["dev_eer"]))
    rows = read_rows(tmp_path / "skip" / "scores" / "dev_epoch_001.txt")
    assert [row[3] for row in rows if row[0] == dev_entry.utterance] == ["nan"]
    kept = [row for row in rows if row[0] != dev_entry.utterance]
    assert float(row["dev_eer"]) == pytest.approx(compute_eer(*cm_split(kept))[0], abs=1e-12)
    summary = json.loads((tmp_path / "skip" / "metrics_eval.json").read_text())
    bad_eval = str(flac).format("eval", eval_entry.utterance)
    assert summary["n_skipped_utterances"] == 1 and list(summary["skipped_audio"]) == [bad_eval]
    eval_rows = read_rows(tmp_path / "skip" / "scores" / "eval.txt")
    assert [row[3] for row in eval_rows if row[0] == eval_entry.utterance] == ["nan"]
    kept = [row for row in eval_rows if row[0] != eval_entry.utterance]
    assert summary["eer"] == pytest.approx(compute_eer(*cm_split(kept))[0], abs=1e-12)
