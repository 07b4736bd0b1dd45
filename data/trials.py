"""Random SASV training trials, drawn as in the original dataloaders.

Each trial is a pure function of (seed, epoch, index): resuming, changing the
number of DataLoader workers or sharding over DDP ranks draws the same trials.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.protocols import ProtocolError

TARGET_BONAFIDE, NONTARGET_BONAFIDE, TARGET_SPOOF, NONTARGET_SPOOF, ZERO_EFFORT = range(5)


@dataclass(frozen=True)
class TrainTrial:
    enrollment: str
    test: str
    label: int  # 0 = target bona fide, 1 = any other trial
    kind: int
    enrollment_speaker: str = ""
    test_speaker: str = ""  # "" when the test utterance is spoofed


class TrialSampler:
    """Draws (enrollment, test, label) triples from speaker -> {bonafide, spoof} lists.

    `four_class` (joint configs): target bona fide, nontarget bona fide, target
    spoof, nontarget spoof with equal odds. `two_class` (fixed configs): half
    target bona fide; the other half split between zero-effort nontargets and
    spoofs of the enrolled speaker. `bonafide_speakers` extends the speakers
    used for bona fide trials (FAD bona fide); spoof trials use `speakers`.
    """

    def __init__(self, speakers: dict[str, dict[str, list[str]]], mode: str,
                 bonafide_speakers: dict[str, dict[str, list[str]]] | None = None) -> None:
        if mode not in ("four_class", "two_class"):
            raise ValueError(f"unknown trial sampling {mode!r}; expected four_class or two_class")
        self.mode = mode
        pool = dict(speakers)
        for name, lists in (bonafide_speakers or {}).items():
            merged = pool.get(name, {"bonafide": [], "spoof": []})
            pool[name] = {"bonafide": merged["bonafide"] + lists["bonafide"], "spoof": merged["spoof"]}
        self._bonafide = {s: sorted(v["bonafide"]) for s, v in sorted(pool.items()) if v["bonafide"]}
        self._enrollable = sorted(s for s, v in self._bonafide.items() if len(v) >= 2)
        self._bona_speakers = sorted(self._bonafide)
        self._spoof = {s: sorted(v["spoof"]) for s, v in sorted(speakers.items()) if v["spoof"] and v["bonafide"]}
        self._spoof_speakers = sorted(self._spoof)
        self._spoof_owner_bona = {s: sorted(speakers[s]["bonafide"]) for s in self._spoof_speakers}
        if not self._enrollable:
            raise ProtocolError("training protocol: no speaker has two bona fide utterances for a target trial")
        if len(self._bona_speakers) < 2:
            raise ProtocolError("training protocol: nontarget trials need at least two speakers with bona fide speech")
        if not self._spoof_speakers:
            raise ProtocolError("training protocol: no speaker has both bona fide and spoofed utterances")

    def draw(self, rng: np.random.Generator) -> TrainTrial:
        if self.mode == "four_class":
            kind = int(rng.integers(4))
        else:
            kind = TARGET_BONAFIDE if rng.integers(2) == 0 else (ZERO_EFFORT if rng.integers(2) == 0 else TARGET_SPOOF)
        if kind == TARGET_BONAFIDE:
            speaker = self._enrollable[rng.integers(len(self._enrollable))]
            first, second = rng.choice(len(self._bonafide[speaker]), size=2, replace=False)
            utts = self._bonafide[speaker]
            return TrainTrial(utts[first], utts[second], 0, kind, speaker, speaker)
        if kind in (NONTARGET_BONAFIDE, ZERO_EFFORT):
            first, second = rng.choice(len(self._bona_speakers), size=2, replace=False)
            enrolled, other = self._bona_speakers[first], self._bona_speakers[second]
            return TrainTrial(self._pick(self._bonafide[enrolled], rng), self._pick(self._bonafide[other], rng), 1,
                              kind, enrolled, other)
        if kind == TARGET_SPOOF:
            speaker = self._spoof_speakers[rng.integers(len(self._spoof_speakers))]
            return TrainTrial(self._pick(self._spoof_owner_bona[speaker], rng), self._pick(self._spoof[speaker], rng),
                              1, kind, speaker)
        # nontarget spoof: spoof of another speaker than the enrolled one
        attacker = self._spoof_speakers[rng.integers(len(self._spoof_speakers))]
        others = [s for s in self._bona_speakers if s != attacker]
        enrolled = others[rng.integers(len(others))]
        return TrainTrial(self._pick(self._bonafide[enrolled], rng), self._pick(self._spoof[attacker], rng), 1, kind,
                          enrolled)

    @property
    def speakers(self) -> list[str]:
        """Every speaker with bona fide training speech, sorted: the classes of a speaker loss."""
        return list(self._bona_speakers)

    def utterances(self) -> list[str]:
        """Every utterance that `draw` can return, as enrollment or test, sorted."""
        pools = [*self._bonafide.values(), *self._spoof.values(), *self._spoof_owner_bona.values()]
        return sorted({utterance for pool in pools for utterance in pool})

    @staticmethod
    def _pick(items: list[str], rng: np.random.Generator) -> str:
        return items[rng.integers(len(items))]


def trial_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one trial: independent of workers, ranks and resumption."""
    return np.random.default_rng([seed, epoch, index])
