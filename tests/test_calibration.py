"""Calibration that travels with a trained system (scoring/calibration.py, metrics/calibration.py).

The metrics are checked against values computed here by hand or by sklearn; the end-of-training calibration
of each system is checked by `check_run_calibration`, which the tests of the existing tiny runs call
(test_pipeline.py: sasv, test_cm_training.py, test_asv_training.py, test_b2_task.py): no training run of its own.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_fusion import run_fusion, synthetic_partition, write_config
from torch import nn

from metrics.adcf import ADCF_DEFAULT, adcf_curve
from metrics.calibration import act_dcf, adcf_at_threshold, cllr, min_cllr, min_dcf_at, pav_llr
from metrics.eer import compute_eer
from metrics.errors import MetricError
from runtime.config import ConfigError, build_config
from scoring.calibration import CALIBRATION_FILE, fit_system_calibration, read_calibration, system_fingerprint
from scoring.fusion import fit_logistic
from scoring.scored_trials import ScoredTrials

# ------------------------------------------------------------------ metrics


def test_act_dcf_and_cllr_by_hand():
    llr = np.array([2.0, 0.5, -1.0, 1.0, -2.0, -0.5, -3.0])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    # prior 0.5: accept llr > 0. Targets: one miss of 3; nontargets: one false alarm of 4.
    assert act_dcf(llr, labels, 0.5) == pytest.approx((0.5 / 3 + 0.5 / 4) / 0.5, abs=1e-15)
    # prior 0.2: accept llr > log 4 = 1.386: misses 2 of 3, no false alarm; normalised by 0.2.
    assert act_dcf(llr, labels, 0.2) == pytest.approx(0.2 * (2 / 3) / 0.2, abs=1e-15)
    bits = lambda x: np.log2(1 + np.exp(x))  # noqa: E731
    expected = 0.5 * np.mean([bits(-2.0), bits(-0.5), bits(1.0)]) + 0.5 * np.mean([bits(1.0), bits(-2.0), bits(-0.5),
                                                                                    bits(-3.0)])
    assert cllr(llr, labels) == pytest.approx(expected, abs=1e-14)
    assert cllr(np.zeros(7), labels) == pytest.approx(1.0, abs=1e-15)  # an uninformative system costs 1 bit


def test_min_cllr_is_cllr_after_sklearn_isotonic_calibration():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=400), 1)  # ties: pooled alike by both
    labels = (rng.random(400) < 1 / (1 + np.exp(-1.5 * scores))).astype(int)
    posterior = IsotonicRegression(y_min=0.0, y_max=1.0).fit(scores, labels).predict(scores)
    prior = labels.mean()
    with np.errstate(divide="ignore"):
        llr = np.log(posterior) - np.log1p(-posterior) - np.log(prior / (1 - prior))
    finite = np.isfinite(llr)
    np.testing.assert_allclose(pav_llr(scores, labels)[finite], llr[finite], rtol=0, atol=1e-12)
    # Infinite LLRs only where they cost nothing: nontargets at -inf, targets at +inf.
    assert np.all((llr[~finite] < 0) == (labels[~finite] == 0))
    target, nontarget = llr[labels == 1], llr[labels == 0]
    expected = (np.mean(np.log2(1 + np.exp(-target))) + np.mean(np.log2(1 + np.exp(nontarget)))) / 2
    assert min_cllr(scores, labels) == pytest.approx(expected, abs=1e-12)
    # No affine calibration beats the optimal monotone one.
    fit = fit_logistic(scores[labels == 1], scores[labels == 0])
    assert min_cllr(scores, labels) <= cllr(fit.log_odds(scores), labels)


def test_min_cllr_by_hand_and_of_separated_scores():
    # Sorted: t(0) n(1) t(2) t(3) -> PAV pools [t, n] to posterior 1/2, then [t, t] posterior 1.
    # Empirical prior 3/4: LLRs log(1) - log 3 and +inf; Cllr = (mean over targets, nontarget) / 2.
    scores, labels = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1, 0, 1, 1])
    low = -np.log(3.0)
    expected = (np.log2(1 + np.exp(-low)) / 3 + np.log2(1 + np.exp(low))) / 2
    assert min_cllr(scores, labels) == pytest.approx(expected, abs=1e-15)
    assert min_cllr(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 1])) == 0.0  # separated: no cost


def test_min_dcf_includes_both_trivial_systems():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.0, 1.0, 2.0, 3.0])  # useless: the best is a trivial system
    assert min_dcf_at(scores, labels, 0.9) == pytest.approx(1.0)  # accept everything: 0.1 * 1 / 0.1
    llr = np.full(4, 5.0)  # accepts everything at any prior below 0.993
    assert act_dcf(llr, labels, 0.9) == pytest.approx(1.0) and act_dcf(llr, labels, 0.3) == pytest.approx(0.7 / 0.3)


def test_adcf_at_the_dev_threshold_is_the_min_adcf_of_the_same_scores():
    rng = np.random.default_rng(5)
    keys = np.array(["target"] * 60 + ["nontarget"] * 80 + ["spoof"] * 70)
    scores = rng.normal(size=keys.size) + 2.0 * (keys == "target")
    best = adcf_curve(scores, keys, ADCF_DEFAULT)
    assert adcf_at_threshold(scores, keys, best.threshold) == pytest.approx(best.min_adcf, abs=1e-15)
    # By hand at threshold 0: the default costs (Ptrg .9, Pnon .05, Pspf .05, Cmiss 1, Cfa_asv 10, Cfa_cm 20).
    p_miss = np.mean(scores[keys == "target"] <= 0)
    p_fa = np.mean(scores[keys == "nontarget"] > 0)
    p_spoof = np.mean(scores[keys == "spoof"] > 0)
    expected = (0.9 * p_miss + 10 * 0.05 * p_fa + 20 * 0.05 * p_spoof) / min(10 * 0.05 + 20 * 0.05, 0.9)
    assert adcf_at_threshold(scores, keys, 0.0) == pytest.approx(expected, abs=1e-15)
    assert all(adcf_at_threshold(scores, keys, t) >= best.min_adcf - 1e-15 for t in np.linspace(-3, 4, 50))


@pytest.mark.parametrize("rounded", [False, True], ids=["distinct scores", "tied scores"])
def test_the_decision_threshold_gives_its_dev_value_when_applied(rounded):
    """Accepting the dev scores above the threshold reproduces the recorded dev value, tied scores included
    (a per-sample sweep has points inside a tie group that no threshold realises); with distinct scores
    the threshold and value are the sweeps' own."""
    rng = np.random.default_rng(3)
    target, nontarget, spoof = rng.normal(1, 1, 200), rng.normal(-1, 1, 2000), rng.normal(0, 1, 300)
    if rounded:  # heavily quantised scores: large tie groups
        target, nontarget, spoof = np.round(target), np.round(nontarget), np.round(spoof)
    keys = np.array(["target"] * 200 + ["nontarget"] * 2000 + ["spoof"] * 300)
    values = np.concatenate([target, nontarget, spoof])
    scored = ScoredTrials(source="", cm_keys=np.where(keys == "spoof", "spoof", "bonafide"), asv_keys=keys,
                          sasv=values, asv=values)
    fitted = fit_system_calibration(scored, system="sasv", decision_score="asv", decision_metric="eer", prior=0.5,
                                    weights_sha256="0" * 64)
    threshold, value = fitted.decision.threshold, fitted.decision.dev_value
    miss, false_alarm = np.mean(target <= threshold), np.mean(nontarget > threshold)
    assert value == pytest.approx((miss + false_alarm) / 2, abs=1e-12)
    fitted = fit_system_calibration(scored, system="sasv", decision_score="sasv", decision_metric="min_a_dcf",
                                    prior=0.5, weights_sha256="0" * 64)
    applied = adcf_at_threshold(values, keys, fitted.decision.threshold, ADCF_DEFAULT)
    assert fitted.decision.dev_value == pytest.approx(applied, abs=1e-12)
    if not rounded:
        assert (threshold, value) == pytest.approx(compute_eer(target, nontarget)[::-1], abs=1e-12)
        curve = adcf_curve(values, keys)
        assert (fitted.decision.threshold, fitted.decision.dev_value) == pytest.approx(
            (curve.threshold, curve.min_adcf), abs=1e-12)
    else:  # the sweep's EER point lies inside a tie group: no threshold gives it
        sweep_eer, sweep_threshold = compute_eer(target, nontarget)
        applied_at_sweep = (np.mean(target <= sweep_threshold) + np.mean(nontarget > sweep_threshold)) / 2
        assert applied_at_sweep != pytest.approx(sweep_eer, abs=1e-3)


def test_metrics_refuse_what_they_cannot_measure():
    with pytest.raises(MetricError):
        act_dcf([0.1, 0.2], [1, 1], 0.5)
    with pytest.raises(MetricError):
        act_dcf([0.1, 0.2], [1, 0], 1.0)
    with pytest.raises(MetricError):
        adcf_at_threshold([0.1, 0.2], ["target", "spoof"], 0.0)


def test_calibration_prior_is_a_config_key():
    assert build_config({})["calibration"]["prior"] == 0.5
    for bad in (0, 1.0, -0.2, "high"):
        with pytest.raises(ConfigError) as error:
            build_config({"calibration": {"prior": bad}})
        assert "calibration.prior" in str(error.value)


# ------------------------------------------------------------------ one code with fuse_scores.py


def test_the_fit_equals_fuse_scores_linear_calibration(tmp_path, monkeypatch):
    protocols, out = tmp_path / "protocols", tmp_path / "out"
    synthetic_partition(protocols, out, "dev", seed=1)
    synthetic_partition(protocols, out, "eval", seed=2)
    run_fusion(monkeypatch, write_config(tmp_path, protocols), out, "--fusion", "linear")
    fused = json.loads((out / "fusion_calibration.json").read_text())
    trials = [line.split() for line in (protocols / "ASVspoof2019.LA.asv.dev.gi.trl.txt").read_text().splitlines()]
    asv = np.array([float(line.split()[1]) for line in (out / "score_ASV_dev.txt").read_text().splitlines()])
    cm_of = {utt: float(score) for utt, score in
             (line.split() for line in (out / "score_CM_dev_no_softmax.txt").read_text().splitlines())}
    keys = np.array([t[3] for t in trials])
    scored = ScoredTrials(source="", cm_keys=np.where(keys == "spoof", "spoof", "bonafide"), asv_keys=keys,
                          asv=asv, cm=np.array([cm_of[t[1]] for t in trials]), sasv=asv,
                          utterance=np.array([t[1] for t in trials]))
    calibration = fit_system_calibration(scored, system="sasv", decision_score="sasv", decision_metric="sasv_eer",
                                         prior=0.5, weights_sha256="")
    for score, values in (("asv", asv), ("cm", np.array(list(cm_of.values())))):
        expected = fused[score]["scale"] * values + fused[score]["offset"]
        np.testing.assert_allclose(calibration.llr(score, values), expected, rtol=0, atol=1e-12)
        assert calibration.calibrations[score].n_positive == fused[score]["n_positive"]
        assert calibration.calibrations[score].n_negative == fused[score]["n_negative"]


# ------------------------------------------------------------------ a finished main.py run


def _score_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, scores) of a score file whose third column is the key and last the score."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return np.array([row[2] for row in rows]), np.array([float(row[-1]) for row in rows])


def _classes(keys: np.ndarray, scores: np.ndarray, score: str) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(scores)
    positive = keys == ("bonafide" if score == "cm" else "target")
    negative = ~positive if score != "asv" else keys == "nontarget"
    return scores[keep & positive], scores[keep & negative]


def check_run_calibration(experiment: Path, system: str, network: nn.Module, loss: nn.Module | None = None) -> None:
    """What every finished run holds: weights/calibration.json for the weights of its best checkpoint (loaded into
    `network` / `loss`, freshly built, here), fitted on the best epoch's dev score file, and the calibration loss
    of its eval scores in metrics_eval.json."""
    from models.checkpoint import load_asv_weights, load_checkpoint, load_cm_weights, load_sasv_weights

    summary = json.loads((experiment / "metrics_eval.json").read_text())
    calibration = read_calibration(experiment / "weights" / CALIBRATION_FILE)
    assert calibration.system == system and calibration.checkpoint == summary["checkpoint"]
    for name in (summary["checkpoint"], "weights/best.ckpt"):  # the same weights in both
        path = experiment / name
        if system == "sasv":
            load_sasv_weights(network, loss, path)
        elif system == "cm":
            load_cm_weights(network, path)
        elif system == "asv":
            load_asv_weights(network, path)
        else:
            network.load_state_dict(load_checkpoint(path).backend_state)
        assert system_fingerprint(network, loss) == calibration.weights_sha256, name
    score = {"sasv": "sasv", "b2": "sasv", "cm": "cm", "asv": "asv"}[system]
    keys, scores = _score_file(experiment / "scores" / f"dev_epoch_{summary['epoch']:03d}.txt")
    positive, negative = _classes(keys, scores, score)
    # The decision: accepting the dev scores above the threshold gives the dev EER it records.
    decision = calibration.decision
    assert decision.score == score and decision.metric in ("sasv_eer", "eer")
    miss, false_alarm = np.mean(positive <= decision.threshold), np.mean(negative > decision.threshold)
    assert decision.dev_value == pytest.approx((miss + false_alarm) / 2, abs=1e-12)
    assert decision.dev_value == pytest.approx(compute_eer(positive, negative)[0], abs=1e-12)
    # The fit of the score the file holds: fuse_scores' logistic regression of those dev scores.
    if score in calibration.calibrations:
        expected = fit_logistic(positive, negative, calibration.prior)
        assert calibration.calibrations[score].scale == pytest.approx(expected.scale, rel=1e-9)
        assert calibration.calibrations[score].offset == pytest.approx(expected.offset, rel=1e-9, abs=1e-9)
    else:
        assert score in calibration.notes
    # Eval: the calibration loss, recomputed from scores/eval.txt.
    block = summary["calibration"]
    eval_keys, eval_scores = _score_file(experiment / "scores" / "eval.txt")
    target, other = _classes(eval_keys, eval_scores, score)
    if score in calibration.calibrations:
        fit = calibration.calibrations[score]
        llr = np.concatenate([fit.log_odds(target), fit.log_odds(other)])
        labels = np.r_[np.ones(target.size, dtype=int), np.zeros(other.size, dtype=int)]
        assert block[score]["act_dcf"] == pytest.approx(act_dcf(llr, labels, calibration.prior), abs=1e-12)
        assert block[score]["cllr"] == pytest.approx(cllr(llr, labels), abs=1e-12)
        assert block[score]["min_cllr"] <= block[score]["cllr"] + 1e-12
        assert block[score]["min_dcf"] <= block[score]["act_dcf"] + 1e-12
    if score == "sasv":
        keep = np.isfinite(eval_scores)
        assert block["sasv"]["threshold"] == decision.threshold
        assert block["sasv"]["act_a_dcf"] == pytest.approx(
            adcf_at_threshold(eval_scores[keep], eval_keys[keep], decision.threshold), abs=1e-12)
        assert block["sasv"]["min_a_dcf"] == pytest.approx(summary["min_a_dcf"], abs=1e-12)
        report = json.loads((experiment / "report" / "report.json").read_text())
        assert report["calibration"] == block
        assert "## Calibration (fitted on dev)" in (experiment / "report" / "report.md").read_text()
    else:
        assert block[score]["miss_rate"] == pytest.approx(np.mean(target <= decision.threshold), abs=1e-15)
    with open(experiment / "metrics.csv") as handle:  # the best epoch is the one the file says
        assert any(int(row["epoch"]) == summary["epoch"] for row in csv.DictReader(handle))
