"""The synthetic corpus written in the ASVspoof 5 public-release layout (what data/asvspoof5.py reads).

``generate_asvspoof5_corpus(root)`` writes, from the same voices and spoofing systems as the 2019
layout (voices.py, attacks.py)::

    root/flac_T/T_0000000000.flac ...        training utterances, none coded
    root/flac_D/D_*.flac, root/flac_E_eval/E_*.flac
                                              dev / eval: Track 1 utterances, coded copies, enrollment
    root/ASVspoof5.train.tsv  ASVspoof5.{dev,eval}.track_1.tsv            10 columns
    root/ASVspoof5.{dev,eval}.track_2.trial.tsv                           5 columns
    root/ASVspoof5.{dev,eval}.track_2.enroll.tsv                          speaker, utterances joined by commas

As in the release: speakers ``T_NNNN`` / ``D_NNNN`` / ``E_NNNN``, utterances numbered with 10 digits in a
shuffled order (the number says nothing of the label); attacks A01-A08 in train, A09-A16 in dev,
A17-A32 in eval. The release's 32 systems are mapped onto the generator's 19 recipes in turn (A20 is
built like A01, ...), each one a distinct system: its fixed traits (the TTS model's voice error, the
top-band roll-off) have their own seed. In dev and eval a share of the bona fide and of the spoofed
utterances also has a coded copy (codecs.py, C01-C11 with a quality 1-3); the copy has its own id and
names the uncoded original in CODEC_SEED. Enrollment utterances are bona fide, uncoded, in the
partition's flac folder and in no Track 1 list. Track 2 trials pair each enrolled speaker with its own
bona fide speech (target), the bona fide speech of every other speaker of the same gender in the
partition (nontarget) and the spoofs made for it (spoof), coded copies included.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attacks import ATTACKS, _Job, _synthesise, _to_pcm16
from .codecs import CODECS, QUALITIES, apply_codec
from .corpus import (
    PARTITIONS,
    _default_workers,
    _finish,
    _plan_jobs,
    _run,
    _Speaker,
    _speakers,
    _start,
    _voices,
    _write_flac,
    _write_text,
    corpus_is_complete,
)
from .voices import Voice

LAYOUT = "asvspoof5"
TRAIN_ATTACKS = tuple(f"A{k:02d}" for k in range(1, 9))
DEV_ATTACKS = tuple(f"A{k:02d}" for k in range(9, 17))
EVAL_ATTACKS = tuple(f"A{k:02d}" for k in range(17, 33))
# ASVspoof 5 system -> the generator's recipe (a key of attacks.ATTACKS), in turn.
RECIPES = {f"A{k:02d}": f"A{(k - 1) % len(ATTACKS) + 1:02d}" for k in range(1, 33)}
_SYSTEM_SEED_OFFSET = 500  # ASVspoof 5 systems are seeded apart from the 2019 ones (attack numbers < 100)
LETTER = {"train": "T", "dev": "D", "eval": "E"}
FLAC_DIRS = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}
TRACK1_LISTS = {"train": "ASVspoof5.train.tsv", "dev": "ASVspoof5.dev.track_1.tsv",
                "eval": "ASVspoof5.eval.track_1.tsv"}


def trial_list(partition: str) -> str:
    return f"ASVspoof5.{partition}.track_2.trial.tsv"


def enrollment_list(partition: str) -> str:
    return f"ASVspoof5.{partition}.track_2.enroll.tsv"


PROTOCOL_FILES = (*TRACK1_LISTS.values(), *(name(p) for p in ("dev", "eval") for name in (trial_list, enrollment_list)))


@dataclass(frozen=True)
class Asvspoof5Spec:
    """Corpus sizes for the ASVspoof 5 layout; the defaults are the demo corpus, ``tiny()`` the test one."""

    seed: int = 0
    sample_rate: int = 16000
    n_train_speakers: int = 48
    n_dev_speakers: int = 8  # enrolled: bona fide, spoofs, enrollment
    n_eval_speakers: int = 8
    n_dev_nontarget_speakers: int = 4  # bona fide only
    n_eval_nontarget_speakers: int = 4
    bonafide_per_speaker: int = 10
    spoof_per_speaker_per_attack: int = 2
    enrollment_per_speaker: int = 4
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    train_attacks: tuple[str, ...] = TRAIN_ATTACKS
    dev_attacks: tuple[str, ...] = DEV_ATTACKS
    eval_attacks: tuple[str, ...] = EVAL_ATTACKS
    codecs: tuple[str, ...] = tuple(CODECS)
    coded_fraction: float = 0.5  # of the dev / eval bona fide and of their spoofs, each

    @classmethod
    def tiny(cls, seed: int = 0) -> Asvspoof5Spec:
        return cls(
            seed=seed, n_train_speakers=4, n_dev_speakers=2, n_eval_speakers=2,
            n_dev_nontarget_speakers=2, n_eval_nontarget_speakers=2,
            bonafide_per_speaker=4, spoof_per_speaker_per_attack=1, enrollment_per_speaker=3,
            min_seconds=0.6, max_seconds=0.9,
        )

    def __post_init__(self) -> None:
        unknown = [a for a in (*self.train_attacks, *self.dev_attacks, *self.eval_attacks) if a not in RECIPES]
        if unknown:
            raise ValueError(f"Asvspoof5Spec: unknown attacks {unknown}; the release has A01-A32")
        if [c for c in self.codecs if c not in CODECS]:
            raise ValueError(f"Asvspoof5Spec: unknown codecs in {self.codecs}; known: {', '.join(CODECS)}")
        if self.n_train_speakers < 2 or self.n_dev_speakers < 2 or self.n_eval_speakers < 2:
            raise ValueError("Asvspoof5Spec: each partition needs at least 2 enrolled speakers")
        if self.bonafide_per_speaker < 1 or self.enrollment_per_speaker < 1:
            raise ValueError("Asvspoof5Spec: bonafide_per_speaker and enrollment_per_speaker must be >= 1")
        if not 0.3 <= self.min_seconds <= self.max_seconds or not 0 <= self.coded_fraction <= 1:
            raise ValueError("Asvspoof5Spec: need 0.3 <= min_seconds <= max_seconds and 0 <= coded_fraction <= 1")

    def to_json(self) -> dict:
        fields = {key: list(value) if isinstance(value, tuple) else value
                  for key, value in dataclasses.asdict(self).items()}
        return {"layout": LAYOUT, **fields}  # never equal to a 2019 spec's


@dataclass(frozen=True)
class _Copy:
    utterance: str
    codec: str
    quality: int


@dataclass(frozen=True)
class _Task:
    """One synthesised file and its coded copies."""
    job: _Job  # job.attack: the recipe; job.utterance: the file's ASVspoof 5 id
    label: str  # "bonafide" or the ASVspoof 5 attack id
    copies: tuple[_Copy, ...] = ()


def _names(spec: Asvspoof5Spec, speakers: list[_Speaker]) -> list[_Speaker]:
    """Release-style speaker ids: a unique random 4-digit number per partition."""
    named = list(speakers)
    for index, partition in enumerate(PARTITIONS):
        members = [i for i, s in enumerate(speakers) if s.partition == partition]
        numbers = np.random.default_rng([spec.seed, 21, index]).choice(10_000, size=len(members), replace=False)
        for member, number in zip(members, numbers.tolist()):
            named[member] = dataclasses.replace(speakers[member], name=f"{LETTER[partition]}_{number:04d}")
    return named


def _plan(spec: Asvspoof5Spec, speakers: list[_Speaker]) -> list[_Task]:
    attacks = {"train": spec.train_attacks, "dev": spec.dev_attacks, "eval": spec.eval_attacks}
    jobs = _plan_jobs(spec, speakers, attacks)
    tasks = [_Task(dataclasses.replace(job, attack=RECIPES[job.attack],
                                       system=_SYSTEM_SEED_OFFSET + int(job.attack[1:])), job.attack)
             if job.attack else _Task(job, "bonafide") for job in jobs]
    # Which dev / eval utterances get a coded copy, and with which codec: the bona fide and the spoofed
    # ones each in their own shuffled order, the codecs taken in turn so that every one is used.
    coded: dict[int, tuple[str, int]] = {}
    for index, partition in enumerate(("dev", "eval") if spec.codecs else ()):
        rng = np.random.default_rng([spec.seed, 22, index])
        for spoof in (False, True):
            pool = [k for k, t in enumerate(tasks) if t.job.partition == partition and not t.job.enrolment
                    and (t.job.attack is not None) == spoof]
            offset = int(rng.integers(len(spec.codecs)))
            for turn, k in enumerate(rng.permutation(pool)[:round(spec.coded_fraction * len(pool))].tolist()):
                coded[k] = (spec.codecs[(offset + turn) % len(spec.codecs)], int(rng.choice(QUALITIES)))
    # Release-style utterance ids: 10 digits, numbered per partition in a shuffled order.
    named: list[_Task] = []
    for index, partition in enumerate(PARTITIONS):
        members = [k for k, t in enumerate(tasks) if t.job.partition == partition]
        numbers = iter(np.random.default_rng([spec.seed, 23, index]).permutation(
            len(members) + sum(k in coded for k in members)).tolist())
        ids = {k: f"{LETTER[partition]}_{next(numbers):010d}" for k in members}
        for k in members:
            task = tasks[k]
            copies = ((_Copy(f"{LETTER[partition]}_{next(numbers):010d}", *coded[k]),) if k in coded else ())
            named.append(dataclasses.replace(task, job=dataclasses.replace(task.job, utterance=ids[k]),
                                             copies=copies))
    return named


def _produce(task: _Task, voices: list[Voice], spec: Asvspoof5Spec, root: Path) -> None:
    """Synthesise one file; write it and its coded copies (coded from the written 16-bit audio)."""
    folder = root / FLAC_DIRS[task.job.partition]
    pcm = _to_pcm16(_synthesise(task.job, voices, spec.seed, spec.sample_rate))
    _write_flac(folder / f"{task.job.utterance}.flac", pcm, spec.sample_rate)
    for number, copy in enumerate(task.copies):
        rng = np.random.default_rng([*task.job.seed, 31, number])
        coded = apply_codec(pcm / 32768.0, copy.codec, copy.quality, rng, spec.sample_rate)
        _write_flac(folder / f"{copy.utterance}.flac", _to_pcm16(coded), spec.sample_rate)


def _protocol_lines(speakers: list[_Speaker], tasks: list[_Task]) -> dict[str, list[str]]:
    gender = {"female": "F", "male": "M"}
    files: dict[str, list[str]] = {}
    for partition in PARTITIONS:
        listed = [t for t in tasks if t.job.partition == partition and not t.job.enrolment]
        rows: list[tuple[int, str, str]] = []  # (speaker, utterance, label) of every Track 1 file
        lines = []
        for task in listed:
            speaker = speakers[task.job.speaker]
            key = "bonafide" if task.label == "bonafide" else "spoof"
            # The attacker's adaptation condition, as the release's AC1-AC3, fixed per system.
            tag = "-" if key == "bonafide" else f"AC{int(task.label[1:]) % 3 + 1}"
            prefix = f"{speaker.name} {task.job.utterance} {gender[speaker.gender]}"
            lines.append(f"{prefix} - - - {tag} {task.label} {key} -")
            rows.append((task.job.speaker, task.job.utterance, task.label))
            for copy in task.copies:
                lines.append(f"{speaker.name} {copy.utterance} {gender[speaker.gender]} {copy.codec} {copy.quality} "
                             f"{task.job.utterance} {tag} {task.label} {key} -")
                rows.append((task.job.speaker, copy.utterance, task.label))
        files[TRACK1_LISTS[partition]] = lines
        if partition == "train":
            continue
        enrolled = [i for i, s in enumerate(speakers) if s.partition == partition and s.enrolled]
        files[enrollment_list(partition)] = [
            f"{speakers[i].name} "
            + ",".join(sorted(t.job.utterance for t in tasks if t.job.enrolment and t.job.speaker == i))
            for i in enrolled]
        trials = []
        for i in enrolled:
            target = speakers[i]
            head = f"{target.name} {{}} {gender[target.gender]}"
            others = [k for k, s in enumerate(speakers) if s.partition == partition and k != i
                      and s.gender == target.gender]
            trials += [f"{head.format(u)} bonafide target" for k, u, a in rows if k == i and a == "bonafide"]
            trials += [f"{head.format(u)} bonafide nontarget" for k, u, a in rows if k in others and a == "bonafide"]
            trials += [f"{head.format(u)} {a} spoof" for k, u, a in rows if k == i and a != "bonafide"]
        files[trial_list(partition)] = trials
    return files


def generate_asvspoof5_corpus(root: Path, spec: Asvspoof5Spec = Asvspoof5Spec(), *, progress: bool = True,
                              workers: int | None = None) -> Path:
    """Write the ASVspoof 5 layout under ``root`` (no-op when already complete for ``spec``); returns ``root``.

    ``workers`` as for generate_corpus. The flac folders and protocol files left by an earlier synthetic
    corpus are replaced; a root holding other data there is refused.
    """
    root = Path(root)
    if corpus_is_complete(root, spec):
        return root
    payload = _start(root, spec, [root / name for name in (*FLAC_DIRS.values(), *PROTOCOL_FILES)])
    speakers = _names(spec, _speakers(spec))
    voices = _voices(spec, speakers)
    tasks = _plan(spec, speakers)
    for folder in FLAC_DIRS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    workers = workers or _default_workers([task.job for task in tasks], spec.sample_rate)
    produce = functools.partial(_produce, voices=voices, spec=spec, root=root)
    for _ in _run(tasks, produce, workers, progress):
        pass
    for name, lines in _protocol_lines(speakers, tasks).items():
        _write_text(root / name, lines)
    _finish(root, payload)
    return root

