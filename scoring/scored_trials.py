"""`ScoredTrials`: the one record of scored trials, whatever produced them (the SASV scorer, a CM or ASV scoring
pass, system b2's back-end, or the ASVspoof 5 package's files read by scoring.asvspoof5_files).

It holds numpy only (no torch), so that evaluate.py and the report load fast.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

# Per-trial arrays: `subset` cuts all of them alike.
_PER_TRIAL = ("cm_keys", "asv_keys", "sasv", "cm", "asv", "asv_org", "attack", "codec", "speaker", "utterance",
              "skipped")
_NO_FILES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class ScoredTrials:
    """Scores and keys of one trial list, aligned; a part is None when the system or the files do not have it.

    `asv_keys` (target / nontarget / spoof) come with SASV scores, `cm_keys` (bonafide / spoof) always;
    `attack` and `codec` are per-trial condition labels, `speaker` and `utterance` the trial's ids (None: not
    given). Scores keep the dtype they were produced in (float32 from a model), so that metrics computed on
    them are those of the scores as written.

    A trial not scored (on_bad_audio: skip: bad audio, or no embedding) either stays in the arrays with the
    score nan and is marked in `skipped`, or has been cut out (`kept()`) and is counted in `n_dropped`;
    `n_skipped` counts both. `bad_audio` names the files behind them (file -> reason), or is None where the
    files are not known (scores from exported embeddings: save_asv_score.py, system b2)."""

    source: str
    cm_keys: np.ndarray
    asv_keys: np.ndarray | None = None
    sasv: np.ndarray | None = None
    cm: np.ndarray | None = None
    asv: np.ndarray | None = None
    attack: np.ndarray | None = None
    codec: np.ndarray | None = None
    asv_org: np.ndarray | None = None  # the organisers' ASV scores (Track 2 --asv_org), for the min t-DCF
    speaker: np.ndarray | None = None  # the claimed speaker of each trial (SASV and ASV trials)
    utterance: np.ndarray | None = None  # the test utterance of each trial
    skipped: np.ndarray | None = None  # bool per trial: scored nan and left out of the metrics
    bad_audio: Mapping[str, str] | None = field(default_factory=dict)  # None: not known here (embeddings)
    n_dropped: int = 0  # skipped trials already cut out of the arrays

    def __len__(self) -> int:
        return len(self.cm_keys)

    @property
    def n_skipped(self) -> int:
        """Trials left out of the metrics: those marked in `skipped` and those already cut out."""
        return self.n_dropped + (0 if self.skipped is None else int(np.count_nonzero(self.skipped)))

    def subset(self, keep: np.ndarray) -> ScoredTrials:
        """The trials where `keep` is True (every per-trial array cut alike); the others count as dropped."""
        cut = {name: None if getattr(self, name) is None else getattr(self, name)[keep] for name in _PER_TRIAL}
        return replace(self, **cut, n_dropped=self.n_dropped + int(np.size(keep) - np.count_nonzero(keep)))

    def kept(self) -> ScoredTrials:
        """The trials the metrics are computed on: the skipped ones cut out (and counted in `n_dropped`)."""
        if self.skipped is None:
            return self
        return replace(self.subset(~np.asarray(self.skipped, dtype=bool)), skipped=None)

    def as_float64(self) -> ScoredTrials:
        """The same trials with every score part in float64 (the exact values of float32 scores)."""
        parts = {name: None if getattr(self, name) is None else np.asarray(getattr(self, name), dtype=np.float64)
                 for name in ("sasv", "cm", "asv", "asv_org")}
        return replace(self, **parts)

    @classmethod
    def of_sasv_trials(cls, source: str, trials: Sequence[Any], sasv: np.ndarray, *,
                       skipped: np.ndarray | None = None, bad_audio: Mapping[str, str] | None = _NO_FILES,
                       cm: np.ndarray | None = None, asv: np.ndarray | None = None,
                       codec: Sequence[str] | None = None) -> ScoredTrials:
        """The scores of SASV trials (data.protocols.SASVTrial, trial order): the SASV score per trial and, when
        the system has them, the CM and ASV scores of the same trials; `skipped` trials (nan) stay marked."""
        asv_keys = np.array([trial.key for trial in trials], dtype=str)
        return cls(source=source, cm_keys=np.where(asv_keys == "spoof", "spoof", "bonafide"), asv_keys=asv_keys,
                   sasv=np.asarray(sasv), cm=None if cm is None else np.asarray(cm),
                   asv=None if asv is None else np.asarray(asv),
                   attack=np.array([trial.attack for trial in trials], dtype=str),
                   codec=None if codec is None else np.asarray(codec, dtype=str),
                   speaker=np.array([trial.speaker for trial in trials], dtype=str),
                   utterance=np.array([trial.utterance for trial in trials], dtype=str),
                   skipped=None if skipped is None else np.asarray(skipped, dtype=bool),
                   bad_audio=None if bad_audio is None else dict(sorted(bad_audio.items())))
