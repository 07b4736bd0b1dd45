"""Countermeasure scoring: bona fide logits of utterances, the CM EER and the min t-DCF with ASV scores."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from metrics import MetricError
from metrics.eer import compute_eer
from metrics.tdcf import min_tdcf
from scoring.extraction import Extraction, extract_sharded


def cm_logits(network: Callable[[torch.Tensor], torch.Tensor], paths: list[Path], samples: int, options: Extraction, *,
              desc: str = "CM", bad_audio: dict[str, str] | None = None) -> torch.Tensor:
    """[len(paths), 2] CM logits (index 1: bona fide) of `network`, which maps waveforms to logits;
    rows of bad files are NaN with on_bad_audio: skip."""
    return extract_sharded(paths, samples, {"logits": network}, options, desc=desc, bad_audio=bad_audio)["logits"]


def cm_metrics(scores: np.ndarray, is_bonafide: np.ndarray, asv: Mapping[str, np.ndarray] | None = None) -> dict:
    """CM EER and its threshold (aasist's sweep) of the finite scores (NaN: not scored, bad audio), and the
    min t-DCF (ASVspoof 2019 legacy costs) when target / nontarget / spoof ASV scores are given.

    `min_tdcf` is None without ASV scores, or when the t-DCF is undefined (`min_tdcf_note` says why)."""
    scores, is_bonafide = np.asarray(scores), np.asarray(is_bonafide, dtype=bool)
    finite = np.isfinite(scores)
    bona, spoof = scores[is_bonafide & finite], scores[~is_bonafide & finite]
    eer, threshold = compute_eer(bona, spoof)
    result: dict = {"eer": float(eer), "threshold": float(threshold), "min_tdcf": None}
    if asv is not None:
        asv = {key: values[np.isfinite(values)] for key, values in asv.items()}
        try:
            result["min_tdcf"] = float(min_tdcf(asv["target"], asv["nontarget"], asv["spoof"], bona, spoof))
        except MetricError as error:
            result["min_tdcf_note"] = str(error)
    return result
