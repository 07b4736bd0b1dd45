"""The joint training objective: what one batch of SASV trials costs (the module DDP wraps).

OC-softmax on the back-end features of (enrollment, test) trials, plus, when `speaker_loss.weight`
is above 0, an AAM-softmax speaker-classification loss on the ASV embeddings of the bona fide
utterances of the batch (a multi-task extension; the original recipe has no such term).
"""
from __future__ import annotations

from typing import Callable

import torch

from runtime.config import Config
from runtime.device import autocast_context
from losses import build_loss


def build_auxiliary_speaker_loss(config: Config, n_speakers: int) -> torch.nn.Module:
    """The auxiliary speaker-classification loss (config `speaker_loss`) over `n_speakers` training speakers."""
    settings = config["speaker_loss"]
    return build_loss("aamsoftmax", embedding_dim=config["asv_model"]["n_out"], n_classes=n_speakers,
                      margin=settings["margin"], scale=settings["scale"])


def speaker_classification_loss(loss: torch.nn.Module, embeddings: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
    """Loss over the rows with a known bona fide speaker (index >= 0); 0 when there are none."""
    known = speakers >= 0
    if not bool(known.any()):
        return embeddings.sum() * 0.0  # keeps the graph (and DDP) consistent
    value, _ = loss(embeddings[known], speakers[known])
    return value


class TrainingForward(torch.nn.Module):
    """(enrollment waves, test waves, labels, speakers) -> OC-softmax loss (+ speaker_loss): the module that DDP
    wraps under torchrun, so that the OC centre's gradient is averaged over the ranks with the networks'."""

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module, device: torch.device, amp: str, *,
                 cached_features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 speaker_loss: torch.nn.Module | None = None, speaker_weight: float = 0.0) -> None:
        super().__init__()
        # Cached embedding rows instead of waveforms (training/frozen_cache.py); None: run the model.
        self.cached_features = cached_features
        if self.cached_features is not None and speaker_loss is not None:
            raise ValueError("a speaker loss needs the ASV network to run on the waveforms, not cached embeddings")
        self.model = model
        self.loss = loss
        self.speaker_loss = speaker_loss
        self.speaker_weight = speaker_weight
        self.device = device
        self.amp = amp

    def forward(self, enrollment: torch.Tensor, test: torch.Tensor, labels: torch.Tensor,
                speakers: torch.Tensor) -> torch.Tensor:
        """`speakers` [B, 2]: class indices of the enrollment and test speakers (-1: spoof), for speaker_loss."""
        with autocast_context(self.device, self.amp):
            if self.cached_features is not None:
                feats = self.cached_features(enrollment, test)
            elif self.speaker_loss is None:
                feats = self.model(enrollment, test)
            else:
                feats, asv_enrollment, asv_test = self.model(enrollment, test, return_asv_embeddings=True)
        loss, _ = self.loss(feats.float(), labels)
        if self.speaker_loss is not None:
            loss = loss + self.speaker_weight * speaker_classification_loss(
                self.speaker_loss, torch.cat([asv_enrollment, asv_test]).float(), speakers.t().reshape(-1))
        return loss
