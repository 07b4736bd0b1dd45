"""system b2 (the SASV 2022 baseline B2 back-end) on synthetic embedding pickles with real ASVspoof 2019 LA
protocol lines: it learns, writes the standard outputs, scores as a hand-written forward pass does, resumes
exactly after a crash, and reports bad pickles and missing ids in one line."""
from __future__ import annotations

import csv
import json
import pickle
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_run import run_main_here

from data.embeddings import EmbeddingError, read_embeddings
from metrics.adcf import min_adcf
from metrics.eer import sasv_eers
from models.checkpoint import load_checkpoint
from runtime import files
from runtime.config import ConfigError, build_config, load_config
from training.tasks.b2 import B2Objective
from training.trainer import Trainer

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)  # tiny matrices: OpenMP threads that wait on each other on a busy machine only slow them
CPU = torch.device("cpu")
ASV_DIM, CM_DIM = 4, 4
COLUMNS = ["epoch", "step", "lr", "train_loss", "dev_sasv_eer", "dev_sv_eer", "dev_spf_eer", "dev_min_a_dcf",
           "dev_skipped_trials", "skipped_batches", "redrawn_trials", "seconds"]


def _subset(source: Path, target: Path, group: int, per_group: int) -> list[list[str]]:
    """The first `per_group` lines of `source` per (speaker, field `group`) value, written to `target`."""
    taken: Counter = Counter()
    kept = []
    for line in source.read_text().splitlines():
        fields = line.split()
        if taken[(fields[0], fields[group])] < per_group:
            taken[(fields[0], fields[group])] += 1
            kept.append(line)
    target.write_text("\n".join(kept) + "\n")
    return [line.split() for line in kept]


def build_data(root: Path, protocols: Path, seed: int = 0) -> Path:
    """Protocol subsets and embedding pickles in which target bona fide trials are separable: an utterance's ASV
    embedding is its speaker's voice vector (spoofs included) plus a little noise; its CM embedding's first value
    is +1 for bona fide and -1 for spoofed speech, plus noise. Speaker models are means over the real
    enrollment lists' utterances."""
    rng = np.random.default_rng(seed)
    voices: dict[str, np.ndarray] = {}

    def asv(speaker: str) -> np.ndarray:
        voice = voices.setdefault(speaker, rng.standard_normal(ASV_DIM).astype(np.float32))
        return voice + np.float32(0.15) * rng.standard_normal(ASV_DIM).astype(np.float32)

    def cm(bonafide: bool) -> np.ndarray:
        vector = np.float32(0.5) * rng.standard_normal(CM_DIM).astype(np.float32)
        vector[0] += 1.0 if bonafide else -1.0
        return vector

    root.mkdir(parents=True, exist_ok=True)
    tables: dict[str, dict] = {}
    train = _subset(protocols / "ASVspoof2019.LA.cm.train.trn.txt", root / "cm.train.txt", 4, 8)
    tables["asv_embd_trn"] = {f[1]: asv(f[0]) for f in train}
    tables["cm_embd_trn"] = {f[1]: cm(f[4] == "bonafide") for f in train}
    for part, per_group in (("dev", 10), ("eval", 4)):
        trials = _subset(protocols / f"ASVspoof2019.LA.asv.{part}.gi.trl.txt", root / f"{part}.trl.txt", 3, per_group)
        owner = {f[1]: (f[0], f[4] == "bonafide") for f in
                 (line.split() for line in (protocols / f"ASVspoof2019.LA.cm.{part}.trl.txt").read_text().splitlines())}
        utterances = sorted({t[1] for t in trials})
        tables[f"asv_embd_{part}"] = {u: asv(owner[u][0]) for u in utterances}
        tables[f"cm_embd_{part}"] = {u: cm(owner[u][1]) for u in utterances}
        tables[f"spk_model_{part}"] = {}
        for gender in ("female", "male"):
            for line in (protocols / f"ASVspoof2019.LA.asv.{part}.{gender}.trn.txt").read_text().splitlines():
                speaker, joined = line.split()
                tables[f"spk_model_{part}"][speaker] = np.mean([asv(speaker) for _ in joined.split(",")], axis=0)
    (root / "emb").mkdir(exist_ok=True)
    for name, table in tables.items():
        (root / "emb" / f"{name}.pk").write_bytes(pickle.dumps(table))
    return root


def b2_config(root: Path, **overrides) -> dict:
    """configs/B2_backend_tiny.conf pointed at the data under `root`."""
    config = yaml.safe_load((REPO / "configs" / "B2_backend_tiny.conf").read_text())
    config["dirs"] = {"cm_trn_list": str(root / "cm.train.txt"), "sasv_dev_trial": str(root / "dev.trl.txt"),
                      "sasv_eval_trial": str(root / "eval.trl.txt")}
    config["b2"]["embeddings"] = str(root / "emb")
    config.update(overrides)
    return config


def run_main(config: dict, work: Path, *extra: str) -> subprocess.CompletedProcess:
    path = work / "b2.conf"
    path.write_text(json.dumps(config))
    return run_main_here(path, work / "exp", *extra)  # in this process, one thread


@pytest.fixture(scope="module")
def data(fixtures, tmp_path_factory) -> Path:
    return build_data(tmp_path_factory.mktemp("b2_data"), fixtures / "protocols")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("b2_run")
    result = run_main(b2_config(data), work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "exp" / "b2", result.stdout


def score_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_learns_and_writes_the_standard_outputs(trained, data):
    experiment, stdout = trained
    with open(experiment / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS
    assert [int(row["step"]) for row in rows] == [32 * epoch for epoch in range(1, 9)]  # 1024 / 32 per epoch
    # Adam's lr of each epoch's last step under the Keras-style decay: 0.01 / (1 + 0.001 * step), step from 0.
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.01 / (1 + 0.001 * (32 * e - 1)) for e in range(1, 9)])
    dev_eers = [float(row["dev_sasv_eer"]) for row in rows]
    assert min(dev_eers) <= 0.10 and dev_eers.index(min(dev_eers)) > 0  # learnt: chance is 0.5
    trials = [line.split() for line in (data / "dev.trl.txt").read_text().splitlines()]
    for row in rows:
        scored = score_rows(experiment / "scores" / f"dev_epoch_{int(row['epoch']):03d}.txt")
        assert [r[:3] for r in scored] == [[t[0], t[1], t[3]] for t in trials]
        expected = sasv_eers(np.array([float(r[3]) for r in scored]), [r[2] for r in scored])
        assert float(row["dev_sasv_eer"]) == pytest.approx(expected["sasv_eer"], abs=1e-12)
        assert float(row["dev_sv_eer"]) == pytest.approx(expected["sv_eer"], abs=1e-12)
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    best = int(np.argmin(dev_eers)) + 1  # the first of equal values ranks first
    assert summary["checkpoint"].startswith(f"weights/epoch={best:03d}-sasv_eer_dev=")
    eval_rows = score_rows(experiment / "scores" / "eval.txt")
    scores, keys = np.array([float(r[3]) for r in eval_rows]), [r[2] for r in eval_rows]
    assert summary["sasv_eer"] == pytest.approx(sasv_eers(scores, keys)["sasv_eer"], abs=1e-12)
    assert summary["min_a_dcf"] == pytest.approx(min_adcf(scores, keys)[0], abs=1e-12)
    assert summary["sasv_eer"] < 0.2 and summary["n_trials"] == len(eval_rows) and summary["n_skipped_trials"] == 0
    kept = sorted(p.name for p in (experiment / "weights").iterdir())
    # save_top_k 2 + last.ckpt, and the best epoch's weights with their calibration
    assert len(kept) == 5 and {"last.ckpt", "best.ckpt", "calibration.json"} <= set(kept)
    assert (experiment / "config.conf").is_file()
    assert f"eval SASV-EER {100 * summary['sasv_eer']:.2f}%" in stdout and summary["checkpoint"] in stdout


def test_the_run_carries_its_calibration(trained):
    from test_calibration import check_run_calibration

    from models.b2_backend import B2Backend

    experiment, stdout = trained
    config = load_config(experiment / "config.conf")
    check_run_calibration(experiment, "b2", B2Backend(ASV_DIM, CM_DIM, config["b2"]["hidden_dims"]))
    assert "calibration (dev fit): eval" in stdout


def test_eval_scores_equal_a_hand_written_forward_pass(trained, data):
    experiment, _ = trained
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    saved = load_checkpoint(experiment / summary["checkpoint"]).backend_state
    state = {key: value.double().numpy() for key, value in saved.items()}
    tables = {name: pickle.loads((data / "emb" / f"{name}.pk").read_bytes())
              for name in ("spk_model_eval", "asv_embd_eval", "cm_embd_eval")}
    for speaker, utterance, key, score in score_rows(experiment / "scores" / "eval.txt")[::7]:
        x = np.concatenate([tables["spk_model_eval"][speaker], tables["asv_embd_eval"][utterance],
                            tables["cm_embd_eval"][utterance]]).astype(np.float64)
        for layer in (0, 2):  # Linear + LeakyReLU(0.3)
            x = x @ state[f"dnn.{layer}.weight"].T + state[f"dnn.{layer}.bias"]
            x = np.where(x > 0, x, 0.3 * x)
        logits = state["fc_out.weight"] @ x
        assert float(score) == pytest.approx(logits[1] - logits[0], abs=1e-4), (speaker, utterance)


def test_crash_mid_epoch_then_resume_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    config = b2_config(data, epoch=3, trials_per_epoch=256, checkpoint_interval_steps=1)  # 8 batches per epoch
    Trainer(build_config(config), tmp_path / "straight", CPU, progress=False).fit()
    original, calls = B2Objective.forward, []

    def crash_at_step_12(self, *inputs):
        calls.append(1)
        if len(calls) == 12:  # epoch 2, batch 4: a hard stop, nothing saved at this moment
            raise RuntimeError("killed")
        return original(self, *inputs)

    monkeypatch.setattr(B2Objective, "forward", crash_at_step_12)
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(build_config(config), tmp_path / "run", CPU, progress=False).fit()
    monkeypatch.setattr(B2Objective, "forward", original)
    resumed = Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    assert resumed.resume_latest() == tmp_path / "run" / "weights" / "last.ckpt"
    assert (resumed.state.epoch, resumed.state.batch, resumed.state.step) == (1, 3, 11)
    resumed.fit()

    def metrics(run: str) -> list[dict]:
        with open(tmp_path / run / "metrics.csv") as handle:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]

    assert len(metrics("run")) == 3 and metrics("run") == metrics("straight")
    for name in ("scores/eval.txt", "scores/dev_epoch_003.txt"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    ends = [load_checkpoint(tmp_path / run / "weights" / "last.ckpt").backend_state for run in ("straight", "run")]
    assert all(torch.equal(value, ends[1][key]) for key, value in ends[0].items())


def test_training_batches_follow_the_baseline(data, tmp_path):
    """Half target bona fide; a target trial's enrollment is another bona fide utterance of the speaker, or with
    speaker_model the mean of the speaker's other bona fide utterances (computed here by hand)."""
    train = [line.split() for line in (data / "cm.train.txt").read_text().splitlines()]
    asv = pickle.loads((data / "emb" / "asv_embd_trn.pk").read_bytes())
    bonafide = {}
    for speaker, utterance, _, _, key in train:
        if key == "bonafide":
            bonafide.setdefault(speaker, []).append(utterance)
    owner = {asv[u].tobytes(): (s, u) for s, utts in bonafide.items() for u in utts}
    for mode in ("utterance", "speaker_model"):
        config = b2_config(data, epoch=1)
        config["b2"]["enrollment"] = mode
        trainer = Trainer(build_config(config), tmp_path / mode, CPU, progress=False)
        trainer.start_training()
        batches, n_batches = trainer.task.start_epoch(0, 0)
        assert n_batches == 32
        targets = 0
        for enrollment, test, cm, target, redraws in batches:
            assert redraws.sum() == 0 and enrollment.shape == test.shape == (32, ASV_DIM) and cm.shape == (32, CM_DIM)
            for row in np.flatnonzero(target.numpy()):
                targets += 1
                speaker, test_utterance = owner[test[row].numpy().tobytes()]
                if mode == "utterance":
                    enrolled = owner[enrollment[row].numpy().tobytes()]
                    assert enrolled[0] == speaker and enrolled[1] != test_utterance
                else:
                    others = [asv[u].astype(np.float64) for u in bonafide[speaker] if u != test_utterance]
                    assert enrollment[row].numpy() == pytest.approx(np.mean(others, axis=0), abs=1e-6)
        assert 0.4 < targets / 1024 < 0.6


def _write(path: Path, value) -> None:
    path.write_bytes(pickle.dumps(value))


def _one_line_error(config: dict, tmp_path: Path, *fragments: str) -> None:
    with pytest.raises((EmbeddingError, ConfigError)) as error:
        Trainer(build_config(config), tmp_path / "run", CPU, progress=False)
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message


@pytest.mark.parametrize("case", ["missing_utterance", "missing_speaker", "missing_train", "not_a_dict", "nan",
                                  "lengths", "other_size", "unsafe", "garbage", "no_folder"])
def test_bad_pickles_and_missing_ids_are_one_line(data, tmp_path, case):
    emb = tmp_path / "emb"
    emb.mkdir()
    for path in (data / "emb").iterdir():
        (emb / path.name).write_bytes(path.read_bytes())
    config = b2_config(data)
    config["b2"]["embeddings"] = str(emb)
    load = lambda name: pickle.loads((emb / f"{name}.pk").read_bytes())  # noqa: E731
    if case == "missing_utterance":
        table = load("asv_embd_dev")
        utterance = (data / "dev.trl.txt").read_text().split()[1]
        del table[utterance]
        _write(emb / "asv_embd_dev.pk", table)
        _one_line_error(config, tmp_path, str(emb / "asv_embd_dev.pk"), repr(utterance), "trial 1 of")
    elif case == "missing_speaker":
        table = load("spk_model_eval")
        speaker = (data / "eval.trl.txt").read_text().split()[0]
        del table[speaker]
        _write(emb / "spk_model_eval.pk", table)
        _one_line_error(config, tmp_path, str(emb / "spk_model_eval.pk"), f"speaker {speaker!r}")
    elif case == "missing_train":
        table = load("cm_embd_trn")
        utterance = (data / "cm.train.txt").read_text().split()[1]
        del table[utterance]
        _write(emb / "cm_embd_trn.pk", table)
        _one_line_error(config, tmp_path, str(emb / "cm_embd_trn.pk"), repr(utterance), "entry 1 of")
    elif case == "not_a_dict":
        _write(emb / "cm_embd_dev.pk", list(load("cm_embd_dev").values()))
        _one_line_error(config, tmp_path, str(emb / "cm_embd_dev.pk"), "expected a pickled dict of id -> vector")
    elif case == "nan":
        table = load("asv_embd_eval")
        first = next(iter(table))
        table[first] = table[first].copy()
        table[first][1] = np.nan
        _write(emb / "asv_embd_eval.pk", table)
        _one_line_error(config, tmp_path, str(emb / "asv_embd_eval.pk"), repr(first), "NaN/inf")
    elif case == "lengths":
        table = load("asv_embd_trn")
        last = list(table)[-1]
        table[last] = np.zeros(ASV_DIM + 1, dtype=np.float32)
        _write(emb / "asv_embd_trn.pk", table)
        _one_line_error(config, tmp_path, str(emb / "asv_embd_trn.pk"), repr(last), f"has {ASV_DIM + 1} values")
    elif case == "other_size":
        _write(emb / "cm_embd_eval.pk", {k: np.zeros(CM_DIM + 2, np.float32) for k in load("cm_embd_eval")})
        _one_line_error(config, tmp_path, str(emb / "cm_embd_eval.pk"), f"vectors of {CM_DIM + 2} values",
                        f"cm_embd_trn.pk has {CM_DIM}")
    elif case == "unsafe":
        _write(emb / "spk_model_dev.pk", {"LA_0070": Counter()})
        _one_line_error(config, tmp_path, str(emb / "spk_model_dev.pk"), "collections.Counter")
    elif case == "garbage":
        (emb / "asv_embd_dev.pk").write_bytes(b"not a pickle at all")
        _one_line_error(config, tmp_path, str(emb / "asv_embd_dev.pk"), "not a readable embedding pickle")
    else:
        config["b2"]["embeddings"] = None
        _one_line_error(config, tmp_path, "needs b2.embeddings")


def test_main_reports_a_missing_id_in_one_line_and_skip_leaves_the_trial_out(data, tmp_path):
    emb = tmp_path / "emb"
    emb.mkdir()
    for path in (data / "emb").iterdir():
        (emb / path.name).write_bytes(path.read_bytes())
    table = pickle.loads((emb / "cm_embd_dev.pk").read_bytes())
    trials = [line.split() for line in (data / "dev.trl.txt").read_text().splitlines()]
    gone = trials[5][1]
    del table[gone]
    _write(emb / "cm_embd_dev.pk", table)
    config = b2_config(data, epoch=1, trials_per_epoch=64)
    config["b2"]["embeddings"] = str(emb)
    result = run_main(config, tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and str(emb / "cm_embd_dev.pk") in result.stderr
    assert repr(gone) in result.stderr

    run = Trainer(build_config({**config, "on_bad_audio": "skip"}), tmp_path / "skip", CPU, progress=False)
    run.fit()
    scored = score_rows(tmp_path / "skip" / "scores" / "dev_epoch_001.txt")
    missing = [i for i, t in enumerate(trials) if t[1] == gone]
    assert [i for i, r in enumerate(scored) if r[3] == "nan"] == missing
    with open(tmp_path / "skip" / "metrics.csv") as handle:
        assert next(csv.DictReader(handle))["dev_skipped_trials"] == str(len(missing))


def test_config_defaults_for_b2():
    config = build_config({"system": "b2"})
    assert config["trial_sampling"] == "two_class"  # the baseline's trial mix
    assert config["b2"]["hidden_dims"] == [256, 128, 64] and config["b2"]["class_weights"] == [0.1, 0.9]
    assert build_config({})["trial_sampling"] == "four_class"
    with pytest.raises(ConfigError, match="b2.class_weights must be two numbers"):
        build_config({"system": "b2", "b2": {"class_weights": [1.0]}})


def test_the_real_data_config_has_the_baseline_recipe():
    config = load_config(REPO / "configs" / "B2_backend.conf")
    assert (config["system"], config["epoch"], config["batch_size"], config["amp"]) == ("b2", 10, 24, "off")
    assert (config["trial_sampling"], config["trials_per_epoch"]) == ("two_class", None)  # one trial per utterance
    assert config["b2"] == {"embeddings": "embeddings/", "hidden_dims": [256, 128, 64], "enrollment": "utterance",
                            "lr": 0.0001, "wd": 0.001, "lr_decay": 0.0001, "class_weights": [0.1, 0.9]}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_embedding_pickles_of_every_protocol_read_back(tmp_path, protocol):
    """save_asv_embeddings.py writes protocol 5 (runtime.files.write_pickle); older tools wrote 2 to 4."""
    table = {"LA_E_1": np.arange(4, dtype=np.float32), "LA_E_2": np.full((1, 4), 0.5, dtype=np.float32)}
    path = tmp_path / "asv_embd_eval.pk"
    if protocol == 5:
        files.write_pickle(path, table)
        assert pickle.loads(path.read_bytes())["LA_E_1"].dtype == np.float32
    else:
        path.write_bytes(pickle.dumps(table, protocol=protocol))
    vectors = read_embeddings(path)
    assert list(vectors) == ["LA_E_1", "LA_E_2"]
    np.testing.assert_array_equal(vectors["LA_E_1"], [0, 1, 2, 3])
    np.testing.assert_array_equal(vectors["LA_E_2"], [0.5] * 4)
