"""Angular prototypical loss (voxceleb_trainer's `angleproto`, used for baseline_v2_ap).

A batch holds B speakers with M >= 2 utterances each. For speaker i the query is its first
utterance and its prototype is the mean of the other M - 1; the logits of query i are
w * cos(query_i, prototype_j) + b over all j, and the loss is the cross-entropy with
target j = i. `w` and `b` are learnt 0-dim parameters whose names match voxceleb_trainer's
`__L__.w` / `__L__.b`, so a voxceleb_trainer checkpoint restores them.

Deliberate difference: w is clamped to at least 1e-6 before use. The original computes
that clamp and discards it, so with w <= 0 its loss would reward confusing speakers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.aam_softmax import top1_accuracy
from runtime.schema import ANY_FINITE, POSITIVE, ConfigSection, Field

# Its keys in asv_train (angleproto, and softmaxproto's prototypical half).
CONFIG = ConfigSection(
    name="AngleProto",
    fields=dict(
        # w is clamped at 1e-6 before use (no gradient below): a start <= 0 never moves
        init_w=Field(float, 10.0, "angleproto / softmaxproto initial scale w; the __L__ entries of a "
                     "voxceleb_trainer asv_weight file replace it", range=POSITIVE),
        init_b=Field(float, -5.0, "angleproto / softmaxproto initial bias b; the __L__ entries of a "
                     "voxceleb_trainer asv_weight file replace it", range=ANY_FINITE),
    ),
)

MIN_SCALE = 1e-6


class AngleProto(nn.Module):
    """forward(embeddings [B, M, D], labels [B] (unused: rows are speakers)) -> (loss, top-1 accuracy)."""

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def logits(self, embeddings: Tensor) -> Tensor:
        """[B, B] scaled cosines between each speaker's query and every speaker's prototype."""
        if embeddings.dim() != 3 or embeddings.shape[1] < 2:
            raise ValueError(f"AngleProto expects embeddings [speakers, utterances >= 2, dim], "
                             f"got shape {tuple(embeddings.shape)}")
        queries = embeddings[:, 0, :]
        prototypes = embeddings[:, 1:, :].mean(dim=1)
        cosine = F.normalize(queries, dim=1) @ F.normalize(prototypes, dim=1).t()
        return cosine * self.w.clamp(min=MIN_SCALE) + self.b

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self.logits(embeddings)
        targets = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, targets), top1_accuracy(logits, targets)

    def extra_repr(self) -> str:
        return f"w={self.w.item():.4g}, b={self.b.item():.4g}"
