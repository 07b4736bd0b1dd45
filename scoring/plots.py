"""The report's figures (PNG, matplotlib's Agg canvas, no display and no pyplot state): DET curves on
normal-deviate axes, score histograms by class, the a-DCF against the threshold, and training curves
from a main.py metrics.csv. `render_plots` returns the PNG bytes by file name, so that scoring.report
writes nothing until every figure has been drawn.

  det_sasv.png    SV (target vs nontarget), SPF (target vs spoof) and SASV (target vs both) on the SASV score
  det_cm.png      CM: bona fide vs spoof on the CM score (when there are CM scores)
  hist_sasv.png / hist_cm.png   score histograms: target, nontarget (Track 2) or bona fide, then each attack
  adcf.png        min a-DCF against the SASV threshold (a_dcf package and ASVspoof 5 costs), minima marked
  training.png    train loss, dev EERs and learning rate per epoch (given a metrics.csv)
"""
from __future__ import annotations

import csv
import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtri  # the standard normal quantile (probit), without loading scipy.stats

from data.protocols import ProtocolError
from metrics.adcf import ADCF_ASVSPOOF5, ADCF_DEFAULT, adcf_curve_from_codes
from metrics.eer import det_curve, key_codes
from scoring.asvspoof5_files import ScoredTrials
from scoring.score_files import parse_number

_MAX_POINTS = 4000  # points drawn per curve: enough for the eye, cheap on a million trials
_DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
_DET_RANGE = (0.0005, 0.995)
_DPI = 110
# Score axes: magnitudes outside this band are drawn divided by a power of ten (said in the axis label), so
# that no span, margin or bin width overflows or underflows; scores closer together than _TIED (relative)
# cannot be told apart by bins or ticks and are drawn as one value in a fixed window (said in the title).
_SCALED_BEYOND = (1e-100, 1e100)
_TIED = 1e-9
_TIED_BINS = 21  # odd: the one value sits in the middle of a bin, not on an edge


def _figure(width: float = 6.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _thin(*arrays: np.ndarray, keep: int | None = None) -> list[np.ndarray]:
    """At most _MAX_POINTS evenly spaced points of aligned arrays (plus index `keep`)."""
    size = arrays[0].size
    if size <= _MAX_POINTS:
        return list(arrays)
    index = np.linspace(0, size - 1, _MAX_POINTS).astype(int)
    if keep is not None:
        index = np.union1d(index, [keep])
    return [array[index] for array in arrays]


def _det_points(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(miss, false alarm) of the per-sample sweep, straight across each run of tied scores.

    The sweep rejects tied targets before tied non-targets, an order no threshold can pick; drawn as it is,
    a saturated system's ties would show a corner (all misses first) that no threshold reaches. Between the
    operating points a threshold can reach (either side of a tie run), the rates are drawn linearly, as the
    report's SASV EERs (metrics.eer.roc_eer) interpolate them."""
    miss, false_alarm, thresholds = det_curve(positive, negative)
    # Point k (k >= 1) rejects the k lowest scores, thresholds[k] the highest of them; a threshold reaches
    # point 0, point n and every point whose next score is higher.
    reached = np.flatnonzero(thresholds[1:-1] != thresholds[2:]) + 1
    if reached.size == thresholds.size - 2:
        return miss, false_alarm
    reached = np.concatenate(([0], reached, [thresholds.size - 1]))
    position = np.arange(thresholds.size)
    return np.interp(position, reached, miss[reached]), np.interp(position, reached, false_alarm[reached])


def _det_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> bytes:
    """DET plot of (label, positive scores, negative scores): miss rate against false-alarm rate, probit axes."""
    figure = _figure(5.5, 5.0)
    axes = figure.subplots()
    low, high = (ndtri(p) for p in _DET_RANGE)
    for label, positive, negative in curves:
        miss, false_alarm = _thin(*_det_points(positive, negative))
        clipped = (ndtri(np.clip(rate, *_DET_RANGE)) for rate in (false_alarm, miss))
        axes.plot(*clipped, label=label, linewidth=1.4)
    axes.plot([low, high], [low, high], color="grey", linewidth=0.6, linestyle=":", label="EER line")
    ticks = [p for p in _DET_TICKS if _DET_RANGE[0] <= p <= _DET_RANGE[1]]
    labels = [f"{100 * p:g}" for p in ticks]
    for set_ticks, set_labels, set_limits in ((axes.set_xticks, axes.set_xticklabels, axes.set_xlim),
                                             (axes.set_yticks, axes.set_yticklabels, axes.set_ylim)):
        set_ticks(ndtri(ticks))
        set_labels(labels, fontsize=7)
        set_limits(low, high)
    axes.set_xlabel("false-alarm rate (%)")
    axes.set_ylabel("miss rate (%)")
    axes.set_title(title)
    axes.grid(True, linewidth=0.4, alpha=0.6)
    axes.legend(fontsize=8, loc="upper right")
    return _png(figure)


def _class_scores(scores: np.ndarray, trials: ScoredTrials, bona_fide_classes: bool) -> list[tuple[str, np.ndarray]]:
    """(label, scores) per class: target, nontarget (or bona fide), then each attack (or spoof)."""
    spoof = trials.cm_keys == "spoof"
    if bona_fide_classes or trials.asv_keys is None:
        groups = [("bona fide", scores[~spoof])]
    else:
        groups = [(key, scores[trials.asv_keys == key]) for key in ("target", "nontarget")]
    if trials.attack is None:
        return [*groups, ("spoof", scores[spoof])]
    attacks = sorted(set(trials.attack[spoof].tolist()))
    return [*groups, *((attack, scores[spoof & (trials.attack == attack)]) for attack in attacks)]


@dataclass(frozen=True)
class _ScoreAxis:
    """How one score axis is drawn: scores divided by `scale`, the axis `label`, fixed `window` limits when
    every score is the same to float precision, and a `note` for the title (empty when nothing to say)."""

    scale: float
    label: str
    window: tuple[float, float] | None
    note: str

    def drawn(self, scores: np.ndarray) -> np.ndarray:
        return scores / self.scale


def _score_axis(values: np.ndarray, what: str, quantity: str = "score") -> _ScoreAxis:
    """The drawing of finite `values` (non-empty; scores unless `quantity` says otherwise) on one axis; see
    _SCALED_BEYOND and _TIED."""
    low, high = float(values.min()) + 0.0, float(values.max()) + 0.0  # + 0.0: -0.0 shown as 0.0
    magnitude = max(abs(low), abs(high))
    scale, label = 1.0, f"{what} {quantity}".rstrip()
    if magnitude and not _SCALED_BEYOND[0] <= magnitude <= _SCALED_BEYOND[1]:
        exponent = min(308, max(-307, math.floor(math.log10(magnitude))))  # 10.0 ** exponent is a normal float
        scale, label = 10.0 ** exponent, f"{label} / 1e{exponent}"
    drawn_low, drawn_high = low / scale, high / scale
    if drawn_high - drawn_low > _TIED * max(abs(drawn_low), abs(drawn_high)):
        return _ScoreAxis(scale, label, None, "")
    centre = (drawn_low + drawn_high) / 2
    half = max(0.5, 0.05 * abs(centre))
    count = f"{values.size} {quantity or 'value'}{'s' if values.size > 1 else ''}"
    note = (f"all {count} equal {low!r}" if low == high
            else f"all {count} in [{low!r}, {high!r}], drawn as one value")
    return _ScoreAxis(scale, label, (centre - half, centre + half), note)


def _bin_edges(values: np.ndarray, axis: _ScoreAxis) -> np.ndarray:
    """Histogram bin edges of `values` as `axis` draws them."""
    if axis.window is not None:
        return np.linspace(*axis.window, _TIED_BINS + 1)
    return np.histogram_bin_edges(axis.drawn(values), bins=int(min(80, max(10, math.sqrt(values.size)))))


def _title(title: str, axis: _ScoreAxis, wrap: int | None = None) -> str:
    """`title`, then the axis' note (on lines of at most `wrap` characters: a narrow panel's)."""
    if not axis.note:
        return title
    return "\n".join([title, *(textwrap.wrap(axis.note, wrap) if wrap else [axis.note])])


def _histogram_figure(groups: list[tuple[str, np.ndarray]], what: str) -> bytes:
    from matplotlib import colormaps

    figure = _figure(6.5, 4.5)
    axes = figure.subplots()
    values = np.concatenate([scores for _, scores in groups])
    axis = _score_axis(values, what)
    edges = _bin_edges(values, axis)
    # The bona fide classes drawn thick; 20 distinct colours so that 13+ attacks do not share one.
    colours = colormaps["tab20" if len(groups) > 10 else "tab10"].colors
    bona_fide = 1 if groups[0][0] == "bona fide" else 2  # classes before the attacks
    for number, (label, scores) in enumerate(groups):
        if scores.size:
            thick = number < bona_fide
            axes.hist(axis.drawn(scores), bins=edges, density=True, histtype="step",
                      color=colours[number % len(colours)], linewidth=2.0 if thick else 1.0, zorder=3 if thick else 2,
                      label=f"{label} ({scores.size})")
    if axis.window is not None:
        axes.set_xlim(*axis.window)
    axes.set_xlabel(axis.label)
    axes.set_ylabel("density")
    axes.set_title(_title(f"{what} scores by class", axis))
    axes.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
    return _png(figure)


def _adcf_figure(trials: ScoredTrials) -> bytes:
    figure = _figure(6.0, 4.2)
    axes = figure.subplots()
    codes = key_codes(trials.asv_keys, trials.sasv.size)
    axis = _score_axis(trials.sasv, "SASV")
    lowest, highest = axis.drawn(trials.sasv.min()), axis.drawn(trials.sasv.max())
    ends = []
    for label, costs in (("a_dcf package costs (min_a_dcf)", ADCF_DEFAULT),
                         ("ASVspoof 5 costs (a_dcf)", ADCF_ASVSPOOF5)):
        result = adcf_curve_from_codes(trials.sasv, codes, costs)
        # Point k >= 1 rejects the scores up to thresholds[k], a cost that holds until the next score: steps.
        # Point 0 accepts every trial at the lowest score - 1e-8 (the a_dcf package's threshold), as does any
        # threshold below the lowest score: drawn from the axis' left edge, whatever the scores' magnitude.
        index = result.argmin_index
        thresholds, curve = _thin(result.thresholds[1:], result.curve[1:], keep=index - 1 if index else None)
        # The minima are told in the legend: text beside them would overlap when they coincide or cross an edge.
        line, = axes.plot(axis.drawn(thresholds), curve, drawstyle="steps-post", linewidth=1.3,
                          label=f"{label}: min {result.min_adcf:.4f} at {result.threshold:.4g}")
        at = axis.drawn(result.threshold) if index else lowest
        axes.plot([at], [result.min_adcf], marker="o", color=line.get_color())
        ends.append((result.curve[0], result.curve[1], result.curve[-1], line.get_color()))
    if axis.window is not None:
        axes.set_xlim(*axis.window)
    left, right = axes.get_xlim()
    for accept_all, first, reject_all, colour in ends:
        axes.plot([left, lowest, lowest], [accept_all, accept_all, first], color=colour, linewidth=1.3)
        axes.plot([highest, right], [reject_all, reject_all], color=colour, linewidth=1.3)
    axes.set_xlim(left, right)
    axes.set_xlabel(axis.label.replace("score", "threshold"))
    axes.set_ylabel("normalised a-DCF")
    axes.set_title(_title("a-DCF against the threshold", axis))
    axes.grid(True, linewidth=0.4, alpha=0.6)
    axes.legend(fontsize=8)
    return _png(figure)


def read_training_log(path: str | Path) -> dict[str, np.ndarray]:
    """Numeric columns of a main.py metrics.csv (empty cells nan); ProtocolError naming the file and line."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise ProtocolError(f"{path}: metrics.csv not found") from None
    except (OSError, UnicodeDecodeError):
        raise ProtocolError(f"{path}: cannot read metrics.csv as text") from None
    if not rows or "epoch" not in rows[0] or "train_loss" not in rows[0]:
        raise ProtocolError(f"{path}:1: expected main.py's metrics.csv header (epoch, ..., train_loss, ...)")
    header, columns = rows[0], {name: [] for name in rows[0]}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ProtocolError(f"{path}:{number}: expected {len(header)} comma-separated fields, got {len(row)}")
        for name, text in zip(header, row):
            value = parse_number(text) if text.strip() else math.nan
            if value is None:
                raise ProtocolError(f"{path}:{number}: {name} {text!r} is not a number")
            columns[name].append(value)
    if len(rows) < 2:
        raise ProtocolError(f"{path}: metrics.csv has no epochs")
    return {name: np.array(values) for name, values in columns.items()}


def _curve_axis(axes: Any, epochs: np.ndarray, columns: list[tuple[str, np.ndarray]], what: str,
                title: str, log: bool = False) -> None:
    """Per-epoch `columns` (label, values; nan: no value) on `axes`, drawn as _score_axis draws scores: a single
    epoch, a constant column or values near the float limits give a finite, non-singular y-axis."""
    shown = [(label, np.isfinite(values)) for label, values in columns]
    present = [values[keep] for (_, values), (_, keep) in zip(columns, shown) if keep.any()]
    if not present:
        axes.set_title(title)
        return
    axis = _score_axis(np.concatenate(present), what, quantity="")
    for (label, values), (_, keep) in zip(columns, shown):
        if keep.any():
            axes.plot(epochs[keep], axis.drawn(values[keep]), marker=".", linewidth=1.2, label=label)
    # A log axis gets a decade either side of tied values (the window is linear); values that scale to 0
    # need a linear one.
    if log and np.all(axis.drawn(np.concatenate(present)) > 0):
        axes.set_yscale("log")
        if axis.window is not None:
            centre = sum(axis.window) / 2
            axes.set_ylim(centre / 10, centre * 10)
    elif axis.window is not None:
        axes.set_ylim(*axis.window)
    if axis.scale != 1.0:
        axes.set_ylabel(axis.label)
    axes.set_title(_title(title, axis, wrap=44), fontsize=10)


def _training_figure(log: dict[str, np.ndarray]) -> bytes:
    figure = _figure(11.0, 3.6)
    loss_axes, eer_axes, lr_axes = figure.subplots(1, 3)
    epochs = log["epoch"]
    _curve_axis(loss_axes, epochs, [("train loss", log["train_loss"])], "train loss", "train loss")
    eers = [(name[4:], 100 * log[name]) for name in log if name.startswith("dev_") and name.endswith("eer")]
    _curve_axis(eer_axes, epochs, eers, "dev EER (%)", "dev EER (%)")
    if eer_axes.lines:
        eer_axes.legend(fontsize=8)
    if "lr" in log:
        _curve_axis(lr_axes, epochs, [("lr", log["lr"])], "learning rate", "learning rate", log=True)
    else:
        lr_axes.set_title("learning rate")
    for axes in (loss_axes, eer_axes, lr_axes):
        axes.set_xlabel("epoch")
        axes.grid(True, linewidth=0.4, alpha=0.6)
    return _png(figure)


def render_plots(trials: ScoredTrials, metrics_csv: str | Path | None = None) -> dict[str, bytes]:
    """PNG bytes by file name (see the module docstring) for the parts the inputs have."""
    log = read_training_log(metrics_csv) if metrics_csv is not None else None  # bad input before any drawing
    images = {}
    spoof = trials.cm_keys == "spoof"
    if trials.sasv is not None:
        sasv, keys = trials.sasv, trials.asv_keys
        target = sasv[keys == "target"]
        images["det_sasv.png"] = _det_figure(
            [("SV (target vs nontarget)", target, sasv[keys == "nontarget"]),
             ("SPF (target vs spoof)", target, sasv[keys == "spoof"]),
             ("SASV (target vs both)", target, sasv[keys != "target"])], "SASV score: DET")
        images["hist_sasv.png"] = _histogram_figure(_class_scores(sasv, trials, False), "SASV")
        images["adcf.png"] = _adcf_figure(trials)
    if trials.cm is not None:
        images["det_cm.png"] = _det_figure([("CM (bona fide vs spoof)", trials.cm[~spoof], trials.cm[spoof])],
                                           "CM score: DET")
        images["hist_cm.png"] = _histogram_figure(_class_scores(trials.cm, trials, True), "CM")
    if log is not None:
        images["training.png"] = _training_figure(log)
    return images
