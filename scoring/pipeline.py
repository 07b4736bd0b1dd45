"""The one evaluation pipeline of SASV, CM and ASV scores, for main.py's tasks and the save_*.py scripts alike.

A scoring pass (scoring.sasv.SASVScorer, `score_cm`, scoring.verification.score_trials, system b2's
back-end, or exported embeddings) gives a `ScoredTrials` of every trial in list order, the skipped ones
(on_bad_audio: skip) scored nan and marked. `evaluate_sasv`, `evaluate_cm` and `evaluate_asv` then do the
same for every caller, in one order: refuse NaN/inf scores that no bad audio explains, write the score
file(s), warn about the skipped trials (one `bad_audio_summary` line), compute the metrics, write the
report and add its headline metric (ASVspoof 5: a_dcf, the corpus adapter's headline["sasv"]), and return
the metrics with the counts under the key names listed in docs/outputs.md. Only the `Writer` differs: the
tasks write into the experiment folder (scores/, report/; the trainer turns the dev metrics into
metrics.csv rows), the scripts their score files and report_<part>/ folders.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.protocols import CMEntry
from scoring.countermeasure import cm_logits, cm_metrics
from scoring.extraction import Extraction, count_unscored
from scoring.report import primary_metric
from scoring.sasv import sasv_metrics
from scoring.scored_trials import ScoredTrials

Warn = Callable[[str], None]
SHOWN = 3  # bad files named in a warning


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass
class Writer:
    """Where an evaluation's outputs go: the one part that differs between the tasks and the scripts."""

    scores: Callable[[ScoredTrials], None]  # the score file(s): every trial in list order, nan for skipped ones
    report: Callable[[ScoredTrials], dict[str, Any]] | None = None  # the report folder (None: no report)
    warn: Warn = _stderr


def bad_audio_summary(what: str, n_skipped: int, n_items: int, items: str, bad_audio: Mapping[str, str] | None, *,
                      cause: str = "", consequence: str = "score nan, left out of the metrics") -> str:
    """The one warning line for items left out under on_bad_audio: skip, e.g.
    `warning: dev: 3 of 96 trials skipped (on_bad_audio: skip; score nan, left out of the metrics) because of
    1 bad audio file(s): <file>: <reason>`. `bad_audio` names the files (the first SHOWN, then how many
    more); where they are not known here (None: scores from exported embeddings) `cause` says why."""
    if bad_audio is None:
        because = f"because {cause}"
    else:
        files = sorted(bad_audio)
        listed = "; ".join(f"{path}: {bad_audio[path]}" for path in files[:SHOWN])
        more = f"; and {len(files) - SHOWN} more" if len(files) > SHOWN else ""
        because = f"because of {len(files)} bad audio file(s): {listed}{more}"
    return f"warning: {what}: {n_skipped} of {n_items} {items} skipped (on_bad_audio: skip; {consequence}) {because}"


def skip_counts(scored: ScoredTrials, items: str) -> dict[str, Any]:
    """`n_<items>`, `n_skipped_<items>` and, where the files are known, `skipped_audio` (file -> reason)."""
    counts: dict[str, Any] = {f"n_{items}": len(scored) + scored.n_dropped, f"n_skipped_{items}": scored.n_skipped}
    if scored.bad_audio is not None:
        counts["skipped_audio"] = dict(sorted(scored.bad_audio.items()))
    return counts


def _warn_skipped(scored: ScoredTrials, what: str, items: str, writer: Writer, cause: str) -> None:
    if scored.n_skipped:
        writer.warn(bad_audio_summary(what, scored.n_skipped, len(scored) + scored.n_dropped, items, scored.bad_audio,
                                      cause=cause))


# ------------------------------------------------------------------ SASV


def evaluate_sasv(scored: ScoredTrials, what: str, writer: Writer, *, cause: str = "") -> dict[str, Any]:
    """SASV-EER, SV-EER, SPF-EER, min a-DCF (and, with a report that leads with it, ASVspoof 5's a_dcf) of
    the trials not skipped, then n_trials, n_skipped_trials and skipped_audio."""
    # First: a NaN/inf score of a trial not skipped (the model diverged) is refused before anything is written.
    metrics: dict[str, Any] = sasv_metrics(scored.sasv, scored.asv_keys.tolist(), scored.skipped)
    writer.scores(scored)
    _warn_skipped(scored, what, "trials", writer, cause)
    report = writer.report(scored) if writer.report is not None else None
    if report:  # {} on the ranks that write nothing
        metrics.update(primary_metric(report))
    return {**metrics, **skip_counts(scored, "trials")}


def dev_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's result as the trainer's dev metrics: the metrics, and the skipped count as
    `skipped_trials` (metrics.csv: dev_skipped_trials); no per-file details."""
    row = {name: value for name, value in result.items() if not name.startswith("n_") and name != "skipped_audio"}
    return {**row, "skipped_trials": result["n_skipped_trials"]}


# ------------------------------------------------------------------ CM


def score_cm(network: Callable[[torch.Tensor], torch.Tensor], entries: Sequence[CMEntry], paths: list[Path],
             samples: int, options: Extraction, what: str, desc: str) -> tuple[ScoredTrials, torch.Tensor]:
    """The CM scores (bona fide logit) of the utterances of a CM list, and the logits themselves ([N, 2]);
    with on_bad_audio: skip a bad file's utterance scores nan and is marked. Any other nan is a ScoringError."""
    bad_audio: dict[str, str] = {}
    logits = cm_logits(network, paths, samples, options, desc=desc, bad_audio=bad_audio)
    scores = logits[:, 1].numpy()  # bona fide logit: higher = bona fide
    needs_bad = np.array([str(path) in bad_audio for path in paths], dtype=bool)
    count_unscored(scores, bad_audio, int(needs_bad.sum()), what, items="utterances")
    scored = ScoredTrials(source="", cm_keys=np.array([entry.key for entry in entries], dtype=str), cm=scores,
                          attack=np.array([entry.attack for entry in entries], dtype=str),
                          utterance=np.array([entry.utterance for entry in entries], dtype=str),
                          skipped=~np.isfinite(scores), bad_audio=dict(sorted(bad_audio.items())))
    return scored, logits


def evaluate_cm(scored: ScoredTrials, what: str, writer: Writer, asv: Mapping[str, np.ndarray] | None = None,
                selected: Sequence[bool] | None = None) -> dict[str, Any]:
    """CM EER and its threshold, min t-DCF (with target / nontarget / spoof ASV scores; None without, or with
    `min_tdcf_note` when undefined) of the utterances not skipped, then n_utterances, n_skipped_utterances
    and skipped_audio. `selected`: the metrics are of these utterances only (a CM evaluation set's headline
    subset, the corpus adapter's `headline_selection`; `n_selected_utterances` counts them), while the
    score files and the counts hold every utterance."""
    writer.scores(scored)
    _warn_skipped(scored, what, "utterances", writer, "")
    measured = scored if selected is None else scored.subset(np.asarray(selected, dtype=bool))
    result = cm_metrics(measured.cm, measured.cm_keys == "bonafide", asv)
    if selected is not None:
        result["n_selected_utterances"] = len(measured)
    return {**result, **skip_counts(scored, "utterances")}


# ------------------------------------------------------------------ ASV


def asv_scored(scores: np.ndarray, keys: Sequence[str], skipped: np.ndarray, bad_audio: Mapping[str, str] | None
               ) -> ScoredTrials:
    """ASV scores of trials (keys target / nontarget, or spoof) as ScoredTrials."""
    asv_keys = np.asarray(keys, dtype=str)
    return ScoredTrials(source="", cm_keys=np.where(asv_keys == "spoof", "spoof", "bonafide"), asv_keys=asv_keys,
                        asv=np.asarray(scores), skipped=np.asarray(skipped, dtype=bool),
                        bad_audio=None if bad_audio is None else dict(sorted(bad_audio.items())))


def evaluate_asv(scored: ScoredTrials, what: str, writer: Writer,
                 metrics: Callable[[ScoredTrials], dict[str, Any]], *, cause: str = "") -> dict[str, Any]:
    """`metrics` of the ASV scores (the function sees every trial; it leaves out the skipped ones), then
    n_trials, n_skipped_trials and, where the files are known, skipped_audio."""
    writer.scores(scored)
    _warn_skipped(scored, what, "trials", writer, cause)
    return {**metrics(scored), **skip_counts(scored, "trials")}
