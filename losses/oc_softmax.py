"""One-class softmax (OC-softmax): a single learnable centre for target bona fide trials.

Scores are the cosine similarity between the L2-normalised embedding and the
L2-normalised centre; the loss pushes target bona fide trials above the margin
`r_real` and every other trial below `r_fake`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.schema import COSINE, POSITIVE, ConfigSection, Field

# Its keys in the `optim` section (models/sasv.py's rule ties oc_dim to the back-end's last width).
CONFIG = ConfigSection(
    name="OCSoftmax",
    fields=dict(
        r_real=Field(float, 0.8, "OC-softmax margin for target bona fide", range=COSINE),
        r_fake=Field(float, 0.2, "OC-softmax margin for other trials", range=COSINE),
        alpha=Field(float, 10.0, "OC-softmax scale", range=POSITIVE),
        oc_dim=Field(int, 256, "OC-softmax feature size; must equal backend.hidden_dims[-1]", range=POSITIVE),
    ),
)


class OCSoftmax(nn.Module):
    """forward(feats [B, D], labels [B]) -> (loss, score [B]); label 0 = target bona fide,
    non-zero = any other trial."""

    def __init__(self, feat_dim: int = 256, r_real: float = 0.8, r_fake: float = 0.2, alpha: float = 10.0) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.r_real = r_real
        self.r_fake = r_fake
        self.alpha = alpha
        # Same draws as the reference (randn, then kaiming-uniform over it) so seeded runs match.
        self.center = nn.Parameter(torch.randn(1, feat_dim))
        nn.init.kaiming_uniform_(self.center, 0.25)

    def score(self, feats: Tensor) -> Tensor:
        """Cosine between each embedding and the centre, [B]; higher = more like a target bona fide trial."""
        if feats.dim() != 2 or feats.shape[1] != self.feat_dim:
            raise ValueError(f"OCSoftmax expects embeddings [batch, {self.feat_dim}], got shape {tuple(feats.shape)}")
        center = F.normalize(self.center, p=2, dim=1)
        return (F.normalize(feats, p=2, dim=1) @ center.t()).squeeze(1)

    def forward(self, feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.score(feats)
        if labels.shape != scores.shape:
            raise ValueError(f"OCSoftmax: labels shape {tuple(labels.shape)} does not match batch "
                             f"{tuple(scores.shape)}")
        is_target = labels.to(scores.device) == 0
        # Positive margin = violation: target below r_real, or non-target above r_fake.
        margins = torch.where(is_target, self.r_real - scores, scores - self.r_fake)
        loss = F.softplus(self.alpha * margins).mean()
        return loss, scores

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, r_real={self.r_real}, r_fake={self.r_fake}, alpha={self.alpha}"
