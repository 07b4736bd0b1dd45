"""Softmax + angular prototypical loss (voxceleb_trainer's `softmaxproto`, the recipe of its
published ResNetSE34V2 model baseline_v2_ap).

The sum of two terms over a batch of B speakers x M utterances: a plain softmax speaker
classifier (a linear layer with bias, cross-entropy) over all B * M embeddings, and the
angular prototypical loss of `losses/angle_proto.py` over the B speakers. The accuracy is
the classifier's. Parameter names (`softmax.fc.weight`, `softmax.fc.bias`, `angleproto.w`,
`angleproto.b`) match voxceleb_trainer's `__L__.*` keys, so its checkpoints restore them.
The original requires M == 2; any M >= 2 is accepted here (M == 2 is the same computation).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from losses.aam_softmax import top1_accuracy
from losses.angle_proto import AngleProto


class SpeakerSoftmax(nn.Module):
    """forward(embeddings [N, D], labels [N]) -> (cross-entropy of a linear speaker classifier, top-1 accuracy)."""

    def __init__(self, embedding_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, n_classes)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.fc(embeddings)
        return F.cross_entropy(logits, labels), top1_accuracy(logits, labels)


class SoftmaxProto(nn.Module):
    """forward(embeddings [B, M, D], labels [B]) -> (softmax loss + angular prototypical loss, softmax accuracy)."""

    def __init__(self, embedding_dim: int, n_classes: int, init_w: float = 10.0, init_b: float = -5.0) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"SoftmaxProto needs at least 2 classes, got {n_classes}")
        self.softmax = SpeakerSoftmax(embedding_dim, n_classes)
        self.angleproto = AngleProto(init_w, init_b)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if embeddings.dim() != 3 or embeddings.shape[1] < 2:
            raise ValueError(f"SoftmaxProto expects embeddings [speakers, utterances >= 2, dim], "
                             f"got shape {tuple(embeddings.shape)}")
        per_speaker = embeddings.shape[1]
        classification, accuracy = self.softmax(embeddings.reshape(-1, embeddings.shape[-1]),
                                                labels.repeat_interleave(per_speaker))
        prototypical, _ = self.angleproto(embeddings)
        return classification + prototypical, accuracy
