"""SASV scoring: every utterance and every enrollment through the networks once, then the back-end per trial.

The original ran the full model per trial, pushing a 60-90 s enrollment through ResNet for each of
102,579 eval trials. Here each test utterance's ASV and CM embeddings and each speaker's enrollment
embedding are computed once, then only the back-end runs per trial. `SASVScorer.score_per_trial`
keeps the literal path for tests and benchmarks. Under torchrun each process embeds every N-th unique
file and scores every N-th trial; the rows are gathered, so every process ends with all scores.
With on_bad_audio: skip a trial whose audio is bad scores NaN and is marked as skipped in the `ScoredTrials`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.audio import load_waveform
from data.protocols import SASVTrial
from metrics.adcf import min_adcf
from metrics.eer import sasv_eers
from models.sasv import SASVModel
from runtime import distributed
from runtime.device import autocast_context
from scoring.extraction import AdaptiveBatch, EmbeddingCache, Extraction, ScoringError, extract_sharded
from scoring.inputs import ScoringInputs
from scoring.scored_trials import ScoredTrials
from scoring.verification import cosine


def speaker_embeddings(rows: torch.Tensor, row_of: dict[Path, int], files: list[list[Path]]) -> torch.Tensor:
    """Per speaker, the mean of its enrollment files' embeddings (as the organisers' SASV baseline); a
    speaker with one file gets that file's row itself, bit for bit."""
    if not files:
        return rows
    return torch.stack([rows[row_of[paths[0]]] if len(paths) == 1 else
                        rows[[row_of[path] for path in paths]].mean(dim=0) for paths in files])


def cm_embedding_and_score(cm: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A CM (wave -> (embedding, logits); `SASVModel.cm_embedding` or a CM network) as one network whose output
    is the embedding with the bona fide logit (index 1) as a last column: one pass gives both."""
    def network(wave: torch.Tensor) -> torch.Tensor:
        embedding, logits = cm(wave)
        return torch.cat([embedding, logits[:, 1:2].to(embedding.dtype)], dim=1)
    return network


class SASVScorer:
    """Scores SASV trials with a SASV model and its OC-softmax loss."""

    def __init__(self, model: SASVModel, loss: torch.nn.Module, options: Extraction) -> None:
        self.model = model
        self.loss = loss
        self.options = options
        self.device = options.device
        self.batch_size = options.batch_size
        self._bad_audio: dict[str, str] = {}  # filled by the current scoring call

    def _extract(self, paths: list[Path], samples: int, networks: dict, batch_size: int, desc: str) -> dict:
        return extract_sharded(paths, samples, networks, self.options.replace(batch_size=batch_size), desc=desc,
                               bad_audio=self._bad_audio)

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
                   ) -> tuple[dict[str, int], torch.Tensor, dict[str, int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(speaker index, enrollment ASV embeddings, utterance index, test ASV embeddings, CM embeddings,
        CM bona fide logits)."""
        self.model.eval()
        speakers = sorted({trial.speaker for trial in inputs.trials})
        utterances = sorted({trial.utterance for trial in inputs.trials})
        model = self.model
        asv_cache = {"asv": cache.asv} if cache is not None and not model.train_asv else None
        cm_cache = {"cm": cache.cm} if cache is not None and not model.train_cm else None
        bad_cache = cache.bad if cache is not None else None

        enrollment_batch = max(1, self.batch_size * inputs.test_samples // max(inputs.enrollment_samples, 1))
        # Each enrollment file once, in speaker order (one file per speaker: the same batches as ever).
        enrollment_files = list(dict.fromkeys(path for s in speakers for path in inputs.enrollment_paths[s]))
        enrolled = self._cached_extract(enrollment_files, inputs.enrollment_samples, {"asv": model.asv_embedding},
                                        enrollment_batch, "enrollment", asv_cache, bad_cache)["asv"]
        enrollment = {"asv": speaker_embeddings(enrolled, {path: row for row, path in enumerate(enrollment_files)},
                                                [inputs.enrollment_paths[s] for s in speakers])}
        test_paths = [inputs.test_path(u) for u in utterances]
        test_asv = self._cached_extract(test_paths, inputs.test_samples, {"asv": model.asv_embedding},
                                        self.batch_size, "test ASV", asv_cache, bad_cache)
        test_cm = self._cached_extract(test_paths, inputs.test_samples,
                                       {"cm": cm_embedding_and_score(model.cm_embedding)}, self.batch_size,
                                       "test CM", cm_cache, bad_cache)["cm"]
        return ({s: i for i, s in enumerate(speakers)}, enrollment["asv"],
                {u: i for i, u in enumerate(utterances)}, test_asv["asv"], test_cm[:, :-1], test_cm[:, -1])

    @torch.no_grad()
    def score(self, inputs: ScoringInputs, cache: EmbeddingCache | None = None, backend_batch: int = 4096
              ) -> np.ndarray:
        """SASV score per trial (trial order), higher = target bona fide; NaN for skipped trials."""
        return self.score_trials(inputs, cache, backend_batch).sasv

    @torch.no_grad()
    def score_trials(self, inputs: ScoringInputs, cache: EmbeddingCache | None = None, backend_batch: int = 4096
                     ) -> ScoredTrials:
        """The trials' SASV scores with the joint model's sub-system scores of the same trials (for min t-DCF /
        t-EER and the Track 2 file: the cosine of the enrollment and test ASV embeddings, and the CM's bona fide
        logit of the test utterance), and which trials were skipped because their enrollment or test audio was
        bad. `source` is left empty: the writer names the score file."""
        self._bad_audio = {}
        speaker_index, enrollment, utterance_index, test_asv, test_cm, test_cm_score = self.embeddings(inputs, cache)
        trials = inputs.trials
        pieces = distributed.gather_shards(len(trials), lambda share: self.score_from_embeddings(
            [trials[i] for i in share], speaker_index, enrollment, utterance_index, test_asv, test_cm, backend_batch))
        scores = distributed.assemble_rows(pieces)
        bad = set(self._bad_audio)
        skipped = np.array([any(str(path) in bad for path in inputs.enrollment_paths[t.speaker])
                            or str(inputs.test_path(t.utterance)) in bad for t in inputs.trials], dtype=bool)
        scores = scores.copy()
        enrollment_rows = [speaker_index[t.speaker] for t in trials]
        test_rows = [utterance_index[t.utterance] for t in trials]
        asv = cosine(enrollment[enrollment_rows].float().numpy(), test_asv[test_rows].float().numpy())
        cm = test_cm_score[test_rows].double().numpy()
        for values in (scores, asv, cm):
            values[skipped] = np.nan
        return ScoredTrials.of_sasv_trials("", trials, scores, skipped=skipped, bad_audio=self._bad_audio, cm=cm,
                                           asv=asv, codec=inputs.codecs)

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
        """The original's literal path: full model per trial batch (reference for tests and benchmarks); one
        enrollment file per speaker (ASVspoof 2019 LA)."""
        if any(len(paths) != 1 for paths in inputs.enrollment_paths.values()):
            raise ValueError("score_per_trial runs the full model on one enrollment file per speaker; "
                             "use score() for several enrollment utterances")
        self.model.eval()
        self.loss.eval()
        scores = []
        trials = inputs.trials
        for start in tqdm(range(0, len(trials), batch_size), desc="per-trial", disable=not self.options.progress,
                          leave=False):
            chunk = trials[start:start + batch_size]
            enr = torch.stack([load_waveform(inputs.enrollment_paths[t.speaker][0], inputs.enrollment_samples,
                                             sample_rate=self.options.sample_rate, resample=self.options.resample)
                               for t in chunk])
            tst = torch.stack([load_waveform(inputs.test_path(t.utterance), inputs.test_samples,
                                             sample_rate=self.options.sample_rate, resample=self.options.resample)
                               for t in chunk])
            with autocast_context(self.device, self.options.amp):
                feats = self.model(enr.to(self.device), tst.to(self.device))
            scores.append(self.loss.score(feats.float()).cpu())
        return torch.cat(scores).numpy()


def sasv_metrics(scores: np.ndarray, keys: list[str], skipped: np.ndarray | None = None) -> dict[str, float]:
    """SASV-EER, SV-EER, SPF-EER and min a-DCF over the trials not `skipped` (bad audio)."""
    scores = np.asarray(scores)
    keep = np.ones(len(scores), dtype=bool) if skipped is None else ~np.asarray(skipped, dtype=bool)
    kept_scores = scores[keep]
    kept_keys = [key for key, use in zip(keys, keep) if use]
    bad = int((~np.isfinite(kept_scores)).sum())
    if bad:
        raise ScoringError(f"{bad} of {len(kept_scores)} trial scores are NaN/inf: the model's output is not finite")
    result = sasv_eers(kept_scores, kept_keys)
    result["min_a_dcf"] = float(min_adcf(kept_scores, kept_keys)[0])
    return result


def sasv_text(metrics: dict[str, float]) -> str:
    """The one-line summary of `sasv_metrics`, led by ASVspoof 5's primary metric where it was computed."""
    primary = f"a-DCF (ASVspoof 5) {metrics['a_dcf']:.4f}  " if metrics.get("a_dcf") is not None else ""
    return (f"{primary}SASV-EER {100 * metrics['sasv_eer']:.2f}%  SV-EER {100 * metrics['sv_eer']:.2f}%  "
            f"SPF-EER {100 * metrics['spf_eer']:.2f}%  min a-DCF {metrics['min_a_dcf']:.4f}")
