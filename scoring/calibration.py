"""Calibration that travels with a trained system: log-likelihood ratios of its scores and its decision threshold.

At the end of training main.py fits them on the dev scores of the checkpoint it evaluates:
  * per score the system has (asv: cosine, cm: bona fide logit, sasv: the SASV score) an affine map to a
    log-likelihood ratio, by the prior-weighted logistic regression of `fuse_scores.py --fusion linear`
    (scoring.fusion.fit_logistic): asv target vs nontarget trials, cm bona fide vs spoof utterances, sasv
    target vs nontarget and spoof trials;
  * the decision threshold: the dev score at which the system's headline metric is at its minimum (the
    corpus adapter's `headline`: SASV-EER or ASVspoof 5's a-DCF for a SASV system, EER for a sub-system).
    A trial is accepted (target / bona fide / target bona fide) when its score is above the threshold, the
    rule of the metrics' sweeps (metrics/eer.py, metrics/adcf.py: a point rejects the scores at or below it).
They are written as `calibration.json` beside the checkpoint (plain JSON), with a fingerprint of the weights
they belong to; the Python API, score_files.py, export.py and the eval report read them back here.

The fingerprint (`system_fingerprint`) covers exactly the weights that score:
  system sasv: the SASV model's ASV network, CM network and back-end, and the OC-softmax loss (its centre);
  system cm: the CM network; system asv: the ASV network (not its training loss); system b2: the back-end.
`calibration_metrics` measures the calibration loss of eval scores (actual vs minimum costs, docs/calibration.md).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metrics.adcf import ADCF_ASVSPOOF5, ADCF_DEFAULT, adcf_curve
from metrics.calibration import act_dcf, adcf_at_threshold, cllr, min_cllr, min_dcf_at
from metrics.eer import compute_eer
from metrics.errors import MetricError
from runtime.errors import UserError
from runtime.files import json_text, write_text
from scoring.fusion import Calibration, FusionError, fit_logistic
from scoring.scored_trials import ScoredTrials

CALIBRATION_FILE = "calibration.json"
FORMAT = "sasv-toolkit-calibration"
VERSION = 1
SCORES = ("asv", "cm", "sasv")
# What a high score means, for every score the toolkit writes (docs/scores.md).
DIRECTIONS = {"asv": "higher = same speaker (target)", "cm": "higher = bona fide",
              "sasv": "higher = target bona fide"}
# The classes of each score's calibration and decision: (accepted, rejected).
CLASSES = {"asv": ("target", "nontarget"), "cm": ("bona fide", "spoof"), "sasv": ("target", "nontarget or spoof")}
DECISION_METRICS = ("sasv_eer", "min_a_dcf", "a_dcf", "eer")


class CalibrationFileError(UserError):
    """A calibration file that cannot be read or does not fit the weights it is used with."""


def weights_fingerprint(modules: Iterable[nn.Module]) -> str:
    """sha256 of the modules' state dicts (names, dtypes, shapes, values), in order: the same weights give the
    same fingerprint whichever file (best.ckpt, a best-k copy) holds them."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor):
                continue
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            # Flattened: a 0-d tensor (a BatchNorm's num_batches_tracked) cannot be viewed as bytes.
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def system_fingerprint(model: nn.Module, loss: nn.Module | None = None) -> str:
    """`weights_fingerprint` of what scores in a trained system: a SASV model (models.sasv.SASVModel) with its
    OC-softmax `loss`: [asv_model, cm_model, backend, loss]; a CM network, an ASV network or a B2 back-end
    alone: [model]. main.py and the Python API both compute it here, so that they agree."""
    if all(hasattr(model, part) for part in ("asv_model", "cm_model", "backend")):
        if loss is None:
            raise ValueError("a SASV model's fingerprint includes its OC-softmax loss (the scoring centre)")
        return weights_fingerprint([model.asv_model, model.cm_model, model.backend, loss])
    return weights_fingerprint([model])


@dataclass(frozen=True)
class Decision:
    """Accept when `score` is above `threshold`: the dev minimum of `metric` (`dev_value`)."""
    score: str  # "sasv", "cm" or "asv"
    threshold: float
    metric: str
    dev_value: float

    def accept(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.threshold


@dataclass(frozen=True)
class SystemCalibration:
    """Everything `calibration.json` holds; `calibrations` has an entry per score that could be fitted."""
    system: str
    weights_sha256: str
    prior: float
    calibrations: dict[str, Calibration]
    decision: Decision | None
    notes: dict[str, str] = field(default_factory=dict)  # score -> why it has no calibration
    checkpoint: str = ""
    fitted_on: str = ""

    def llr(self, score: str, values: np.ndarray) -> np.ndarray | None:
        """Calibrated log-likelihood ratios of `values` (scores of kind `score`), or None without a calibration."""
        calibration = self.calibrations.get(score)
        return None if calibration is None else calibration.log_odds(values)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "system": self.system, "weights_sha256": self.weights_sha256,
                "checkpoint": self.checkpoint, "fitted_on": self.fitted_on, "prior": self.prior,
                "llr": "scale * score + offset", "directions": {s: DIRECTIONS[s] for s in SCORES},
                "calibrations": {s: c.as_dict() for s, c in self.calibrations.items()},
                "notes": dict(self.notes),
                "decision": None if self.decision is None else {
                    "score": self.decision.score, "threshold": self.decision.threshold,
                    "metric": self.decision.metric, "dev_value": self.decision.dev_value,
                    "rule": "accept when score > threshold"}}


# ------------------------------------------------------------------ fitting


def _score_classes(scored: ScoredTrials, score: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(accepted-class scores, rejected-class scores) of `score` in `scored` (finite, cm per utterance)."""
    values = getattr(scored, score)
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    if score == "cm":
        if scored.utterance is not None:  # a test utterance is in several trials: count it once
            _, first = np.unique(scored.utterance, return_index=True)
            once = np.zeros(len(values), dtype=bool)
            once[first] = True
            keep &= once
        positive = np.asarray(scored.cm_keys) == "bonafide"
    else:
        if scored.asv_keys is None:
            return None
        keys = np.asarray(scored.asv_keys)
        positive = keys == "target"
        if score == "asv":
            keep &= keys != "spoof"
    return values[keep & positive], values[keep & ~positive]


def fit_system_calibration(scored: ScoredTrials, *, system: str, decision_score: str, decision_metric: str,
                           prior: float, weights_sha256: str, checkpoint: str = "", fitted_on: str = "",
                           warn: Callable[[str], None] | None = None) -> SystemCalibration:
    """Fit every score `scored` holds to LLRs, and the decision threshold of `decision_score`.

    A score whose two classes a threshold separates (or that lacks a class) gets no calibration: a note
    says why and `warn` is told; its raw scores stay usable, its LLRs are not given."""
    calibrations: dict[str, Calibration] = {}
    notes: dict[str, str] = {}
    for score in SCORES:
        classes = _score_classes(scored, score)
        if classes is None:
            continue
        try:
            calibrations[score] = fit_logistic(*classes, prior, what=f"dev {score} scores", classes=CLASSES[score])
        except FusionError as error:
            notes[score] = str(error)
            if warn is not None:
                warn(f"warning: no {score} calibration: {error}")
    threshold, value = decision_threshold(scored, decision_score, decision_metric)
    return SystemCalibration(system=system, weights_sha256=weights_sha256, prior=float(prior),
                             calibrations=calibrations, notes=notes, checkpoint=checkpoint, fitted_on=fitted_on,
                             decision=Decision(decision_score, float(threshold), decision_metric, float(value)))


def _cost_model(metric: str):
    return ADCF_ASVSPOOF5 if metric == "a_dcf" else ADCF_DEFAULT


def _accept_rule_points(scores: np.ndarray) -> np.ndarray:
    """Every threshold the rule "accept when score > threshold" can realise on `scores`: just below the lowest
    (accept all), then each distinct score. A per-sample sweep (metrics/eer.py, metrics/adcf.py) also has points
    inside a group of tied scores, which no threshold gives; the decision is chosen among these instead."""
    distinct = np.unique(scores)
    return np.concatenate(([np.nextafter(distinct[0], -np.inf)], distinct))


def _rejected_fraction(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per threshold, the fraction of `scores` at or below it (rejected by the rule)."""
    return np.searchsorted(np.sort(scores), thresholds, side="right") / scores.size


def decision_threshold(scored: ScoredTrials, score: str, metric: str) -> tuple[float, float]:
    """(threshold, metric value) at the dev minimum of `metric` over the thresholds the decision rule can
    realise on the scores of kind `score`, so that accepting the dev scores above the threshold gives exactly
    that value (ties included). The EER is the sweep's (aasist's compute_eer): the point where miss and
    false-alarm rates are closest, their mean."""
    classes = _score_classes(scored, score)
    if classes is None:
        raise ValueError(f"no {score} scores to set a decision threshold on")
    if metric in ("min_a_dcf", "a_dcf"):
        values = np.asarray(scored.sasv, dtype=np.float64)
        keep = np.isfinite(values)
        values, keys = values[keep], np.asarray(scored.asv_keys)[keep]
        thresholds = _accept_rule_points(values)
        p_miss, p_fa_nontarget, p_fa_spoof = (
            _rejected_fraction(values[keys == key], thresholds) if key == "target" else
            1.0 - _rejected_fraction(values[keys == key], thresholds) for key in ("target", "nontarget", "spoof"))
        curve = _cost_model(metric).normalised(p_miss, p_fa_nontarget, p_fa_spoof)
        index = int(np.argmin(curve))
        return float(thresholds[index]), float(curve[index])
    if metric in ("sasv_eer", "eer"):
        positive, negative = classes
        thresholds = _accept_rule_points(np.concatenate(classes))
        miss = _rejected_fraction(positive, thresholds)
        false_alarm = 1.0 - _rejected_fraction(negative, thresholds)
        index = int(np.argmin(np.abs(miss - false_alarm)))
        return float(thresholds[index]), float((miss[index] + false_alarm[index]) / 2)
    raise ValueError(f"no decision threshold for metric {metric!r}; expected one of {', '.join(DECISION_METRICS)}")


# ------------------------------------------------------------------ calibration loss on eval


def calibration_metrics(calibration: SystemCalibration, scored: ScoredTrials) -> dict[str, dict[str, Any]]:
    """The calibration loss of `scored` (eval scores) under `calibration` (fitted on dev), per score:
    min_dcf / act_dcf at the calibration prior and min_cllr / cllr (bits) of the LLRs; for the decision's
    score its dev threshold and, on SASV scores, min_a_dcf / act_a_dcf (the a-DCF of accepting the trials
    above the threshold, default costs; with a decision on ASVspoof 5's a_dcf also a_dcf / act_a_dcf_track2
    with its costs), else the eval eer and the miss and false-alarm
    rates at the threshold. A score whose eval trials lack a class gets {"note": why}."""
    block: dict[str, dict[str, Any]] = {}
    prior = calibration.prior
    for score, fit in calibration.calibrations.items():
        classes = _score_classes(scored, score)
        if classes is None:
            continue
        try:
            values = np.concatenate(classes)
            labels = np.concatenate([np.ones(classes[0].size, dtype=int), np.zeros(classes[1].size, dtype=int)])
            llr = fit.log_odds(values)
            block[score] = {"prior": prior, "min_dcf": min_dcf_at(values, labels, prior),
                            "act_dcf": act_dcf(llr, labels, prior), "min_cllr": min_cllr(values, labels),
                            "cllr": cllr(llr, labels)}
        except MetricError as error:
            block[score] = {"note": f"eval {score} scores: {error}"}
    decision = calibration.decision
    if decision is not None and _score_classes(scored, decision.score) is not None:
        entry = block.setdefault(decision.score, {})
        entry.update(threshold=decision.threshold, decision_metric=decision.metric)
        try:
            if decision.score == "sasv":
                values = np.asarray(scored.sasv, dtype=np.float64)
                keep = np.isfinite(values)
                keys = np.asarray(scored.asv_keys)[keep]
                # The keys keep the cost models of metrics_eval.json's: min_a_dcf the a_dcf package's default
                # costs, a_dcf ASVspoof 5 Track 2's (given when the decision is set on it).
                entry.update(min_a_dcf=adcf_curve(values[keep], keys, ADCF_DEFAULT).min_adcf,
                             act_a_dcf=adcf_at_threshold(values[keep], keys, decision.threshold, ADCF_DEFAULT))
                if decision.metric == "a_dcf":
                    entry.update(a_dcf=adcf_curve(values[keep], keys, ADCF_ASVSPOOF5).min_adcf,
                                 act_a_dcf_track2=adcf_at_threshold(values[keep], keys, decision.threshold,
                                                                    ADCF_ASVSPOOF5))
            else:
                positive, negative = _score_classes(scored, decision.score)
                entry.update(eer=compute_eer(positive, negative)[0],
                             miss_rate=float(np.mean(positive <= decision.threshold)),
                             false_alarm_rate=float(np.mean(negative > decision.threshold)))
        except MetricError as error:
            entry["decision_note"] = f"eval {decision.score} scores: {error}"
    return block


def calibration_text(block: dict[str, dict[str, Any]]) -> str:
    """One line of `calibration_metrics`: actual vs minimum costs per score."""
    parts = []
    for score in SCORES:
        entry = block.get(score)
        if not entry:
            continue
        if "act_dcf" in entry:
            parts.append(f"{score} actDCF {entry['act_dcf']:.4f} vs minDCF {entry['min_dcf']:.4f} "
                         f"(prior {entry['prior']:g}), Cllr {entry['cllr']:.4f} vs minCllr {entry['min_cllr']:.4f}")
        if "act_a_dcf_track2" in entry:
            parts.append(f"{score} a-DCF (ASVspoof 5) at the dev threshold {entry['act_a_dcf_track2']:.4f} vs min "
                         f"{entry['a_dcf']:.4f}")
        if "act_a_dcf" in entry:
            parts.append(f"{score} a-DCF at the dev threshold {entry['act_a_dcf']:.4f} vs min a-DCF "
                         f"{entry['min_a_dcf']:.4f}")
        if "miss_rate" in entry:
            parts.append(f"{score} at the dev threshold miss {100 * entry['miss_rate']:.2f}% / false alarm "
                         f"{100 * entry['false_alarm_rate']:.2f}% (EER {100 * entry['eer']:.2f}%)")
    return "; ".join(parts)


# ------------------------------------------------------------------ the file


def write_calibration(path: str | Path, calibration: SystemCalibration) -> None:
    """`calibration.json`, written atomically."""
    write_text(path, json_text(calibration.as_dict()))


def _number(data: dict, key: str, path: Path, where: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise CalibrationFileError(f"{path}: {where}{key} is {value!r}, not a finite number")
    return float(value)


def read_calibration(path: str | Path) -> SystemCalibration:
    """A `calibration.json`; anything malformed is one CalibrationFileError naming the file and the key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise CalibrationFileError(f"{path}: cannot read the calibration file ({error})") from None
    except json.JSONDecodeError as error:
        raise CalibrationFileError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationFileError(f"{path}: not a calibration file of this toolkit (format is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CalibrationFileError(f"{path}: calibration file version {data.get('version')!r}; this toolkit "
                                   f"reads version {VERSION}")
    fitted = data.get("calibrations")
    if not isinstance(fitted, dict) or not set(fitted) <= set(SCORES):
        raise CalibrationFileError(f"{path}: calibrations must map some of {', '.join(SCORES)} to their fits")
    calibrations = {}
    for score, values in fitted.items():
        if not isinstance(values, dict):
            raise CalibrationFileError(f"{path}: calibrations.{score} is not an object")
        where = f"calibrations.{score}."
        calibrations[score] = Calibration(
            scale=_number(values, "scale", path, where), offset=_number(values, "offset", path, where),
            prior=_number(values, "prior", path, where), n_positive=int(_number(values, "n_positive", path, where)),
            n_negative=int(_number(values, "n_negative", path, where)),
            iterations=int(_number(values, "iterations", path, where)))
    decision = data.get("decision")
    if decision is not None:
        if not isinstance(decision, dict) or decision.get("score") not in SCORES:
            raise CalibrationFileError(f"{path}: decision.score must be one of {', '.join(SCORES)}")
        decision = Decision(decision["score"], _number(decision, "threshold", path, "decision."),
                            str(decision.get("metric", "")), _number(decision, "dev_value", path, "decision."))
    if not isinstance(data.get("weights_sha256"), str):
        raise CalibrationFileError(f"{path}: weights_sha256 is missing")
    return SystemCalibration(system=str(data.get("system", "")), weights_sha256=data["weights_sha256"],
                             prior=_number(data, "prior", path, ""), calibrations=calibrations, decision=decision,
                             notes={str(k): str(v) for k, v in (data.get("notes") or {}).items()},
                             checkpoint=str(data.get("checkpoint", "")), fitted_on=str(data.get("fitted_on", "")))


def calibration_beside(checkpoint: str | Path, weights_sha256: str, warn: Callable[[str], None]
                       ) -> SystemCalibration | None:
    """The calibration of `checkpoint`'s weights: `calibration.json` in its folder when it was fitted for the
    same weights. Missing, or fitted for other weights: `warn` is told once and None returned (raw scores
    only, no LLRs or decisions). A malformed file is an error: its numbers cannot be trusted."""
    path = Path(checkpoint).parent / CALIBRATION_FILE
    if not path.is_file():
        warn(f"warning: no {CALIBRATION_FILE} beside {checkpoint}: raw scores only (no LLRs, no decisions)")
        return None
    calibration = read_calibration(path)
    if calibration.weights_sha256 != weights_sha256:
        warn(f"warning: {path} was fitted for other weights than those of {checkpoint} "
             f"({calibration.checkpoint or 'another checkpoint'}): raw scores only (no LLRs, no decisions)")
        return None
    return calibration
