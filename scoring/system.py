"""A trained system outside its experiment folder: enroll speakers from audio files or waveforms, score tests.

    system = SASVSystem.load("exp_result/demo/weights/best.ckpt")
    system.enroll("alice", ["a1.flac", "a2.flac"])
    result = system.score("alice", "test.flac")        # a TrialScore

The kind of system comes from the checkpoint (`system_kind`): sasv (a joint checkpoint of ours, _fixed ones
included, or a Lightning seed checkpoint), cm (a system cm stage checkpoint, published AASIST weights),
asv (a system asv stage checkpoint, voxceleb_trainer weights) or b2 (a back-end trained on embeddings, with
the ASV and CM networks that made them). Audio goes through the scripts' code: `scoring.extraction.extract`
(files cut or tiled to `test_samples` / the enrollment length by `data.audio.pad_or_tile`, the scoring rule:
the first samples, or the whole signal repeated from its start when shorter), the speaker model of
`scoring.sasv.speaker_embeddings` and the back-end of `SASVScorer.score_from_embeddings`, so a trial scores
as save_sasv_score.py scores it. What each score means: docs/scores.md; the API and score_files.py:
docs/api.md.
"""
from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data.audio import AudioError, InMemoryAudio
from data.protocols import SASVTrial
from models.b2_backend import B2Backend
from models.build import (
    build_asv_network,
    build_cm_network,
    build_sasv_model,
    checkpoint_config,
    load_b2_backend,
    subsystems_held,
)
from models.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_asv_weights,
    load_checkpoint,
    load_cm_weights,
    load_sasv_weights,
)
from runtime.config import Config
from runtime.device import resolve_device
from runtime.errors import UserError
from runtime.files import atomic_open
from scoring.calibration import (
    CalibrationFileError,
    SystemCalibration,
    calibration_beside,
    read_calibration,
    system_fingerprint,
    weights_fingerprint,
)
from scoring.extraction import Extraction, extract
from scoring.inputs import enrollment_length
from scoring.sasv import SASVScorer, cm_embedding_and_score, speaker_embeddings
from scoring.verification import cosine, speaker_model

Audio = str | os.PathLike | np.ndarray | torch.Tensor
SYSTEMS = ("sasv", "cm", "asv", "b2")
SPEAKERS_FORMAT = "sasv-toolkit-speakers"
SPEAKERS_VERSION = 1
B2_BATCH = 8192  # trials per back-end call (training.tasks.b2's SCORE_BATCH)


class SystemInputError(UserError, ValueError):
    """A call the system cannot serve: an unknown speaker, no audio, a part the system does not have."""


class SpeakerFileError(UserError):
    """A speaker-model file that cannot be read, or was made with other ASV weights."""


@dataclass(frozen=True)
class TrialScore:
    """One trial's scores; a part the system lacks is None (docs/scores.md says which way each points).

    asv_score: cosine of the speaker model and the test's ASV embedding (higher = same speaker);
    cm_score: the CM's bona fide logit (higher = bona fide); sasv_score: the system's SASV score (higher =
    target bona fide); *_llr: calibrated natural-log likelihood ratios of the same classes (None without a
    calibration); decision: True = accept (target bona fide; bona fide for a CM; target for an ASV system),
    the calibration's decision score above its threshold, None without a calibration."""

    speaker: str | None
    test: str
    asv_score: float | None
    cm_score: float | None
    sasv_score: float | None
    asv_llr: float | None = None
    cm_llr: float | None = None
    sasv_llr: float | None = None
    decision: bool | None = None


def system_kind(checkpoint: Checkpoint) -> str:
    """sasv, cm, asv or b2, from what the checkpoint holds (and its stored config's `system`, which must agree)."""
    if checkpoint.format == "lightning":
        kind = "sasv"
    elif checkpoint.format == "aasist":
        kind = "cm"
    elif checkpoint.format == "voxceleb":
        kind = "asv"
    elif checkpoint.backend_state is not None:
        kind = "sasv" if checkpoint.oc_center is not None else "b2"
    elif checkpoint.asv_state is not None and checkpoint.cm_state is None:
        kind = "asv"
    elif checkpoint.cm_state is not None and checkpoint.asv_state is None:
        kind = "cm"
    else:
        raise CheckpointError(f"{checkpoint.source}: holds neither a back-end nor a single ASV or CM network; not a "
                              f"system checkpoint this API can score with")
    stored = (checkpoint.config or {}).get("system") if checkpoint.format == "sasv" else None
    if stored in SYSTEMS and stored != kind:
        raise CheckpointError(f"{checkpoint.source}: its config says system {stored}, but it holds the weights of "
                              f"a {kind} system; the file is inconsistent")
    return kind


def _weights_file(argument: str | os.PathLike | None, config: Config, key: str, checkpoint: Path, part: str,
                  argument_name: str) -> Path:
    """The file a part the checkpoint lacks comes from: the argument, else the config's `key`."""
    if argument is not None:
        return Path(argument)
    if config[key]:
        path = Path(config[key])
        if not path.is_file():
            raise CheckpointError(f"{checkpoint}: holds no {part} weights and its config's {key} file {path} does "
                                  f"not exist; give {argument_name}=")
        return path
    raise CheckpointError(f"{checkpoint}: holds no {part} weights; give {argument_name}= (score_files.py: "
                          f"--{argument_name.replace('weights', 'model')}) or set {key} in the config")


def _warn_on_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SASVSystem:
    """A trained system (sasv, cm, asv or b2) with its speakers, scoring audio files and waveforms.

    Speakers are kept in memory (`save_speakers` / `load_speakers` write and read them); enrolling a speaker
    again replaces it, or with `add=True` adds the files to its model (the mean of every enrollment
    embedding). Waveforms are 1-D float arrays or tensors at the system's `sample_rate`, mono."""

    def __init__(self, kind: str, config: Config, device: torch.device, networks: dict[str, nn.Module],
                 checkpoint: Path, *, batch_size: int | None = None, progress: bool = False,
                 warn: Callable[[str], None] = _warn_on_stderr) -> None:
        self.kind = kind
        self.config = config
        self.device = device
        self.networks = networks  # sasv: model, loss; cm: cm; asv: asv; b2: asv, cm, backend
        self.checkpoint = checkpoint
        self.warn = warn
        self.sample_rate = config["sample_rate"]
        self.test_samples = config["test_samples"]
        self.enrollment_samples = enrollment_length(kind, config)  # as the scripts and main.py enroll
        self.options = Extraction.from_config(config, device, num_workers=0, on_bad_audio="skip", progress=progress,
                                              **({"batch_size": batch_size} if batch_size else {}))
        self.calibration: SystemCalibration | None = None
        self._speakers: dict[str, torch.Tensor] = {}  # speaker -> its enrollment embeddings [files, dim]
        model = networks.get("model")
        self._scorer = SASVScorer(model, networks["loss"], self.options) if kind == "sasv" else None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, checkpoint: str | os.PathLike, *, config: str | os.PathLike | Mapping | None = None,
             device: str = "cpu", asv_weights: str | os.PathLike | None = None,
             cm_weights: str | os.PathLike | None = None, calibration: str | os.PathLike | None = "auto",
             batch_size: int | None = None, progress: bool = False, enrollment_samples: int | None = None,
             warn: Callable[[str], None] = _warn_on_stderr) -> SASVSystem:
        """The system a checkpoint holds, in eval mode on `device`.

        `config` (a .conf file or a mapping) replaces the checkpoint's stored config (the crop lengths, sample
        rate, network settings); weights that store none (AASIST, voxceleb_trainer) use the toolkit's defaults
        without it. `asv_weights` / `cm_weights` give the networks a checkpoint lacks (a _fixed model's back-end
        only checkpoint, system b2), else the config's asv_weight / aasist_weight. `calibration`: "auto" reads
        calibration.json beside the checkpoint, a path reads that file, None turns calibration off; without
        one the scores are raw (no LLRs, decisions None) and `warn` is told once. `enrollment_samples`: the
        length enrollment files are cut or tiled to (default: scoring.inputs.enrollment_length, as main.py and the
        scripts enroll: the config's enrollment_samples.eval for a SASV system; test_samples for b2 and for an ASV
        system enrolled from utterances)."""
        path = Path(checkpoint)
        stored = load_checkpoint(path)
        kind = system_kind(stored)
        settings = checkpoint_config(stored, config)
        target = resolve_device(device)
        networks = _build(kind, stored, settings, asv_weights, cm_weights)
        for network in networks.values():
            network.to(target).eval()
        system = cls(kind, settings, target, networks, path, batch_size=batch_size, progress=progress, warn=warn)
        if enrollment_samples is not None:
            if enrollment_samples < 1:
                raise SystemInputError(f"enrollment_samples must be positive, got {enrollment_samples}")
            system.enrollment_samples = enrollment_samples
        if calibration == "auto":
            system.calibration = calibration_beside(path, system.fingerprint(), warn)
        elif calibration is not None:
            found = read_calibration(calibration)
            if found.weights_sha256 != system.fingerprint():
                raise CalibrationFileError(f"{calibration}: fitted for other weights than those of {path}")
            system.calibration = found
        return system

    def fingerprint(self) -> str:
        """sha256 of the weights the calibration belongs to: scoring.calibration.system_fingerprint, as main.py
        computes it when it writes calibration.json (sasv: the model and its OC-softmax loss; cm / asv: their
        network; b2: its back-end)."""
        if self.kind == "sasv":
            return system_fingerprint(self.networks["model"], self.networks["loss"])
        return system_fingerprint(self.networks[{"cm": "cm", "asv": "asv", "b2": "backend"}[self.kind]])

    def asv_fingerprint(self) -> str:
        """sha256 of the ASV network's weights: speaker models made by other weights are refused."""
        return weights_fingerprint([self._asv_network()])

    @property
    def parts(self) -> tuple[str, ...]:
        """The scores the system gives: asv, cm, sasv (b2 and sasv all three)."""
        return {"sasv": ("asv", "cm", "sasv"), "b2": ("asv", "cm", "sasv"), "cm": ("cm",), "asv": ("asv",)}[self.kind]

    def _asv_network(self) -> nn.Module:
        if self.kind == "cm":
            raise SystemInputError(f"{self.checkpoint} is a CM alone: it has no ASV network and takes no speakers")
        return self.networks["model"].asv_model if self.kind == "sasv" else self.networks["asv"]

    # ------------------------------------------------------------------ extraction
    def _asv_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.networks["model"].asv_embedding if self.kind == "sasv" else self.networks["asv"]

    def _test_networks(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """name -> network over test waveforms; "cm" ends with the bona fide logit column."""
        if self.kind == "sasv":
            model = self.networks["model"]
            return {"asv": model.asv_embedding, "cm": cm_embedding_and_score(model.cm_embedding)}
        networks: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        if "asv" in self.networks:
            networks["asv"] = self.networks["asv"]
        if "cm" in self.networks:
            networks["cm"] = cm_embedding_and_score(self.networks["cm"])
        return networks

    def _items(self, audio: Iterable[Audio], names: Iterable[str]) -> list[Path | InMemoryAudio]:
        items: list[Path | InMemoryAudio] = []
        for item, name in zip(audio, names):
            if isinstance(item, (np.ndarray, torch.Tensor)):
                items.append(InMemoryAudio(item, name, sample_rate=self.sample_rate))
            elif isinstance(item, (str, os.PathLike)):
                items.append(Path(item))
            else:
                raise SystemInputError(f"{name}: expected an audio file path or a 1-D waveform, got "
                                       f"{type(item).__name__}")
        return items

    def _extract(self, items: list[Path | InMemoryAudio], samples: int, networks: dict, batch_size: int,
                 desc: str, on_bad_audio: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The scripts' extraction; a bad file raises its AudioError, or with "skip" is returned in the dict."""
        bad: dict[str, str] = {}
        rows = extract(items, samples, networks, self.options.replace(batch_size=batch_size), desc=desc,
                       bad_audio=bad)
        if bad and on_bad_audio == "error":
            raise AudioError(next(iter(bad.values())))
        return rows, bad

    # ------------------------------------------------------------------ speakers
    def enroll(self, speaker: str, audio: Audio | Sequence[Audio], *, add: bool = False,
               on_bad_audio: str = "error") -> dict[str, str]:
        """Enroll `speaker` from one or several files / waveforms: its model is the mean of their ASV
        embeddings (one file: that embedding itself), each cut or tiled to `enrollment_samples`. It replaces
        an earlier model of `speaker`, or with `add` joins its files. A bad file raises its AudioError, or with
        on_bad_audio="skip" is left out with a warning; returns {file: reason} of those left out (a speaker
        left without a file is not enrolled)."""
        self._asv_network()  # a CM alone takes no speakers
        if not isinstance(speaker, str) or not speaker or any(c.isspace() for c in speaker):
            raise SystemInputError(f"speaker name {speaker!r}: expected a non-empty name without whitespace")
        files = [audio] if isinstance(audio, (str, os.PathLike, np.ndarray, torch.Tensor)) else list(audio)
        if not files:
            raise SystemInputError(f"speaker {speaker}: no enrollment audio given")
        items = self._items(files, (f"<waveform {i}>" for i in range(len(files))))
        # The batch SASVScorer uses for enrollments: as many samples per batch as a test batch.
        batch = max(1, self.options.batch_size * self.test_samples // max(self.enrollment_samples, 1))
        rows, bad = self._extract(items, self.enrollment_samples, {"asv": self._asv_function()}, batch,
                                  f"enrollment {speaker}", on_bad_audio)
        for name, reason in bad.items():
            self.warn(f"warning: speaker {speaker}: enrollment audio left out: {reason}")
        good = [row for row, item in enumerate(items) if str(item) not in bad]
        if not good:
            if not add:
                self._speakers.pop(speaker, None)
            return bad
        embeddings = rows["asv"][good]
        if add and speaker in self._speakers:
            embeddings = torch.cat([self._speakers[speaker], embeddings])
        self._speakers[speaker] = embeddings
        return bad

    @property
    def speakers(self) -> list[str]:
        return list(self._speakers)

    def forget(self, speaker: str) -> None:
        self._speaker_rows(speaker)
        del self._speakers[speaker]

    def _speaker_rows(self, speaker: str) -> torch.Tensor:
        if speaker not in self._speakers:
            known = ", ".join(sorted(self._speakers)[:5]) or "none"
            raise SystemInputError(f"unknown speaker {speaker!r}: enroll it first (enrolled: {known}"
                                   f"{', ...' if len(self._speakers) > 5 else ''})")
        return self._speakers[speaker]

    def speaker_model(self, speaker: str) -> torch.Tensor:
        """The speaker's model: the mean of its enrollment embeddings (one file: that row, bit for bit)."""
        rows = self._speaker_rows(speaker)
        if self.kind == "b2":  # save_asv_embeddings.py's speaker_models
            return torch.from_numpy(speaker_model([row.numpy() for row in rows]))
        return speaker_embeddings(rows, {i: i for i in range(len(rows))}, [list(range(len(rows)))])[0]

    def save_speakers(self, path: str | os.PathLike) -> None:
        """Write every speaker's enrollment embeddings to `path` (.npz, no pickle), atomically, with the ASV
        weights' fingerprint."""
        fingerprint = self.asv_fingerprint()
        names = list(self._speakers)
        matrix = torch.cat([self._speakers[s] for s in names]).numpy() if names else np.zeros((0, 0), np.float32)
        with atomic_open(path, "wb") as handle:
            np.savez(handle, format=np.array(SPEAKERS_FORMAT), version=np.array(SPEAKERS_VERSION),
                     asv_sha256=np.array(fingerprint), enrollment_samples=np.array(self.enrollment_samples),
                     speakers=np.array(names, dtype=str), counts=np.array([len(self._speakers[s]) for s in names],
                                                                          dtype=np.int64),
                     embeddings=matrix.astype(np.float32))

    def load_speakers(self, path: str | os.PathLike) -> list[str]:
        """Add the speakers of a `save_speakers` file (replacing same-named ones); returns their names. A file
        made with other ASV weights is refused."""
        fingerprint = self.asv_fingerprint()
        if Path(path).is_file() and not zipfile.is_zipfile(path):  # np.load would call it pickled data
            raise SpeakerFileError(f"{path}: not a speaker file of this toolkit (SASVSystem.save_speakers writes .npz)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                values = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError) as error:
            raise SpeakerFileError(f"{path}: cannot read the speaker file ({error})") from None
        needed = ("format", "version", "asv_sha256", "speakers", "counts", "embeddings")
        if any(key not in values for key in needed) or str(values["format"]) != SPEAKERS_FORMAT:
            raise SpeakerFileError(f"{path}: not a speaker file of this toolkit (SASVSystem.save_speakers)")
        if int(values["version"]) != SPEAKERS_VERSION:
            raise SpeakerFileError(f"{path}: speaker file version {int(values['version'])}; this toolkit reads "
                                   f"version {SPEAKERS_VERSION}")
        if str(values["asv_sha256"]) != fingerprint:
            raise SpeakerFileError(f"{path}: its speaker models were made by other ASV weights than those of "
                                   f"{self.checkpoint}; enroll the speakers again with this system")
        if "enrollment_samples" in values and int(values["enrollment_samples"]) != self.enrollment_samples:
            self.warn(f"warning: {path}: its speakers were enrolled from audio cut to "
                      f"{int(values['enrollment_samples'])} samples, this system cuts to {self.enrollment_samples}")
        names, counts, matrix = list(values["speakers"]), values["counts"], values["embeddings"]
        if len(names) != len(counts) or int(counts.sum()) != len(matrix) or (counts < 1).any() \
                or not np.isfinite(matrix).all():
            raise SpeakerFileError(f"{path}: its speaker names, counts and embeddings do not agree")
        start = 0
        for name, count in zip(names, counts):
            self._speakers[str(name)] = torch.from_numpy(matrix[start:start + int(count)].copy())
            start += int(count)
        return [str(name) for name in names]

    # ------------------------------------------------------------------ scoring
    def score(self, speaker: str | None, test: Audio | Sequence[Audio]) -> TrialScore | list[TrialScore]:
        """Score one test (a TrialScore) or several (a list) against `speaker` (None for a CM alone)."""
        if isinstance(test, (str, os.PathLike, np.ndarray, torch.Tensor)):
            return self.score_trials([(speaker, test)])[0]
        return self.score_trials([(speaker, item) for item in test])

    def score_trials(self, pairs: Sequence[tuple[str | None, Audio]], *, on_problem: str = "error"
                     ) -> list[TrialScore]:
        """Score (speaker, test) pairs, each distinct test file or waveform through the networks once.

        A waveform's `test` is "<waveform i>", i its pair's position. An unknown speaker raises
        SystemInputError and a bad test file its AudioError; with on_problem="skip" each is said once through
        `warn` and its trials are left out of the returned list."""
        if on_problem not in ("error", "skip"):
            raise ValueError(f"on_problem must be 'error' or 'skip', got {on_problem!r}")
        needs_speaker = self.kind != "cm"
        kept: list[tuple[str | None, str]] = []
        items: dict[str, Path | InMemoryAudio] = {}
        warned: set[str] = set()
        for index, (speaker, test) in enumerate(pairs):
            if needs_speaker and (not isinstance(speaker, str) or speaker not in self._speakers):
                if on_problem == "error":
                    self._speaker_rows(speaker)
                if speaker not in warned:
                    warned.add(speaker)
                    self.warn(f"warning: unknown speaker {speaker!r} (not enrolled): its trials are skipped")
                continue
            name = f"<waveform {index}>" if isinstance(test, (np.ndarray, torch.Tensor)) else os.fspath(test) \
                if isinstance(test, (str, os.PathLike)) else f"<test {index}>"
            if name not in items:
                try:
                    items[name] = self._items([test], [name])[0]
                except AudioError as error:
                    if on_problem == "error":
                        raise
                    self.warn(f"warning: skipping {error}")
                    items[name] = None  # type: ignore[assignment]
            if items[name] is not None:
                kept.append((speaker, name))
        usable = [name for name, item in items.items() if item is not None]
        rows, bad = self._extract([items[name] for name in usable], self.test_samples, self._test_networks(),
                                  self.options.batch_size, "tests", on_problem)
        for reason in bad.values():
            self.warn(f"warning: skipping {reason}")
        usable_row = {name: row for row, name in enumerate(usable) if str(items[name]) not in bad}
        kept = [(speaker, name) for speaker, name in kept if name in usable_row]
        return self._scores(kept, usable_row, rows)

    def _scores(self, trials: list[tuple[str | None, str]], row_of: dict[str, int], rows: dict[str, torch.Tensor]
                ) -> list[TrialScore]:
        if not trials:
            return []
        test_rows = [row_of[name] for _, name in trials]
        asv = cm = sasv = None
        speakers = list(dict.fromkeys(s for s, _ in trials)) if self.kind != "cm" else []
        speaker_index = {s: i for i, s in enumerate(speakers)}
        enrollment = torch.stack([self.speaker_model(s) for s in speakers]) if speakers else None
        if "cm" in rows:
            cm = rows["cm"][test_rows, -1].double().numpy()
        if enrollment is not None:
            enrollment_rows = [speaker_index[s] for s, _ in trials]
            asv = cosine(enrollment[enrollment_rows].float().numpy(), rows["asv"][test_rows].float().numpy())
        if self.kind == "sasv":
            sasv_trials = [SASVTrial(speaker, name, "-", "-") for speaker, name in trials]
            sasv = self._scorer.score_from_embeddings(sasv_trials, speaker_index, enrollment,
                                                      {name: row for name, row in row_of.items()},
                                                      rows["asv"], rows["cm"][:, :-1])
        elif self.kind == "b2":
            sasv = self._b2_scores(enrollment[enrollment_rows], rows["asv"][test_rows], rows["cm"][test_rows, :-1])
        values = {"asv": asv, "cm": cm, "sasv": sasv}
        llrs = {part: self.calibration.llr(part, values[part]) if self.calibration is not None and
                values[part] is not None else None for part in values}
        decision = self.calibration.decision if self.calibration is not None else None
        accepted = decision.accept(values[decision.score]) if decision is not None and \
            values.get(decision.score) is not None else None

        def number(array: np.ndarray | None, i: int) -> float | None:
            return None if array is None else float(array[i])

        return [TrialScore(speaker=speaker, test=name, asv_score=number(asv, i), cm_score=number(cm, i),
                           sasv_score=number(sasv, i), asv_llr=number(llrs["asv"], i), cm_llr=number(llrs["cm"], i),
                           sasv_llr=number(llrs["sasv"], i), decision=None if accepted is None else bool(accepted[i]))
                for i, (speaker, name) in enumerate(trials)]

    @torch.no_grad()
    def _b2_scores(self, enrollment: torch.Tensor, test_asv: torch.Tensor, test_cm: torch.Tensor) -> np.ndarray:
        """The b2 task's scoring: the back-end's target log-odds, in chunks."""
        backend = self.networks["backend"]
        pieces = []
        for start in range(0, len(enrollment), B2_BATCH):
            part = slice(start, start + B2_BATCH)
            logits = backend(enrollment[part].to(self.device), test_asv[part].to(self.device),
                             test_cm[part].to(self.device))
            pieces.append(B2Backend.score(logits.float()).cpu())
        return torch.cat(pieces).numpy()


def _build(kind: str, checkpoint: Checkpoint, config: Config, asv_weights: str | os.PathLike | None,
           cm_weights: str | os.PathLike | None) -> dict[str, nn.Module]:
    """The system's networks with their weights (CPU): the checkpoint's, then the parts it lacks."""
    path = checkpoint.source
    if kind == "sasv":
        model, loss = build_sasv_model(config, load_weights=False)
        held = subsystems_held(load_sasv_weights(model, loss, path))
        for part, argument, name, key, load, network in (
                ("asv", asv_weights, "asv_weights", "asv_weight", load_asv_weights, model.asv_model),
                ("cm", cm_weights, "cm_weights", "aasist_weight", load_cm_weights, model.cm_model)):
            if part in held:
                if argument is not None:
                    raise CheckpointError(f"{path}: holds its own {part.upper()} weights; {name}= is only for a "
                                          f"checkpoint without them (a _fixed model's back-end)")
                continue
            load(network, _weights_file(argument, config, key, path, part.upper(), name))
        if checkpoint.oc_center is None:
            raise CheckpointError(f"{path}: holds no OC-softmax centre; it cannot score SASV trials")
        return {"model": model, "loss": loss}
    if kind in ("cm", "asv"):
        argument = cm_weights if kind == "cm" else asv_weights
        if argument is not None:
            raise CheckpointError(f"{path}: a {kind.upper()} system's weights are the checkpoint itself; "
                                  f"{'cm' if kind == 'cm' else 'asv'}_weights= is not used")
        if kind == "cm":
            network = build_cm_network(config)
            load_cm_weights(network, path)
            return {"cm": network}
        network = build_asv_network(config)
        load_asv_weights(network, path)
        return {"asv": network}
    # b2: the back-end, with the ASV and CM networks that made its embeddings (save_asv_embeddings.py's).
    asv, cm = build_asv_network(config), build_cm_network(config)
    load_asv_weights(asv, _weights_file(asv_weights, config, "asv_weight", path, "ASV", "asv_weights"))
    load_cm_weights(cm, _weights_file(cm_weights, config, "aasist_weight", path, "CM", "cm_weights"))
    backend = load_b2_backend(config, checkpoint, cm_dim=int(cm.embedding_dim))
    return {"asv": asv, "cm": cm, "backend": backend}

