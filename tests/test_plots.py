"""scoring/plots.py on degenerate score distributions: saturated, tied within float steps, near the float limits,
ranges that overflow, one trial per class and lopsided classes, for Track 2 (SASV, with CM and ASV parts) and
Track 1 (CM only) inputs. Every figure must be drawn without a warning, show every score inside its axes, and say
in its labels when the scores were drawn scaled or could not be told apart."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.special import ndtr
from tiny_run import run_script

import scoring.plots as plots
from metrics.eer import roc_eer
from scoring.asvspoof5_files import ScoredTrials, read_track2
from scoring.report import write_report

# numpy's overflow / invalid-value RuntimeWarnings and matplotlib's UserWarnings (singular or non-finite limits, a
# layout that does not fit) fail a test.
pytestmark = [pytest.mark.filterwarnings("error::RuntimeWarning"), pytest.mark.filterwarnings("error::UserWarning")]

BIG = np.finfo(np.float64).max
BELOW_ONE = 0.9999999999999999  # the float just below 1.0
TINY = 5e-324  # the smallest subnormal
SIZES = {"det_sasv.png": (605, 550), "det_cm.png": (605, 550), "hist_sasv.png": (715, 495),
         "hist_cm.png": (715, 495), "adcf.png": (660, 462)}  # figure size (inches) x 110 dpi

# name: (scores cycled over the trials, the axis label's divisor, the title's note (None: no note)).
CASES = {
    "saturated": ([1.0], None, "equal 1.0"),
    "saturated with 1 - ulp": ([1.0, BELOW_ONE], None, "in [0.9999999999999999, 1.0]"),
    "tied within ulps": ([-2.5, -2.5000000000000004, -2.5000000000000009], None, "in [-2.500000000000001, -2.5]"),
    "all zero": ([0.0], None, "equal 0.0"),
    "huge, equal": ([1e308], "1e308", "equal 1e+308"),
    "huge, opposite": ([-1e308, 1e308], "1e308", None),  # max - min overflows to inf
    "full float range": ([-BIG, BIG, 0.0, 1.0], "1e308", None),
    "huge and ordinary": ([1.5e308, 1e-3, -2.0, 0.5], "1e308", None),
    "subnormal": ([TINY, 0.0, -TINY, 2 * TINY], "1e-307", None),
    "ordinary": ([0.3, -1.2, 2.5, 0.9, -0.1], None, None),
}
SIZES_PER_CLASS = {"one per class": (1, 1, 1), "lopsided": (2, 1, 300), "few": (4, 3, 6)}


def _cycle(values: list[float], count: int) -> np.ndarray:
    return np.resize(np.array(values, dtype=np.float64), count)


def _sasv_trials(sasv: list[float], cm: list[float], sizes: tuple[int, int, int]) -> ScoredTrials:
    """Track 2 trials: target, nontarget, then spoof (two attacks), with SASV, CM and ASV scores."""
    keys = np.array(["target"] * sizes[0] + ["nontarget"] * sizes[1] + ["spoof"] * sizes[2])
    attack = np.where(keys == "spoof", np.resize(np.array(["A11", "A12"]), keys.size), "bonafide")
    return ScoredTrials(source="degenerate", cm_keys=np.where(keys == "spoof", "spoof", "bonafide"), asv_keys=keys,
                        sasv=_cycle(sasv, keys.size), cm=_cycle(cm, keys.size), asv=_cycle(sasv[::-1], keys.size),
                        attack=attack)


def _track1_trials(cm: list[float], bona: int, spoof: int) -> ScoredTrials:
    keys = np.array(["bonafide"] * bona + ["spoof"] * spoof)
    return ScoredTrials(source="degenerate", cm_keys=keys, cm=_cycle(cm, keys.size))


@pytest.fixture
def figures(monkeypatch) -> list:
    """The matplotlib figures render_plots draws, in the order of its images."""
    drawn, png = [], plots._png

    def keep(figure):
        drawn.append(figure)
        return png(figure)

    monkeypatch.setattr(plots, "_png", keep)
    return drawn


def _check_png(name: str, image: bytes) -> None:
    with Image.open(io.BytesIO(image)) as picture:
        assert picture.format == "PNG", name
        picture.verify()
    with Image.open(io.BytesIO(image)) as picture:
        assert picture.size == SIZES[name], name
        assert np.ptp(np.asarray(picture.convert("L"))) > 100, f"{name} is blank"


def _check_score_axis(name: str, figure, scores: np.ndarray, case: str) -> None:
    """Every score is inside the x-axis (scaled as the label says) and the title notes ties."""
    _, divisor, note = CASES[case]
    axes = figure.axes[0]
    label, title = axes.get_xlabel(), axes.get_title()
    assert label.endswith(f" / {divisor}") if divisor else "/" not in label, (name, label)
    scale = float(divisor) if divisor else 1.0
    low, high = axes.get_xlim()
    assert math.isfinite(low) and math.isfinite(high) and low < high, (name, low, high)
    assert low <= scores.min() / scale and scores.max() / scale <= high, (name, low, high)
    if note is None:
        assert "\n" not in title, (name, title)
    else:
        assert note in title.splitlines()[1], (name, title)


def _check_det(name: str, figure) -> None:
    axes = figure.axes[0]
    for line in axes.get_lines():
        assert np.isfinite(line.get_xydata()).all(), (name, line.get_label())
    assert len(axes.get_lines()) == (4 if name == "det_sasv.png" else 2), name  # the curves and the EER line


@pytest.mark.parametrize(("sasv", "cm", "sizes"), [
    ("huge, opposite", "subnormal", "one per class"),
    ("full float range", "tied within ulps", "lopsided"),
    ("huge, equal", "huge and ordinary", "few"),
])
def test_sasv_plots_of_degenerate_scores(figures, sasv, cm, sizes):
    trials = _sasv_trials(CASES[sasv][0], CASES[cm][0], SIZES_PER_CLASS[sizes])
    images = plots.render_plots(trials)
    assert list(images) == ["det_sasv.png", "hist_sasv.png", "adcf.png", "det_cm.png", "hist_cm.png"]
    for (name, image), figure in zip(images.items(), figures, strict=True):
        _check_png(name, image)
        if name.startswith("det"):
            _check_det(name, figure)
        else:
            case, scores = (cm, trials.cm) if name == "hist_cm.png" else (sasv, trials.sasv)
            _check_score_axis(name, figure, scores, case)


@pytest.mark.parametrize(("case", "bona", "spoof"), [("all zero", 1, 1), ("saturated with 1 - ulp", 200, 3)])
def test_track1_plots_of_degenerate_scores(figures, case, bona, spoof):
    trials = _track1_trials(CASES[case][0], bona, spoof)
    images = plots.render_plots(trials)
    assert list(images) == ["det_cm.png", "hist_cm.png"]
    for (name, image), figure in zip(images.items(), figures, strict=True):
        _check_png(name, image)
    _check_det("det_cm.png", figures[0])
    _check_score_axis("hist_cm.png", figures[1], trials.cm, case)
    legend = [text.get_text() for text in figures[1].axes[0].get_legend().get_texts()]
    assert legend == [f"bona fide ({bona})", f"spoof ({spoof})"]


def test_det_runs_straight_across_tied_scores(figures):
    """A saturated system's tied scores: the DET joins the operating points a threshold can reach in a straight
    line (in rates), so it crosses the EER line at the interpolated (SASV challenge) EER, not at a corner."""
    bona = np.array([1.0] * 6 + [0.2, -0.5, -1.0, 0.7])
    spoof = np.array([1.0] * 5 + [0.1, -0.3, -2.0, -2.5, 0.95, -0.7])
    trials = ScoredTrials(source="tied", cm_keys=np.array(["bonafide"] * bona.size + ["spoof"] * spoof.size),
                          cm=np.concatenate([bona, spoof]))
    plots.render_plots(trials)
    false_alarm, miss = ndtr(figures[0].axes[0].get_lines()[0].get_xydata().T)  # back from the probit axes
    gap = miss - false_alarm
    crossing = int(np.flatnonzero(np.diff(np.sign(gap)))[0])
    share = gap[crossing] / (gap[crossing] - gap[crossing + 1])
    eer = miss[crossing] + share * (miss[crossing + 1] - miss[crossing])
    assert eer == pytest.approx(roc_eer(bona, spoof), abs=1e-6)
    # All 6 bona fide and 5 of 11 spoofs tie at the top: the per-sample sweep would reach 60% miss at 100% false
    # alarms; no threshold does.
    assert not np.any((miss > 0.01) & (false_alarm > 0.99))


def _write_track2(folder: Path, sasv: list[float], cm: list[float]) -> tuple[Path, Path]:
    keys = ["target"] * 3 + ["nontarget"] * 2 + ["spoof"] * 4
    rows = [(f"S{n % 2}", f"E_{n:04d}", key, "A11" if key == "spoof" else "bonafide") for n, key in enumerate(keys)]
    scores, key_file = folder / "scores.tsv", folder / "keys.tsv"
    scores.write_text("spk\tfilename\tcm-score\tasv-score\tsasv-score\n" + "".join(
        f"{spk}\t{name}\t{cm[n % len(cm)]!r}\t{sasv[n % len(sasv)]!r}\t{sasv[n % len(sasv)]!r}\n"
        for n, (spk, name, _, _) in enumerate(rows)))
    key_file.write_text("spk\tfilename\tcm-label\tasv-label\tattack\n" + "".join(
        f"{spk}\t{name}\t{'spoof' if key == 'spoof' else 'bonafide'}\t{key}\t{attack}\n"
        for spk, name, key, attack in rows))
    return scores, key_file


def test_report_of_a_saturated_system(tmp_path):
    """Every SASV and CM score 1.0 or the float below it: the whole report is written, read from Track 2 files."""
    trials = read_track2(*_write_track2(tmp_path, [1.0, BELOW_ONE, 1.0], [1.0]))
    assert set(trials.sasv.tolist()) == {1.0, BELOW_ONE}
    out = tmp_path / "report"
    report = write_report(out, trials)
    expected = {"report.json", "report.md", "report.csv", "det_sasv.png", "hist_sasv.png", "adcf.png",
                "det_cm.png", "hist_cm.png"}
    assert {path.name for path in out.iterdir()} == expected
    for name in expected - {"report.json", "report.md", "report.csv"}:
        _check_png(name, (out / name).read_bytes())
    assert json.loads((out / "report.json").read_text())["pooled"] == report["pooled"]
    assert report["pooled"]["n_target"] == 3 and report["pooled"]["n_spoof"] == 4


AWKWARD = st.sampled_from([0.0, -0.0, 1.0, BELOW_ONE, 1.0000000000000002, -1.0, 1e308, -1e308, BIG, -BIG, TINY,
                           -TINY, 1e-300, 1e100, 1.2e100, -3.7])


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.one_of(AWKWARD, st.floats(allow_nan=False, allow_infinity=False)), min_size=1, max_size=8))
def test_any_finite_scores_get_a_drawable_axis(values):
    """The histogram's axis and bins (no drawing): finite, non-singular, holding every score, scaled only beyond
    1e+-100 and by a power of ten, and a note in the title exactly when the scores cannot be binned apart."""
    scores = np.array(values, dtype=np.float64)
    axis = plots._score_axis(scores, "CM")
    drawn = axis.drawn(scores)
    magnitude = np.abs(scores).max()
    if axis.scale != 1.0:
        assert magnitude > 1e100 or magnitude < 1e-100
        exponent = int(axis.label.rsplit(" / 1e", 1)[1])
        assert axis.scale == 10.0 ** exponent and -307 <= exponent <= 308
    else:
        assert axis.label == "CM score"
    assert np.isfinite(drawn).all() and np.abs(drawn).max() <= 1e100
    edges = plots._bin_edges(scores, axis)
    assert np.isfinite(edges).all() and np.all(np.diff(edges) > 0)
    assert np.histogram(drawn, edges)[0].sum() == scores.size  # no score falls outside the bins
    assert (axis.window is None) == (axis.note == "")
    if axis.window is not None:
        assert axis.window == (edges[0], edges[-1])
        assert repr(float(scores.min()) + 0.0) in axis.note and str(scores.size) in axis.note
    if scores.min() == scores.max():
        assert axis.note == f"all {scores.size} score{'s' if scores.size > 1 else ''} equal {float(scores[0]) + 0.0!r}"


LN2 = math.log(2)
# evaluate.py end to end: name -> (track, scores cycled over the trials, one trial per class?, metrics.csv rows
# (epoch, step, lr, train_loss, dev_sasv_eer) or None, expected pooled metrics worked out by hand).
# Track 2 trials: target, nontarget, spoof (one each, or 3, 2, 4); Track 1: bona fide, spoof (one each, or 4, 5).
# The CM EER, min DCF and act DCF are the ASVspoof 5 package's: a per-sample sweep that rejects tied bona fide
# trials before tied spoofs (so a constant system's CM EER is 1.0, where frr and far are both 1), and the
# decision threshold -log(1.9) for the act DCF. Cllr = (mean log2(1 + e^-bona) + mean log2(1 + e^spoof)) / 2.
END_TO_END = {
    "constant 1.0": ("track2", [1.0], False, [(1, 3, 0.001, 2.5, 0.5)],
                     {"sasv_eer": 0.5, "sv_eer": 0.5, "spf_eer": 0.5, "min_a_dcf": 1.0, "eer": 1.0, "min_dcf": 1.0,
                      "act_dcf": 1.0, "cllr": (math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2 / LN2}),
    # target 1.0, nontarget the float below, spoof 1.0: the SV trials are told apart by one ulp, the spoof is
    # tied with the target; SASV: fpr 1/2 at tpr 1, so 1 - fpr = 2 fpr on the ROC's first segment.
    "tied within one ulp": ("track2", [1.0, BELOW_ONE], True, [(1, 3, 1.0, 1.0, 0.1), (2, 6, BELOW_ONE,
                                                                                      BELOW_ONE, 0.1)],
                            {"sv_eer": 0.0, "spf_eer": 0.5, "sasv_eer": 1 / 3, "min_a_dcf": 1.0}),
    "one ulp apart, CM": ("track1", [1.0, BELOW_ONE], True, None,
                          {"eer": 0.0, "min_dcf": 0.0, "act_dcf": 1.0, "cllr": (math.log1p(math.exp(-1))
                                                                                + math.log1p(math.e)) / 2 / LN2}),
    "1e308": ("track1", [1e308], True, [(1, 3, 1e308, 1e308, 0.5), (2, 6, 1e-308, -1e308, math.nan)],
              {"eer": 1.0, "min_dcf": 1.0, "act_dcf": 1.0, "cllr": 1e308 / 2 / LN2}),
    "-1e308": ("track1", [-1e308], False, None,
               {"eer": 1.0, "min_dcf": 1.0, "act_dcf": 1.9, "cllr": 1e308 / 2 / LN2}),
    "-1e308 and 1e308": ("track1", [-1e308, 1e308], True, None,  # bona fide -1e308, spoof 1e308: all wrong
                         {"eer": 1.0, "min_dcf": 1.0, "act_dcf": 2.9, "cllr": 1e308 / LN2}),
    "1e-308": ("track2", [1e-308], True, [(1, 3, 1e-308, 1e-308, 0.5)],
               {"sasv_eer": 0.5, "sv_eer": 0.5, "spf_eer": 0.5, "min_a_dcf": 1.0, "eer": 1.0, "cllr": 1.0}),
}


def _write_inputs(folder: Path, track: str, values: list[float], one: bool) -> list[str]:
    """Score and key files of evaluate.py, written here (not by the code under test); its arguments."""
    if track == "track1":
        keys = ["bonafide", "spoof"] if one else ["bonafide"] * 4 + ["spoof"] * 5
        scores, key_file = folder / "cm.tsv", folder / "cm_keys.tsv"
        scores.write_text("filename\tcm-score\n" + "".join(f"E_{n}\t{values[n % len(values)]!r}\n"
                                                             for n in range(len(keys))))
        key_file.write_text("filename\tcm-label\tattack\n" + "".join(
            f"E_{n}\t{key}\t{'A11' if key == 'spoof' else '-'}\n" for n, key in enumerate(keys)))
        return ["--cm", str(scores), "--cm_keys", str(key_file)]
    keys = ["target", "nontarget", "spoof"] if one else ["target"] * 3 + ["nontarget"] * 2 + ["spoof"] * 4
    scores, key_file = folder / "scores.tsv", folder / "keys.tsv"
    scores.write_text("spk\tfilename\tcm-score\tasv-score\tsasv-score\n" + "".join(
        f"S\tE_{n}\t{values[n % len(values)]!r}\t{values[n % len(values)]!r}\t{values[n % len(values)]!r}\n"
        for n in range(len(keys))))
    key_file.write_text("spk\tfilename\tcm-label\tasv-label\tattack\n" + "".join(
        f"S\tE_{n}\t{'spoof' if key == 'spoof' else 'bonafide'}\t{key}\t{'A11' if key == 'spoof' else 'bonafide'}\n"
        for n, key in enumerate(keys)))
    return ["--sasv", str(scores), "--sasv_keys", str(key_file)]


@pytest.mark.parametrize("case", list(END_TO_END))
@pytest.mark.slow
def test_evaluate_reports_degenerate_scores(case, tmp_path, capsys, monkeypatch):
    """evaluate.py on saturated, ulp-tied and near-limit scores: every file written, every figure a PNG, the
    metrics as worked out by hand (finite where the true value is: Cllr of 1e308 scores is not inf). The first
    run in a session also pays for importing torch (runtime.cli), about 3 s."""
    track, values, one, epochs, expected = END_TO_END[case]
    argv = _write_inputs(tmp_path, track, values, one)
    if epochs is not None:
        metrics_csv = tmp_path / "metrics.csv"
        metrics_csv.write_text("epoch,step,lr,train_loss,dev_sasv_eer\n" + "".join(
            ",".join("" if isinstance(v, float) and math.isnan(v) else repr(v) for v in row) + "\n"
            for row in epochs))
        argv += ["--metrics_csv", str(metrics_csv)]
    out = tmp_path / "report"
    status, printed, err = run_script("evaluate.py", [*argv, "--out", str(out)], capsys, monkeypatch)
    assert status == 0, err
    plots_expected = ({"det_sasv.png", "hist_sasv.png", "adcf.png"} if track == "track2" else set()) | {
        "det_cm.png", "hist_cm.png"} | ({"training.png"} if epochs is not None else set())
    assert {path.name for path in out.iterdir()} == {"report.json", "report.md", "report.csv"} | plots_expected
    for name in plots_expected:
        with Image.open(out / name) as picture:
            assert picture.format == "PNG", name
            picture.verify()
    pooled = json.loads((out / "report.json").read_text())["pooled"]
    for name, value in expected.items():
        assert pooled[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    assert "report.md" in printed
