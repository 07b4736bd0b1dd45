"""scoring/pipeline.py: the one evaluation path of main.py's tasks and the save_*.py scripts, on hand-made scores."""
from __future__ import annotations

import numpy as np
import pytest

from data.protocols import CMEntry, SASVTrial
from scoring.extraction import ScoringError
from scoring.pipeline import Writer, bad_audio_summary, dev_metrics, evaluate_cm, evaluate_sasv
from scoring.scored_trials import ScoredTrials

# 2 target, 2 nontarget, 2 spoof trials; the last target's audio is bad (scored nan).
TRIALS = [SASVTrial("S1", "U1", "bonafide", "target"), SASVTrial("S1", "U2", "bonafide", "target"),
          SASVTrial("S1", "U3", "bonafide", "nontarget"), SASVTrial("S2", "U4", "bonafide", "nontarget"),
          SASVTrial("S1", "U5", "A01", "spoof"), SASVTrial("S2", "U6", "A02", "spoof")]
SCORES = np.array([3.0, np.nan, -1.0, -2.0, -3.0, -4.0], dtype=np.float32)
BAD = {"/d/U2.flac": "empty file"}


def _scored(scores: np.ndarray = SCORES) -> ScoredTrials:
    return ScoredTrials.of_sasv_trials("", TRIALS, scores, skipped=np.isnan(scores), bad_audio=BAD)


class Recorder:
    """A writer that records what the pipeline hands it, in order."""

    def __init__(self, report: dict | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self._report = report

    def writer(self) -> Writer:
        report = None if self._report is None else lambda scored: self.calls.append(("report", scored)) or self._report
        return Writer(scores=lambda scored: self.calls.append(("scores", scored)), report=report,
                      warn=lambda text: self.calls.append(("warn", text)))


def test_sasv_evaluation_counts_skips_warns_once_and_keeps_every_trial_for_the_writer():
    recorder = Recorder()
    result = evaluate_sasv(_scored(), "dev", recorder.writer())
    assert [name for name, _ in recorder.calls] == ["scores", "warn"]
    written = recorder.calls[0][1]
    assert len(written) == 6 and np.isnan(written.sasv[1]) and written.utterance.tolist()[1] == "U2"
    assert result["sasv_eer"] == result["sv_eer"] == result["spf_eer"] == 0.0  # separated once U2 is out
    assert (result["n_trials"], result["n_skipped_trials"], result["skipped_audio"]) == (6, 1, BAD)
    assert "a_dcf" not in result
    warning = recorder.calls[1][1]
    assert warning.startswith("warning: dev: 1 of 6 trials skipped (on_bad_audio: skip;") and "/d/U2.flac" in warning
    assert dev_metrics(result) == {"sasv_eer": 0.0, "sv_eer": 0.0, "spf_eer": 0.0,
                                   "min_a_dcf": result["min_a_dcf"], "skipped_trials": 1}


def test_sasv_evaluation_adds_the_headline_metric_of_the_report():
    report = {"metrics": ["a_dcf", "sasv_eer"], "pooled": {"a_dcf": 0.25}}
    recorder = Recorder(report)
    result = evaluate_sasv(_scored(), "eval", recorder.writer())
    assert [name for name, _ in recorder.calls] == ["scores", "warn", "report"]
    assert list(result)[:5] == ["sasv_eer", "sv_eer", "spf_eer", "min_a_dcf", "a_dcf"] and result["a_dcf"] == 0.25


def test_a_nan_that_no_bad_audio_explains_is_refused_before_anything_is_written():
    scores = SCORES.copy()
    scores[0] = np.nan
    scored = ScoredTrials.of_sasv_trials("", TRIALS, scores, skipped=np.array([False, True, False, False, False,
                                                                               False]), bad_audio=BAD)
    recorder = Recorder({"metrics": [], "pooled": {}})
    with pytest.raises(ScoringError, match="NaN/inf"):
        evaluate_sasv(scored, "eval", recorder.writer())
    assert recorder.calls == []


def test_cm_evaluation_counts_utterances():
    entries = [CMEntry("S1", f"U{i}", "-", "bonafide" if i < 3 else "spoof") for i in range(6)]
    scores = np.array([2.0, 1.0, np.nan, -1.0, -2.0, -3.0], dtype=np.float32)
    scored = ScoredTrials(source="", cm_keys=np.array([e.key for e in entries]), cm=scores,
                          utterance=np.array([e.utterance for e in entries]), skipped=np.isnan(scores),
                          bad_audio={"/d/U2.flac": "empty file"})
    recorder = Recorder()
    result = evaluate_cm(scored, "dev epoch 1", recorder.writer())
    assert result["eer"] == 0.0 and result["min_tdcf"] is None
    assert (result["n_utterances"], result["n_skipped_utterances"]) == (6, 1) and "n_skipped_trials" not in result
    assert recorder.calls[1][1].startswith("warning: dev epoch 1: 1 of 6 utterances skipped (on_bad_audio: skip;")


def test_the_summary_names_the_first_files_or_the_cause():
    bad = {f"/d/U{i}.flac": "empty file" for i in range(5)}
    line = bad_audio_summary("eval", 7, 40, "trials", bad)
    assert "because of 5 bad audio file(s): /d/U0.flac: empty file; /d/U1.flac" in line and line.endswith("and 2 more")
    line = bad_audio_summary("eval", 2, 40, "trials", None, cause="they lack an embedding in emb/")
    assert line.endswith("because they lack an embedding in emb/") and "\n" not in line


def test_kept_cuts_the_skipped_trials_and_counts_them():
    scored = _scored()
    kept = scored.kept()
    assert len(kept) == 5 and kept.skipped is None and kept.n_skipped == scored.n_skipped == 1
    assert kept.utterance.tolist() == ["U1", "U3", "U4", "U5", "U6"] and np.isfinite(kept.sasv).all()
    assert kept.as_float64().sasv.dtype == np.float64 and scored.sasv.dtype == np.float32
