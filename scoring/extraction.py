"""Batched extraction: every audio file through the networks once, cut or tiled to one length per call.

`Extraction` holds how (device, batch size, workers, precision, the audio rules, progress and a poll
between batches); `extract` runs networks over files and `extract_sharded` does the same with each
torchrun process taking its share (rows gathered, so every process ends with all of them).

Robustness: out of GPU memory, a batch is split in halves (and the smaller size kept) until it
fits; with on_bad_audio="skip" an unreadable file yields NaN rows and is reported in `bad_audio`.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.audio import InMemoryAudio
from data.datasets import WaveformDataset, iterate_batches, leave_signals_to_main_process
from runtime import distributed
from runtime.device import autocast_context
from runtime.errors import RunFailure

Poll = Callable[[], None]  # called between batches; may raise to abort (e.g. on a signal)
Network = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Extraction:
    """How files become network outputs: the device, batching, precision and audio rules of a run."""

    device: torch.device
    batch_size: int = 32
    num_workers: int = 0
    amp: str = "off"
    sample_rate: int = 16000
    resample: bool = False
    on_bad_audio: str = "error"  # "skip": a bad file gets NaN rows and is reported instead of raising
    progress: bool = True
    poll: Poll | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device, **changes: Any) -> Extraction:
        """Scoring options of a config (eval_batch_size, loader workers, audio rules); scoring runs in fp32."""
        options = cls(device=device, batch_size=config["eval_batch_size"], num_workers=config["loader"]["n_workers"],
                      sample_rate=config["sample_rate"], resample=config["resample"],
                      on_bad_audio=config["on_bad_audio"])
        return dataclasses.replace(options, **changes)

    def replace(self, **changes: Any) -> Extraction:
        return dataclasses.replace(self, **changes)


class ScoringError(RunFailure, RuntimeError):
    """Scoring cannot go on (e.g. out of GPU memory even for a single item)."""


@dataclass
class EmbeddingCache:
    """Embeddings of frozen sub-systems, reused across evaluations (keyed by path and crop)."""

    asv: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    cm: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)  # file -> why it was skipped (NaN rows above)


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


def _loader(paths: list[Path | InMemoryAudio], samples: int | None, batch_size: int, options: Extraction) -> DataLoader:
    dataset = WaveformDataset(paths, samples, sample_rate=options.sample_rate, resample=options.resample,
                              on_bad_audio=options.on_bad_audio)
    # Its own generator: scoring must not consume the global torch RNG that training (dropout) uses.
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=options.num_workers,
                      pin_memory=options.device.type == "cuda", persistent_workers=False,
                      worker_init_fn=leave_signals_to_main_process if options.num_workers else None,
                      generator=torch.Generator())


@torch.no_grad()
def extract(paths: list[Path | InMemoryAudio], samples: int | None, networks: dict[str, Network],
            options: Extraction, *, desc: str = "embeddings", bad_audio: dict[str, str] | None = None
            ) -> dict[str, torch.Tensor]:
    """Run each network in `networks` over every file once; returns name -> [len(paths), dim] on CPU.
    An entry may be a waveform in memory (data.audio.InMemoryAudio, named by its `str`).

    Every file is cut or tiled to `samples`, so a batch never mixes lengths (enrollments and test
    utterances are extracted in separate calls); `samples=None` embeds whole files one at a time.

    on_bad_audio="error" raises the file's AudioError; "skip" gives that file NaN rows and
    records `bad_audio[str(path)] = reason` (pass a dict to receive them).
    """
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in networks}
    if not paths:
        return {name: torch.empty(0) for name in networks}
    # Whole files differ in length: one per batch, so that nothing is ever padded.
    batch_size = 1 if samples is None else options.batch_size
    loader = _loader(paths, samples, batch_size, options)
    device = options.device
    chunked = AdaptiveBatch(batch_size, device, desc)

    def run_networks(waves: torch.Tensor) -> dict[str, torch.Tensor]:
        waves = waves.to(device, non_blocking=True)
        with autocast_context(device, options.amp):
            return {name: network(waves).float().cpu() for name, network in networks.items()}

    batches = tqdm(iterate_batches(loader), total=len(loader), desc=desc, unit="batch",
                   disable=not options.progress, leave=False)
    for indices, waves, problems in batches:
        if options.poll is not None:
            options.poll()
        result = chunked.run(run_networks, waves)
        bad_rows = [row for row, problem in enumerate(problems) if problem]
        for row in bad_rows:
            if bad_audio is not None:
                bad_audio[str(paths[int(indices[row])])] = problems[row]
        for name, values in result.items():
            nonfinite = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
            nonfinite[bad_rows] = False
            if bool(nonfinite.any()):  # never written: a NaN embedding or score looks like a number downstream
                path = paths[int(indices[int(nonfinite.nonzero()[0])])]
                raise ScoringError(f"{path}: the network's {name} output is NaN/inf although the audio is sane; "
                                   f"the weights (or the network) are broken")
            if bad_rows:
                values[bad_rows] = float("nan")
            outputs[name].append(values)
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}


def extract_sharded(paths: list[Path], samples: int | None, networks: dict[str, Network], options: Extraction, *,
                    desc: str = "embeddings", bad_audio: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """`extract`; under torchrun each rank embeds its share of `paths` and every rank gets all rows
    (and all bad files in `bad_audio`). With one process it is `extract` itself."""
    def embed_share(share: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        share_bad: dict[str, str] = {}
        rows = extract([paths[i] for i in share], samples, networks, options, desc=desc, bad_audio=share_bad)
        return rows, share_bad

    pieces = distributed.gather_shards(len(paths), embed_share)
    if bad_audio is not None:
        for _, (_, share_bad) in pieces:
            bad_audio.update(share_bad)
    return {name: distributed.assemble_rows([(share, rows[name]) for share, (rows, _) in pieces])
            for name in networks}




def count_unscored(scores: np.ndarray, bad_audio: dict[str, str], n_touching_bad: int, what: str, *,
                   items: str = "trials") -> dict:
    """Check the scores of a scoring pass: NaN is allowed only for the `n_touching_bad` items (trials, or CM
    utterances) that need a bad file (on_bad_audio: skip); any other NaN/inf means the model's output is not
    finite (ScoringError). Returns the counts for a metrics file: n_skipped_<items> and skipped_audio."""
    n_skipped = int((~np.isfinite(scores)).sum())
    if n_skipped > n_touching_bad:
        raise ScoringError(f"{what}: {n_skipped} of {len(scores)} scores are NaN/inf: the model's output is not "
                           f"finite")
    return {f"n_skipped_{items}": n_skipped, "skipped_audio": dict(sorted(bad_audio.items()))}
