"""Synthetic stand-ins for the CM evaluation sets ASVspoof 2021 LA eval, ASVspoof 2021 DF eval and In-the-Wild,
each in its official release layout (what data/corpora/asvspoof2021.py and in_the_wild.py read), side by side::

    root/ASVspoof2021_LA_eval/flac/LA_E_NNNNNNN.flac
    root/ASVspoof2021_DF_eval/flac/DF_E_NNNNNNN.flac
    root/keys/LA/CM/trial_metadata.txt  root/keys/LA/ASV/trial_metadata.txt  root/keys/LA/ASV/ASVTorch_Kaldi/score.txt
    root/keys/DF/CM/trial_metadata.txt
    root/release_in_the_wild/N.wav  root/release_in_the_wild/meta.csv

The audio comes from the 2019 layout's voices and spoofing systems (voices.py, attacks.py): a small pool of
bona fide and spoofed recordings (A07-A19) is synthesised once, and every file is a crop of one of them at its
own level, through its condition's codec (codecs.py's stand-ins, mapped below). Every codec, transmission,
source, vocoder type, subset and speaker of the keys gets both bona fide and spoofed files. The LA ASV keys
pair each bona fide file with its speaker (target) and another speaker (nontarget), each spoof with its
target (spoof); their ASV scores are drawn from three normal distributions, not computed by an ASV system.
The DF attack ids of the VCC sources and the task / team columns are illustrative. Numbers say nothing of
the real sets: the stand-ins exist for tests and the demo.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.corpora.asvspoof2021 import DF_CODECS, DF_SOURCES, LA_ATTACKS, LA_CODECS, LA_TRANSMISSIONS
from runtime.files import atomic_open

# The planners and key writers need numpy only; the synthesis (scipy, soundfile) is imported where audio is made.

LAYOUT = "cm_benchmarks"
LA_FLAC = Path("ASVspoof2021_LA_eval") / "flac"
DF_FLAC = Path("ASVspoof2021_DF_eval") / "flac"
LA_CM_KEYS = Path("keys") / "LA" / "CM" / "trial_metadata.txt"
LA_ASV_KEYS = Path("keys") / "LA" / "ASV" / "trial_metadata.txt"
LA_ASV_SCORES = Path("keys") / "LA" / "ASV" / "ASVTorch_Kaldi" / "score.txt"
DF_CM_KEYS = Path("keys") / "DF" / "CM" / "trial_metadata.txt"
ITW_FOLDER = Path("release_in_the_wild")
# The subset values of the full keys (README: eval / progress / hidden), with their shares of the files.
SUBSET_SHARES = (("eval", 0.6), ("progress", 0.2), ("hidden", 0.2))
# 2021 condition -> a chain of codecs.py stand-ins (id, quality): crude kinds of the same damage.
LA_CODEC_CHAINS = {"none": (), "alaw": (("C09", 3),), "pstn": (("C11", 2),), "g722": (("C02", 3),),
                   "ulaw": (("C09", 2),), "gsm": (("C10", 2),), "opus": (("C08", 2),)}
DF_CODEC_CHAINS = {"nocodec": (), "low_mp3": (("C05", 1),), "high_mp3": (("C05", 3),), "low_m4a": (("C06", 1),),
                   "high_m4a": (("C06", 3),), "low_ogg": (("C01", 1),), "high_ogg": (("C01", 3),),
                   "mp3m4a": (("C05", 2), ("C06", 2)), "oggm4a": (("C01", 2), ("C06", 2))}
# The 2019 systems' waveform generators as the DF keys' vocoder types (A17, A19: filtering, `unknown`).
VOCODER_TYPES = {"A07": "traditional_vocoder", "A08": "neural_vocoder_nonautoregressive",
                 "A09": "traditional_vocoder", "A10": "neural_vocoder_autoregressive", "A11": "traditional_vocoder",
                 "A12": "neural_vocoder_autoregressive", "A13": "waveform_concatenation",
                 "A14": "traditional_vocoder", "A15": "neural_vocoder_autoregressive",
                 "A16": "waveform_concatenation", "A17": "unknown", "A18": "traditional_vocoder", "A19": "unknown"}
DF_SPEAKER_PREFIX = {"asvspoof": "LA_", "vcc2018": "VCC2S", "vcc2020": "VCC2T"}


@dataclass(frozen=True)
class BenchmarkSpec:
    """Sizes of the three stand-ins; the defaults are the demo's, ``tiny()`` the tests'."""

    seed: int = 0
    sample_rate: int = 16000
    n_speakers: int = 8
    la_files: int = 300
    df_files: int = 300
    itw_files: int = 200
    spoof_share: float = 0.75  # LA / DF: most of the real sets are spoofs
    itw_spoof_share: float = 0.4
    pool_bonafide: int = 16
    pool_per_attack: int = 2
    seconds: float = 0.6
    file_seconds: float = 0.5

    @classmethod
    def tiny(cls, seed: int = 0) -> BenchmarkSpec:
        return cls(seed=seed, n_speakers=4, la_files=96, df_files=96, itw_files=40, pool_bonafide=6,
                   pool_per_attack=1, seconds=0.45, file_seconds=0.4)

    def __post_init__(self) -> None:
        if self.n_speakers < 2 or min(self.la_files, self.df_files, self.itw_files) < 2 * self.n_speakers:
            raise ValueError("BenchmarkSpec: need n_speakers >= 2 and at least 2 files per speaker in each set")
        if not 0 < self.spoof_share < 1 or not 0 < self.itw_spoof_share < 1:
            raise ValueError("BenchmarkSpec: the spoof shares must lie strictly between 0 and 1")
        if not 0.3 <= self.file_seconds <= self.seconds:
            raise ValueError("BenchmarkSpec: need 0.3 <= file_seconds <= seconds")

    # the fields a demo / test corpus needs (data.synthetic.corpus._speakers)
    @property
    def n_eval_speakers(self) -> int:
        return self.n_speakers

    n_eval_nontarget_speakers = n_dev_speakers = n_dev_nontarget_speakers = n_train_speakers = 0

    def to_json(self) -> dict:
        return {"layout": LAYOUT, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Trial:
    """One file of a stand-in and its key columns (`attack` None: bona fide)."""

    utterance: str
    speaker: int
    attack: str | None
    conditions: dict
    pool: int = -1  # the pool recording it is cut from


def _classes(n: int, spoof_share: float, rng: np.random.Generator) -> list[bool]:
    n_spoof = min(n - 1, max(1, round(n * spoof_share)))
    return rng.permutation([True] * n_spoof + [False] * (n - n_spoof)).tolist()


def _subsets(n: int, rng: np.random.Generator) -> list[str]:
    counts = [round(n * share) for _, share in SUBSET_SHARES]
    counts[0] = n - sum(counts[1:])
    return rng.permutation([name for (name, _), count in zip(SUBSET_SHARES, counts) for _ in range(count)]).tolist()


def _ids(prefix: str, n: int, rng: np.random.Generator) -> list[str]:
    """Unique random 7-digit ids, as the release's."""
    return [f"{prefix}{number}" for number in (rng.choice(9_000_000, size=n, replace=False) + 1_000_000).tolist()]


def _ranked(classes: list[bool]) -> Iterator[tuple[int, bool, int]]:
    """(index, spoof, k) for each trial: k counts the trials of its class before it, so that conditions cycle
    within each class."""
    seen = {False: 0, True: 0}
    for index, spoof in enumerate(classes):
        yield index, spoof, seen[spoof]
        seen[spoof] += 1


def plan_la(n: int, n_speakers: int, seed: int, spoof_share: float = 0.75) -> list[Trial]:
    """LA trials: class by `spoof_share`; within each class the k-th trial has codec k mod 7, transmission
    (k div 7) mod 4 and (spoofs) attack k mod 13, so that every codec x attack pair appears from 91 spoofs on."""
    rng = np.random.default_rng([seed, 61])
    classes, subsets, ids = _classes(n, spoof_share, rng), _subsets(n, rng), _ids("LA_E_", n, rng)
    trials = []
    for index, spoof, k in _ranked(classes):
        subset = subsets[index]
        trials.append(Trial(ids[index], int(rng.integers(n_speakers)), LA_ATTACKS[k % 13] if spoof else None,
                            {"codec": list(LA_CODECS)[k % 7], "transmission": LA_TRANSMISSIONS[(k // 7) % 4],
                             "trim": "trim" if subset == "hidden" else "notrim", "subset": subset}))
    return trials


def plan_df(n: int, n_speakers: int, seed: int, spoof_share: float = 0.75) -> list[Trial]:
    """DF trials: codec k mod 9, source (k div 9) mod 3 and (spoofs) attack k mod 13 within each class."""
    rng = np.random.default_rng([seed, 62])
    classes, subsets, ids = _classes(n, spoof_share, rng), _subsets(n, rng), _ids("DF_E_", n, rng)
    trials = []
    for index, spoof, k in _ranked(classes):
        subset = subsets[index]
        attack = LA_ATTACKS[k % 13] if spoof else None
        trials.append(Trial(ids[index], int(rng.integers(n_speakers)), attack,
                            {"codec": list(DF_CODECS)[k % 9], "source": DF_SOURCES[(k // 9) % 3],
                             "vocoder": VOCODER_TYPES[attack] if attack else "bonafide",
                             "trim": "trim" if subset == "hidden" else "notrim", "subset": subset}))
    return trials


def plan_itw(n: int, n_speakers: int, seed: int, spoof_share: float = 0.4) -> list[Trial]:
    """In-the-Wild files 0 ... n-1 in a shuffled order; the k-th of each class spoken by speaker k mod n_speakers."""
    rng = np.random.default_rng([seed, 63])
    classes = _classes(n, spoof_share, rng)
    trials = []
    for index, spoof, k in _ranked(classes):
        trials.append(Trial(str(index), k % n_speakers, LA_ATTACKS[k % 13] if spoof else None, {}))
    return trials


# ------------------------------------------------------------------ keys text


def la_speaker(index: int) -> str:
    return f"LA_{index + 1:04d}"


def df_speaker(index: int, source: str) -> str:
    return f"{DF_SPEAKER_PREFIX[source]}{'F' if index % 2 == 0 else 'M'}{index + 1}" if source != "asvspoof" \
        else la_speaker(index)


def itw_speaker(index: int) -> str:
    return f"Speaker {index + 1:02d} Stand-in"  # the release names speakers in full, with spaces


def la_key_lines(trials: list[Trial]) -> list[str]:
    """keys/LA/CM/trial_metadata.txt: `speaker trial codec transmission attack label trim subset`."""
    return [" ".join((la_speaker(t.speaker), t.utterance, t.conditions["codec"], t.conditions["transmission"],
                      t.attack or "bonafide", "spoof" if t.attack else "bonafide", t.conditions["trim"],
                      t.conditions["subset"])) for t in trials]


def la_asv_lines(trials: list[Trial], n_speakers: int, seed: int) -> tuple[list[str], list[str]]:
    """(keys/LA/ASV/trial_metadata.txt, ASVTorch_Kaldi/score.txt): a bona fide file against its speaker
    (target) and the next one (nontarget), a spoof against its target; scores drawn per label."""
    rng = np.random.default_rng([seed, 64])
    means = {"target": 4.0, "nontarget": -4.0, "spoof": 1.5}
    keys, scores = [], []
    for trial in trials:
        claims = [(trial.speaker, "spoof")] if trial.attack else \
            [(trial.speaker, "target"), ((trial.speaker + 1) % n_speakers, "nontarget")]
        for speaker, label in claims:
            keys.append(" ".join((la_speaker(speaker), trial.utterance, trial.conditions["codec"],
                                  trial.conditions["transmission"], trial.attack or "bonafide", label,
                                  trial.conditions["trim"], trial.conditions["subset"])))
            scores.append(f"{la_speaker(speaker)} {trial.utterance} {means[label] + 2.0 * rng.standard_normal():.6f}")
    return keys, scores


def df_key_lines(trials: list[Trial]) -> list[str]:
    """keys/DF/CM/trial_metadata.txt: 13 columns; the VCC sources' attack / task / team ids illustrative."""
    lines = []
    for t in trials:
        source = t.conditions["source"]
        attack = "bonafide" if t.attack is None else t.attack if source == "asvspoof" else \
            f"{'Task1' if source == 'vcc2020' else 'N'}-{t.attack}"
        vcc = ("Task1", f"team{int(t.attack[1:]) if t.attack else 0:02d}", "F-F", "eng") \
            if source == "vcc2020" and t.attack else ("-", "-", "-", "-")
        lines.append(" ".join((df_speaker(t.speaker, source), t.utterance, t.conditions["codec"], source, attack,
                               "spoof" if t.attack else "bonafide", t.conditions["trim"], t.conditions["subset"],
                               t.conditions["vocoder"], *vcc)))
    return lines


def itw_meta_text(trials: list[Trial]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("file", "speaker", "label"))
    for t in trials:
        writer.writerow((f"{t.utterance}.wav", itw_speaker(t.speaker), "spoof" if t.attack else "bona-fide"))
    return buffer.getvalue()


# ------------------------------------------------------------------ audio


def _pool(spec: BenchmarkSpec) -> tuple[list[np.ndarray], dict[tuple[int, str | None], list[int]]]:
    """The recordings every file is cut from, and (speaker, attack or None) -> their indices."""
    from .attacks import _Job, _synthesise
    from .corpus import _speakers, _voices
    speakers = _speakers(spec)
    voices = _voices(spec, speakers)
    n_samples = int(spec.seconds * spec.sample_rate)
    jobs = [(k % spec.n_speakers, None) for k in range(spec.pool_bonafide)]
    jobs += [((k + index) % spec.n_speakers, attack) for index, attack in enumerate(LA_ATTACKS)
             for k in range(spec.pool_per_attack)]
    recordings, index = [], {}
    for number, (speaker, attack) in enumerate(jobs):
        source = (speaker + 1) % spec.n_speakers
        job = _Job("eval", "", speaker, attack, source, (spec.seed, 65, number), n_samples)
        recordings.append(_synthesise(job, voices, spec.seed, spec.sample_rate))
        index.setdefault((speaker, attack), []).append(number)
    return recordings, index


def _cut(trial: Trial, pool: tuple, chain: tuple, spec: BenchmarkSpec, seed: tuple) -> np.ndarray:
    from .attacks import _to_pcm16
    from .codecs import apply_codec
    recordings, index = pool
    rng = np.random.default_rng(list(seed))
    # A file of this class and speaker when the pool has one, else of this class.
    choices = index.get((trial.speaker, trial.attack)) or \
        [n for (speaker, attack), ns in index.items() if attack == trial.attack for n in ns]
    signal = recordings[choices[int(rng.integers(len(choices)))]]
    length = int(spec.file_seconds * spec.sample_rate)
    start = int(rng.integers(signal.size - length + 1))
    signal = signal[start:start + length] * 10 ** (rng.uniform(-4, 4) / 20)
    for codec, quality in chain:
        signal = apply_codec(signal, codec, quality, rng, spec.sample_rate)
    return _to_pcm16(signal)


def _write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf
    with atomic_open(path, "wb") as handle:
        sf.write(handle, pcm, sample_rate, format="WAV", subtype="PCM_16")


MANAGED = (Path("ASVspoof2021_LA_eval"), Path("ASVspoof2021_DF_eval"), Path("keys"), ITW_FOLDER)


def generate_cm_benchmarks(root: Path, spec: BenchmarkSpec = BenchmarkSpec()) -> Path:
    """Write the three stand-ins under ``root`` (no-op when already complete for ``spec``); returns ``root``.
    Folders of an earlier stand-in are replaced; a root holding other data there is refused."""
    from .corpus import _finish, _start, _write_flac, _write_text, corpus_is_complete

    root = Path(root)
    if corpus_is_complete(root, spec):
        return root
    payload = _start(root, spec, [root / path for path in MANAGED])
    pool = _pool(spec)
    la = plan_la(spec.la_files, spec.n_speakers, spec.seed, spec.spoof_share)
    df = plan_df(spec.df_files, spec.n_speakers, spec.seed, spec.spoof_share)
    itw = plan_itw(spec.itw_files, spec.n_speakers, spec.seed, spec.itw_spoof_share)
    for folder in (LA_FLAC, DF_FLAC, ITW_FOLDER, LA_CM_KEYS.parent, LA_ASV_SCORES.parent, DF_CM_KEYS.parent):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for number, trial in enumerate(la):
        pcm = _cut(trial, pool, LA_CODEC_CHAINS[trial.conditions["codec"]], spec, (spec.seed, 66, number))
        _write_flac(root / LA_FLAC / f"{trial.utterance}.flac", pcm, spec.sample_rate)
    for number, trial in enumerate(df):
        pcm = _cut(trial, pool, DF_CODEC_CHAINS[trial.conditions["codec"]], spec, (spec.seed, 67, number))
        _write_flac(root / DF_FLAC / f"{trial.utterance}.flac", pcm, spec.sample_rate)
    for number, trial in enumerate(itw):
        _write_wav(root / ITW_FOLDER / f"{trial.utterance}.wav", _cut(trial, pool, (), spec, (spec.seed, 68, number)),
                   spec.sample_rate)
    asv_keys, asv_scores = la_asv_lines(la, spec.n_speakers, spec.seed)
    _write_text(root / LA_CM_KEYS, la_key_lines(la))
    _write_text(root / LA_ASV_KEYS, asv_keys)
    _write_text(root / LA_ASV_SCORES, asv_scores)
    _write_text(root / DF_CM_KEYS, df_key_lines(df))
    with atomic_open(root / ITW_FOLDER / "meta.csv", "w") as handle:
        handle.write(itw_meta_text(itw))
    _finish(root, payload)
    return root


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the synthetic stand-ins of ASVspoof 2021 LA / DF eval and "
                                                 "In-the-Wild side by side under ROOT (docs/cm_benchmarks.md).")
    parser.add_argument("root", help="the folder (dirs.database of the three sets)")
    parser.add_argument("--tiny", action="store_true", help="the tests' sizes instead of the demo's")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    spec = BenchmarkSpec.tiny(arguments.seed) if arguments.tiny else BenchmarkSpec(seed=arguments.seed)
    print(generate_cm_benchmarks(Path(arguments.root), spec))
