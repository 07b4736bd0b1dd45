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


def _det_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> bytes:
    """DET plot of (label, positive scores, negative scores): miss rate against false-alarm rate, probit axes."""
    figure = _figure(5.5, 5.0)
    axes = figure.subplots()
    low, high = (ndtri(p) for p in _DET_RANGE)
    for label, positive, negative in curves:
        miss, false_alarm, _ = det_curve(positive, negative)
        miss, false_alarm = _thin(miss, false_alarm)
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


def _histogram_figure(groups: list[tuple[str, np.ndarray]], what: str) -> bytes:
    from matplotlib import colormaps

    figure = _figure(6.5, 4.5)
    axes = figure.subplots()
    values = np.concatenate([scores for _, scores in groups])
    edges = np.histogram_bin_edges(values, bins=int(min(80, max(10, math.sqrt(values.size)))))
    # The bona fide classes drawn thick; 20 distinct colours so that 13+ attacks do not share one.
    colours = colormaps["tab20" if len(groups) > 10 else "tab10"].colors
    bona_fide = 1 if groups[0][0] == "bona fide" else 2  # classes before the attacks
    for number, (label, scores) in enumerate(groups):
        if scores.size:
            axes.hist(scores, bins=edges, density=True, histtype="step", color=colours[number % len(colours)],
                      linewidth=2.0 if number < bona_fide else 1.0, zorder=3 if number < bona_fide else 2,
                      label=f"{label} ({scores.size})")
    axes.set_xlabel(f"{what} score")
    axes.set_ylabel("density")
    axes.set_title(f"{what} scores by class")
    axes.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
    return _png(figure)


def _adcf_figure(trials: ScoredTrials) -> bytes:
    figure = _figure(6.0, 4.2)
    axes = figure.subplots()
    codes = key_codes(trials.asv_keys, trials.sasv.size)
    for label, costs in (("a_dcf package costs (min_a_dcf)", ADCF_DEFAULT),
                         ("ASVspoof 5 costs (a_dcf)", ADCF_ASVSPOOF5)):
        result = adcf_curve_from_codes(trials.sasv, codes, costs)
        thresholds, curve = _thin(result.thresholds, result.curve, keep=result.argmin_index)
        line, = axes.plot(thresholds, curve, linewidth=1.3, label=label)
        axes.plot([result.threshold], [result.min_adcf], marker="o", color=line.get_color())
        axes.annotate(f"min {result.min_adcf:.4f}", (result.threshold, result.min_adcf), fontsize=8,
                      textcoords="offset points", xytext=(6, -12), color=line.get_color())
    axes.set_xlabel("SASV threshold")
    axes.set_ylabel("normalised a-DCF")
    axes.set_title("a-DCF against the threshold")
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


def _training_figure(log: dict[str, np.ndarray]) -> bytes:
    figure = _figure(11.0, 3.6)
    loss_axes, eer_axes, lr_axes = figure.subplots(1, 3)
    epochs = log["epoch"]
    loss_axes.plot(epochs, log["train_loss"], marker=".", linewidth=1.2)
    loss_axes.set_title("train loss")
    for name in (name for name in log if name.startswith("dev_") and name.endswith("eer")):
        shown = np.isfinite(log[name])
        eer_axes.plot(epochs[shown], 100 * log[name][shown], marker=".", linewidth=1.2, label=name[4:])
    eer_axes.set_title("dev EER (%)")
    if eer_axes.lines:
        eer_axes.legend(fontsize=8)
    if "lr" in log:
        lr_axes.plot(epochs, log["lr"], marker=".", linewidth=1.2)
        if np.all(log["lr"][np.isfinite(log["lr"])] > 0):
            lr_axes.set_yscale("log")
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
