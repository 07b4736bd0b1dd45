"""SASV scoring: every utterance and every enrollment through the networks once.

The original ran the full model per trial, pushing a 60-90 s enrollment through
ResNet for each of 102,579 eval trials. Here each test utterance's ASV and CM
embeddings and each speaker's enrollment embedding are computed once, then only
the back-end runs per trial. `SASVScorer.score_per_trial` keeps the literal path
for tests and benchmarks.

Under torchrun each process embeds every N-th unique file and scores every N-th trial; the
rows are gathered (runtime.distributed.gather_shards), so every process ends with all scores.

Robustness: out of GPU memory, a batch is split in halves (and the smaller size kept)
until it fits; with on_bad_audio="skip" an unreadable file yields NaN embeddings and
every trial that needs it is marked as skipped (`TrialScores`) instead of stopping.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.audio import load_waveform
from data.datasets import WaveformDataset, iterate_batches, leave_signals_to_main_process
from data.protocols import SASVTrial
from runtime import distributed
from runtime.device import autocast_context
from models.sasv import SASVModel

Poll = Callable[[], None]  # called between batches; may raise to abort (e.g. on a signal)


class ScoringError(RuntimeError):
    """Scoring cannot go on (e.g. out of GPU memory even for a single item)."""


@dataclass
class ScoringInputs:
    """What a SASV evaluation needs: the trials and where their audio lives."""

    trials: list[SASVTrial]
    test_dir: Path  # <database>/ASVspoof2019_LA_<part>/flac
    enrollment_paths: dict[str, Path]  # speaker -> concatenated enrollment file
    test_samples: int
    enrollment_samples: int
    audio_ext: str = "flac"

    def test_path(self, utterance: str) -> Path:
        return self.test_dir / f"{utterance}.{self.audio_ext}"


@dataclass
class EmbeddingCache:
    """Embeddings of frozen sub-systems, reused across evaluations (keyed by path and crop)."""

    asv: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    cm: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)  # file -> why it was skipped (NaN rows above)


@dataclass
class TrialScores:
    """SASV scores in trial order; trials whose audio was bad (on_bad_audio: skip) are NaN and marked."""

    scores: np.ndarray
    skipped: np.ndarray  # bool per trial
    bad_audio: dict[str, str]  # file -> reason

    @property
    def n_skipped(self) -> int:
        return int(self.skipped.sum())


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, as a typed error or a RuntimeError message."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class AdaptiveBatch:
    """Runs a function over a batch in chunks; on out-of-memory halves the chunk, keeps it, and retries."""

    def __init__(self, size: int, device: torch.device, what: str) -> None:
        self.size = max(1, size)
        self.device = device
        self.what = what

    def run(self, function: Callable[..., dict[str, torch.Tensor]], *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        total = len(tensors[0])
        pieces: list[dict[str, torch.Tensor]] = []
        start = 0
        while start < total:
            size = min(self.size, total - start)
            try:
                pieces.append(function(*(tensor[start:start + size] for tensor in tensors)))
                start += size
                continue
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(error):
                    raise
                if size == 1:
                    raise ScoringError(f"out of {self.device.type.upper()} memory for a single item while computing "
                                       f"{self.what} on {self.device}; free memory on the device, shorten the "
                                       f"inputs or use --device cpu") from None
            # Outside the except block, so that the failed attempt's tensors can be freed.
            self.size = max(1, size // 2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            tqdm.write(f"warning: out of {self.device.type.upper()} memory with a batch of {size} ({self.what}); "
                       f"retrying with {self.size}", file=sys.stderr)
        return {name: torch.cat([piece[name] for piece in pieces]) for name in pieces[0]} if pieces else {}


def _loader(paths: list[Path], samples: int, batch_size: int, num_workers: int, sample_rate: int,
            resample: bool, pin_memory: bool, on_bad_audio: str) -> DataLoader:
    dataset = WaveformDataset(paths, samples, sample_rate=sample_rate, resample=resample, on_bad_audio=on_bad_audio)
    # Its own generator: scoring must not consume the global torch RNG that training (dropout) uses.
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False,
                      worker_init_fn=leave_signals_to_main_process if num_workers else None,
                      generator=torch.Generator())


@torch.no_grad()
def extract(paths: list[Path], samples: int | None, networks: dict[str, Callable[[torch.Tensor], torch.Tensor]], *,
            device: torch.device, batch_size: int, num_workers: int = 0, amp: str = "off",
            sample_rate: int = 16000, resample: bool = False, desc: str = "embeddings",
            progress: bool = True, on_bad_audio: str = "error", bad_audio: dict[str, str] | None = None,
            poll: Poll | None = None) -> dict[str, torch.Tensor]:
    """Run each network in `networks` over every file once; returns name -> [len(paths), dim] on CPU.

    Every file is cut or tiled to `samples`, so a batch never mixes lengths (enrollments and test
    utterances are extracted in separate calls); `samples=None` embeds whole files one at a time.

    on_bad_audio="error" raises the file's AudioError; "skip" gives that file NaN rows and
    records `bad_audio[str(path)] = reason` (pass a dict to receive them).
    """
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in networks}
    if not paths:
        return {name: torch.empty(0) for name in networks}
    if samples is None:  # whole files differ in length: one per batch, so that nothing is ever padded
        batch_size = 1
    loader = _loader(paths, samples, batch_size, num_workers, sample_rate, resample, device.type == "cuda",
                     on_bad_audio)
    chunked = AdaptiveBatch(batch_size, device, desc)

    def run_networks(waves: torch.Tensor) -> dict[str, torch.Tensor]:
        waves = waves.to(device, non_blocking=True)
        with autocast_context(device, amp):
            return {name: network(waves).float().cpu() for name, network in networks.items()}

    batches = tqdm(iterate_batches(loader), total=len(loader), desc=desc, unit="batch", disable=not progress,
                   leave=False)
    for indices, waves, problems in batches:
        if poll is not None:
            poll()
        result = chunked.run(run_networks, waves)
        bad_rows = [row for row, problem in enumerate(problems) if problem]
        for row in bad_rows:
            if bad_audio is not None:
                bad_audio[str(paths[int(indices[row])])] = problems[row]
        for name, values in result.items():
            if bad_rows:
                values[bad_rows] = float("nan")
            outputs[name].append(values)
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}


def extract_sharded(paths: list[Path], samples: int | None, networks: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                    *, bad_audio: dict[str, str] | None = None, **options) -> dict[str, torch.Tensor]:
    """`extract`; under torchrun each rank embeds its share of `paths` and every rank gets all rows
    (and all bad files in `bad_audio`). With one process it is `extract` itself."""
    def embed_share(share: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        share_bad: dict[str, str] = {}
        rows = extract([paths[i] for i in share], samples, networks, bad_audio=share_bad, **options)
        return rows, share_bad

    pieces = distributed.gather_shards(len(paths), embed_share)
    if bad_audio is not None:
        for _, (_, share_bad) in pieces:
            bad_audio.update(share_bad)
    return {name: distributed.assemble_rows([(share, rows[name]) for share, (rows, _) in pieces])
            for name in networks}


class SASVScorer:
    """Scores SASV trials with a SASV model and its OC-softmax loss."""

    def __init__(self, model: SASVModel, loss: torch.nn.Module, device: torch.device, *, batch_size: int = 32,
                 num_workers: int = 0, amp: str = "off", sample_rate: int = 16000, resample: bool = False,
                 progress: bool = True, on_bad_audio: str = "error") -> None:
        self.model = model
        self.loss = loss
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.amp = amp
        self.sample_rate = sample_rate
        self.resample = resample
        self.progress = progress
        self.on_bad_audio = on_bad_audio
        self.poll: Poll | None = None  # set by the trainer to stop between batches on a signal
        self._bad_audio: dict[str, str] = {}  # filled by the current scoring call

    def _extract(self, paths: list[Path], samples: int, networks: dict, batch_size: int, desc: str) -> dict:
        return extract_sharded(paths, samples, networks, device=self.device, batch_size=batch_size,
                               num_workers=self.num_workers, amp=self.amp, sample_rate=self.sample_rate,
                               resample=self.resample, desc=desc, progress=self.progress,
                               on_bad_audio=self.on_bad_audio, bad_audio=self._bad_audio, poll=self.poll)

    def _cached_extract(self, paths: list[Path], samples: int, networks: dict, batch_size: int, desc: str,
                        cache: dict | None, bad_cache: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        """Like `_extract`, but reuses/fills `cache[name][(path, samples)]` for the given networks."""
        if cache is None:
            return self._extract(paths, samples, networks, batch_size, desc)
        keys = [(str(p), samples) for p in paths]
        missing = sorted({i for name in networks for i, key in enumerate(keys) if key not in cache[name]})
        if missing:
            fresh = self._extract([paths[i] for i in missing], samples, networks, batch_size, desc)
            for name in networks:
                for row, i in enumerate(missing):
                    cache[name][keys[i]] = fresh[name][row]
            if bad_cache is not None:
                bad_cache.update({str(paths[i]): self._bad_audio[str(paths[i])] for i in missing
                                  if str(paths[i]) in self._bad_audio})
        if bad_cache is not None:  # cached bad files are still bad for this call
            self._bad_audio.update({str(p): bad_cache[str(p)] for p in paths if str(p) in bad_cache})
        return {name: torch.stack([cache[name][key] for key in keys]) if keys else torch.empty(0)
                for name in networks}

    @torch.no_grad()
    def embeddings(self, inputs: ScoringInputs, cache: EmbeddingCache | None = None
                   ) -> tuple[dict[str, int], torch.Tensor, dict[str, int], torch.Tensor, torch.Tensor]:
        """(speaker index, enrollment ASV embeddings, utterance index, test ASV embeddings, CM embeddings)."""
        self.model.eval()
        speakers = sorted({trial.speaker for trial in inputs.trials})
        utterances = sorted({trial.utterance for trial in inputs.trials})
        model = self.model
        asv_cache = {"asv": cache.asv} if cache is not None and not model.train_asv else None
        cm_cache = {"cm": cache.cm} if cache is not None and not model.train_cm else None
        bad_cache = cache.bad if cache is not None else None

        enrollment_batch = max(1, self.batch_size * inputs.test_samples // max(inputs.enrollment_samples, 1))
        enrollment = self._cached_extract([inputs.enrollment_paths[s] for s in speakers], inputs.enrollment_samples,
                                          {"asv": model.asv_embedding}, enrollment_batch, "enrollment", asv_cache,
                                          bad_cache)
        test_paths = [inputs.test_path(u) for u in utterances]
        test_asv = self._cached_extract(test_paths, inputs.test_samples, {"asv": model.asv_embedding},
                                        self.batch_size, "test ASV", asv_cache, bad_cache)
        test_cm = self._cached_extract(test_paths, inputs.test_samples,
                                       {"cm": lambda wave: model.cm_embedding(wave)[0]},
                                       self.batch_size, "test CM", cm_cache, bad_cache)
        return ({s: i for i, s in enumerate(speakers)}, enrollment["asv"],
                {u: i for i, u in enumerate(utterances)}, test_asv["asv"], test_cm["cm"])

    @torch.no_grad()
    def score(self, inputs: ScoringInputs, cache: EmbeddingCache | None = None, backend_batch: int = 4096
              ) -> np.ndarray:
        """SASV score per trial (trial order), higher = target bona fide; NaN for skipped trials."""
        return self.score_trials(inputs, cache, backend_batch).scores

    @torch.no_grad()
    def score_trials(self, inputs: ScoringInputs, cache: EmbeddingCache | None = None, backend_batch: int = 4096
                     ) -> TrialScores:
        """Scores plus which trials were skipped because their enrollment or test audio was bad."""
        self._bad_audio = {}
        speaker_index, enrollment, utterance_index, test_asv, test_cm = self.embeddings(inputs, cache)
        trials = inputs.trials
        pieces = distributed.gather_shards(len(trials), lambda share: self.score_from_embeddings(
            [trials[i] for i in share], speaker_index, enrollment, utterance_index, test_asv, test_cm, backend_batch))
        scores = distributed.assemble_rows(pieces)
        bad = set(self._bad_audio)
        skipped = np.array([str(inputs.enrollment_paths[t.speaker]) in bad or str(inputs.test_path(t.utterance)) in bad
                            for t in inputs.trials], dtype=bool)
        scores = scores.copy()
        scores[skipped] = np.nan
        return TrialScores(scores=scores, skipped=skipped, bad_audio=dict(self._bad_audio))

    @torch.no_grad()
    def score_from_embeddings(self, trials: list[SASVTrial], speaker_index: dict[str, int], enrollment: torch.Tensor,
                              utterance_index: dict[str, int], test_asv: torch.Tensor, test_cm: torch.Tensor,
                              backend_batch: int = 4096) -> np.ndarray:
        self.model.eval()
        self.loss.eval()
        if not trials:
            return np.empty(0, dtype=np.float32)
        enr_rows = torch.tensor([speaker_index[t.speaker] for t in trials], dtype=torch.long)
        test_rows = torch.tensor([utterance_index[t.utterance] for t in trials], dtype=torch.long)

        def backend(enr: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
            feats = self.model.score_embeddings(enrollment[enr].to(self.device), test_asv[rows].to(self.device),
                                                test_cm[rows].to(self.device))
            return {"score": self.loss.score(feats).float().cpu()}

        chunked = AdaptiveBatch(backend_batch, self.device, "back-end scores")
        return chunked.run(backend, enr_rows, test_rows)["score"].numpy()

    @torch.no_grad()
    def score_per_trial(self, inputs: ScoringInputs, batch_size: int = 2) -> np.ndarray:
        """The original's literal path: full model per trial batch (reference for tests and benchmarks)."""
        self.model.eval()
        self.loss.eval()
        scores = []
        trials = inputs.trials
        for start in tqdm(range(0, len(trials), batch_size), desc="per-trial", disable=not self.progress, leave=False):
            chunk = trials[start:start + batch_size]
            enr = torch.stack([load_waveform(inputs.enrollment_paths[t.speaker], inputs.enrollment_samples,
                                             sample_rate=self.sample_rate, resample=self.resample) for t in chunk])
            tst = torch.stack([load_waveform(inputs.test_path(t.utterance), inputs.test_samples,
                                             sample_rate=self.sample_rate, resample=self.resample) for t in chunk])
            with autocast_context(self.device, self.amp):
                feats = self.model(enr.to(self.device), tst.to(self.device))
            scores.append(self.loss.score(feats.float()).cpu())
        return torch.cat(scores).numpy()
