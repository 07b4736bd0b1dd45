"""Score-level fusion (scoring/fusion.py, fuse_scores.py): logistic calibration against scikit-learn,
the sum fusion by hand, calibrated fusion on synthetic scores, and bad input refused with nothing written.

The protocol and score files are tiny ones written in the ASVspoof 2019 LA / SASV 2022 formats.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_run import run_here

from data.protocols import ProtocolError
from metrics.eer import sasv_eers
from runtime.errors import UserError
from scoring.fusion import FusionError, fit_logistic

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the logistic regression
@pytest.mark.parametrize("prior", [0.5, 0.05, 0.9])
def test_logistic_calibration_matches_sklearn(prior):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    positive, negative = rng.normal(4.0, 2.0, 250) + 10, rng.normal(0.0, 1.2, 1800) + 10
    ours = fit_logistic(positive, negative, prior)
    # The same prior weighting given to sklearn as sample weights; C=inf: no regularisation.
    scores = np.concatenate([positive, negative])[:, None]
    labels = np.r_[np.ones(positive.size), np.zeros(negative.size)]
    weights = np.r_[np.full(positive.size, prior / positive.size), np.full(negative.size, (1 - prior) / negative.size)]
    reference = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=1000)
    reference.fit(scores, labels, sample_weight=weights)
    assert ours.scale == pytest.approx(reference.coef_[0, 0], rel=1e-8, abs=1e-9)
    # sklearn's intercept includes the prior's log-odds, which the calibrated output leaves out.
    assert ours.offset == pytest.approx(reference.intercept_[0] - np.log(prior / (1 - prior)), rel=1e-8, abs=1e-8)
    assert (ours.n_positive, ours.n_negative) == (250, 1800)


def test_logistic_calibration_refuses_what_has_no_solution():
    with pytest.raises(FusionError, match="perfectly separated"):
        fit_logistic(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    with pytest.raises(FusionError, match="0 positive"):
        fit_logistic(np.array([]), np.array([0.0, 1.0]))


# --------------------------------------------------------------------------- tiny ASVspoof-format files
def write_protocols(folder: Path, part: str, trials: list[tuple[str, str, str, str]],
                    cm_entries: list[tuple[str, str, str, str]]) -> tuple[Path, Path]:
    """asv.{part}.gi.trl.txt (`SPK UTT SRC KEY`) and cm.{part}.trl.txt (`SPK UTT - ATTACK KEY`)."""
    folder.mkdir(parents=True, exist_ok=True)
    trial_path = folder / f"ASVspoof2019.LA.asv.{part}.gi.trl.txt"
    trial_path.write_text("".join(" ".join(t) + "\n" for t in trials))
    cm_path = folder / f"ASVspoof2019.LA.cm.{part}.trl.txt"
    cm_path.write_text("".join(f"{spk} {utt} - {attack} {key}\n" for spk, utt, attack, key in cm_entries))
    return trial_path, cm_path


def write_config(work: Path, protocols: Path) -> Path:
    dirs = {f"sasv_{part}_trial": str(protocols / f"ASVspoof2019.LA.asv.{part}.gi.trl.txt") for part in ("dev", "eval")}
    dirs.update({f"cm_{part}_list": str(protocols / f"ASVspoof2019.LA.cm.{part}.trl.txt") for part in ("dev", "eval")})
    config = work / "fusion.conf"
    config.write_text(json.dumps({"dirs": dirs}))  # a JSON object is a YAML flow mapping
    return config


def run_fusion(monkeypatch, config: Path, out: Path, *extra: str) -> None:
    """fuse_scores.main() in this process (errors propagate as exceptions)."""
    import fuse_scores

    monkeypatch.setattr(sys, "argv", ["fuse_scores.py", "--config", str(config), "--comment", str(out), *extra])
    fuse_scores.main()


def synthetic_partition(folder: Path, out: Path, part: str, seed: int, n: int = 200) -> None:
    """Trials whose ASV score separates target from nontarget but not from spoof, and whose CM score
    separates spoof from bona fide but not target from nontarget; on very different scales."""
    rng = np.random.default_rng(seed)
    prefix = "LA_D" if part == "dev" else "LA_E"
    trials, cm_entries, asv, cm = [], [], [], []
    for index, key in enumerate(["target"] * n + ["nontarget"] * (2 * n) + ["spoof"] * (2 * n)):
        utterance, attack = f"{prefix}_{1000001 + index}", ("A07" if key == "spoof" else "bonafide")
        trials.append(("LA_0070", utterance, attack, key))
        cm_entries.append(("LA_0070" if key != "nontarget" else "LA_0071", utterance, "-" if key != "spoof" else "A07",
                           "spoof" if key == "spoof" else "bonafide"))
        asv.append(0.1 * rng.normal(-2.0 if key == "nontarget" else 2.0))  # cosine-like scale
        cm.append(3.0 * rng.normal(-2.0 if key == "spoof" else 2.0) + 4.0)  # logit-like scale
    write_protocols(folder, part, trials, cm_entries)
    out.mkdir(exist_ok=True)
    (out / f"score_ASV_{part}.txt").write_text("".join(f"{t[1]} {s!r}\n" for t, s in zip(trials, asv)))
    order = rng.permutation(len(cm_entries))  # CM-protocol order is not trial order
    (out / f"score_CM_{part}_no_softmax.txt").write_text("".join(f"{cm_entries[i][1]} {cm[i]!r}\n" for i in order))


@pytest.fixture
def synthetic(tmp_path):
    protocols, out = tmp_path / "protocols", tmp_path / "out"
    synthetic_partition(protocols, out, "dev", seed=1)
    synthetic_partition(protocols, out, "eval", seed=2)
    return write_config(tmp_path, protocols), out


def test_sum_fusion_by_hand(tmp_path, monkeypatch):
    protocols, out = tmp_path / "protocols", tmp_path / "out"
    trials = [("LA_0070", "LA_E_1000001", "bonafide", "target"), ("LA_0070", "LA_E_1000002", "bonafide", "nontarget"),
              ("LA_0070", "LA_E_1000003", "A07", "spoof"), ("LA_0071", "LA_E_1000002", "bonafide", "target")]
    cm_entries = [("LA_0071", "LA_E_1000009", "A08", "spoof"), ("LA_0070", "LA_E_1000003", "A07", "spoof"),
                  ("LA_0071", "LA_E_1000002", "-", "bonafide"), ("LA_0070", "LA_E_1000001", "-", "bonafide")]
    write_protocols(protocols, "eval", trials, cm_entries)
    out.mkdir()
    (out / "score_ASV_eval.txt").write_text("LA_E_1000001 0.75\nLA_E_1000002 -0.25\nLA_E_1000003 0.5\n"
                                            "LA_E_1000002 0.625\n")
    (out / "score_CM_eval_no_softmax.txt").write_text("LA_E_1000009 -1.0\nLA_E_1000003 -3.5\nLA_E_1000002 2.0\n"
                                                      "LA_E_1000001 1.5\n")
    run_fusion(monkeypatch, write_config(tmp_path, protocols), out, "--fusion", "sum", "--partitions", "eval")
    # 0.75 + 1.5, -0.25 + 2.0, 0.5 - 3.5, 0.625 + 2.0 (LA_E_1000002 is the test utterance of two trials)
    assert (out / "score_SASV_eval_sum.txt").read_text() == ("LA_0070 LA_E_1000001 target 2.25\n"
                                                            "LA_0070 LA_E_1000002 nontarget 1.75\n"
                                                            "LA_0070 LA_E_1000003 spoof -3.0\n"
                                                            "LA_0071 LA_E_1000002 target 2.625\n")
    metrics = json.loads((out / "metrics_eval_sum.json").read_text())
    # Both targets (2.25, 2.625) above the nontarget (1.75) and the spoof (-3.0): every EER is 0.
    assert metrics["sasv_eer"] == metrics["sv_eer"] == metrics["spf_eer"] == 0.0
    assert metrics["n_trials"] == 4 and metrics["fusion"] == "sum"
    assert not (out / "fusion_calibration.json").exists()


def test_calibrated_fusion_beats_each_sub_system(synthetic, monkeypatch):
    config, out = synthetic
    run_fusion(monkeypatch, config, out)
    trials = [line.split() for line in (out / "score_SASV_eval_sum.txt").read_text().splitlines()]
    keys = [t[2] for t in trials]
    asv = np.array([float(line.split()[1]) for line in (out / "score_ASV_eval.txt").read_text().splitlines()])
    cm_by_utterance = dict(line.split() for line in (out / "score_CM_eval_no_softmax.txt").read_text().splitlines())
    cm = np.array([float(cm_by_utterance[t[1]]) for t in trials])
    asv_alone, cm_alone = sasv_eers(asv, keys)["sasv_eer"], sasv_eers(cm, keys)["sasv_eer"]
    linear = json.loads((out / "metrics_eval_linear.json").read_text())
    product = json.loads((out / "metrics_eval_product.json").read_text())
    summed = json.loads((out / "metrics_eval_sum.json").read_text())
    assert asv_alone > 0.3 and cm_alone > 0.3  # each sees only one of the two kinds of impostor
    assert linear["sasv_eer"] < 0.1 and product["sasv_eer"] < 0.1
    # The raw sum is dominated by the CM's larger scale; calibration puts both on log-odds.
    assert linear["sasv_eer"] < summed["sasv_eer"]
    calibration = json.loads((out / "fusion_calibration.json").read_text())
    assert calibration["asv"]["n_positive"] == 200 and calibration["asv"]["n_negative"] == 400
    assert calibration["cm"]["n_positive"] == 600 and calibration["cm"]["n_negative"] == 400
    # The ASV scale (cosine-like, x0.1) gets a far larger calibration scale than the CM's (x3).
    assert calibration["asv"]["scale"] > 10 * calibration["cm"]["scale"] > 0
    # The written scores are the calibrated sum, recomputed here from the fitted parameters.
    fused = np.array([float(line.split()[3]) for line in (out / "score_SASV_eval_linear.txt").read_text().splitlines()])
    expected = (calibration["asv"]["scale"] * asv + calibration["asv"]["offset"]
                + calibration["cm"]["scale"] * cm + calibration["cm"]["offset"])
    np.testing.assert_allclose(fused, expected, rtol=1e-12, atol=1e-12)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    product_scores = np.array([float(line.split()[3])
                               for line in (out / "score_SASV_eval_product.txt").read_text().splitlines()])
    asv_llr = calibration["asv"]["scale"] * asv + calibration["asv"]["offset"]
    cm_llr = calibration["cm"]["scale"] * cm + calibration["cm"]["offset"]
    np.testing.assert_allclose(product_scores, np.log(sigmoid(asv_llr) * sigmoid(cm_llr)), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- bad input: one line, nothing written
def _replace_line(path: Path, number: int, text: str | None) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1:number] = [] if text is None else [text]
    path.write_text("".join(lines))


def _duplicate_line(path: Path, number: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:number] + [lines[number - 1]] + lines[number:]))


BAD_INPUTS = {
    "asv missing trial": (lambda out: _replace_line(out / "score_ASV_dev.txt", 5, None),
                          r"score_ASV_dev.txt:5: expected 'LA_D_1000005 <score>'"),
    "asv duplicated trial": (lambda out: _duplicate_line(out / "score_ASV_dev.txt", 7),
                             r"score_ASV_dev.txt:8: expected 'LA_D_1000008 <score>'"),
    "asv unknown trial": (lambda out: _replace_line(out / "score_ASV_eval.txt", 3, "LA_E_9999999 0.1\n"),
                          r"score_ASV_eval.txt:3: expected"),
    "asv not a number": (lambda out: _replace_line(out / "score_ASV_dev.txt", 4, "LA_D_1000004 abc\n"),
                         r"score_ASV_dev.txt:4: score 'abc' is not a number"),
    "asv nan": (lambda out: _replace_line(out / "score_ASV_eval.txt", 9, "LA_E_1000009 nan\n"),
                r"score_ASV_eval.txt:9: score 'nan' is not finite"),
    "asv trailing extra line": (lambda out: (out / "score_ASV_dev.txt").open("a").write("LA_D_1000001 0.5\n"),
                                r"score_ASV_dev.txt:1001: 1001 scores for the 1000 trials"),
    "cm duplicated utterance": (lambda out: _duplicate_line(out / "score_CM_dev_no_softmax.txt", 2),
                                r"score_CM_dev_no_softmax.txt:3: duplicate utterance"),
    "cm unknown utterance": (lambda out: _replace_line(out / "score_CM_dev_no_softmax.txt", 6, "LA_E_1000001 1.0\n"),
                             r"score_CM_dev_no_softmax.txt:6: utterance 'LA_E_1000001' is not in"),
    "cm inf": (lambda out: _replace_line(out / "score_CM_eval_no_softmax.txt", 2, "LA_E_1000002 inf\n"),
               r"score_CM_eval_no_softmax.txt:2: score 'inf' is not finite"),
    "cm missing utterance": (lambda out: _replace_line(out / "score_CM_eval_no_softmax.txt", 1, None),
                             r"score_CM_eval_no_softmax.txt: no score for utterance LA_E_\d+ of trial \d+"),
    "eval scores given as dev": (lambda out: (out / "score_ASV_dev.txt").write_text(
                                     (out / "score_ASV_eval.txt").read_text()),
                                 r"score_ASV_dev.txt:1: expected 'LA_D_1000001 <score>'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_nothing_is_written(synthetic, monkeypatch, case):
    config, out = synthetic
    spoil, message = BAD_INPUTS[case]
    spoil(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match=message) as raised:
        run_fusion(monkeypatch, config, out)
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in out.iterdir()) == before


def test_mismatched_protocols_are_refused(synthetic, monkeypatch, tmp_path):
    config, out = synthetic
    # A CM protocol whose bona fide / spoof labels disagree with the trial list's keys.
    cm_protocol = tmp_path / "protocols" / "ASVspoof2019.LA.cm.eval.trl.txt"
    cm_protocol.write_text(cm_protocol.read_text().replace(" bonafide\n", " tmp\n").replace(" spoof\n", " bonafide\n")
                           .replace(" tmp\n", " spoof\n"))
    with pytest.raises(ProtocolError, match=r"asv.eval.gi.trl.txt:1: trial key 'target', but LA_E_1000001 is 'spoof'"):
        run_fusion(monkeypatch, config, out, "--fusion", "sum", "--partitions", "eval")


def test_calibration_without_dev_names_what_is_missing(synthetic, monkeypatch):
    config, out = synthetic
    (out / "score_CM_dev_no_softmax.txt").unlink()
    run_fusion(monkeypatch, config, out, "--fusion", "sum", "--partitions", "eval")  # sum needs no dev
    assert (out / "score_SASV_eval_sum.txt").is_file()
    with pytest.raises(FusionError, match=r"linear fusion is calibrated on dev scores, but .*"
                                          r"score_CM_dev_no_softmax.txt not found"):
        run_fusion(monkeypatch, config, out, "--fusion", "linear", "--partitions", "eval")
    assert not (out / "score_SASV_eval_linear.txt").exists()


@pytest.mark.slow
def test_command_line_exit_status_and_outputs(synthetic):
    config, out = synthetic
    _replace_line(out / "score_ASV_eval.txt", 2, "LA_E_1000002 x\n")
    result = run_here([REPO / "fuse_scores.py", "--config", config, "--comment", out], cwd=out)  # as `python ...`
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "score_ASV_eval.txt:2: score 'x' is not a number" in result.stderr
    assert not list(out.glob("score_SASV_*")) and not list(out.glob("metrics_*"))


# --------------------------------------------------------------------------- the real SASV 2022 dev protocol
@pytest.mark.slow
def test_fusion_on_the_real_dev_protocols(fixtures, tmp_path, monkeypatch):
    """Synthetic scores on the real dev trial list and CM protocol (29,548 trials, 24,844 utterances,
    an utterance in several trials): every trial finds its CM score, and calibration helps."""
    from data.protocols import read_cm_protocol, read_sasv_trials

    protocols = fixtures / "protocols"
    trials = read_sasv_trials(protocols / "ASVspoof2019.LA.asv.dev.gi.trl.txt")
    entries = read_cm_protocol(protocols / "ASVspoof2019.LA.cm.dev.trl.txt")
    rng = np.random.default_rng(5)
    out = tmp_path / "out"
    out.mkdir()
    asv = [0.2 * rng.normal(-1.5 if t.key == "nontarget" else 1.5) for t in trials]
    cm = {e.utterance: 4.0 * rng.normal(-1.5 if e.key == "spoof" else 1.5) for e in entries}
    (out / "score_ASV_dev.txt").write_text("".join(f"{t.utterance} {s!r}\n" for t, s in zip(trials, asv)))
    (out / "score_CM_dev_no_softmax.txt").write_text("".join(f"{e.utterance} {cm[e.utterance]!r}\n" for e in entries))
    config = tmp_path / "real.conf"
    config.write_text(json.dumps({"dirs": {"sasv_dev_trial": str(protocols / "ASVspoof2019.LA.asv.dev.gi.trl.txt"),
                                           "cm_dev_list": str(protocols / "ASVspoof2019.LA.cm.dev.trl.txt")}}))
    run_fusion(monkeypatch, config, out, "--partitions", "dev")
    keys = [t.key for t in trials]
    summed = np.array([float(line.split()[3]) for line in (out / "score_SASV_dev_sum.txt").read_text().splitlines()])
    np.testing.assert_array_equal(summed, np.array(asv) + np.array([cm[t.utterance] for t in trials]))
    linear = json.loads((out / "metrics_dev_linear.json").read_text())
    assert linear["n_trials"] == 29548
    assert linear["sasv_eer"] < min(sasv_eers(np.array(asv), keys)["sasv_eer"], sasv_eers(summed, keys)["sasv_eer"])


# --------------------------------------------------------------------------- separable dev scores: no finite fit
def test_classes_that_touch_at_one_value_are_refused():
    # A threshold at 1.0 separates them: a steeper scale always lowers the loss, so there is no optimum.
    with pytest.raises(FusionError, match="perfectly separated"):
        fit_logistic(np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 1.0]))
    with pytest.raises(FusionError, match="perfectly separated"):
        fit_logistic(np.array([-1.0, 0.0, 1.0]), np.array([1.0, 2.0, 3.0]))
    # Overlapping by one score: a finite fit, increasing in the score.
    fitted = fit_logistic(np.array([0.5, 2.0, 3.0]), np.array([-1.0, 0.0, 1.0]))
    assert 0.0 < fitted.scale < 100.0


@pytest.mark.parametrize("sub_system", ["asv", "cm"])
def test_separable_dev_scores_are_refused_naming_the_file(synthetic, monkeypatch, sub_system):
    config, out = synthetic
    if sub_system == "asv":  # targets 1, 2, ...; nontargets and spoofs 0: separated, touching nowhere
        path = out / "score_ASV_dev.txt"
        rows = [line.split() for line in path.read_text().splitlines()]
        path.write_text("".join(f"{utt} {1 + i if i < 200 else 0}\n" for i, (utt, _) in enumerate(rows)))
    else:  # bona fide at or above 0, spoofs at or below 0: they touch at 0
        path = out / "score_CM_dev_no_softmax.txt"
        spoofed = {line.split()[1] for line in (config.parent / "protocols" / "ASVspoof2019.LA.cm.dev.trl.txt")
                   .read_text().splitlines() if line.endswith(" spoof")}
        utterances = [line.split()[0] for line in path.read_text().splitlines()]
        path.write_text("".join(f"{u} {-1.0 if u in spoofed else 1.0}\n" for u in utterances[:-2])
                        + f"{utterances[-2]} 0.0\n{utterances[-1]} 0.0\n")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FusionError, match="perfectly separated") as raised:
        run_fusion(monkeypatch, config, out, "--fusion", "linear")
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert sorted(p.name for p in out.iterdir()) == before
    run_fusion(monkeypatch, config, out, "--fusion", "sum")  # the raw sum needs no fit
    assert (out / "score_SASV_eval_sum.txt").is_file()


# --------------------------------------------------------------------------- all or nothing
def _outputs(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.name.startswith(("score_SASV", "metrics",
                                                                                         "fusion_calibration"))}


def _fail_fsync_of(monkeypatch, name: str) -> None:
    """os.fsync raises ENOSPC (a full disk) for the file called `name`, wherever it is staged."""
    import errno
    import os

    real = os.fsync

    def fsync(descriptor: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}")) == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_failed_later_write_keeps_the_earlier_run(synthetic, monkeypatch):
    config, out = synthetic
    run_fusion(monkeypatch, config, out)
    earlier = _outputs(out)
    assert len(earlier) == 13  # 2 partitions x 3 fusions x (scores, metrics) + the calibration
    _replace_line(out / "score_ASV_dev.txt", 1, "LA_D_1000001 0.5\n")  # new dev scores: every file would change
    _fail_fsync_of(monkeypatch, "metrics_eval_product.json")  # the last file of the run
    with pytest.raises(OSError) as raised:
        run_fusion(monkeypatch, config, out)
    assert raised.value.filename == str(out / "metrics_eval_product.json")
    assert _outputs(out) == earlier  # the dev files of this run were not moved in
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_full_disk_is_one_line_naming_the_destination(synthetic, monkeypatch, capsys):
    import fuse_scores
    from runtime.cli import run_cli

    config, out = synthetic
    _fail_fsync_of(monkeypatch, "score_SASV_dev_sum.txt")
    monkeypatch.setattr(sys, "argv", ["fuse_scores.py", "--config", str(config), "--comment", str(out)])
    with pytest.raises(SystemExit) as exited:
        run_cli(fuse_scores.main)
    stderr = capsys.readouterr().err
    assert exited.value.code == 1 and stderr.count("\n") == 1
    assert f"{out / 'score_SASV_dev_sum.txt'}: No space left on device" in stderr and ".tmp" not in stderr
    assert not list(out.glob("score_SASV_*")) and not list(out.glob("metrics_*"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_output_places_are_checked_before_any_reading(synthetic, monkeypatch, tmp_path):
    config, out = synthetic
    (out / "metrics_eval_linear.json").mkdir()  # a folder where a file goes
    (out / "score_ASV_dev.txt").write_text("not read\n")  # the check comes first
    with pytest.raises(UserError, match="--comment") as raised:
        run_fusion(monkeypatch, config, out)
    assert str(out / "metrics_eval_linear.json") in str(raised.value)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="--comment") as raised:
        run_fusion(monkeypatch, config, blocker / "out")
    assert str(blocker) in str(raised.value) and "\n" not in str(raised.value)
    assert blocker.is_file() and blocker.read_text() == ""


def test_a_rerun_leaves_only_its_own_fusions(synthetic, monkeypatch):
    config, out = synthetic
    run_fusion(monkeypatch, config, out)
    linear_dev = (out / "score_SASV_dev_linear.txt").read_text()
    run_fusion(monkeypatch, config, out, "--fusion", "linear", "--partitions", "eval")
    assert not list(out.glob("*_eval_sum.*")) and not list(out.glob("*_eval_product.*"))
    assert (out / "score_SASV_dev_linear.txt").read_text() == linear_dev  # another partition: kept
    assert (out / "fusion_calibration.json").is_file()
    run_fusion(monkeypatch, config, out, "--fusion", "sum")
    assert sorted(p.name for p in out.glob("*SASV*")) == ["score_SASV_dev_sum.txt", "score_SASV_eval_sum.txt"]
    assert not (out / "fusion_calibration.json").exists()
