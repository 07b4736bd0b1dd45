"""Additive angular margin softmax (AAM-softmax, ArcFace) for speaker classification.

The target logit is s * cos(theta + m), the others s * cos(theta), with theta the angle
between the L2-normalised embedding and the L2-normalised class weight. Past
theta = pi - m, cos(theta + m) would stop decreasing, so it is replaced there by the
linear continuation cos(theta) - m sin(pi - m) (voxceleb_trainer's `aamsoftmax`).
The class-weight matrix is named `weight`, as voxceleb_trainer's `__L__.weight`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.schema import ANGULAR_MARGIN, POSITIVE, ConfigSection, Field

# Its keys, in the speaker_loss section (system sasv's auxiliary loss) and in asv_train (system asv).
CONFIG = ConfigSection(
    name="AAMSoftmax",
    fields=dict(
        margin=Field(float, 0.2, "AAM-softmax angular margin (radians)", range=ANGULAR_MARGIN),
        scale=Field(float, 30.0, "AAM-softmax logit scale", range=POSITIVE),
    ),
)


def top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose largest logit is at the label."""
    return (logits.detach().argmax(dim=1) == labels).float().mean()


class AAMSoftmax(nn.Module):
    """forward(embeddings [B, M, D] or [N, D], labels [B] or [N]) -> (loss, top-1 accuracy).

    With [B, M, D] every one of the M utterances of row b has speaker labels[b].
    """

    def __init__(self, embedding_dim: int, n_classes: int, margin: float = 0.2, scale: float = 30.0,
                 easy_margin: bool = False) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"AAMSoftmax needs at least 2 classes, got {n_classes}")
        self.embedding_dim = embedding_dim
        self.n_classes = n_classes
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(n_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight, gain=1)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits [N, n_classes] with the margin applied at each row's label."""
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)  # cos(theta + m)
        if self.easy_margin:
            with_margin = torch.where(cosine > 0, with_margin, cosine)
        else:
            threshold = math.cos(math.pi - self.margin)
            with_margin = torch.where(cosine > threshold, with_margin,
                                      cosine - math.sin(math.pi - self.margin) * self.margin)
        is_label = F.one_hot(labels, self.n_classes).to(cosine.dtype)
        return self.scale * (is_label * with_margin + (1.0 - is_label) * cosine)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if embeddings.dim() == 3:
            per_row = embeddings.shape[1]
            embeddings = embeddings.reshape(-1, embeddings.shape[-1])
            labels = labels.repeat_interleave(per_row)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"AAMSoftmax expects embeddings [N, {self.embedding_dim}] or [B, M, "
                             f"{self.embedding_dim}], got shape {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"AAMSoftmax: {labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
        logits = self.logits(embeddings, labels)
        return F.cross_entropy(logits, labels), top1_accuracy(logits, labels)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, n_classes={self.n_classes}, margin={self.margin}, "
                f"scale={self.scale}, easy_margin={self.easy_margin}")
