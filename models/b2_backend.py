"""The SASV 2022 challenge's baseline B2 back-end: a DNN over pre-extracted embeddings.

Input: the concatenation of the enrollment ASV embedding (speaker model), the test ASV embedding and
the test CM embedding. Hidden layers are Linear + LeakyReLU(0.3), as in the baseline (256, 128, 64 by
default); the output is two logits, [other trial, target bona fide], from a bias-free Linear layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from runtime.schema import ConfigSection, widths

# The b2 section's network key (the section's training keys are the b2 task's).
CONFIG = ConfigSection(
    name="B2Backend",
    fields=dict(hidden_dims=widths([256, 128, 64], "widths of the DNN's hidden layers (Linear + LeakyReLU 0.3 each; "
                                   "the baseline's dnn_l_nodes)")),
)


class B2Backend(nn.Module):
    """(enrollment ASV [B, A], test ASV [B, A], test CM [B, C]) -> logits [B, 2]."""

    config = CONFIG

    def __init__(self, asv_dim: int, cm_dim: int, hidden_dims: Sequence[int] = (256, 128, 64),
                 negative_slope: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * asv_dim + cm_dim
        for size in hidden_dims:
            layers += [nn.Linear(width, size), nn.LeakyReLU(negative_slope)]
            width = size
        self.dnn = nn.Sequential(*layers)
        self.fc_out = nn.Linear(width, 2, bias=False)

    def forward(self, enrollment: torch.Tensor, test: torch.Tensor, cm: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dnn(torch.cat([enrollment, test, cm], dim=1)))

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        """SASV score: the log-odds of target bona fide. The baseline scores with the softmax probability of
        that class, which orders trials the same way but saturates at 1.0 in float32 (ties in the EER)."""
        return logits[:, 1] - logits[:, 0]
