"""main.py end to end on a tiny synthetic corpus: outputs, trial coverage, metrics, cached scoring."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from data.protocols import read_sasv_trials
from metrics.adcf import min_adcf
from metrics.eer import sasv_eers
from models.build import build_sasv_model
from models.checkpoint import load_sasv_weights
from runtime.config import load_config
from scoring.extraction import Extraction
from scoring.inputs import scoring_inputs
from scoring.sasv import SASVScorer

# Every test here needs a trained run or a real model (a module fixture): seconds to minutes.
pytestmark = pytest.mark.slow



def tiny_config(root: Path, **overrides) -> dict:
    protocols = root / "protocols"
    config = {
        "dirs": {
            "database": str(root / "LA"), "enrollment_dir": str(root / "enr_audio"),
            "cm_trn_list": str(protocols / "ASVspoof2019.LA.cm.train.trn.txt"),
            "cm_dev_list": str(protocols / "ASVspoof2019.LA.cm.dev.trl.txt"),
            "cm_eval_list": str(protocols / "ASVspoof2019.LA.cm.eval.trl.txt"),
            "sasv_dev_trial": str(protocols / "ASVspoof2019.LA.asv.dev.gi.trl.txt"),
            "sasv_eval_trial": str(protocols / "ASVspoof2019.LA.asv.eval.gi.trl.txt"),
            "sasv_dev_trn_trial": str(protocols / "ASVspoof2019.LA.asv.dev.gi.trn.txt"),
            "sasv_eval_trn_trial": str(protocols / "ASVspoof2019.LA.asv.eval.gi.trn.txt"),
            "asv_dev_enrollment_lists": [str(protocols / f"ASVspoof2019.LA.asv.dev.{g}.trn.txt")
                                         for g in ("female", "male")],
            "asv_eval_enrollment_lists": [str(protocols / f"ASVspoof2019.LA.asv.eval.{g}.trn.txt")
                                          for g in ("female", "male")],
        },
        "device": "cpu", "seed": 7, "epoch": 2, "trials_per_epoch": 24, "batch_size": 8, "eval_batch_size": 16,
        "train_samples": 8000, "test_samples": 8000, "enrollment_samples": {"dev": 16000, "eval": 24000},
        "save_top_k": 1, "loader": {"n_workers": 0},
        "report_plots": False,  # the report's tables only: its plots are tested where they are drawn
        "asv_model": {"n_out": 32, "n_mels": 24, "num_filters": [8, 8, 16, 16], "layers": [1, 1, 1, 1]},
        "cm_model": {"architecture": "AASIST", "nb_samp": 8000, "first_conv": 32,
                     "filts": [12, [1, 4], [4, 4], [4, 8], [8, 8]], "gat_dims": [8, 8],
                     "pool_ratios": [0.5, 0.5, 0.5, 0.5], "temperatures": [2.0, 2.0, 100.0, 100.0]},
        "backend": {"conv_channels": [8, 8, 16], "hidden_dims": [32, 16]},
        "optim": {"lr": 0.001, "oc_dim": 16, "scheduler_interval": 2},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tiny_run import tiny_corpus  # tiny_run imports this module

    return tiny_corpus(tmp_path_factory)  # generated once per session, shared with the other modules


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    config_path = work / "tiny.conf"
    config_path.write_text(json.dumps(tiny_config(corpus)))
    result = run_main_here(config_path, work / "exp")
    assert result.returncode == 0, result.stdout + result.stderr
    return work, config_path, work / "exp" / "tiny", result.stdout


def run_main_here(config: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    from tiny_run import run_main_here  # tiny_run imports this module

    return run_main_here(config, output_dir, *extra)


def parse_scores(path: Path) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(len(row) == 4 for row in rows), f"{path}: every line is 'SPK UTT KEY score'"
    return [tuple(row[:3]) for row in rows], np.array([float(row[3]) for row in rows])


def test_outputs_exist_and_parse(trained):
    _, config_path, experiment, stdout = trained
    written = (experiment / "config.conf").read_text()
    assert written.startswith("# command: python ") and "--config" in written.splitlines()[0]
    # the effective config: read back, it gives the same values as the file the run was started with
    assert load_config(experiment / "config.conf").to_dict() == load_config(config_path).to_dict()
    with open(experiment / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert all(0.0 <= float(row["dev_sasv_eer"]) <= 1.0 and np.isfinite(float(row["train_loss"])) for row in rows)
    assert int(rows[-1]["step"]) == 2 * (24 // 8)
    assert (experiment / "weights" / "last.ckpt").is_file()
    assert len(list((experiment / "weights").glob("epoch=*.ckpt"))) == 1  # save_top_k = 1
    assert "eval SASV-EER" in stdout


@pytest.mark.parametrize("partition, name", [("dev", "scores/dev_epoch_001.txt"), ("dev", "scores/dev_epoch_002.txt"),
                                              ("eval", "scores/eval.txt")])
def test_each_trial_scored_exactly_once(trained, corpus, partition, name):
    _, _, experiment, _ = trained
    trials = read_sasv_trials(corpus / "protocols" / f"ASVspoof2019.LA.asv.{partition}.gi.trl.txt")
    rows, scores = parse_scores(experiment / name)
    assert rows == [(t.speaker, t.utterance, t.key) for t in trials]
    assert np.isfinite(scores).all() and np.all(np.abs(scores) <= 1.0 + 1e-6)  # cosine scores


def test_eval_metrics_match_score_file(trained):
    _, _, experiment, _ = trained
    summary = json.loads((experiment / "metrics_eval.json").read_text())
    rows, scores = parse_scores(experiment / "scores" / "eval.txt")
    keys = [row[2] for row in rows]
    expected = sasv_eers(scores, keys)
    for name in ("sasv_eer", "sv_eer", "spf_eer"):
        assert 0.0 <= summary[name] <= 1.0
        assert summary[name] == pytest.approx(expected[name], abs=1e-9)
    assert summary["min_a_dcf"] == pytest.approx(min_adcf(scores, keys)[0], abs=1e-9)
    assert summary["n_trials"] == len(rows)


def test_the_run_carries_its_calibration(trained):
    from test_calibration import check_run_calibration  # it imports tiny_run, which imports this module

    _, _, experiment, stdout = trained
    model, loss = build_sasv_model(load_config(experiment / "config.conf"), load_weights=False)
    check_run_calibration(experiment, "sasv", model, loss)
    assert "calibration (dev fit): eval asv actDCF" in stdout


def test_the_api_loads_the_run_with_its_calibration(trained):
    """weights/best.ckpt outside its run: the Python API finds calibration.json beside it (no warning), and
    scores eval trials as scores/eval.txt holds them, deciding by the calibration's threshold."""
    from scoring.system import SASVSystem

    _, config_path, experiment, _ = trained
    warnings: list[str] = []
    system = SASVSystem.load(experiment / "weights" / "best.ckpt", warn=warnings.append)
    assert warnings == [] and system.calibration is not None
    inputs = scoring_inputs(load_config(config_path), "eval")
    keys, written = parse_scores(experiment / "scores" / "eval.txt")
    chosen = [i for i, trial in enumerate(inputs.trials) if trial.speaker == inputs.trials[0].speaker][:6]
    system.enroll(inputs.trials[0].speaker, inputs.enrollment_paths[inputs.trials[0].speaker])
    results = system.score_trials([(inputs.trials[i].speaker, inputs.test_path(inputs.trials[i].utterance))
                                   for i in chosen])
    sasv = np.array([result.sasv_score for result in results])
    np.testing.assert_allclose(sasv, written[chosen], atol=1e-6, rtol=0)
    threshold = json.loads((experiment / "weights" / "calibration.json").read_text())["decision"]["threshold"]
    assert [result.decision for result in results] == [bool(value > threshold) for value in sasv]
    assert all(result.sasv_llr is not None or "sasv" in system.calibration.notes for result in results)


def test_a_lagging_best_copy_is_rewritten_before_the_evaluation(trained, tmp_path):
    """A run killed after a new best-k copy but before weights/best.ckpt leaves the previous best there; the
    evaluation (here of the finished run, again with --resume) rewrites it with the evaluated weights, so
    that best.ckpt and calibration.json stay one system."""
    import shutil

    from scoring.calibration import read_calibration, system_fingerprint

    work, config_path, experiment, _ = trained
    copy = tmp_path / "exp" / experiment.name
    shutil.copytree(experiment, copy)
    best = copy / "weights" / "best.ckpt"
    raw = torch.load(best, weights_only=True)
    epoch = raw["extra"]["epoch"]
    raw["extra"]["epoch"] = epoch - 1  # an older best: other weights, another epoch
    raw["backend_state"] = {key: value + 1 if value.is_floating_point() else value
                            for key, value in raw["backend_state"].items()}
    torch.save(raw, best)
    result = run_main_here(config_path, tmp_path / "exp", "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    model, loss = build_sasv_model(load_config(config_path), load_weights=False)
    held = load_sasv_weights(model, loss, best)
    assert held.meta["epoch"] == epoch
    assert system_fingerprint(model, loss) == read_calibration(copy / "weights" / "calibration.json").weights_sha256


def test_cached_scoring_equals_per_trial_path(trained):
    _, config_path, experiment, _ = trained
    config = load_config(config_path)
    model, loss = build_sasv_model(config, load_weights=False)
    load_sasv_weights(model, loss, experiment / "weights" / "last.ckpt")
    torch.set_num_threads(2)
    scorer = SASVScorer(model, loss, Extraction(torch.device("cpu"), batch_size=8, progress=False))
    inputs = scoring_inputs(config, "dev")
    embedded = []  # what score() computes, kept for the rolled check below instead of a second pass
    embeddings = scorer.embeddings
    scorer.embeddings = lambda *args, **kwargs: embedded.append(embeddings(*args, **kwargs)) or embedded[-1]
    cached = scorer.score(inputs)
    del scorer.embeddings
    literal = scorer.score_per_trial(inputs, batch_size=4)
    assert cached.shape == (len(inputs.trials),)
    np.testing.assert_allclose(cached, literal, atol=1e-5, rtol=0)
    # a wrong enrollment (rolled speakers) would be caught by that tolerance, with room to spare
    assert len(embedded) == 1
    speakers, enrollment, utterances, test_asv, test_cm, _ = embedded[0]
    rolled = scorer.score_from_embeddings(inputs.trials, speakers, enrollment.roll(1, 0), utterances, test_asv, test_cm)
    assert np.abs(rolled - literal).max() > 10 * 1e-5


def test_existing_run_is_refused_without_resume_or_overwrite(trained):
    work, config_path, experiment, _ = trained
    result = run_main_here(config_path, work / "exp")
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "--resume" in result.stderr and "--overwrite" in result.stderr
    assert (experiment / "metrics_eval.json").is_file()
