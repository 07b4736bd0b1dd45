"""SASV scoring: every utterance and every enrollment through the networks once.

The original ran the full model per trial, pushing a 60-90 s enrollment through
ResNet for each of 102,579 eval trials. Here each test utterance's ASV and CM
embeddings and each speaker's enrollment embedding are computed once, then only
the back-end runs per trial. `score_trials_per_trial` keeps the literal path
for tests and benchmarks.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.audio import load_waveform
from data.datasets import WaveformDataset
from data.protocols import SASVTrial
from models.sasv import SASVModel


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


def autocast_context(device: torch.device, amp: str) -> object:
    """bf16/fp16 autocast on CUDA when asked; the fbank stays fp32 inside the ResNet."""
    if amp == "off" or device.type != "cuda":
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _loader(paths: list[Path], samples: int, batch_size: int, num_workers: int, sample_rate: int,
            resample: bool, pin_memory: bool) -> DataLoader:
    dataset = WaveformDataset(paths, samples, sample_rate=sample_rate, resample=resample)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)


@torch.no_grad()
def extract(paths: list[Path], samples: int, networks: dict[str, Callable[[torch.Tensor], torch.Tensor]], *,
            device: torch.device, batch_size: int, num_workers: int = 0, amp: str = "off",
            sample_rate: int = 16000, resample: bool = False, desc: str = "embeddings",
            progress: bool = True) -> dict[str, torch.Tensor]:
    """Run each network in `networks` over every file once; returns name -> [len(paths), dim] on CPU."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in networks}
    if not paths:
        return {name: torch.empty(0) for name in networks}
    loader = _loader(paths, samples, batch_size, num_workers, sample_rate, resample, device.type == "cuda")
    for _, waves in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        waves = waves.to(device, non_blocking=True)
        with autocast_context(device, amp):
            for name, network in networks.items():
                outputs[name].append(network(waves).float().cpu())
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}


class SASVScorer:
    """Scores SASV trials with a SASV model and its OC-softmax loss."""

    def __init__(self, model: SASVModel, loss: torch.nn.Module, device: torch.device, *, batch_size: int = 32,
                 num_workers: int = 0, amp: str = "off", sample_rate: int = 16000, resample: bool = False,
                 progress: bool = True) -> None:
        self.model = model
        self.loss = loss
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.amp = amp
        self.sample_rate = sample_rate
        self.resample = resample
        self.progress = progress

    def _extract(self, paths: list[Path], samples: int, networks: dict, batch_size: int, desc: str) -> dict:
        return extract(paths, samples, networks, device=self.device, batch_size=batch_size,
                       num_workers=self.num_workers, amp=self.amp, sample_rate=self.sample_rate,
                       resample=self.resample, desc=desc, progress=self.progress)

    def _cached_extract(self, paths: list[Path], samples: int, networks: dict, batch_size: int, desc: str,
                        cache: dict | None) -> dict[str, torch.Tensor]:
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

        enrollment_batch = max(1, self.batch_size * inputs.test_samples // max(inputs.enrollment_samples, 1))
        enrollment = self._cached_extract([inputs.enrollment_paths[s] for s in speakers], inputs.enrollment_samples,
                                          {"asv": model.asv_embedding}, enrollment_batch, "enrollment", asv_cache)
        test_paths = [inputs.test_path(u) for u in utterances]
        test_asv = self._cached_extract(test_paths, inputs.test_samples, {"asv": model.asv_embedding},
                                        self.batch_size, "test ASV", asv_cache)
        test_cm = self._cached_extract(test_paths, inputs.test_samples,
                                       {"cm": lambda wave: model.cm_embedding(wave)[0]},
                                       self.batch_size, "test CM", cm_cache)
        return ({s: i for i, s in enumerate(speakers)}, enrollment["asv"],
                {u: i for i, u in enumerate(utterances)}, test_asv["asv"], test_cm["cm"])

    @torch.no_grad()
    def score(self, inputs: ScoringInputs, cache: EmbeddingCache | None = None, backend_batch: int = 4096
              ) -> np.ndarray:
        """SASV score per trial (trial order), higher = target bona fide."""
        speaker_index, enrollment, utterance_index, test_asv, test_cm = self.embeddings(inputs, cache)
        return self.score_from_embeddings(inputs.trials, speaker_index, enrollment, utterance_index,
                                          test_asv, test_cm, backend_batch)

    @torch.no_grad()
    def score_from_embeddings(self, trials: list[SASVTrial], speaker_index: dict[str, int], enrollment: torch.Tensor,
                              utterance_index: dict[str, int], test_asv: torch.Tensor, test_cm: torch.Tensor,
                              backend_batch: int = 4096) -> np.ndarray:
        self.model.eval()
        self.loss.eval()
        enr_rows = torch.tensor([speaker_index[t.speaker] for t in trials], dtype=torch.long)
        test_rows = torch.tensor([utterance_index[t.utterance] for t in trials], dtype=torch.long)
        scores = []
        for start in range(0, len(trials), backend_batch):
            enr = enrollment[enr_rows[start:start + backend_batch]].to(self.device)
            rows = test_rows[start:start + backend_batch]
            feats = self.model.score_embeddings(enr, test_asv[rows].to(self.device), test_cm[rows].to(self.device))
            scores.append(self.loss.score(feats).float().cpu())
        return torch.cat(scores).numpy() if scores else np.empty(0, dtype=np.float32)

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
