"""Corpus layout: spec, speakers, jobs, protocol files, writing, completion markers, generate_corpus."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from runtime.errors import UserError
from runtime.files import atomic_open

from .attacks import ATTACKS, EVAL_ATTACKS, TRAIN_ATTACKS, _Job, _synthesise, _to_pcm16
from .voices import Voice, sample_voice

COMPLETE_MARKER = "synthetic_corpus_complete.json"
IN_PROGRESS_MARKER = "synthetic_corpus_in_progress.json"
FORMAT_VERSION = 3  # 2: stronger speaker timbre, 48 training speakers, top-band roll-off; 3: deeper roll-off
PARTITIONS = ("train", "dev", "eval")
_PARTITION_LETTER = {"train": "T", "dev": "D", "eval": "E"}
_PROTOCOL_SUFFIX = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}


class CorpusExists(UserError, FileExistsError):
    """The corpus folder holds data the generator did not write."""


@dataclass(frozen=True)
class CorpusSpec:
    """Corpus sizes; the defaults are the demo corpus, ``tiny()`` the test one."""

    seed: int = 0
    sample_rate: int = 16000
    n_train_speakers: int = 48
    n_dev_speakers: int = 8  # enrolled: bona fide, spoofs, enrolment
    n_eval_speakers: int = 8
    n_dev_nontarget_speakers: int = 4  # bona fide only, zero-effort impostors
    n_eval_nontarget_speakers: int = 4
    bonafide_per_speaker: int = 10
    spoof_per_speaker_per_attack: int = 2
    enrollment_per_speaker: int = 4
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    train_attacks: tuple[str, ...] = TRAIN_ATTACKS  # also used for dev
    eval_attacks: tuple[str, ...] = EVAL_ATTACKS

    @classmethod
    def tiny(cls, seed: int = 0) -> CorpusSpec:
        return cls(
            seed=seed, n_train_speakers=6, n_dev_speakers=3, n_eval_speakers=3,
            n_dev_nontarget_speakers=2, n_eval_nontarget_speakers=2,
            bonafide_per_speaker=6, spoof_per_speaker_per_attack=1, enrollment_per_speaker=2,
            min_seconds=0.8, max_seconds=1.2,
        )

    def __post_init__(self) -> None:
        unknown = [a for a in (*self.train_attacks, *self.eval_attacks) if a not in ATTACKS]
        if unknown:
            raise ValueError(f"CorpusSpec: unknown attacks {unknown}")
        if self.n_train_speakers < 2 or self.n_dev_speakers < 2 or self.n_eval_speakers < 2:
            raise ValueError("CorpusSpec: each partition needs at least 2 enrolled speakers")
        if self.bonafide_per_speaker < 1 or self.enrollment_per_speaker < 1:
            raise ValueError("CorpusSpec: bonafide_per_speaker and enrollment_per_speaker must be >= 1")
        if not 0.3 <= self.min_seconds <= self.max_seconds:
            raise ValueError("CorpusSpec: need 0.3 <= min_seconds <= max_seconds")

    def to_json(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- corpus layout

@dataclass(frozen=True)
class _Speaker:
    name: str  # LA_00NN
    partition: str
    gender: str
    enrolled: bool  # False: dev/eval bona-fide-only speaker
    strata: tuple[float, float]  # quantiles of f0 and vocal-tract length within the gender


def _speakers(spec: Any) -> list[_Speaker]:
    """Speakers of every partition (``spec``: a CorpusSpec or another spec with its size fields)."""
    groups = [("eval", spec.n_eval_speakers, True), ("eval", spec.n_eval_nontarget_speakers, False),
              ("dev", spec.n_dev_speakers, True), ("dev", spec.n_dev_nontarget_speakers, False),
              ("train", spec.n_train_speakers, True)]
    speakers: list[_Speaker] = []
    for group_index, (partition, count, enrolled) in enumerate(groups):
        genders = (["female", "male"] * count)[:count]
        np.random.default_rng([spec.seed, 1, group_index]).shuffle(genders)
        for gender in genders:
            speakers.append(_Speaker(f"LA_{len(speakers) + 1:04d}", partition, gender, enrolled, (0.5, 0.5)))
    # Latin-hypercube f0 / vocal-tract length within each partition and gender, so
    # that a small partition does not hold two near-identical voices.
    for group_index, (partition, gender) in enumerate((p, g) for p in PARTITIONS for g in ("female", "male")):
        members = [i for i, s in enumerate(speakers) if s.partition == partition and s.gender == gender]
        rng = np.random.default_rng([spec.seed, 5, group_index])
        f0_rank, scale_rank = rng.permutation(len(members)), rng.permutation(len(members))
        for k, index in enumerate(members):
            strata = ((f0_rank[k] + rng.uniform(0.2, 0.8)) / len(members),
                      (scale_rank[k] + rng.uniform(0.2, 0.8)) / len(members))
            speakers[index] = dataclasses.replace(speakers[index], strata=strata)
    return speakers


def _plan_jobs(spec: Any, speakers: list[_Speaker],
               attacks: Mapping[str, tuple[str, ...]] | None = None) -> list[_Job]:
    """Every file to synthesise, in a fixed order; ``attacks``: per partition (default: the 2019 split)."""
    if attacks is None:
        attacks = {"train": spec.train_attacks, "dev": spec.train_attacks, "eval": spec.eval_attacks}
    duration_rng = np.random.default_rng([spec.seed, 2])
    jobs: list[_Job] = []

    def add(partition: str, speaker: int, attack: str | None, source: int, enrolment: bool) -> None:
        seconds = duration_rng.uniform(spec.min_seconds, spec.max_seconds)
        seed = (spec.seed, 3, len(jobs))
        jobs.append(_Job(partition, "", speaker, attack, source, seed,
                         int(seconds * spec.sample_rate), enrolment))

    for partition in PARTITIONS:
        members = [i for i, s in enumerate(speakers) if s.partition == partition]
        for index in members:
            for _ in range(spec.bonafide_per_speaker):
                add(partition, index, None, -1, False)
            if not speakers[index].enrolled:
                continue
            if partition != "train":
                for _ in range(spec.enrollment_per_speaker):
                    add(partition, index, None, -1, True)
            # Conversion sources: another speaker of the same gender when there is one.
            others = [i for i in members if i != index and speakers[i].gender == speakers[index].gender]
            others = others or [i for i in members if i != index]
            for attack in attacks[partition]:
                for _ in range(spec.spoof_per_speaker_per_attack):
                    add(partition, index, attack, others[int(duration_rng.integers(len(others)))], False)
    # Unique random 7-digit utterance numbers, as in the real database.
    numbers = np.random.default_rng([spec.seed, 4]).choice(9_000_000, size=len(jobs), replace=False) + 1_000_000
    return [dataclasses.replace(job, utterance=f"LA_{_PARTITION_LETTER[job.partition]}_{number}")
            for job, number in zip(jobs, numbers.tolist())]


def _flac_dir(root: Path, partition: str) -> Path:
    return root / "LA" / f"ASVspoof2019_LA_{partition}" / "flac"


def _write_flac(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    with atomic_open(path, "wb") as handle:
        sf.write(handle, pcm, sample_rate, format="FLAC", subtype="PCM_16")


def _write_text(path: Path, lines: list[str]) -> None:
    with atomic_open(path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _protocol_lines(spec: CorpusSpec, speakers: list[_Speaker], jobs: list[_Job]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for partition in PARTITIONS:
        cm = [job for job in jobs if job.partition == partition and not job.enrolment]
        files[f"ASVspoof2019.LA.cm.{_PROTOCOL_SUFFIX[partition]}.txt"] = [
            f"{speakers[j.speaker].name} {j.utterance} - {j.attack or '-'} {'spoof' if j.attack else 'bonafide'}"
            for j in cm]
        if partition == "train":
            continue
        enrolled = [i for i, s in enumerate(speakers) if s.partition == partition and s.enrolled]
        members = [i for i, s in enumerate(speakers) if s.partition == partition]
        bonafide = {i: [j.utterance for j in cm if j.speaker == i and j.attack is None] for i in members}
        for gender in ("female", "male"):
            files[f"ASVspoof2019.LA.asv.{partition}.{gender}.trn.txt"] = [
                f"{speakers[i].name} {','.join(_enrolment(jobs, i))}" for i in enrolled
                if speakers[i].gender == gender]
        files[f"ASVspoof2019.LA.asv.{partition}.gi.trn.txt"] = [
            f"{speakers[i].name} {speakers[i].name}_{_enrolment(jobs, i)[0]}" for i in enrolled]
        trials: list[str] = []
        for i in enrolled:
            name = speakers[i].name
            same_gender = [k for k in members if k != i and speakers[k].gender == speakers[i].gender]
            impostors = same_gender or [k for k in members if k != i]
            trials += [f"{name} {u} bonafide target" for u in bonafide[i]]
            trials += [f"{name} {u} bonafide nontarget" for k in impostors for u in bonafide[k]]
            trials += [f"{name} {j.utterance} {j.attack} spoof" for j in cm if j.speaker == i and j.attack]
        files[f"ASVspoof2019.LA.asv.{partition}.gi.trl.txt"] = trials
    return files


def _enrolment(jobs: list[_Job], speaker: int) -> list[str]:
    return sorted(job.utterance for job in jobs if job.enrolment and job.speaker == speaker)


def _produce(job: _Job, voices: list[Voice], spec: CorpusSpec, root: Path) -> np.ndarray | None:
    """Synthesise and write one file; enrolment audio is returned for enr_audio/."""
    pcm = _to_pcm16(_synthesise(job, voices, spec.seed, spec.sample_rate))
    _write_flac(_flac_dir(root, job.partition) / f"{job.utterance}.flac", pcm, spec.sample_rate)
    return pcm if job.enrolment else None


def _default_workers(jobs: list[_Job], sample_rate: int) -> int:
    seconds = sum(job.n_samples for job in jobs) / sample_rate
    # Starting processes only pays off for corpora of minutes of audio.
    return 1 if seconds < 30 else max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------- public entry points

def corpus_is_complete(root: Path, spec: CorpusSpec | None = None) -> bool:
    """True when ``root`` holds a fully written corpus (for ``spec``, if given)."""
    marker = Path(root) / COMPLETE_MARKER
    try:
        written = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if written.get("format_version") != FORMAT_VERSION:
        return False
    return spec is None or written.get("spec") == spec.to_json()


def _start(root: Path, spec: Any, managed: list[Path]) -> str:
    """Make ``root`` ready for a new corpus (refusing foreign data in ``managed``); returns the marker text."""
    ours = (root / COMPLETE_MARKER).exists() or (root / IN_PROGRESS_MARKER).exists()
    present = [f"{path.name}/" if path.is_dir() else path.name for path in managed if path.exists()]
    if not ours and present:
        names = ", ".join(present)
        raise CorpusExists(f"{root}: holds {names} not written by the synthetic generator; refusing to overwrite it")
    (root / COMPLETE_MARKER).unlink(missing_ok=True)
    for path in managed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"format_version": FORMAT_VERSION, "spec": spec.to_json()}, indent=1)
    _write_text(root / IN_PROGRESS_MARKER, [payload])
    return payload


def _voices(spec: Any, speakers: list[_Speaker]) -> list[Voice]:
    return [sample_voice(np.random.default_rng([spec.seed, 0, index]), s.gender, *s.strata)
            for index, s in enumerate(speakers)]


def _run(tasks: list, produce: Callable[[Any], Any], workers: int, progress: bool) -> Iterator[tuple[Any, Any]]:
    """(task, produce(task)) in order, in ``workers`` processes when more than one."""
    with contextlib.ExitStack() as stack:
        results: Iterator = map(produce, tasks)
        if workers > 1:
            # Every job has its own seed, so the files do not depend on the worker count.
            start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(workers, multiprocessing.get_context(start)))
            results = pool.map(produce, tasks, chunksize=8)
        yield from tqdm(zip(tasks, results), total=len(tasks), desc="synthetic corpus", unit="utt",
                        disable=not progress)


def _finish(root: Path, payload: str) -> None:
    _write_text(root / COMPLETE_MARKER, [payload])
    (root / IN_PROGRESS_MARKER).unlink()


def generate_corpus(root: Path, spec: CorpusSpec = CorpusSpec(), *, progress: bool = True,
                    workers: int | None = None) -> Path:
    """Write the corpus under ``root`` (no-op when already complete for ``spec``); returns ``root``.

    ``workers``: processes to synthesise with (default: 1 for small corpora, else up to 4).
    Anything under root/LA, root/protocols and root/enr_audio left by an earlier
    synthetic corpus is replaced; a root holding other data there is refused.
    """
    root = Path(root)
    if corpus_is_complete(root, spec):
        return root
    payload = _start(root, spec, [root / "LA", root / "protocols", root / "enr_audio"])
    speakers = _speakers(spec)
    voices = _voices(spec, speakers)
    jobs = _plan_jobs(spec, speakers)
    for partition in PARTITIONS:
        _flac_dir(root, partition).mkdir(parents=True, exist_ok=True)
    workers = workers or _default_workers(jobs, spec.sample_rate)
    produce = functools.partial(_produce, voices=voices, spec=spec, root=root)
    enrolment_audio: dict[int, dict[str, np.ndarray]] = {}
    for job, pcm in _run(jobs, produce, workers, progress):
        if pcm is not None:
            enrolment_audio.setdefault(job.speaker, {})[job.utterance] = pcm
    for speaker, recordings in enrolment_audio.items():
        folder = root / "enr_audio" / speakers[speaker].partition
        folder.mkdir(parents=True, exist_ok=True)
        order = sorted(recordings)
        joined = np.concatenate([recordings[name] for name in order])
        _write_flac(folder / f"{speakers[speaker].name}_{order[0]}.flac", joined, spec.sample_rate)
    (root / "protocols").mkdir(exist_ok=True)
    for name, lines in _protocol_lines(spec, speakers, jobs).items():
        _write_text(root / "protocols" / name, lines)
    _finish(root, payload)
    return root
