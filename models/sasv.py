"""Joint spoofing-aware speaker verification model: ASV + CM embeddings fused by a small CNN back-end.

The back-end stacks [enrollment ASV, test ASV, projected CM] embeddings as three channels of a
1-D signal, convolves, pools and maps them to a fixed-size trial embedding that a one-class
softmax scores. Layer names match the seed checkpoints except `cm_projection` (was `spf_fc`)
and `embedding_mlp` (was `DNN_layer`); the checkpoint loader maps those.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.schema import ConfigSection, Invalid, widths


def _feature_size_matches_the_loss(config) -> None:
    """The back-end's last width is the feature the OC-softmax scores (losses/oc_softmax.py's optim.oc_dim)."""
    if config["optim"]["oc_dim"] != config["backend"]["hidden_dims"][-1]:
        raise Invalid("optim.oc_dim", f"({config['optim']['oc_dim']}) must equal backend.hidden_dims[-1] "
                                      f"({config['backend']['hidden_dims'][-1]})")


# The `backend` section: the fusion back-end's widths.
CONFIG = ConfigSection(
    name="SASVBackend",
    fields=dict(
        conv_channels=widths([64, 128, 256], "channels of the three fusion Conv1d blocks", length=3),
        hidden_dims=widths([512, 256], "fusion MLP widths (two); the last one is the OC-softmax feature size",
                           length=2),
    ),
    rules=(_feature_size_matches_the_loss,),
)


class SASVBackend(nn.Module):
    """forward(asv_enrollment [B, asv_dim], asv_test [B, asv_dim], cm_embedding [B, cm_dim]) -> [B, feat_dim]."""

    config = CONFIG

    def __init__(self, asv_dim: int = 512, cm_dim: int = 160, conv_channels: Sequence[int] = (64, 128, 256),
                 pooled_length: int = 4, hidden_dims: Sequence[int] = (512, 256),
                 negative_slope: float = 0.3) -> None:
        super().__init__()
        if len(conv_channels) != 3 or len(hidden_dims) != 2:
            raise ValueError(f"SASVBackend needs 3 conv_channels and 2 hidden_dims, got {conv_channels}, {hidden_dims}")
        self.asv_dim = asv_dim
        self.cm_dim = cm_dim
        self.pooled_length = pooled_length
        self.feat_dim = hidden_dims[-1]

        self.embedding_mlp = nn.Sequential(
            nn.Linear(conv_channels[-1] * pooled_length, hidden_dims[0]),
            nn.LeakyReLU(negative_slope=negative_slope),
            nn.Linear(hidden_dims[0], hidden_dims[1]),
            nn.LeakyReLU(negative_slope=negative_slope),
        )
        self.cm_projection = nn.Sequential(
            nn.Linear(cm_dim, asv_dim),
            nn.LeakyReLU(negative_slope=negative_slope),
        )
        # Not used for scoring, kept because the checkpoint format carries it.
        self.fc_out = nn.Linear(hidden_dims[-1], 1, bias=False)

        in_channels = (3, conv_channels[0], conv_channels[1])
        self.conv1 = nn.Conv1d(in_channels[0], conv_channels[0], kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv1d(in_channels[1], conv_channels[1], kernel_size=3, padding=1, bias=False)
        self.conv3 = nn.Conv1d(in_channels[2], conv_channels[2], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(conv_channels[0])
        self.bn2 = nn.BatchNorm1d(conv_channels[1])
        self.bn3 = nn.BatchNorm1d(conv_channels[2])
        self.activation = nn.LeakyReLU(negative_slope=negative_slope)

    def _check_inputs(self, asv_enrollment: Tensor, asv_test: Tensor, cm_embedding: Tensor) -> None:
        expected = {"asv_enrollment": (asv_enrollment, self.asv_dim), "asv_test": (asv_test, self.asv_dim),
                    "cm_embedding": (cm_embedding, self.cm_dim)}
        for name, (tensor, dim) in expected.items():
            if tensor.dim() != 2 or tensor.shape[1] != dim:
                raise ValueError(f"SASVBackend: {name} must be [batch, {dim}], got shape {tuple(tensor.shape)}")
        sizes = {asv_enrollment.shape[0], asv_test.shape[0], cm_embedding.shape[0]}
        if len(sizes) != 1:
            raise ValueError(f"SASVBackend: batch sizes differ: enrollment {asv_enrollment.shape[0]}, "
                             f"test {asv_test.shape[0]}, cm {cm_embedding.shape[0]}")

    def forward(self, asv_enrollment: Tensor, asv_test: Tensor, cm_embedding: Tensor) -> Tensor:
        self._check_inputs(asv_enrollment, asv_test, cm_embedding)
        projected_cm = self.cm_projection(cm_embedding)
        x = torch.stack([asv_enrollment, asv_test, projected_cm], dim=1)  # [B, 3, asv_dim]
        x = self.activation(self.bn1(self.conv1(x)))
        x = self.activation(self.bn2(self.conv2(x)))
        x = self.activation(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool1d(x, self.pooled_length).flatten(start_dim=1)
        return self.embedding_mlp(x)


class SASVModel(nn.Module):
    """ASV model + CM model + back-end; forward(enrollment_wave [B, T1], test_wave [B, T2]) -> feats [B, feat_dim].

    A sub-system built with train_asv / train_cm False is frozen: no gradients, always in eval mode
    (even after `.train()`), and run under `torch.no_grad()`.
    """

    def __init__(self, asv_model: nn.Module, cm_model: nn.Module, backend: SASVBackend,
                 train_asv: bool = True, train_cm: bool = True) -> None:
        super().__init__()
        self.asv_model = asv_model
        self.cm_model = cm_model
        self.backend = backend
        self.train_asv = train_asv
        self.train_cm = train_cm
        for module, trainable in ((asv_model, train_asv), (cm_model, train_cm)):
            if not trainable:
                module.requires_grad_(False)
                module.eval()

    def train(self, mode: bool = True) -> SASVModel:
        super().train(mode)
        # Frozen sub-systems keep their BatchNorm statistics and never use dropout.
        if not self.train_asv:
            self.asv_model.eval()
        if not self.train_cm:
            self.cm_model.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the parts that are trained: the back-end plus any unfrozen sub-system."""
        yield from self.backend.parameters()
        if self.train_asv:
            yield from self.asv_model.parameters()
        if self.train_cm:
            yield from self.cm_model.parameters()

    @staticmethod
    def _as_batch(wave: Tensor, name: str, module: nn.Module) -> Tensor:
        if not torch.is_floating_point(wave):
            raise TypeError(f"SASVModel: {name} must be a floating-point waveform in [-1, 1], got dtype {wave.dtype}")
        if wave.dim() == 3 and wave.shape[-1] == 1:
            wave = wave.squeeze(-1)
        if wave.dim() != 2:
            raise ValueError(f"SASVModel: {name} must be [batch, samples], got shape {tuple(wave.shape)}")
        param = next(module.parameters(), None)
        if param is not None and param.dtype != wave.dtype and not torch.is_autocast_enabled(wave.device.type):
            raise TypeError(f"SASVModel: {name} is {wave.dtype} but the model is {param.dtype}; "
                            f"convert one of them explicitly")
        return wave

    @staticmethod
    def _precision(trainable: bool, wave: Tensor) -> AbstractContextManager:
        # A frozen sub-system runs in fp32 even under autocast: its embeddings are then the same in
        # training (and in the frozen-embedding cache) as in scoring, which is always fp32.
        return nullcontext() if trainable else torch.autocast(wave.device.type, enabled=False)

    def asv_embedding(self, wave: Tensor) -> Tensor:
        """Speaker embedding [B, asv_dim] of a waveform batch [B, T]."""
        wave = self._as_batch(wave, "ASV input", self.asv_model)
        with torch.set_grad_enabled(self.train_asv and torch.is_grad_enabled()), self._precision(self.train_asv, wave):
            return self.asv_model(wave)

    def cm_embedding(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """Countermeasure (embedding [B, cm_dim], logits [B, 2]) of a waveform batch [B, T]."""
        wave = self._as_batch(wave, "CM input", self.cm_model)
        with torch.set_grad_enabled(self.train_cm and torch.is_grad_enabled()), self._precision(self.train_cm, wave):
            return self.cm_model(wave)

    def score_embeddings(self, asv_enrollment: Tensor, asv_test: Tensor, cm_embedding: Tensor) -> Tensor:
        """Back-end only, for precomputed (cached) embeddings -> feats [B, feat_dim]."""
        return self.backend(asv_enrollment, asv_test, cm_embedding)

    def forward(self, enrollment_wave: Tensor, test_wave: Tensor,
                return_asv_embeddings: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """feats [B, feat_dim]; with return_asv_embeddings also the enrollment and test ASV embeddings."""
        asv_enrollment = self.asv_embedding(enrollment_wave)
        asv_test = self.asv_embedding(test_wave)
        cm_embedding, _ = self.cm_embedding(test_wave)
        feats = self.backend(asv_enrollment, asv_test, cm_embedding)
        return (feats, asv_enrollment, asv_test) if return_asv_embeddings else feats
