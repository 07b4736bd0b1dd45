"""Training the back-end on cached embeddings of frozen sub-systems.

In the fixed configurations the ASV and CM networks are frozen in eval mode (no dropout,
fixed BatchNorm statistics) and a training crop is the first `train_samples` samples of a
file, tiled when shorter (`train_crop: first`). An utterance's ASV and CM embeddings are
then the same in every batch of every epoch, whether it is a trial's enrollment (a bona
fide utterance of the claimed speaker, cropped the same way) or its test: each one is
computed once, kept on disk, and the back-end trains on rows of that table. Trials, their
order, the redraws of bad audio and the random numbers drawn are those of the per-batch
path (`TrainTrialDataset`), which `cache_frozen_embeddings: false` keeps.

Cache file `<dirs.embedding>/train-<key>.pt`. The key hashes the frozen weights (the bytes of
every state-dict tensor, so any weight change gives another file), the architecture
configs and the crop rule (train_crop, train_samples, sample_rate, resample, audio_ext); frozen
networks always run in fp32 (models/sasv.py), so `amp` does not enter it. Each entry also
records its audio file's size and modification time, and is embedded again when they change.
The file is written atomically and carries a SHA-256 of its content: an unreadable,
truncated or altered file is rebuilt after a one-line warning. Utterances whose audio is bad
are not stored (retried next run). Under torchrun the processes embed the missing utterances
in shares and rank 0 writes the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from data.audio import AudioError
from data.corpora import corpus_of
from data.datasets import TrainTrialDataset
from data.trials import TrialSampler
from models.build import aasist_model_config
from models.sasv import SASVModel
from runtime import distributed
from runtime.config import Config
from runtime.files import atomic_open
from scoring.extraction import Extraction, extract_sharded

CACHE_VERSION = 3  # 2: content checksum labels each table; 3: frozen networks always fp32 (no amp in the key)
DEFAULT_FOLDER = "frozen_embeddings"  # under the experiment folder when dirs.embedding is not set
SAVE_EVERY = 2048  # utterances embedded between two saves of the cache file

Log = Callable[[str], None]
Fingerprint = tuple[int, int] | None  # (size, mtime_ns) of an audio file; None when it cannot be read


def why_not_cached(config: Config, model: SASVModel) -> str | None:
    """Why the frozen networks must run every batch, or None when their embeddings can be cached."""
    trained = [name for name, trainable in (("ASV", model.train_asv), ("CM", model.train_cm)) if trainable]
    if trained:
        return f"the {' and '.join(trained)} network{'s are' if len(trained) > 1 else ' is'} trained"
    if config["train_crop"] != "first":
        return f"train_crop is {config['train_crop']}: every batch crops anew"
    if not config["cache_frozen_embeddings"]:
        return "cache_frozen_embeddings is false"
    return None


def _hash_tensor(digest: hashlib._Hash, label: str, tensor: Tensor) -> None:
    """Feed `label`, the dtype, the shape and the raw bytes of `tensor` (any dtype) to `digest`."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{label}|{data.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and the bytes of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def cache_description(config: Config, model: SASVModel) -> dict:
    """Everything the cached embeddings depend on besides the audio files themselves."""
    return {"version": CACHE_VERSION, "asv_weights": weights_digest(model.asv_model),
            "cm_weights": weights_digest(model.cm_model), "asv_model": config["asv_model"],
            "cm_model": aasist_model_config(config), "train_crop": config["train_crop"],
            "train_samples": config["train_samples"], "sample_rate": config["sample_rate"],
            "resample": config["resample"], "audio_ext": config["audio_ext"]}


def cache_path(folder: str | Path, description: dict) -> Path:
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
    return Path(folder) / f"train-{key}.pt"


def fingerprint(path: Path) -> Fingerprint:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_size, status.st_mtime_ns)


@dataclass
class EmbeddingTable:
    """Per-utterance embeddings of the frozen networks, row i = utterances[i]."""

    utterances: list[str]
    fingerprints: list[Fingerprint]
    asv: Tensor  # [N, asv_dim] float32
    cm: Tensor  # [N, cm_dim] float32

    @classmethod
    def concatenate(cls, parts: list[EmbeddingTable]) -> EmbeddingTable:
        parts = [part for part in parts if part.utterances]
        if not parts:
            return cls([], [], torch.empty(0, 0), torch.empty(0, 0))
        return cls([u for p in parts for u in p.utterances], [f for p in parts for f in p.fingerprints],
                   torch.cat([p.asv for p in parts]), torch.cat([p.cm for p in parts]))

    def content_digest(self, description: dict) -> str:
        digest = hashlib.sha256(json.dumps([description, self.utterances, self.fingerprints], sort_keys=True).encode())
        for name, tensor in (("asv", self.asv), ("cm", self.cm)):
            _hash_tensor(digest, name, tensor)
        return digest.hexdigest()

    def save(self, path: Path, description: dict) -> None:
        payload = {"version": CACHE_VERSION, "description": description, "utterances": self.utterances,
                   "fingerprints": [list(f) if f is not None else None for f in self.fingerprints],
                   "asv": self.asv, "cm": self.cm, "sha256": self.content_digest(description)}
        with atomic_open(path, "wb") as handle:
            torch.save(payload, handle)

    @classmethod
    def load(cls, path: Path, description: dict) -> EmbeddingTable:
        """The table stored in `path`; ValueError saying why when it is damaged or not this cache's."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any failure to read means a damaged file
            raise ValueError(f"unreadable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
            raise ValueError("not a frozen-embedding cache of this version")
        if payload.get("description") != description:
            raise ValueError("made for other weights or settings")
        try:
            table = cls(list(payload["utterances"]),
                        [tuple(f) if f is not None else None for f in payload["fingerprints"]],
                        payload["asv"], payload["cm"])
            rows = len(table.utterances)
            consistent = (len(table.fingerprints) == rows and table.asv.dim() == 2 and table.cm.dim() == 2
                          and table.asv.shape[0] == rows and table.cm.shape[0] == rows)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed ({error!r})") from None
        if not consistent:
            raise ValueError("row counts disagree")
        if payload.get("sha256") != table.content_digest(description):
            raise ValueError("checksum mismatch")
        return table


class CachedTrialDataset(TrainTrialDataset):
    """TrainTrialDataset whose items hold embedding-table rows instead of waveforms.

    Item `(epoch, index)` -> (enrollment row, test row, label, redraws, speakers). Trials are drawn by
    the parent's loop, so a trial that needs bad audio is redrawn (or raises) exactly as there.
    """

    def __init__(self, sampler: TrialSampler, rows: dict[str, int], bad: dict[str, str], **options) -> None:
        super().__init__(sampler, **options)
        self.rows = rows
        self.bad = bad  # utterance -> the AudioError message its file gave

    def _waves(self, trial, epoch: int, index: int, attempt: int) -> list[int]:
        for utterance in (trial.enrollment, trial.test):  # the order in which the parent loads them
            if utterance in self.bad:
                raise AudioError(self.bad[utterance])
        return [self.rows[trial.enrollment], self.rows[trial.test]]


class CachedBackend:
    """forward(enrollment rows, test rows) -> back-end features, from the embedding table on the device."""

    def __init__(self, model: SASVModel, asv: Tensor, cm: Tensor) -> None:
        self.model = model
        self.asv = asv
        self.cm = cm

    def __call__(self, enrollment_rows: Tensor, test_rows: Tensor) -> Tensor:
        return self.model.score_embeddings(self.asv[enrollment_rows], self.asv[test_rows], self.cm[test_rows])


@dataclass
class TrainingInputs:
    """What the training loop iterates and, with the cache, how it turns a batch into back-end features."""

    dataset: Dataset  # item (epoch, index) -> (enrollment, test, label, redraws, speakers)
    forward: CachedBackend | None  # batch of table rows on the device -> features; None: waveforms (run the model)
    num_workers: int
    cache_file: Path | None = None  # the embedding cache, when used


def embedding_table(config: Config, model: SASVModel, utterances: list[str], *, device: torch.device,
                    folder: Path, progress: bool = True, log: Log = print, warn: Log = print,
                    poll: Callable[[], None] | None = None) -> tuple[EmbeddingTable, dict[str, str], Path]:
    """The cached embeddings of `utterances` (computing the missing ones) and the bad files' reasons.

    `poll` is called between batches and may raise to stop (a signal); what was embedded is kept.
    """
    description = cache_description(config, model)
    path = cache_path(folder, description)
    audio_dir = corpus_of(config).audio_dir("train")
    ext = config["audio_ext"]
    audio = {u: audio_dir / f"{u}.{ext}" for u in utterances}
    current = {u: fingerprint(p) for u, p in audio.items()}
    stored = None
    if path.is_file():
        try:
            stored = EmbeddingTable.load(path, description)
        except ValueError as why:
            warn(f"warning: frozen-embedding cache {path} is damaged ({why}); embedding the training utterances again")
    distributed.barrier()  # under torchrun: every rank has read the file before rank 0 rewrites it
    main = distributed.is_main()
    kept: dict[str, int] = {}  # utterance -> its row in `stored`, for entries whose audio file is unchanged
    if stored is not None:
        for row, (utterance, recorded) in enumerate(zip(stored.utterances, stored.fingerprints)):
            now = current[utterance] if utterance in current else fingerprint(audio_dir / f"{utterance}.{ext}")
            if recorded is not None and now == recorded:
                kept[utterance] = row
    missing = [u for u in utterances if u not in kept]
    old_rows = list(kept.values())
    table = EmbeddingTable.concatenate([] if stored is None else [EmbeddingTable(
        list(kept), [stored.fingerprints[r] for r in old_rows], stored.asv[old_rows], stored.cm[old_rows])])
    if main and stored is not None and len(kept) < len(stored.utterances):
        table.save(path, description)  # entries of changed audio files are gone, even if nothing is added
    bad: dict[str, str] = {}
    networks = {"asv": model.asv_embedding, "cm": lambda wave: model.cm_embedding(wave)[0]}
    for start in range(0, len(missing), SAVE_EVERY):  # saved in steps: a stop loses at most one step
        chunk = missing[start:start + SAVE_EVERY]
        problems: dict[str, str] = {}
        # Under torchrun each rank embeds its share of the chunk and every rank gets all rows.
        fresh = extract_sharded([audio[u] for u in chunk], config["train_samples"], networks,
                                Extraction.from_config(config, device, progress=progress and main,
                                                       on_bad_audio="skip", poll=poll),
                                desc=f"frozen embeddings {start + len(chunk)}/{len(missing)}", bad_audio=problems)
        bad.update({u: problems[str(audio[u])] for u in chunk if str(audio[u]) in problems})
        good = [i for i, u in enumerate(chunk) if u not in bad]
        if good:  # bad files are not stored: they are tried again next time
            table = EmbeddingTable.concatenate([table, EmbeddingTable(
                [chunk[i] for i in good], [current[chunk[i]] for i in good], fresh["asv"][good], fresh["cm"][good])])
            if main:
                table.save(path, description)
    log(f"frozen sub-systems: training on cached embeddings ({path}; {len(utterances) - len(missing)} of "
        f"{len(utterances)} training utterances reused, {len(missing) - len(bad)} embedded now"
        f"{f', {len(bad)} with bad audio' if bad else ''})")
    return table, bad, path


def training_inputs(config: Config, model: SASVModel, sampler: TrialSampler, *, device: torch.device,
                    experiment_dir: Path, progress: bool = True, log: Log = print, warn: Log = print,
                    poll: Callable[[], None] | None = None) -> TrainingInputs:
    """The training dataset and forward: cached embeddings when the sub-systems allow it, else waveforms."""
    options = dict(audio_dir=corpus_of(config).audio_dir("train"),
                   samples=config["train_samples"], crop=config["train_crop"], seed=config["seed"],
                   sample_rate=config["sample_rate"], resample=config["resample"], audio_ext=config["audio_ext"],
                   on_bad_audio=config["on_bad_audio"])
    reason = why_not_cached(config, model)
    if reason is not None:
        if not (model.train_asv and model.train_cm):  # a joint run has nothing frozen: nothing to say
            log(f"training: no frozen-embedding cache ({reason}); the networks run on the waveforms every batch")
        return TrainingInputs(TrainTrialDataset(sampler, **options), None, config["loader"]["n_workers"])
    folder = Path(config["dirs"]["embedding"]) if config["dirs"]["embedding"] else experiment_dir / DEFAULT_FOLDER
    table, bad, path = embedding_table(config, model, sampler.utterances(), device=device, folder=folder,
                                       progress=progress, log=log, warn=warn, poll=poll)
    rows = {u: i for i, u in enumerate(table.utterances)}
    dataset = CachedTrialDataset(sampler, rows, bad, **options)
    forward = CachedBackend(model, table.asv.to(device), table.cm.to(device))
    # Drawing a trial is a few microseconds of numpy: worker processes would cost more than they save.
    return TrainingInputs(dataset, forward, num_workers=0, cache_file=path)
